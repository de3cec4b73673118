//! The demo's jobs load libacb at run time and call its C ABI. The Rust types of the functions
//! they call (`src/demo/abi.rs`) are generated from `include/acb.h` here, committed, and checked
//! for drift on every test run, as the Python bindings' signatures are: never a hand copy.
//! After a change of the header: `ACB_REGENERATE=1 cargo test -p acb-lab --test abi`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::path::Path;

/// The functions the demo's jobs call.
const FUNCTIONS: [&str; 15] = [
    "acb_abi_version",
    "acb_config_new",
    "acb_config_free",
    "acb_client_new",
    "acb_client_free",
    "acb_request_new",
    "acb_request_free",
    "acb_on_device_begin",
    "acb_on_device_end",
    "acb_lease_free",
    "acb_lease_device_index",
    "acb_client_alloc",
    "acb_client_memory_stats",
    "acb_error_message",
    "acb_status_message",
];

/// The Rust type of a C type of the header (opaque objects are handles).
fn rust_type(c: &str) -> String {
    let c = c.trim().trim_start_matches("const ").replace(" *", "*");
    match c.as_str() {
        "acb_status" | "uint32_t" => "u32".into(),
        "uint64_t" => "u64".into(),
        "int32_t" => "i32".into(),
        "size_t" => "usize".into(),
        "bool" => "bool".into(),
        "void*" => "*mut c_void".into(),
        "uint32_t*" => "*mut u32".into(),
        "size_t*" => "*mut usize".into(),
        "void**" => "*mut *mut c_void".into(),
        "char*" => "*mut c_char".into(),
        "acb_memory_stats*" => "*mut MemoryStats".into(),
        "acb_client*" | "acb_config*" | "acb_request*" | "acb_lease*" => "Handle".into(),
        "acb_client**" | "acb_config**" | "acb_request**" | "acb_lease**" => "*mut Handle".into(),
        other => panic!("the generator does not know the C type {other:?}: teach rust_type"),
    }
}

/// `acb_on_device_begin` -> `OnDeviceBegin`.
fn type_name(function: &str) -> String {
    function.trim_start_matches("acb_").split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect()
}

fn generate(header: &str) -> String {
    let version = header
        .lines()
        .find_map(|l| l.strip_prefix("#define ACB_ABI_VERSION "))
        .expect("acb.h defines ACB_ABI_VERSION")
        .trim();
    let stats_end = header.find("} acb_memory_stats;").expect("acb.h declares acb_memory_stats");
    let stats_start = header[..stats_end].rfind("typedef struct {").expect("acb_memory_stats is a typedef struct");
    let fields: Vec<&str> = header[stats_start..stats_end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("uint64_t ").and_then(|f| f.strip_suffix(';')))
        .collect();
    let mut out = String::from(
        "//! Generated from include/acb.h by tests/abi.rs: the C ABI the demo's jobs load at run time.\n\
         //! Do not edit: `ACB_REGENERATE=1 cargo test -p acb-lab --test abi` rewrites it.\n\n\
         use std::ffi::{c_char, c_void};\n\n\
         /// An opaque libacb object (`acb_client *`, `acb_config *`, ...).\n\
         pub type Handle = *mut c_void;\n\n",
    );
    let _ = writeln!(out, "/// `ACB_ABI_VERSION` of the header.\npub const ABI_VERSION: u32 = {version};\n");
    out.push_str(
        "/// `acb_memory_stats`.\n#[repr(C)]\n#[derive(Clone, Copy, Debug, Default)]\npub struct MemoryStats {\n",
    );
    for f in &fields {
        let _ = writeln!(out, "    /// `{f}`.\n    pub {f}: u64,");
    }
    out.push_str("}\n");
    for name in FUNCTIONS {
        let at = header.find(&format!(" {name}(")).unwrap_or_else(|| panic!("acb.h does not declare {name}"));
        let line_start = header[..at].rfind('\n').map_or(0, |i| i + 1);
        let ret = &header[line_start..at];
        let open = at + name.len() + 2;
        let close = open + header[open..].find(");").unwrap_or_else(|| panic!("{name}'s prototype is not closed"));
        let params: Vec<String> = header[open..close]
            .split(',')
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|p| p != "void")
            .map(|p| {
                // The parameter's name is the last word; the rest (and any '*' glued to the name) is its type.
                let (ty, name) = p.rsplit_once(' ').unwrap_or_else(|| panic!("{name}: a parameter without a name"));
                let stars = name.chars().take_while(|c| *c == '*').count();
                rust_type(&format!("{ty}{}", "*".repeat(stars)))
            })
            .collect();
        let ret = match ret.trim() {
            "void" => String::new(),
            r => format!(" -> {}", rust_type(r)),
        };
        let _ = writeln!(
            out,
            "\n/// `{name}`.\npub type {} = unsafe extern \"C\" fn({}){ret};",
            type_name(name),
            params.join(", ")
        );
    }
    out
}

#[test]
fn the_demos_abi_is_what_acb_h_declares() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("../include/acb.h")).unwrap();
    let fresh = generate(&header);
    let committed_path = root.join("src/demo/abi.rs");
    if std::env::var_os("ACB_REGENERATE").is_some_and(|v| v == "1") {
        std::fs::write(&committed_path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "src/demo/abi.rs differs from what include/acb.h gives: run \
         `ACB_REGENERATE=1 cargo test -p acb-lab --test abi` and commit the result"
    );
}
