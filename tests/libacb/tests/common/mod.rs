//! A real assigner in a thread of the test process, on a temporary socket.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The directory holding the libacb.so this test run built. `cargo test` leaves it beside the
/// test executables (target/<profile>/deps); only `cargo build` copies it one level up, where
/// an older one may linger, so deps comes first.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    let profile = deps.parent().unwrap().to_path_buf();
    [deps, profile]
        .into_iter()
        .find(|d| d.join("libacb.so").exists() && d.join("libacb.a").exists())
        .unwrap_or_else(|| panic!("libacb.so and libacb.a not built next to {}", exe.display()))
}

/// This run's libacb laid out as an installation lays it out, in the target's scratch folder:
/// `libacb.so` (what `-lacb` finds) and `libacb.so.<ABI version>` (its SONAME, which a program
/// linked against it asks the loader for), both links to the library cargo built. Cargo makes
/// neither name.
pub fn link_dir() -> PathBuf {
    let built = lib_dir();
    let profile = built.ancestors().find(|d| d.file_name().is_some_and(|n| n != "deps")).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("libacb-{}", profile.file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&dir).unwrap();
    let soname = format!("libacb.so.{}", acb::ACB_ABI_VERSION);
    for name in ["libacb.so", soname.as_str()] {
        // Made under a name of its own, then renamed over the old link: tests running at the
        // same time never see the name missing.
        let tmp = dir.join(format!("{name}.{}.{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(built.join("libacb.so"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    dir
}

/// The SONAME of a shared library, as `readelf -d` shows it (None if it has none).
pub fn soname(lib: &Path) -> Option<String> {
    let out = Command::new("readelf").arg("-d").arg(lib).output().expect("readelf (binutils) is needed");
    assert!(out.status.success(), "readelf -d {}: {}", lib.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("(SONAME)"))?;
    Some(line.split_once('[')?.1.split_once(']')?.0.to_owned())
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiles `src` (C, or C++ for .cpp) into `out` against this run's libacb, strict and
/// sanitized.
pub fn compile(src: &Path, out: &Path) {
    let cpp = src.extension().is_some_and(|e| e == "cpp");
    let lib = link_dir();
    let status = Command::new(if cpp { "g++" } else { "gcc" })
        .args(if cpp { ["-std=c++17"] } else { ["-std=c11"] })
        .args(["-Wall", "-Wextra", "-Werror", "-Wpedantic", "-g", "-fsanitize=address,undefined"])
        .arg("-fno-sanitize-recover=all")
        .arg(format!("-I{}", root().join("include").display()))
        .arg(format!("-I{}", root().join("bindings/c/include").display()))
        .arg(src)
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        // DT_RPATH, not RUNPATH: it comes before LD_LIBRARY_PATH, which `cargo test` sets to
        // target/<profile> too, where an older libacb.so from `cargo build` may linger (the
        // loader looks for the SONAME there, and an installed libacb.so.1 would do too).
        .arg("-Wl,--disable-new-dtags")
        .arg("-lacb")
        .status()
        .unwrap();
    assert!(status.success(), "compiling {} failed", src.display());
}

#[allow(unused_imports)] // each test uses some
pub use libacb_tests::{Assigner, build_driver_program, build_fake_cuda, events_at, scratch};

/// A job through the C ABI, with swappable device memory. Eager: the GPU, and so the memory,
/// goes back at every end.
pub struct Job(pub *mut acb::acb_client);

impl Job {
    pub fn new(addr: &str, job: &str) -> Job {
        Self::with_backend(addr, job, "host")
    }

    /// A job whose memory lives on `backend` ("host" or "cuda").
    pub fn with_backend(addr: &str, job: &str, backend: &str) -> Job {
        use acb::acb_status::Ok;
        use acb::config::*;
        let mut cfg = std::ptr::null_mut();
        assert_eq!(acb_config_new(&mut cfg), Ok);
        assert_eq!(acb_config_set_assigner(cfg, addr.as_ptr().cast(), addr.len()), Ok);
        assert_eq!(acb_config_set_job(cfg, job.as_ptr().cast(), job.len()), Ok);
        assert_eq!(acb_config_set_eager_release(cfg, true), Ok);
        assert_eq!(acb_config_set_memory_backend(cfg, backend.as_ptr().cast(), backend.len()), Ok);
        let mut c = std::ptr::null_mut();
        let st = acb::client::acb_client_new(cfg, &mut c);
        acb_config_free(cfg);
        assert_eq!(st, Ok, "acb_client_new with the {backend} backend");
        Job(c)
    }

    /// Begins a GPU phase (waiting as long as it takes); returns the granted GPU's index.
    pub fn begin(&self) -> u32 {
        use acb::acb_status::Ok;
        let mut req = std::ptr::null_mut();
        assert_eq!(acb::request::acb_request_new(&mut req), Ok);
        let mut lease = std::ptr::null_mut();
        assert_eq!(acb::client::acb_on_device_begin(self.0, req, &mut lease), Ok);
        let mut index = u32::MAX;
        assert_eq!(acb::lease::acb_lease_device_index(lease, 0, &mut index), Ok);
        acb::lease::acb_lease_free(lease);
        acb::request::acb_request_free(req);
        index
    }

    pub fn end(&self) {
        assert_eq!(acb::client::acb_on_device_end(self.0), acb::acb_status::Ok);
    }

    pub fn alloc(&self, size: usize) -> Result<*mut u8, acb::acb_status> {
        let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
        match acb::device_memory::acb_client_alloc(self.0, size, &mut p) {
            acb::acb_status::Ok => Ok(p.cast()),
            st => {
                assert!(p.is_null(), "outputs are written only on success");
                Err(st)
            }
        }
    }

    pub fn stats(&self) -> acb::acb_memory_stats {
        let mut s = acb::acb_memory_stats::default();
        assert_eq!(acb::device_memory::acb_client_memory_stats(self.0, &mut s), acb::acb_status::Ok);
        s
    }

    /// Waits (bounded) until the client thread has swapped everything out.
    pub fn wait_swapped_out(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.stats().resident_bytes != 0 {
            assert!(Instant::now() < deadline, "memory not swapped out: {:?}", self.stats());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        acb::client::acb_client_free(self.0);
    }
}

/// `len` bytes of a pattern that differs by `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// The acb-assigner binary of this build's profile (target/<profile>/acb-assigner), built if
/// this run did not build it (`cargo test -p libacb-tests`), so that it is never a stale one.
pub fn assigner_binary() -> PathBuf {
    let profile_dir = lib_dir().ancestors().find(|d| d.join("deps").is_dir()).unwrap().to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "-p", "acb-assigner", "--bin", "acb-assigner"]);
    if release {
        build.arg("--release");
    }
    let status = build.current_dir(root()).status().unwrap();
    assert!(status.success(), "cargo build -p acb-assigner failed");
    let bin = profile_dir.join("acb-assigner");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

/// Builds `tests/c/driver_app.c` (a CUDA driver-API program; see its header) into `dir`, linked
/// against the fake libcuda that `build_fake_cuda` built in `fake_dir`. Returns its path.
pub fn build_driver_app(fake_dir: &Path, dir: &Path) -> PathBuf {
    build_driver_program("driver_app", fake_dir, dir)
}
