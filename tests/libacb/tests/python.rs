//! Runs the Python package's tests (pytest) against a real assigner with two simulated GPUs,
//! using the libacb this build made. CI installs pytest and sets ACB_REQUIRE_PYTHON=1, so the
//! tests cannot skip there; elsewhere they skip, saying so, when pytest is missing. The only
//! tests allowed to skip are those of a framework that is not installed (torch, tensorflow: CI
//! does not install their multi-gigabyte wheels), and the no-CUDA tests on a machine with CUDA. `ACB_TEST_PYTHON` picks the interpreter (one
//! with torch, say); the default is python3.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::Assigner;

#[test]
fn the_python_package_passes_its_tests() {
    let python = std::env::var("ACB_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let has_pytest = Command::new(&python).args(["-c", "import pytest"]).status().is_ok_and(|s| s.success());
    if !has_pytest {
        assert!(std::env::var_os("ACB_REQUIRE_PYTHON").is_none(), "ACB_REQUIRE_PYTHON is set but pytest is missing");
        eprintln!("skipped: {python} has no pytest (pip install pytest)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lib = common::lib_dir().join("libacb.so");
    let a = Assigner::start("python", "fake:2x80GiB");
    // gpu_assigner (the Fujitsu ACB command) starts the acb-assigner binary of this build.
    let assigner_bin = common::assigner_binary();
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .arg(root.join("bindings/python/tests"))
        .env("ACB_LIBRARY", &lib)
        .env("PYTHONPATH", root.join("bindings/python"))
        .env("ACB_TEST_ASSIGNER", a.addr())
        .env("ACB_ASSIGNER_BIN", &assigner_bin)
        .env_remove("ACB_ASSIGNER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" passed"), "{stdout}");
    for line in stdout.lines().filter(|l| l.starts_with("SKIPPED")) {
        let allowed = line.ends_with("is not installed") || line.ends_with("this machine has CUDA");
        assert!(allowed, "a test skipped for another reason than a missing framework: {line}");
    }
}
