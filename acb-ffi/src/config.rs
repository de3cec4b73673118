//! `acb_config`: how a client finds the assigner and who it is (a C handle over
//! [`::acb_client::Config`]).

use std::ffi::c_char;
use std::time::Duration;

use ::acb_client::{Address, Config, MemoryBackend, ReleaseMode};

use crate::error::fail;
use crate::panic::{check_out, ffi_panic_boundary, try_mut};
use crate::status::acb_status;

/// Client settings. Made by `acb_config_new` from the environment, changed by the setters,
/// read by `acb_client_new` (which copies it: the config may be freed right after).
#[allow(non_camel_case_types)]
#[derive(Clone, Debug)]
pub struct acb_config(pub(crate) Config);

/// Reads `len` bytes at `s` as UTF-8.
pub(crate) fn str_arg<'a>(s: *const c_char, len: usize, what: &str) -> Result<&'a str, acb_status> {
    if s.is_null() {
        return Err(fail(acb_status::NullParameter, format!("{what} is NULL")));
    }
    // SAFETY: the caller passes `len` readable bytes at `s` (the header's contract).
    let bytes = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), len) };
    std::str::from_utf8(bytes).map_err(|_| fail(acb_status::InvalidArgument, format!("{what} is not UTF-8")))
}

/// Makes a config from the environment (`ACB_ASSIGNER`, `ACB_JOB_ID`, `ACB_AUTH_TOKEN_FILE`,
/// `ACB_MEMORY_BACKEND`, `ACB_EAGER_RELEASE`, `ACB_PIN_GPUS`, `ACB_ASSIGNER_UID`, `ACB_GROUP`,
/// `ACB_GROUP_SIZE`; without `ACB_GROUP`, the group of a torchrun job or a Slurm step of more
/// than one process: see `acb_config_set_group`) into `*config_out`. Free it with
/// `acb_config_free`. A malformed setting gives `ACB_STATUS_INVALID_ARGUMENT`, and
/// `acb_error_message` names it: an `ACB_ASSIGNER` that is not an address, an `ACB_JOB_ID` the
/// assigner would refuse (over 256 bytes, control characters), an `ACB_ASSIGNER_UID` that is not
/// a number, an `ACB_GROUP_SIZE` (or `WORLD_SIZE`, `SLURM_NTASKS`) that is not 1 to 4096.
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_new(config_out: *mut *mut acb_config) -> acb_status {
    ffi_panic_boundary! {
        check_out!(config_out);
        match Config::from_env() {
            Ok(cfg) => {
                // SAFETY: checked non-NULL; the caller owns the pointer it points to.
                unsafe { *config_out = Box::into_raw(Box::new(acb_config(cfg))) };
                acb_status::Ok
            }
            Err(e) => crate::error::fail_with(&e),
        }
    }
}

/// Frees a config. `acb_config_free(NULL)` does nothing.
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_free(config: *mut acb_config) {
    ffi_panic_boundary! {
        if !config.is_null() {
            // SAFETY: made by Box::into_raw in acb_config_new, freed once (the header's contract).
            drop(unsafe { Box::from_raw(config) });
        }
    }
}

/// Sets the assigner's address: `unix:/path.sock` or `tcp:IP:PORT` (`len` bytes at `addr`).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_assigner(config: *mut acb_config, addr: *const c_char, len: usize) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        let s = match str_arg(addr, len, "addr") { Ok(s) => s, Err(st) => return st };
        match s.parse::<Address>() {
            Ok(a) => { cfg.assigner = a; acb_status::Ok }
            Err(e) => fail(acb_status::InvalidArgument, e.to_string()),
        }
    }
}

/// Sets the job's name (`len` bytes of UTF-8 at `job`: 1 to 256, no control characters, the
/// assigner's rule; `ACB_STATUS_INVALID_ARGUMENT` otherwise, with the limit named).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_job(config: *mut acb_config, job: *const c_char, len: usize) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        let s = match str_arg(job, len, "job") { Ok(s) => s, Err(st) => return st };
        if let Err(e) = ::acb_client::check_job(s) {
            return crate::error::fail_with(&e);
        }
        cfg.job = s.to_string();
        acb_status::Ok
    }
}

/// Makes the client one member of the group `name` (`len` bytes of UTF-8: 1 to 256, no control
/// characters) of `size` members (1 to 4096): its GPU requests are granted together with the
/// other members' (other processes, each with a client of its own naming the same group and
/// size), in one decision, once all `size` of them wait. `len` 0 (`name` may then be NULL): no
/// group, `size` ignored. Anything else out of range gives `ACB_STATUS_INVALID_ARGUMENT`, naming
/// the limit.
///
/// `acb_config_new` already sets it from `ACB_GROUP` and `ACB_GROUP_SIZE`, or from the launcher:
/// torchrun (`torchrun:<TORCHELASTIC_RUN_ID>@<MASTER_ADDR>:<MASTER_PORT>`, `WORLD_SIZE` members)
/// or Slurm (`slurm:<SLURM_JOB_ID>.<SLURM_STEP_ID>`, `SLURM_NTASKS` members).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_group(
    config: *mut acb_config,
    name: *const c_char,
    len: usize,
    size: u32,
) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        if len == 0 {
            cfg.group = None;
            return acb_status::Ok;
        }
        let s = match str_arg(name, len, "name") { Ok(s) => s, Err(st) => return st };
        let checked = ::acb_client::group::check_group_name(s).and_then(|()| ::acb_client::group::check_group_size(size));
        if let Err(e) = checked {
            return crate::error::fail_with(&e);
        }
        cfg.group = Some(::acb_client::Group { name: s.to_string(), size });
        acb_status::Ok
    }
}

/// Allows uid `uid` to own the assigner's Unix socket, besides root and the caller's own user
/// (as `ACB_ASSIGNER_UID` does): for an assigner run by a service account. Before connecting,
/// the client checks the socket's owner and refuses anyone else (`ACB_STATUS_PERMISSION_DENIED`
/// from `acb_client_status_json`, `ACB_STATUS_UNAVAILABLE` from `acb_on_device_begin`, with the
/// owner named). `UINT32_MAX` allows none besides those two.
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_assigner_uid(config: *mut acb_config, uid: u32) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        cfg.assigner_uid = (uid != u32::MAX).then_some(uid);
        acb_status::Ok
    }
}

/// Sets the auth token the assigner requires (`len` bytes at `token`).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_auth_token(config: *mut acb_config, token: *const c_char, len: usize) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        let s = match str_arg(token, len, "token") { Ok(s) => s, Err(st) => return st };
        cfg.auth_token = Some(s.to_string());
        acb_status::Ok
    }
}

/// How long one connection attempt may take, in milliseconds (default 2000; at least 1).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_connect_timeout_ms(config: *mut acb_config, ms: u32) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        if ms == 0 {
            return fail(acb_status::InvalidArgument, "the connect timeout must be at least 1 ms");
        }
        cfg.connect_timeout = Duration::from_millis(u64::from(ms));
        acb_status::Ok
    }
}

/// How many more connection attempts after a failed one (default 3, 200 ms apart), before
/// `ACB_STATUS_UNAVAILABLE`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_connect_retries(config: *mut acb_config, retries: u32) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        cfg.connect_retries = retries;
        acb_status::Ok
    }
}

/// Pinned GPUs (`pin` true): every GPU phase after the first asks for the GPUs of the first
/// grant, and waits for them even when others are free. For programs whose device memory or
/// device numbering cannot move between GPUs (PyTorch's auto mode). Default false.
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_pin_gpus(config: *mut acb_config, pin: bool) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        cfg.pin_gpus = pin;
        acb_status::Ok
    }
}

/// Eager release (`eager` true): the GPU goes back at every `acb_on_device_end`. Default lazy:
/// it is kept, with its memory, until another job waits for it or the idle timeout passes.
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_eager_release(config: *mut acb_config, eager: bool) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        cfg.release = if eager { ReleaseMode::Eager } else { ReleaseMode::Lazy };
        acb_status::Ok
    }
}

/// Where `acb_client_alloc` memory lives: `host` (the default: host memory standing in for
/// device memory, for simulated GPUs and tests) or `cuda` (CUDA VMM on the granted GPU; then
/// `acb_client_new` fails with `ACB_STATUS_NO_CUDA` where no CUDA driver or GPU is found).
/// Anything else gives `ACB_STATUS_INVALID_ARGUMENT`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_memory_backend(
    config: *mut acb_config,
    name: *const c_char,
    len: usize,
) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        let s = match str_arg(name, len, "name") { Ok(s) => s, Err(st) => return st };
        match MemoryBackend::parse(s) {
            Ok(b) => {
                cfg.memory_backend = b;
                acb_status::Ok
            }
            Err(e) => crate::error::fail_with(&e),
        }
    }
}

/// Under lazy release, give a kept GPU back after it was idle this many milliseconds even if
/// nobody waits (0: never; the default).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_idle_timeout_ms(config: *mut acb_config, ms: u32) -> acb_status {
    ffi_panic_boundary! {
        let cfg = &mut try_mut!(config).0;
        cfg.idle_timeout = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
        acb_status::Ok
    }
}
