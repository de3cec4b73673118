//! libacb loaded at run time: the demo's jobs go through the real shared library and its C ABI,
//! exactly as a C program linked against it would. The functions' types come from
//! `include/acb.h` (`abi.rs`, generated and drift-tested by `tests/abi.rs`).

use std::ffi::c_void;
use std::path::{Path, PathBuf};

use libloading::Library;

use crate::Error;

const STATUS_OK: u32 = 0;

pub use super::abi::MemoryStats;
use super::abi::{self, ABI_VERSION, Handle};

/// The functions of libacb the demo's jobs call.
#[derive(Debug)]
pub struct Libacb {
    abi_version: abi::AbiVersion,
    config_new: abi::ConfigNew,
    config_free: abi::ConfigFree,
    client_new: abi::ClientNew,
    client_free: abi::ClientFree,
    request_new: abi::RequestNew,
    request_free: abi::RequestFree,
    on_device_begin: abi::OnDeviceBegin,
    on_device_end: abi::OnDeviceEnd,
    lease_free: abi::LeaseFree,
    lease_device_index: abi::LeaseDeviceIndex,
    client_alloc: abi::ClientAlloc,
    client_memory_stats: abi::ClientMemoryStats,
    error_message: abi::ErrorMessage,
    status_message: abi::StatusMessage,
    // Last: the function pointers above are valid only while the library stays loaded.
    _library: Library,
}

/// Where to look for libacb: `ACB_LIBRARY`, else beside the running executable (where
/// `cargo build` puts both), else in its `deps/` (where `cargo test` leaves it).
pub fn locate() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("ACB_LIBRARY") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Libacb(format!("ACB_LIBRARY={} is not a file", path.display())))
        };
    }
    let exe = std::env::current_exe().map_err(Error::io("cannot find the running executable"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    [dir.join("libacb.so"), dir.join("deps").join("libacb.so")].into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::Libacb(format!(
            "libacb.so is not beside {}: build it with `cargo build --release -p acb-ffi`, or set ACB_LIBRARY",
            exe.display()
        ))
    })
}

macro_rules! symbol {
    ($lib:expr, $name:literal) => {{
        // SAFETY: the type is the one `include/acb.h` declares for this symbol (`abi.rs`).
        let s = unsafe { $lib.get($name) }.map_err(|e| {
            Error::Libacb(format!("libacb has no {}: {e}", String::from_utf8_lossy(&$name[..$name.len() - 1])))
        })?;
        *s
    }};
}

impl Libacb {
    /// Loads libacb from `path` and checks its ABI version.
    pub fn load(path: &Path) -> Result<Libacb, Error> {
        // SAFETY: loading libacb runs no initialiser with preconditions.
        let lib =
            unsafe { Library::new(path) }.map_err(|e| Error::Libacb(format!("cannot load {}: {e}", path.display())))?;
        let acb = Libacb {
            abi_version: symbol!(lib, b"acb_abi_version\0"),
            config_new: symbol!(lib, b"acb_config_new\0"),
            config_free: symbol!(lib, b"acb_config_free\0"),
            client_new: symbol!(lib, b"acb_client_new\0"),
            client_free: symbol!(lib, b"acb_client_free\0"),
            request_new: symbol!(lib, b"acb_request_new\0"),
            request_free: symbol!(lib, b"acb_request_free\0"),
            on_device_begin: symbol!(lib, b"acb_on_device_begin\0"),
            on_device_end: symbol!(lib, b"acb_on_device_end\0"),
            lease_free: symbol!(lib, b"acb_lease_free\0"),
            lease_device_index: symbol!(lib, b"acb_lease_device_index\0"),
            client_alloc: symbol!(lib, b"acb_client_alloc\0"),
            client_memory_stats: symbol!(lib, b"acb_client_memory_stats\0"),
            error_message: symbol!(lib, b"acb_error_message\0"),
            status_message: symbol!(lib, b"acb_status_message\0"),
            _library: lib,
        };
        // SAFETY: no arguments.
        let version = unsafe { (acb.abi_version)() };
        if version != ABI_VERSION {
            return Err(Error::Libacb(format!(
                "{} has ABI version {version}; this acb-assigner needs {ABI_VERSION}",
                path.display()
            )));
        }
        Ok(acb)
    }

    /// Why the last call failed: the thread's error message, else the status's text.
    fn failure(&self, what: &str, status: u32) -> Error {
        let mut buf = [0u8; 512];
        let mut n = 0usize;
        // SAFETY: `buf` has room for its length; `n` is a valid out-pointer.
        let mut st = unsafe { (self.error_message)(buf.as_mut_ptr().cast(), buf.len(), &mut n) };
        if st != STATUS_OK || n == 0 {
            // SAFETY: as above.
            st = unsafe { (self.status_message)(status, buf.as_mut_ptr().cast(), buf.len(), &mut n) };
        }
        let text = if st == STATUS_OK {
            String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned()
        } else {
            String::new()
        };
        Error::Libacb(format!("{what} failed (status {status}): {text}"))
    }

    /// A client configured from the environment (`ACB_ASSIGNER`, `ACB_JOB_ID`).
    pub fn client(&self) -> Result<Client<'_>, Error> {
        let mut config: Handle = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let st = unsafe { (self.config_new)(&mut config) };
        if st != STATUS_OK {
            return Err(self.failure("acb_config_new", st));
        }
        let mut client: Handle = std::ptr::null_mut();
        // SAFETY: `config` was made by acb_config_new; the client copies it, so it is freed now.
        let st = unsafe { (self.client_new)(config, &mut client) };
        // SAFETY: made above, freed once.
        unsafe { (self.config_free)(config) };
        if st != STATUS_OK {
            return Err(self.failure("acb_client_new", st));
        }
        let mut request: Handle = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let st = unsafe { (self.request_new)(&mut request) };
        if st != STATUS_OK {
            // SAFETY: made above, freed once.
            unsafe { (self.client_free)(client) };
            return Err(self.failure("acb_request_new", st));
        }
        Ok(Client { acb: self, client, request })
    }
}

/// An `acb_client` with a one-GPU `acb_request`; freed on drop.
#[derive(Debug)]
pub struct Client<'a> {
    acb: &'a Libacb,
    client: Handle,
    request: Handle,
}

impl Client<'_> {
    /// `acb_on_device_begin`: blocks until a GPU is granted; returns its index.
    pub fn begin(&self) -> Result<u32, Error> {
        let mut lease: Handle = std::ptr::null_mut();
        // SAFETY: live handles made by libacb; a valid out-pointer.
        let st = unsafe { (self.acb.on_device_begin)(self.client, self.request, &mut lease) };
        if st != STATUS_OK {
            return Err(self.acb.failure("acb_on_device_begin", st));
        }
        let mut index = 0u32;
        // SAFETY: `lease` was just written by a successful begin; freed once, right after.
        let st = unsafe { (self.acb.lease_device_index)(lease, 0, &mut index) };
        // SAFETY: as above.
        unsafe { (self.acb.lease_free)(lease) };
        if st != STATUS_OK {
            return Err(self.acb.failure("acb_lease_device_index", st));
        }
        Ok(index)
    }

    /// `acb_client_alloc`: swappable device memory, in a GPU phase. Freed with the client.
    pub fn alloc(&self, size: usize) -> Result<*mut u8, Error> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: a live handle; a valid out-pointer.
        let st = unsafe { (self.acb.client_alloc)(self.client, size, &mut p) };
        if st == STATUS_OK { Ok(p.cast()) } else { Err(self.acb.failure("acb_client_alloc", st)) }
    }

    /// `acb_client_memory_stats`.
    pub fn memory_stats(&self) -> Result<MemoryStats, Error> {
        let mut s = MemoryStats::default();
        // SAFETY: a live handle; `s` has the header's layout.
        let st = unsafe { (self.acb.client_memory_stats)(self.client, &mut s) };
        if st == STATUS_OK { Ok(s) } else { Err(self.acb.failure("acb_client_memory_stats", st)) }
    }

    /// `acb_on_device_end`.
    pub fn end(&self) -> Result<(), Error> {
        // SAFETY: a live handle made by libacb.
        let st = unsafe { (self.acb.on_device_end)(self.client) };
        if st == STATUS_OK { Ok(()) } else { Err(self.acb.failure("acb_on_device_end", st)) }
    }
}

impl Drop for Client<'_> {
    fn drop(&mut self) {
        // SAFETY: made by libacb, freed once; the client last, which releases what it holds.
        unsafe {
            (self.acb.request_free)(self.request);
            (self.acb.client_free)(self.client);
        }
    }
}
