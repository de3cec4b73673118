//! `include/acb.h` is generated from this crate by cbindgen and committed. This test
//! regenerates it and fails on any drift; `ACB_BLESS=1` writes the new header instead.

use std::path::Path;

#[test]
fn the_committed_header_matches_the_code() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not read acb-ffi")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = crate_dir.join("../include/acb.h");
    if std::env::var_os("ACB_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/acb.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/acb.h is out of date: run `ACB_BLESS=1 cargo test -p acb-ffi --test header` and commit it"
    );
}
