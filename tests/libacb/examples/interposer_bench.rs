//! The interposer's own cost per gated driver call, beside the same call with no interposer, in
//! one run. The program is `tests/c/gate_bench.c` (driver API only, no acb: a tight loop of
//! `cuMemsetD32_v2` of 0 elements, a gated function whose fake implementation is the fake
//! libcuda's cheapest, then a loop of the non-gated `cuCtxGetCurrent` as a reference), over the
//! FAKE libcuda (`tests/fake_cuda/libcuda.c`), run three ways, round after round so that each
//! sees the same machine noise:
//!
//!   (a) alone: no LD_PRELOAD;
//!   (b) automatic mode: `libacb_preload.so` and libacb preloaded, `ACB_MODE=auto`, against an
//!       assigner in this process; `ACB_IDLE_MS` far longer than the run, so the GPU phase the
//!       first gated call begins (in the warm-up) is held through the whole timed loop, and every
//!       timed call takes the gate's fast path (checked: exactly one grant per run);
//!   (c) the preload alone, `ACB_MODE` unset: the pass-through wrappers.
//!
//! The fake driver's own cost is in all three, so the differences are the interposer's.
//!
//!   cargo build --release -p acb-ffi -p acb-preload && \
//!   cargo run --release -p libacb-tests --example interposer_bench [N] [ROUNDS]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use acb_core::record::EventKind;
use libacb_tests::{Assigner, build_driver_program, build_fake_cuda};

/// The most one run of gate_bench may take (2M calls take well under a second here).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// What "added per call while the lease is held" should stay under.
const GOAL_NS: f64 = 50.0;

/// The directory holding this profile's `libacb.so` and `libacb_preload.so`: built as
/// dependencies they are in target/<profile>/deps; `cargo build -p acb-ffi -p acb-preload`
/// copies them one level up too, where an older one may linger, so deps comes first.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.ancestors().find(|d| d.join("deps").is_dir()).unwrap().to_path_buf();
    [profile.join("deps"), profile.clone()]
        .into_iter()
        .find(|d| d.join("libacb.so").exists() && d.join("libacb_preload.so").exists())
        .unwrap_or_else(|| {
            panic!(
                "libacb.so and libacb_preload.so not built under {} (cargo build --release -p acb-ffi -p acb-preload)",
                profile.display()
            )
        })
}

/// The fake libcuda into `dir`, and gate_bench linked against it. Returns gate_bench's path.
fn build(dir: &Path) -> PathBuf {
    build_fake_cuda(dir);
    build_driver_program("gate_bench", dir, dir)
}

/// How many leases the assigner's record shows granted to `job`.
fn grants(assigner: &Assigner, job: &str) -> usize {
    assigner.events().iter().filter(|e| matches!(&e.kind, EventKind::Granted { job: j, .. } if j == job)).count()
}

/// Runs `cmd` to its end, at most RUN_TIMEOUT (then killed), its output into files under `dir`;
/// panics with its stderr unless it exits 0. Returns (stdout, stderr).
fn run(mut cmd: Command, dir: &Path, what: &str) -> (String, String) {
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn();
    let mut child = child.unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        None => panic!("{what}: still running after {RUN_TIMEOUT:?}, killed\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        Some(s) if !s.success() => panic!("{what}: failed ({s})\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        Some(_) => (stdout, stderr),
    }
}

/// The ns/call on the gate_bench line that starts with `prefix`.
fn ns_per_call(stdout: &str, prefix: &str, what: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().rev().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no {prefix:?} line with an ns/call in:\n{stdout}"))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

#[derive(Clone, Copy, PartialEq)]
enum Path3 {
    Alone,
    Auto,
    PassThrough,
}

const PATHS: [(Path3, &str); 3] = [
    (Path3::Alone, "(a) no interposer"),
    (Path3::Auto, "(b) automatic mode, lease held"),
    (Path3::PassThrough, "(c) preload, ACB_MODE unset"),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).map_or(2_000_000, |s| s.parse().expect("N: a whole number of calls"));
    let rounds: usize = args.get(2).map_or(5, |s| s.parse().expect("ROUNDS: a whole number"));
    assert!(n >= 1 && rounds >= 1, "N and ROUNDS must be at least 1");

    let libs = lib_dir();
    let preload = libs.join("libacb_preload.so");
    let libacb = libs.join("libacb.so");
    let dir = std::env::temp_dir().join(format!("acb-interposer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = build(&dir);
    let assigner = Assigner::start_at(dir.join("assigner.sock"), "fake:1x80GiB");

    let mut gated: Vec<Vec<f64>> = vec![Vec::new(); PATHS.len()];
    let mut reference: Vec<Vec<f64>> = vec![Vec::new(); PATHS.len()];
    for round in 0..rounds {
        for (i, (path, name)) in PATHS.iter().enumerate() {
            let what = format!("round {round}, {name}");
            let mut cmd = Command::new(&bin);
            cmd.arg(n.to_string()).env("LD_LIBRARY_PATH", &dir);
            for var in ["LD_PRELOAD", "ACB_MODE", "ACB_ASSIGNER", "ACB_JOB_ID", "ACB_IDLE_MS", "ACB_EAGER_RELEASE"] {
                cmd.env_remove(var);
            }
            let job = format!("gate-bench-{round}");
            match path {
                Path3::Alone => {}
                Path3::Auto => {
                    cmd.env("LD_PRELOAD", format!("{} {}", preload.display(), libacb.display()))
                        .env("ACB_MODE", "auto")
                        .env("ACB_ASSIGNER", assigner.addr())
                        .env("ACB_JOB_ID", &job)
                        .env("ACB_IDLE_MS", "60000")
                        .env("ACB_EAGER_RELEASE", "1");
                }
                Path3::PassThrough => {
                    cmd.env("LD_PRELOAD", &preload);
                }
            }
            let (stdout, stderr) = run(cmd, &dir, &what);
            assert!(!stderr.contains("rule broken"), "{what}: a driver rule was broken:\n{stderr}");
            assert!(!stderr.contains("unbrokered"), "{what}: ran unbrokered:\n{stderr}");
            if *path == Path3::Auto {
                // One phase, begun in the warm-up and held to the end: every timed call passed
                // the gate's fast path.
                let grants = grants(&assigner, &job);
                assert_eq!(grants, 1, "{what}: {grants} grants, not one phase held throughout\n{stderr}");
            }
            gated[i].push(ns_per_call(&stdout, "gate_bench: ", &what));
            reference[i].push(ns_per_call(&stdout, "gate_bench: reference cuCtxGetCurrent ", &what));
        }
    }
    drop(assigner);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "gated driver call (cuMemsetD32_v2, 0 elements) over the fake libcuda: {n} calls x {rounds} rounds, \
         paths alternating; median of the rounds' ns/call"
    );
    println!(
        "{:<32} {:>10} {:>17} {:>11} {:>7} {:>14}",
        "path", "ns/call", "rounds min..max", "added ns", "ratio", "ref ns/call"
    );
    let base = median(&gated[0]);
    let mut added = [0.0; 3];
    for (i, (_, name)) in PATHS.iter().enumerate() {
        let m = median(&gated[i]);
        let (lo, hi) = gated[i].iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        added[i] = m - base;
        let added_s = if i == 0 { "-".to_owned() } else { format!("{:+.1}", added[i]) };
        println!(
            "{:<32} {:>10.1} {:>17} {:>11} {:>6.2}x {:>14.1}",
            name,
            m,
            format!("{lo:.1}..{hi:.1}"),
            added_s,
            m / base,
            median(&reference[i])
        );
    }
    println!(
        "The fake driver's own cost (its lock, its context and stream checks: path (a)) is in every path, so the \
         added ns are the interposer's: (c) its pass-through wrapper, (b) that plus libacb's gate \
         (acb_auto_enter/acb_auto_exit) on its fast path ({:+.1} ns over (c)). The reference column \
         (cuCtxGetCurrent, not wrapped) should match across paths: it shows the noise between runs.",
        added[1] - added[2]
    );
    println!(
        "goal: under {GOAL_NS:.0} ns added per gated call while the lease is held: {:.1} ns, {}",
        added[1],
        if added[1] < GOAL_NS { "met" } else { "NOT met" }
    );
}
