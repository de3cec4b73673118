//! The size and duration grammar against the vectors the Python package is tested with too
//! (`tests/vectors/units.json`, read by `bindings/python/tests/test_units.py`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use acb_core::units::{self, ParseError, ParseErrorKind};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/units.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The name the vectors give a reason, the same in both languages.
fn reason(e: &ParseError) -> &'static str {
    match e.kind() {
        ParseErrorKind::Empty => "empty",
        ParseErrorKind::Negative => "negative",
        ParseErrorKind::BadNumber => "bad-number",
        ParseErrorKind::TooPrecise => "too-precise",
        ParseErrorKind::UnknownUnit(_) => "unknown-unit",
        ParseErrorKind::OutOfRange => "out-of-range",
    }
}

/// Checks every case of `cases`, parsed with `parse`, whose value is under `key`; returns how
/// many there were.
fn check<T: std::fmt::Debug>(
    cases: &Value,
    key: &str,
    parse: impl Fn(&str) -> Result<T, ParseError>,
    value: impl Fn(&T) -> u64,
) -> usize {
    let cases = cases.as_array().unwrap();
    let mut wrong = Vec::new();
    for case in cases {
        let input = case["input"].as_str().unwrap();
        let got = parse(input);
        let ok = match (&got, case[key].as_u64(), case["error"].as_str()) {
            (Ok(v), Some(want), None) => value(v) == want,
            (Err(e), None, Some(want)) => reason(e) == want && e.input() == input,
            _ => false,
        };
        if !ok {
            wrong.push(format!("{input:?}: expected {case}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
    cases.len()
}

#[test]
fn sizes_follow_the_shared_vectors() {
    let n = check(&vectors()["sizes"], "bytes", units::parse_size, |b| *b);
    assert!(n >= 40, "{n} size cases");
}

#[test]
fn durations_follow_the_shared_vectors() {
    let n = check(&vectors()["durations"], "nanos", units::parse_duration, |d: &Duration| {
        u64::try_from(d.as_nanos()).unwrap()
    });
    assert!(n >= 20, "{n} duration cases");
}

#[test]
fn every_reason_is_exercised_by_both_kinds_of_vector() {
    let v = vectors();
    for kind in ["sizes", "durations"] {
        let reasons: std::collections::BTreeSet<&str> =
            v[kind].as_array().unwrap().iter().filter_map(|c| c["error"].as_str()).collect();
        let all = ["bad-number", "empty", "negative", "out-of-range", "too-precise", "unknown-unit"];
        assert_eq!(reasons.into_iter().collect::<Vec<_>>(), all, "{kind}");
    }
}
