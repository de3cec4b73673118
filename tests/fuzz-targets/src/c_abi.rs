//! libacb's C ABI with arbitrary strings: the environment `acb_config_new` reads, the config
//! setters that take strings, the error-message copies, and (when asked) a begin against a
//! socket that does not exist. Called as C calls it, through the `extern "C"` functions.

use std::ffi::{OsStr, c_char};
use std::os::unix::ffi::OsStrExt;
use std::ptr::{null, null_mut};

use acb::client::{acb_client_free, acb_client_new, acb_on_device_begin};
use acb::config::{
    acb_config_free, acb_config_new, acb_config_set_assigner, acb_config_set_auth_token,
    acb_config_set_connect_retries, acb_config_set_connect_timeout_ms, acb_config_set_job,
    acb_config_set_memory_backend,
};
use acb::error::{acb_error_message, acb_status_message};
use acb::lease::acb_lease_free;
use acb::request::{acb_request_free, acb_request_new, acb_request_set_timeout_ms};
use acb::{acb_client, acb_config, acb_lease, acb_request, acb_status};

/// What `acb_config_new` reads, in the order of the input's first fields. `ACB_AUTH_TOKEN_FILE`
/// is left out (and unset): it names a file to read.
const ENV: [&str; 5] = ["ACB_ASSIGNER", "ACB_JOB_ID", "ACB_MEMORY_BACKEND", "ACB_EAGER_RELEASE", "ACB_PIN_GPUS"];

/// A socket no assigner listens on.
const NO_ASSIGNER: &[u8] = b"unix:/nonexistent/acb-fuzz/assigner.sock";

type StringSetter = extern "C" fn(*mut acb_config, *const c_char, usize) -> acb_status;

/// The input: a flags byte, then fields separated by NUL bytes: the values of [`ENV`] for
/// `acb_config_new` (a missing field unsets its variable), then the strings handed to
/// `acb_config_set_assigner`, `_set_job`, `_set_auth_token` and `_set_memory_backend`, each
/// NUL-terminated, with its length. Flags with the low 3 bits set (1 input in 8): make a client
/// of the config and begin a phase against a socket that does not exist (1 ms connect timeout,
/// no retry), which must fail cleanly; that costs about 1 ms (the client's runtime), the rest
/// about 0.1 ms. Bits 1-3 of the flags size the buffers the messages are copied into, bits 4-7
/// pick a status number.
///
/// Accepted: `acb_config_new` and every setter returned `ACB_STATUS_OK`.
///
/// It sets environment variables: the fuzzer runs it on one thread, and the replay test runs it
/// from a test binary with no other test, while libacb has no thread of its own running.
pub fn c_abi(data: &[u8]) -> bool {
    let Some((&flags, rest)) = data.split_first() else { return false };
    let mut fields = rest.split(|&b| b == 0);
    for var in ENV {
        match fields.next() {
            // SAFETY: no other thread reads the environment now (see above).
            Some(value) => unsafe { std::env::set_var(var, OsStr::from_bytes(value)) },
            // SAFETY: as above.
            None => unsafe { std::env::remove_var(var) },
        }
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var("ACB_AUTH_TOKEN_FILE") };

    let mut cfg: *mut acb_config = null_mut();
    let mut accepted = checked(acb_config_new(&mut cfg)) == acb_status::Ok;
    if !accepted {
        assert!(cfg.is_null(), "acb_config_new wrote its output on failure");
        for var in ENV {
            // SAFETY: as above.
            unsafe { std::env::remove_var(var) };
        }
        assert_eq!(checked(acb_config_new(&mut cfg)), acb_status::Ok, "no config from an empty environment");
    }
    let setters: [StringSetter; 4] =
        [acb_config_set_assigner, acb_config_set_job, acb_config_set_auth_token, acb_config_set_memory_backend];
    for set in setters {
        let Some(field) = fields.next() else { break };
        let terminated: Vec<u8> = field.iter().copied().chain([0]).collect();
        accepted &= checked(set(cfg, terminated.as_ptr().cast(), field.len())) == acb_status::Ok;
        assert_eq!(checked(set(null_mut(), terminated.as_ptr().cast(), field.len())), acb_status::NullParameter);
        assert_eq!(checked(set(cfg, null(), field.len())), acb_status::NullParameter);
    }
    check_message_copies(flags);
    if flags & 0b111 == 0b111 {
        begin_without_assigner(cfg);
    }
    acb_config_free(cfg);
    acb_config_free(null_mut());
    accepted
}

/// A client of `cfg`, pointed at a socket that does not exist, begins a phase: it fails with a
/// status and a message, writing no lease.
fn begin_without_assigner(cfg: *mut acb_config) {
    assert_eq!(checked(acb_config_set_assigner(cfg, NO_ASSIGNER.as_ptr().cast(), NO_ASSIGNER.len())), acb_status::Ok);
    assert_eq!(checked(acb_config_set_connect_timeout_ms(cfg, 1)), acb_status::Ok);
    assert_eq!(checked(acb_config_set_connect_retries(cfg, 0)), acb_status::Ok);
    let mut client: *mut acb_client = null_mut();
    if checked(acb_client_new(cfg, &mut client)) != acb_status::Ok {
        assert!(client.is_null(), "acb_client_new wrote its output on failure");
        return;
    }
    let mut request: *mut acb_request = null_mut();
    assert_eq!(checked(acb_request_new(&mut request)), acb_status::Ok);
    assert_eq!(checked(acb_request_set_timeout_ms(request, 1)), acb_status::Ok);
    let mut lease: *mut acb_lease = null_mut();
    let status = checked(acb_on_device_begin(client, request, &mut lease));
    assert_ne!(status, acb_status::Ok, "a lease from no assigner");
    assert!(lease.is_null(), "acb_on_device_begin wrote its output on failure");
    acb_lease_free(lease);
    acb_request_free(request);
    acb_client_free(client);
}

/// `acb_error_message` and `acb_status_message` into buffers of 0 to 7 bytes and of 1 KiB:
/// what they write is NUL-terminated, within the buffer, and a prefix of the whole text.
fn check_message_copies(flags: u8) {
    let whole = error_message();
    let small = usize::from(flags >> 1) % 8;
    // Exactly `small` bytes on the heap, so that a write past them is AddressSanitizer's.
    let mut buf = vec![0x55u8; small];
    let mut written = usize::MAX;
    let status = acb_error_message(buf.as_mut_ptr().cast(), small, &mut written);
    check_copy(&whole, &buf, small, written, status);

    let number = u32::from(flags >> 4);
    let mut full = [0u8; 1024];
    let mut full_written = 0;
    let status = acb_status_message(number, full.as_mut_ptr().cast(), full.len(), &mut full_written);
    if acb_status::from_u32(number).is_none() {
        assert_eq!(status, acb_status::OutOfRange, "status {number}");
        return;
    }
    assert_eq!(status, acb_status::Ok);
    let text = std::str::from_utf8(&full[..full_written]).unwrap_or_default().to_owned();
    assert!(!text.is_empty(), "status {number} has no message");
    let mut written = usize::MAX;
    let status = acb_status_message(number, buf.as_mut_ptr().cast(), small, &mut written);
    check_copy(&text, &buf, small, written, status);
}

fn check_copy(whole: &str, buf: &[u8], len: usize, written: usize, status: acb_status) {
    if len == 0 {
        assert_eq!(written, 0);
        let expected = if whole.is_empty() { acb_status::Ok } else { acb_status::BufferTooSmall };
        assert_eq!(status, expected);
        return;
    }
    assert!(written < len, "{written} bytes written into {len}");
    assert_eq!(buf[written], 0, "not NUL-terminated");
    assert_eq!(&buf[..written], &whole.as_bytes()[..written], "not a prefix of the message");
    let expected = if written < whole.len() { acb_status::BufferTooSmall } else { acb_status::Ok };
    assert_eq!(status, expected);
}

/// Fails on a panic that reached the C boundary, and on an error with no message.
fn checked(status: acb_status) -> acb_status {
    assert_ne!(status, acb_status::Panic, "a panic reached the C boundary: {}", error_message());
    if status != acb_status::Ok {
        assert!(!error_message().is_empty(), "{status:?} with no message");
    }
    status
}

/// The last failure's message on this thread, whole (in a buffer of 1 KiB, else 64 KiB).
fn error_message() -> String {
    let mut buf = vec![0u8; 1 << 10];
    let mut written = 0;
    if acb_error_message(buf.as_mut_ptr().cast(), buf.len(), &mut written) == acb_status::BufferTooSmall {
        buf = vec![0u8; 64 << 10];
        let status = acb_error_message(buf.as_mut_ptr().cast(), buf.len(), &mut written);
        assert_eq!(status, acb_status::Ok, "a message of 64 KiB or more");
    }
    String::from_utf8_lossy(&buf[..written]).into_owned()
}
