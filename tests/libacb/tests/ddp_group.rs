//! A 2-rank gloo DDP job under torchrun, brokered by acb as one group
//! (`tests/python/ddp_group.py`, which starts its own assigner, this build's binary, and compares
//! the final parameters with those of the same job run without acb). `ACB_TEST_PYTHON` picks
//! the interpreter (one with torch); the default is python3. Without torch the script says
//! "SKIPPED: torch is not installed" and the test passes: CI does not install torch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

#[test]
fn a_two_rank_ddp_job_under_torchrun_is_one_group_and_computes_the_same() {
    let python = std::env::var("ACB_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    if Command::new(&python).arg("--version").output().is_err() {
        assert!(std::env::var_os("ACB_REQUIRE_PYTHON").is_none(), "ACB_REQUIRE_PYTHON is set but {python} is missing");
        eprintln!("skipped: no {python}");
        return;
    }
    // Without torch the script skips: say so without building the assigner for it.
    let has_torch = Command::new(&python).args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    if !has_torch {
        eprintln!("skipped: {python} has no torch (set ACB_TEST_PYTHON to an interpreter with torch)");
        return;
    }
    let root = common::root();
    let out = Command::new(&python)
        .arg(root.join("tests/python/ddp_group.py"))
        .env("ACB_LIBRARY", common::lib_dir().join("libacb.so"))
        .env("ACB_ASSIGNER_BIN", common::assigner_binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let verdict = stdout.lines().last().unwrap_or_default();
    assert!(
        verdict.starts_with("PASSED") || verdict == "SKIPPED: torch is not installed",
        "skipped for another reason than a missing torch: {verdict}"
    );
}
