//! `acb-assigner demo`, end to end: the real binary starts real assigners and real job
//! processes that load the libacb this build made.
//!
//! libacb is another crate of the workspace: `cargo test --workspace` builds it (into
//! target/<profile>/deps). Run alone, `cargo test -p acb-assigner` may not have it; the test
//! then skips, saying so, except where ACB_REQUIRE_LIBACB=1 (CI) makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{BIN, TempDir};

/// The libacb.so this test run built: deps/ first, where `cargo test` leaves it (an older copy
/// may linger one level up, from `cargo build`).
fn libacb() -> Option<PathBuf> {
    let exe = PathBuf::from(BIN);
    let profile = exe.parent()?;
    let found = [profile.join("deps/libacb.so"), profile.join("libacb.so")].into_iter().find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("ACB_REQUIRE_LIBACB").is_none(),
            "ACB_REQUIRE_LIBACB is set but libacb.so is not built next to {BIN}"
        );
        eprintln!("skipped: libacb.so is not built; run `cargo test --workspace`");
    }
    found
}

/// The value cells of the table row that starts with `label`.
fn row<'a>(out: &'a str, label: &str) -> Vec<&'a str> {
    let line = out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no row {label:?} in\n{out}"));
    line[label.len()..].split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
}

/// Demos run one at a time: their figures are timings, and two at once on a small machine slow
/// each other down.
static ONE_DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_demo() -> std::sync::MutexGuard<'static, ()> {
    ONE_DEMO.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn demo_runs_the_same_jobs_static_then_brokered_and_draws_both() {
    let Some(lib) = libacb() else { return };
    let _one = one_demo();
    let dir = TempDir::new("demo");
    let out = Command::new(BIN)
        .args([
            "demo", "--jobs", "3", "--gpus", "1", "--items", "2", "--cpu", "60ms", "--gpu", "30ms", "--memory", "1MiB",
        ])
        .arg("--out-dir")
        .arg(&dir.0)
        .env("ACB_LIBRARY", &lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stdout}\n{stderr}");

    assert!(stdout.contains("SIMULATED GPUs"), "{stdout}");
    assert_eq!(row(&stdout, "GPUs / jobs"), ["1 / 3", "1 / 3"]);
    assert_eq!(row(&stdout, "work items done"), ["6", "6"]);
    // Static: one acquisition per job, for its whole life. Brokered: one per GPU phase.
    assert_eq!(row(&stdout, "GPU acquisitions"), ["3", "6"]);
    let grants = row(&stdout, "grants");
    assert_eq!(grants[0], "3");
    let brokered: u32 = grants[1].parse().unwrap();
    assert!((2..=6).contains(&brokered), "brokered grants {brokered}: {stdout}");
    assert_eq!(row(&stdout, "  vs first column")[0], "1.00x");
    // Static jobs never give their GPU up, so their memory never moves. Brokered, the GPU changes
    // hands, and each job's 1 MiB goes out and comes back (checked by the job) at least once.
    let swapped = row(&stdout, "bytes swapped (out + in)");
    assert_eq!(swapped[0], "0 B");
    assert_ne!(swapped[1], "0 B", "{stdout}");

    for name in ["static.svg", "brokered.svg"] {
        let svg = std::fs::read_to_string(dir.0.join(name)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{name}");
        assert!(svg.contains("SIMULATED GPUs"), "{name}");
        assert!(svg.contains("solid: computing, pale: held but idle"), "{name}");
        // Every job's computing is drawn, in its GPU's row and its client's: 6 phases, twice.
        assert_eq!(svg.matches(r#"class="busy""#).count(), 12, "{name}");
        for job in ["job-0", "job-1", "job-2"] {
            assert!(svg.contains(job), "{name} lacks {job}");
        }
    }
}

#[test]
fn simulate_predicts_the_quick_demo_within_ten_percent() {
    // The demo's own workload (--quick: 8 jobs, 2 simulated GPUs, 3 items of 450 ms CPU then
    // 150 ms GPU, 32 MiB each), run for real; beside it the simulator's prediction with the
    // handover costs measured in the brokered run; and `simulate` on the trace the demo wrote.
    let Some(lib) = libacb() else { return };
    let _one = one_demo();
    let dir = TempDir::new("demo-predict");
    let out = Command::new(BIN)
        .args(["demo", "--quick", "--device", "simulated", "--out-dir"])
        .arg(&dir.0)
        .env("ACB_LIBRARY", &lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let prediction = stdout.split("simulate's prediction").nth(1).unwrap_or_else(|| panic!("no prediction: {stdout}"));
    println!("simulate's prediction{}", prediction.split("\n\n").next().unwrap_or_default());
    let number = |cell: &str| -> f64 { cell.trim_end_matches(['x', 's', ' ']).parse().unwrap() };
    let pair = |label: &str| -> (f64, f64) {
        let cells: Vec<&str> =
            prediction.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} in {prediction}"))
                [label.len()..]
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
        (number(cells[0]), number(cells[1]))
    };
    for label in ["static wall time", "brokered wall time", "brokered vs static"] {
        let (measured, predicted) = pair(label);
        let off = (predicted - measured).abs() / measured;
        assert!(
            off <= 0.10,
            "{label}: measured {measured}, predicted {predicted}: {:.1}% apart\n{stdout}",
            off * 100.0
        );
    }
    // `simulate` on the trace the demo wrote predicts the same.
    let sim = Command::new(BIN)
        .args(["simulate", "--scheduler", "simple", "--trace"])
        .arg(dir.0.join("trace.json"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sim.stdout);
    assert!(sim.status.success(), "{text}{}", String::from_utf8_lossy(&sim.stderr));
    let simulated: f64 = number(row(&text, "  vs first column")[1]);
    let (_, predicted) = pair("brokered vs static");
    assert!(
        (simulated - predicted).abs() <= 0.011,
        "simulate says {simulated}x, the demo predicted {predicted}x\n{text}"
    );
}

#[test]
fn bad_demo_settings_get_a_one_line_error_and_status_2() {
    let Some(lib) = libacb() else { return };
    for args in [
        &["--jobs", "0"][..],
        &["--gpus", "17"],
        &["--items", "0"],
        &["--gpu", "0ms"],
        &["--cpu", "2m"],
        &["--memory", "100"],
        &["--memory", "2GiB"],
    ] {
        let out = Command::new(BIN).arg("demo").args(args).env("ACB_LIBRARY", &lib).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn a_missing_libacb_is_a_clear_error() {
    let dir = TempDir::new("demo-nolib");
    let out = Command::new(BIN)
        .args(["demo", "--quick", "--out-dir"])
        .arg(&dir.0)
        .env("ACB_LIBRARY", dir.0.join("libacb.so"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ACB_LIBRARY") && stderr.contains("is not a file"), "{stderr}");
}

#[test]
fn device_real_says_what_is_missing_and_exits_1() {
    let Some(lib) = libacb() else { return };
    let run = |python: &str| {
        Command::new(BIN)
            .args(["demo", "--device", "real", "--quick"])
            .env("ACB_LIBRARY", &lib)
            .env("ACB_DEMO_TEST_GPUS", "fake:1x80GiB") // GPUs found, whatever this machine has
            .env("ACB_PYTHON", python)
            .output()
            .unwrap()
    };
    let out = run("/nonexistent/python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--device real: cannot run /nonexistent/python3"), "{stderr}");
    // python3 without torch (as on CI): the demo says what the GPU phases need.
    let has_torch = Command::new("python3")
        .args(["-c", "import torch"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_torch {
        let out = run("python3");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("cannot import torch and acb") && stderr.contains("PyTorch with CUDA"), "{stderr}");
    }
}

/// The real-GPU demo's path (PyTorch jobs, `python -m acb_broker.demo_job`) with simulated GPUs and
/// the CPU standing in for CUDA. It needs torch: `ACB_TEST_PYTHON` names an interpreter that
/// has it; the test skips, saying so, without one (CI does not install torch).
#[test]
fn the_pytorch_jobs_of_the_real_gpu_demo_run_static_then_brokered() {
    let Some(lib) = libacb() else { return };
    let Some(python) = std::env::var_os("ACB_TEST_PYTHON") else {
        eprintln!("skipped: ACB_TEST_PYTHON (an interpreter with torch) is not set");
        return;
    };
    let dir = TempDir::new("demo-torch");
    let out = Command::new(BIN)
        .args(["demo", "--device", "real", "--jobs", "2", "--items", "2", "--cpu", "300ms", "--gpu", "100ms"])
        .args(["--memory", "1MiB", "--out-dir"])
        .arg(&dir.0)
        .env("ACB_LIBRARY", &lib)
        .env("ACB_DEMO_TEST_GPUS", "fake:1x80GiB")
        .env("ACB_TORCH_DEVICE", "cpu")
        .env("ACB_PYTHON", python)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("python -m acb_broker.demo_job") && stdout.contains("computing on the CPU"), "{stdout}");
    assert_eq!(row(&stdout, "work items done"), ["4", "4"]);
    assert_eq!(row(&stdout, "GPU acquisitions"), ["2", "4"]);
    for name in ["static.svg", "brokered.svg"] {
        let svg = std::fs::read_to_string(dir.0.join(name)).unwrap();
        assert_eq!(svg.matches(r#"class="busy""#).count(), 8, "{name}");
        assert!(svg.contains("(simulated)"), "{name}");
    }
}
