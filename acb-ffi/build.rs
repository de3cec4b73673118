//! Gives `libacb.so` its SONAME, `libacb.so.<ABI version>`, so that a program linked against
//! one ABI never loads a library of another: the number is `ACB_ABI_VERSION` of `src/lib.rs`,
//! the one `acb.h` and `acb_abi_version()` give too. Only the cdylib gets it (the staticlib
//! and the rlib have no SONAME).
#![allow(clippy::expect_used, clippy::panic)]

fn main() {
    let lib = "src/lib.rs";
    println!("cargo:rerun-if-changed={lib}");
    let text = std::fs::read_to_string(lib).expect("acb-ffi's src/lib.rs");
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("pub const ACB_ABI_VERSION: u32 = ")?.strip_suffix(';'))
        .unwrap_or_else(|| panic!("{lib} has no `pub const ACB_ABI_VERSION: u32 = N;` line"));
    let major: u32 = version.parse().unwrap_or_else(|_| panic!("ACB_ABI_VERSION = {version} is not a number"));
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libacb.so.{major}");
}
