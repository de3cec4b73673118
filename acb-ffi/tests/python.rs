//! Runs the Python package's tests (pytest) against a real assigner with two simulated GPUs,
//! using the libacb this build made. CI installs pytest and sets ACB_REQUIRE_PYTHON=1, so the
//! tests cannot skip there; elsewhere they skip, saying so, when pytest is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::Assigner;

#[test]
fn the_python_package_passes_its_tests() {
    let has_pytest = Command::new("python3").args(["-c", "import pytest"]).status().is_ok_and(|s| s.success());
    if !has_pytest {
        assert!(std::env::var_os("ACB_REQUIRE_PYTHON").is_none(), "ACB_REQUIRE_PYTHON is set but pytest is missing");
        eprintln!("skipped: python3 has no pytest (pip install pytest)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib = common::lib_dir().join("libacb.so");
    let a = Assigner::start("python", "fake:2x80GiB");
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join("bindings/python/tests"))
        .env("ACB_LIBRARY", &lib)
        .env("PYTHONPATH", root.join("bindings/python"))
        .env("ACB_TEST_ASSIGNER", a.addr())
        .env_remove("ACB_ASSIGNER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" passed") && !stdout.contains("skipped"), "{stdout}");
}
