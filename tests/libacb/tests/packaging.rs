//! An installed libacb is usable: the CMake package installs it into a prefix (libacb.so.<ABI>,
//! its SONAME, and the libacb.so link), then a consumer builds against it with find_package(acb)
//! (shared and static) and with pkg-config, and runs against a real assigner. CI installs cmake
//! and sets ACB_REQUIRE_CMAKE=1; elsewhere that test skips, saying so, without cmake. The
//! SONAME itself is checked on the library cargo built.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Assigner, scratch, soname};

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

/// libacb.so's SONAME is libacb.so.<ABI version>, so a program built against one ABI never
/// loads a libacb of another.
#[test]
fn libacb_so_has_the_soname_of_its_abi_version() {
    let lib = common::lib_dir().join("libacb.so");
    assert_eq!(soname(&lib), Some(format!("libacb.so.{}", acb::ACB_ABI_VERSION)), "{}", lib.display());
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
    let so = format!("libacb.so.{}", acb::ACB_ABI_VERSION);
    let installed_so = format!("lib/{so}");
    for f in [
        "include/acb.h",
        "include/acb.hpp",
        installed_so.as_str(),
        "lib/libacb.so",
        "lib/libacb.a",
        "lib/cmake/acb/acbConfig.cmake",
        "lib/pkgconfig/acb.pc",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }
    // The library under its SONAME; libacb.so, for -lacb, a link to it.
    let lib = prefix.join("lib");
    assert!(!std::fs::symlink_metadata(lib.join(&so)).unwrap().file_type().is_symlink());
    assert_eq!(soname(&lib.join(&so)).as_deref(), Some(so.as_str()));
    assert_eq!(std::fs::read_link(lib.join("libacb.so")).unwrap(), Path::new(&so));
    // The installed archive has no LLVM bitcode: cargo embeds it for rustc's LTO, which no C
    // linker does, and it was half of libacb.a.
    let sections = run(Command::new("readelf").arg("-S").arg(lib.join("libacb.a")));
    assert!(!sections.contains(".llvmbc"), "the installed libacb.a still carries bitcode");

    // find_package(acb)
    let consumer = dir.join("consumer");
    run(Command::new("cmake")
        .arg("-S")
        .arg(root.join("bindings/c/examples/consumer"))
        .arg("-B")
        .arg(&consumer)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())));
    run(Command::new("cmake").arg("--build").arg(&consumer));

    // pkg-config, with the rpath the README gives for a prefix outside the loader's paths
    let pkg_config =
        |args: &[&str]| run(Command::new("pkg-config").args(args).env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
    let flags = pkg_config(&["--cflags", "--libs", "acb"]);
    let libdir = pkg_config(&["--variable=libdir", "acb"]);
    let pc_bin = dir.join("pipeline_pc");
    run(Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wpedantic"])
        .arg(root.join("bindings/c/examples/pipeline.c"))
        .arg("-o")
        .arg(&pc_bin)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", libdir.trim())));

    // The programs linked against the shared library ask for its SONAME.
    for bin in [consumer.join("pipeline"), pc_bin.clone()] {
        let out = run(Command::new("readelf").arg("-d").arg(&bin));
        assert!(out.contains(&format!("Shared library: [{so}]")), "{}: {out}", bin.display());
    }

    let a = Assigner::start("packaging", "fake:1x8GiB");
    for bin in [consumer.join("pipeline"), consumer.join("pipeline_static"), pc_bin] {
        let out = run(Command::new(&bin).args(["2", "10", "10"]).env("ACB_ASSIGNER", a.addr()));
        assert!(out.contains("done: 2 phases"), "{}: {out}", bin.display());
    }
    drop(a);
    let _ = std::fs::remove_dir_all(dir);
}
