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

#[test]
fn demo_runs_the_same_jobs_static_then_brokered_and_draws_both() {
    let Some(lib) = libacb() else { return };
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
    let grants = row(&stdout, "grants by the assigner");
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
