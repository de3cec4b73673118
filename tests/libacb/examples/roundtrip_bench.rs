//! The cost of a begin+end round trip through libacb, from C and from Python, beside the raw
//! Rust client's round trip (AllocRequest + Release over the same kind of session), in one
//! run. The assigner runs in its own process (this program, re-run with `--serve`); the three
//! clients take turns, several rounds each, so that they see the same machine noise.
//!
//!   cargo build --release -p acb-ffi && cargo run --release -p libacb-tests --example roundtrip_bench [N] [ROUNDS]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use acb_assigner::config::{Address, ServeConfig};
use acb_assigner::proto;
use acb_client::connection::{self as client, Session};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parse(out: &str) -> f64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("p50_us="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no p50 in {out:?}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn serve(socket: PathBuf) {
    let mut cfg = ServeConfig::simulated(socket, 1, acb_core::Policy::Simple);
    // ACB_BENCH_STATE_DIR: save the leases there (what each grant and release then costs).
    cfg.state_dir = std::env::var_os("ACB_BENCH_STATE_DIR").map(PathBuf::from);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // termination() installs signal handlers, so it must be called inside the runtime.
    rt.block_on(async { acb_assigner::server::serve(cfg, acb_assigner::server::termination()).await }).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve(PathBuf::from(&args[2]));
        return;
    }
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("acb-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("assigner.sock");
    let addr = format!("unix:{}", socket.display());
    let mut server = Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .arg(&socket)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the assigner did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    // libacb as built by this profile, and the C benchmark compiled against it.
    let lib_dir = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_path_buf();
    // The program asks the loader for libacb's SONAME, a name cargo does not make: a link to it.
    let link_dir = dir.join("lib");
    std::fs::create_dir_all(&link_dir).unwrap();
    for name in ["libacb.so".to_owned(), format!("libacb.so.{}", acb::ACB_ABI_VERSION)] {
        let _ = std::fs::remove_file(link_dir.join(&name));
        std::os::unix::fs::symlink(lib_dir.join("libacb.so"), link_dir.join(name)).unwrap();
    }
    let c_bin = dir.join("roundtrip_bench");
    let ok = Command::new("gcc")
        .args(["-O2", "-std=c11"])
        .arg(format!("-I{}", root().join("include").display()))
        .arg(root().join("bindings/c/examples/roundtrip_bench.c"))
        .arg("-o")
        .arg(&c_bin)
        .arg(format!("-L{}", link_dir.display()))
        .arg(format!("-Wl,-rpath,{}", link_dir.display()))
        .arg("-lacb")
        .status()
        .unwrap()
        .success();
    assert!(ok, "compiling the C benchmark failed (build libacb first: cargo build --release -p acb-ffi)");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let address: Address = addr.parse().unwrap();
    let (mut raw, mut c, mut py) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw.push(rt.block_on(async {
            let rpc = client::connect(&address, None, Duration::from_secs(5)).await.unwrap();
            let mut s = Session::open(rpc, "raw-rust").await.unwrap();
            let mut lat = Vec::with_capacity(n);
            for i in 0..=n {
                let t = Instant::now();
                let g = s.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }).await.unwrap();
                s.release(g.lease_id).await.unwrap();
                if i > 0 {
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            median(&mut lat)
        }));
        let out = Command::new(&c_bin).arg(n.to_string()).env("ACB_ASSIGNER", &addr).output().unwrap();
        assert!(out.status.success(), "C benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
        c.push(parse(&String::from_utf8_lossy(&out.stdout)));
        let out = Command::new("python3")
            .arg(root().join("bindings/python/examples/roundtrip_bench.py"))
            .arg(n.to_string())
            .env("ACB_ASSIGNER", &addr)
            .env("ACB_LIBRARY", lib_dir.join("libacb.so"))
            .env("PYTHONPATH", root().join("bindings/python"))
            .output()
            .unwrap();
        assert!(out.status.success(), "Python benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
        py.push(parse(&String::from_utf8_lossy(&out.stdout)));
    }
    let (r, c, p) = (median(&mut raw), median(&mut c), median(&mut py));
    println!(
        "begin+end round trip (eager release: grant + release through the assigner), {n} cycles x {rounds} rounds, median of round p50s"
    );
    println!("{:<28} {:>10} {:>12} {:>8}", "client", "p50 us", "added us", "ratio");
    println!("{:<28} {:>10.1} {:>12} {:>7.2}x", "raw Rust client (tonic)", r, "-", 1.0);
    println!("{:<28} {:>10.1} {:>12.1} {:>7.2}x", "C through libacb", c, c - r, c / r);
    println!("{:<28} {:>10.1} {:>12.1} {:>7.2}x", "Python through acb (ctypes)", p, p - r, p / r);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(dir);
}
