//! `acb_config`: how a client finds the assigner and who it is.

use std::ffi::c_char;
use std::time::Duration;

use acb_assigner::config::Address;
use acb_core::ReleaseMode;

use crate::error::fail;
use crate::panic::{check_out, ffi_panic_boundary, try_mut};
use crate::status::acb_status;

/// Client settings. Made by `acb_config_new` from the environment, changed by the setters,
/// read by `acb_client_new` (which copies it: the config may be freed right after).
#[allow(non_camel_case_types)]
#[derive(Clone, Debug)]
pub struct acb_config {
    pub(crate) assigner: Address,
    pub(crate) job: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) connect_retries: u32,
    pub(crate) release: ReleaseMode,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) auth_token: Option<String>,
    pub(crate) memory_backend: MemoryBackend,
    /// Every phase after the first asks for the GPUs of the first grant.
    pub(crate) pin_gpus: bool,
}

/// Where `acb_client_alloc` memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemoryBackend {
    /// Host memory standing in for device memory (simulated GPUs, tests). The default.
    Host,
    /// CUDA VMM on the granted GPU.
    Cuda,
}

impl MemoryBackend {
    fn parse(s: &str) -> Result<MemoryBackend, String> {
        match s {
            "host" => Ok(MemoryBackend::Host),
            "cuda" => Ok(MemoryBackend::Cuda),
            other => Err(format!("memory backend {other:?}: expected host or cuda")),
        }
    }
}

impl acb_config {
    /// The settings the environment gives: `ACB_ASSIGNER` (else the default socket),
    /// `ACB_JOB_ID` (else a generated id), `ACB_AUTH_TOKEN_FILE`, `ACB_MEMORY_BACKEND` (`host`,
    /// the default, or `cuda`), `ACB_EAGER_RELEASE` (`1` for eager release; lazy by default),
    /// `ACB_PIN_GPUS` (`1`: every phase on the GPUs of the first).
    pub(crate) fn from_env() -> Result<acb_config, String> {
        let assigner = Address::from_env().map_err(|e| e.to_string())?;
        let job = match std::env::var("ACB_JOB_ID") {
            Ok(j) if !j.is_empty() => j,
            _ => generated_job_id(),
        };
        let auth_token = match std::env::var_os("ACB_AUTH_TOKEN_FILE") {
            Some(p) => Some(acb_assigner::config::read_token(std::path::Path::new(&p))?),
            None => None,
        };
        let memory_backend = match std::env::var("ACB_MEMORY_BACKEND") {
            Ok(b) if !b.is_empty() => MemoryBackend::parse(&b).map_err(|e| format!("ACB_MEMORY_BACKEND: {e}"))?,
            _ => MemoryBackend::Host,
        };
        let release = if env_flag("ACB_EAGER_RELEASE")? { ReleaseMode::Eager } else { ReleaseMode::Lazy };
        let pin_gpus = env_flag("ACB_PIN_GPUS")?;
        Ok(acb_config {
            assigner,
            job,
            connect_timeout: Duration::from_secs(2),
            connect_retries: 3,
            release,
            idle_timeout: None,
            auth_token,
            memory_backend,
            pin_gpus,
        })
    }
}

/// A yes/no setting from the environment: `1`/`true`/`yes`, `0`/`false`/`no`/empty/unset.
fn env_flag(name: &str) -> Result<bool, String> {
    match std::env::var(name).as_deref() {
        Ok("1" | "true" | "yes") => Ok(true),
        Ok("0" | "false" | "no" | "") | Err(_) => Ok(false),
        Ok(other) => Err(format!("{name}: {other:?}: expected 1 or 0")),
    }
}

fn generated_job_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    format!("job-{}-{:08x}", std::process::id(), u32::from_le_bytes(b))
}

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
/// `ACB_MEMORY_BACKEND`, `ACB_EAGER_RELEASE`, `ACB_PIN_GPUS`) into `*config_out`. Free it with `acb_config_free`. A malformed `ACB_ASSIGNER` gives
/// `ACB_STATUS_INVALID_ARGUMENT`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_new(config_out: *mut *mut acb_config) -> acb_status {
    ffi_panic_boundary! {
        check_out!(config_out);
        match acb_config::from_env() {
            Ok(cfg) => {
                // SAFETY: checked non-NULL; the caller owns the pointer it points to.
                unsafe { *config_out = Box::into_raw(Box::new(cfg)) };
                acb_status::Ok
            }
            Err(e) => fail(acb_status::InvalidArgument, e),
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
        let cfg = try_mut!(config);
        let s = match str_arg(addr, len, "addr") { Ok(s) => s, Err(st) => return st };
        match s.parse::<Address>() {
            Ok(a) => { cfg.assigner = a; acb_status::Ok }
            Err(e) => fail(acb_status::InvalidArgument, e.to_string()),
        }
    }
}

/// Sets the job's name (`len` bytes of UTF-8 at `job`, at most 256, no control characters).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_job(config: *mut acb_config, job: *const c_char, len: usize) -> acb_status {
    ffi_panic_boundary! {
        let cfg = try_mut!(config);
        let s = match str_arg(job, len, "job") { Ok(s) => s, Err(st) => return st };
        if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
            return fail(acb_status::InvalidArgument, "a job name has 1 to 256 bytes and no control characters");
        }
        cfg.job = s.to_string();
        acb_status::Ok
    }
}

/// Sets the auth token the assigner requires (`len` bytes at `token`).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_auth_token(config: *mut acb_config, token: *const c_char, len: usize) -> acb_status {
    ffi_panic_boundary! {
        let cfg = try_mut!(config);
        let s = match str_arg(token, len, "token") { Ok(s) => s, Err(st) => return st };
        cfg.auth_token = Some(s.to_string());
        acb_status::Ok
    }
}

/// How long one connection attempt may take, in milliseconds (default 2000; at least 1).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_connect_timeout_ms(config: *mut acb_config, ms: u32) -> acb_status {
    ffi_panic_boundary! {
        let cfg = try_mut!(config);
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
        let cfg = try_mut!(config);
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
        let cfg = try_mut!(config);
        cfg.pin_gpus = pin;
        acb_status::Ok
    }
}

/// Eager release (`eager` true): the GPU goes back at every `acb_on_device_end`. Default lazy:
/// it is kept, with its memory, until another job waits for it or the idle timeout passes.
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_eager_release(config: *mut acb_config, eager: bool) -> acb_status {
    ffi_panic_boundary! {
        let cfg = try_mut!(config);
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
        let cfg = try_mut!(config);
        let s = match str_arg(name, len, "name") { Ok(s) => s, Err(st) => return st };
        match MemoryBackend::parse(s) {
            Ok(b) => {
                cfg.memory_backend = b;
                acb_status::Ok
            }
            Err(e) => fail(acb_status::InvalidArgument, e),
        }
    }
}

/// Under lazy release, give a kept GPU back after it was idle this many milliseconds even if
/// nobody waits (0: never; the default).
#[unsafe(no_mangle)]
pub extern "C" fn acb_config_set_idle_timeout_ms(config: *mut acb_config, ms: u32) -> acb_status {
    ffi_panic_boundary! {
        let cfg = try_mut!(config);
        cfg.idle_timeout = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
        acb_status::Ok
    }
}
