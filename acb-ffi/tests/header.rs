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

/// Every macro of the header is usable from C and from C++: a program that uses each one
/// compiles with `-Wall -Wextra -Werror -pedantic` under gcc and g++.
#[test]
fn every_macro_of_the_header_compiles_in_c_and_cpp() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = crate_dir.join("../include");
    let header = std::fs::read_to_string(include.join("acb.h")).expect("include/acb.h");
    let macros: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| *name != "ACB_H" && !name.contains('('))
        .collect();
    assert!(macros.contains(&"ACB_ABI_VERSION"), "{macros:?}");
    // A value macro is used as a value, a list macro (`{ ... }`) as an array's initialiser.
    let value = |m: &str| header.lines().find_map(|l| l.strip_prefix(&format!("#define {m} "))).unwrap_or("");
    let uses: String = macros
        .iter()
        .map(|m| {
            if value(m).trim_start().starts_with('{') {
                format!("  {{ static const acb_status v[] = {m}; (void)v; }}\n")
            } else {
                format!("  {{ static const unsigned long long v = {m}; (void)v; }}\n")
            }
        })
        .collect();
    let source = format!("#include \"acb.h\"\nint main(void) {{\n{uses}  return 0;\n}}\n");
    let dir = std::env::temp_dir().join(format!("acb-header-macros-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    for (compiler, file, std) in [("gcc", "macros.c", "-std=c11"), ("g++", "macros.cpp", "-std=c++17")] {
        let path = dir.join(file);
        std::fs::write(&path, &source).expect("write the test program");
        let out = std::process::Command::new(compiler)
            .args([std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
            .arg(&include)
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("{compiler} is needed for this test: {e}"));
        assert!(
            out.status.success(),
            "{compiler}: a macro of acb.h does not compile:\n{source}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
