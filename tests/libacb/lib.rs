//! What this package's tests (`tests/`) and benchmarks (`examples/`) share: a real assigner in
//! a thread of the process. The package holds libacb's integration tests and its round-trip and
//! interposer benchmarks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use acb_assigner::config::{Address, GpuSpec, ServeConfig};
use acb_assigner::proto;

/// A real assigner, in a thread of this process, on a Unix socket.
#[derive(Debug)]
pub struct Assigner {
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A fresh folder for the test `tag` under the system's temporary directory.
pub fn scratch(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("acb-ffi-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

impl Assigner {
    /// An assigner on a socket in the scratch folder `tag`, with the GPUs `gpus` (`fake:...`).
    pub fn start(tag: &str, gpus: &str) -> Assigner {
        Self::start_at(scratch(tag).join("assigner.sock"), gpus)
    }

    /// An assigner on a given socket path (to restart one where clients look for it).
    pub fn start_at(socket: PathBuf, gpus: &str) -> Assigner {
        let mut cfg = ServeConfig::simulated(socket.clone(), 1, acb_core::Policy::Simple);
        cfg.gpus = gpus.parse::<GpuSpec>().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(acb_assigner::server::serve(cfg, async {
                let _ = rx.await;
            }))
            .unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the assigner did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Assigner { socket, stop: Some(tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// The assigner's event record so far.
    pub fn events(&self) -> Vec<acb_core::record::Event> {
        events_at(&self.addr())
    }
}

/// The event record so far of the assigner at `addr`.
pub fn events_at(addr: &str) -> Vec<acb_core::record::Event> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let addr: Address = addr.parse().unwrap();
        let mut rpc = ::acb_client::connection::connect(&addr, None, Duration::from_secs(5)).await.unwrap();
        let mut s = rpc.watch(proto::WatchRequest { replay: true }).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(e) = s.message().await.unwrap() {
            if matches!(e.kind, Some(proto::event::Kind::HistoryEnd(_))) {
                break;
            }
            out.extend(::acb_client::events::from_proto(e));
        }
        out
    })
}

impl Drop for Assigner {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Builds the fake libcuda (`tests/fake_cuda/libcuda.c`, a test double over host memory) into
/// `dir`: `libcuda.so`, whose SONAME is the real driver's, `libcuda.so.1` (a link to it in `dir`
/// too). Linked with -Bsymbolic: its cuGetProcAddress hands out its own functions even when an
/// LD_PRELOAD library exports the same names, as the real driver does. Returns its path.
pub fn build_fake_cuda(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_cuda/libcuda.c");
    let lib = dir.join("libcuda.so");
    let out = Command::new("gcc")
        .args(["-O1", "-Wall", "-Werror", "-std=c11", "-shared", "-fPIC", "-Wl,-Bsymbolic", "-Wl,-soname,libcuda.so.1"])
        .arg("-o")
        .arg(&lib)
        .arg(&src)
        .arg("-lpthread")
        .output()
        .expect("gcc is needed to build the fake libcuda");
    assert!(out.status.success(), "building the fake libcuda failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let link = dir.join("libcuda.so.1");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("libcuda.so", &link).unwrap();
    lib
}

/// Builds `tests/c/NAME.c`, a CUDA driver-API program, into `dir/NAME`, linked against the fake
/// libcuda that [`build_fake_cuda`] built in `fake_dir`, which it finds there through its
/// DT_RPATH (before LD_LIBRARY_PATH), with no LD_LIBRARY_PATH. Returns its path.
pub fn build_driver_program(name: &str, fake_dir: &Path, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let bin = dir.join(name);
    let out = Command::new("gcc")
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-g", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg(format!("-L{}", fake_dir.display()))
        .arg(format!("-Wl,-rpath,{}", fake_dir.display()))
        .arg("-Wl,--disable-new-dtags")
        .args(["-lcuda", "-ldl"])
        .output()
        .unwrap_or_else(|e| panic!("gcc is needed to build {name}: {e}"));
    assert!(out.status.success(), "building {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    bin
}
