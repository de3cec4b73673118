//! CI's share of the fuzzing: the committed corpus of the request, trace, settings and authority targets,
//! replayed without a fuzzer. (The C ABI target sets environment variables: its replay is a
//! test binary of its own, `c_abi_corpus`.)
#![allow(clippy::panic)]

mod replay;

#[test]
fn the_request_corpus_replays() {
    replay::replay("requests", acb_fuzz_targets::requests);
}

#[test]
fn the_trace_corpus_replays() {
    replay::replay("trace", acb_fuzz_targets::trace);
}

#[test]
fn the_settings_corpus_replays() {
    replay::replay("settings", acb_fuzz_targets::settings);
}

#[test]
fn the_authority_corpus_replays() {
    replay::replay("authority", acb_fuzz_targets::authority);
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, _) in acb_fuzz_targets::TARGETS {
        let file = fuzz.join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(text.contains(&format!("acb_fuzz_targets::{name}(")), "{} calls another function", file.display());
    }
}
