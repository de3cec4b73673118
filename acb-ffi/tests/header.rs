//! `include/acb.h` is generated from this crate by cbindgen and committed. This test
//! regenerates it and fails on any drift; `ACB_BLESS=1` writes the new header instead.
#![allow(clippy::expect_used, clippy::panic)]

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

/// A `#define` of a header: its name, its parameters (`None` for an object-like macro) and
/// its replacement text.
#[derive(Debug)]
struct Macro {
    name: String,
    params: Option<Vec<String>>,
    body: String,
}

/// Every `#define` of `header`, continuation lines joined, but for the include guard (the
/// name of the header's first `#ifndef`).
fn macros_of(header: &str) -> Vec<Macro> {
    let joined = header.replace("\\\r\n", " ").replace("\\\n", " ");
    let directive = |line: &str, word: &str| {
        let rest = line.trim_start().strip_prefix('#')?.trim_start().strip_prefix(word)?;
        rest.starts_with([' ', '\t']).then(|| rest.trim_start().to_owned())
    };
    let guard = joined.lines().find_map(|l| directive(l, "ifndef")).map(|g| g.trim().to_owned());
    let mut out = Vec::new();
    for rest in joined.lines().filter_map(|l| directive(l, "define")) {
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let (name, after) = rest.split_at(end);
        if Some(name) == guard.as_deref() {
            continue;
        }
        // Function-like only when the parenthesis follows the name at once (C11 6.10.3).
        let (params, body) = match after.strip_prefix('(') {
            Some(list) => {
                let close = list.find(')').unwrap_or_else(|| panic!("#define {name}: no ')'"));
                let params = list[..close].split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from);
                (Some(params.collect()), list[close + 1..].trim())
            }
            None => (None, after.trim()),
        };
        out.push(Macro { name: name.to_owned(), params, body: body.to_owned() });
    }
    out
}

/// A use of each macro, as a consumer would write it. A macro whose arguments are not plain
/// values (a type, a statement) needs an entry in `examples`, else it is called with `0` for
/// each parameter.
fn program_using(header: &str, macros: &[Macro], examples: &[(&str, &str)]) -> String {
    let mut file_scope = String::new();
    let mut body = String::new();
    for m in macros {
        let name = &m.name;
        let Some(params) = &m.params else {
            if m.body.is_empty() {
                // A flag: consumers test it with #ifdef.
                file_scope += &format!("#ifndef {name}\n#error {name}\n#endif\n");
            } else if m.body.starts_with('{') {
                // A list: an array's initialiser (the header's lists are of numbers).
                body += &format!("  {{ static const unsigned long long v[] = {name}; (void)v; }}\n");
            } else {
                body += &format!("  (void)({name});\n");
                let digits =
                    m.body.trim_start_matches('(').trim_end_matches(')').trim_end_matches(['u', 'U', 'l', 'L']);
                if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                    // A number: also usable in #if, as `#if ACB_ABI_VERSION >= 2` is.
                    file_scope += &format!("#if {name}\n#endif\n");
                }
            }
            continue;
        };
        let args = examples
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| vec!["0"; params.len().max(1)].join(", "), |(_, a)| (*a).to_owned());
        let args = if params.is_empty() { String::new() } else { args };
        let statement = m.body.is_empty() || m.body.starts_with("do ") || m.body.starts_with("do{");
        if statement {
            body += &format!("  {name}({args});\n");
        } else {
            body += &format!("  (void)({name}({args}));\n");
        }
    }
    format!("#include \"{header}\"\n{file_scope}int main(void) {{\n{body}  return 0;\n}}\n")
}

/// Compiles a program using every macro of `include/<header>` as C99, C11 and C++17 with
/// `-Wall -Wextra -Werror -pedantic`: how many macros it used, or the first failure (the
/// compiler's messages, and the program).
fn compile_every_macro(include: &Path, header: &str, examples: &[(&str, &str)]) -> Result<usize, (String, String)> {
    let text = std::fs::read_to_string(include.join(header)).expect("the header");
    let macros = macros_of(&text);
    let source = program_using(header, &macros, examples);
    let dir = std::env::temp_dir().join(format!("acb-header-macros-{}-{header}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let mut result = Ok(macros.len());
    for (compiler, file, std) in
        [("gcc", "macros.c", "-std=c99"), ("gcc", "macros.c", "-std=c11"), ("g++", "macros.cpp", "-std=c++17")]
    {
        let path = dir.join(file);
        std::fs::write(&path, &source).expect("write the test program");
        let out = std::process::Command::new(compiler)
            .args([std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
            .arg(include)
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("{compiler} is needed for this test: {e}"));
        if !out.status.success() {
            result = Err((format!("{compiler} {std}: {}", String::from_utf8_lossy(&out.stderr)), source));
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Every macro of the header, object-like or function-like, found by reading the header (so
/// one added later is covered), is usable from C and from C++.
#[test]
fn every_macro_of_the_header_compiles_in_c_and_cpp() {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let names: Vec<String> = macros_of(&std::fs::read_to_string(include.join("acb.h")).expect("acb.h"))
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(names.iter().any(|n| n == "ACB_ABI_VERSION"), "{names:?}");
    if let Err((errors, program)) = compile_every_macro(&include, "acb.h", &[]) {
        panic!("a macro of acb.h does not compile:\n{program}\n{errors}");
    }
}

/// The check above catches what it is for: the old `acb_status_ALL`, which named
/// `acb_status_Ok`, and a broken function-like macro; it passes good ones of every kind.
#[test]
fn the_macro_check_catches_a_broken_macro() {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let dir = std::env::temp_dir().join(format!("acb-header-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let good = format!(
        "#include \"{}\"\n#define ACB_FLAG\n#define ACB_ANSWER (42u)\n#define ACB_NAME \"acb\"\n\
         #define ACB_LIST {{ ACB_STATUS_OK, ACB_STATUS_TIMEOUT }}\n#define ACB_IS_OK(s) ((s) == ACB_STATUS_OK)\n\
         #define ACB_AS(t, v) \\\n  ((t)(v))\n#define ACB_TRY(call) do {{ if ((call) != ACB_STATUS_OK) return 1; }} while (0)\n\
         #define ACB_NOTHING()\n",
        include.join("acb.h").display()
    );
    let probe = |extra: &str, examples: &[(&str, &str)]| {
        std::fs::write(dir.join("probe.h"), format!("{good}{extra}")).expect("write probe.h");
        compile_every_macro(&dir, "probe.h", examples)
    };
    let examples = [("ACB_AS", "acb_status, 0")];
    assert_eq!(probe("", &examples), Ok(8), "the good macros of every kind compile");
    for (bad, name) in [
        ("#define acb_status_ALL { acb_status_Ok, acb_status_Timeout }\n", "acb_status_ALL"),
        ("#define ACB_BROKEN(x) ((x) + acb_no_such_thing)\n", "ACB_BROKEN"),
        ("#define ACB_BAD_FLAG acb_no_such_thing\n", "ACB_BAD_FLAG"),
    ] {
        let (errors, _) = probe(bad, &examples).expect_err(bad);
        assert!(errors.contains(name), "the compiler names {name}:\n{errors}");
    }
    // Without its example, the macro taking a type is called with 0s, and fails.
    assert!(probe("", &[]).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
