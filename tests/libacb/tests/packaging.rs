//! An installed libacb is usable: the CMake package installs it into a prefix, then a consumer
//! builds against it with find_package(acb) (shared and static) and with pkg-config, and runs
//! against a real assigner. CI installs cmake and sets ACB_REQUIRE_CMAKE=1; elsewhere the test
//! skips, saying so, without cmake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Assigner, scratch};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_installed_libacb_works_with_cmake_and_pkg_config() {
    if Command::new("cmake").arg("--version").output().is_err() {
        assert!(std::env::var_os("ACB_REQUIRE_CMAKE").is_none(), "ACB_REQUIRE_CMAKE is set but cmake is missing");
        eprintln!("skipped: no cmake");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lib_dir: PathBuf = common::lib_dir();
    let dir = scratch("packaging");
    let prefix = dir.join("prefix");
    run(Command::new("cmake")
        .arg("-S")
        .arg(root.join("bindings/c"))
        .arg("-B")
        .arg(dir.join("build"))
        .arg(format!("-DACB_LIBRARY_DIR={}", lib_dir.display()))
        .arg(format!("-DCMAKE_INSTALL_PREFIX={}", prefix.display())));
    run(Command::new("cmake").arg("--install").arg(dir.join("build")));
    for f in [
        "include/acb.h",
        "include/acb.hpp",
        "lib/libacb.so",
        "lib/libacb.a",
        "lib/cmake/acb/acbConfig.cmake",
        "lib/pkgconfig/acb.pc",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }

    // find_package(acb)
    let consumer = dir.join("consumer");
    run(Command::new("cmake")
        .arg("-S")
        .arg(root.join("bindings/c/examples/consumer"))
        .arg("-B")
        .arg(&consumer)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())));
    run(Command::new("cmake").arg("--build").arg(&consumer));

    // pkg-config
    let flags = run(Command::new("pkg-config")
        .args(["--cflags", "--libs", "acb"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
    let pc_bin = dir.join("pipeline_pc");
    run(Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wpedantic"])
        .arg(root.join("bindings/c/examples/pipeline.c"))
        .arg("-o")
        .arg(&pc_bin)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display())));

    let a = Assigner::start("packaging", "fake:1x8GiB");
    for bin in [consumer.join("pipeline"), consumer.join("pipeline_static"), pc_bin] {
        let out = run(Command::new(&bin).args(["2", "10", "10"]).env("ACB_ASSIGNER", a.addr()));
        assert!(out.contains("done: 2 phases"), "{}: {out}", bin.display());
    }
    drop(a);
    let _ = std::fs::remove_dir_all(dir);
}
