"""The size and duration grammar against the vectors acb-core's tests read too
(tests/vectors/units.json): Python and Rust accept and refuse the same inputs.

acb_broker._units is loaded from its file, not through `import acb_broker`, so these tests need no libacb.
"""
import importlib.util
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)
VECTORS = os.path.join(PKG_ROOT, "..", "..", "tests", "vectors", "units.json")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"acb_{name}", os.path.join(PKG_ROOT, "acb_broker", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


units = _load("_units")
with open(VECTORS, encoding="utf-8") as f:
    vectors = json.load(f)


def _check(case, parse, key):
    if "error" in case:
        with pytest.raises(units.UnitError) as e:
            parse(case["input"])
        assert e.value.reason == case["error"] and e.value.input == case["input"], str(e.value)
    else:
        assert parse(case["input"]) == case[key]


@pytest.mark.parametrize("case", vectors["sizes"], ids=lambda c: repr(c["input"]))
def test_sizes_follow_the_shared_vectors(case):
    _check(case, units.parse_size, "bytes")


@pytest.mark.parametrize("case", vectors["durations"], ids=lambda c: repr(c["input"]))
def test_durations_follow_the_shared_vectors(case):
    _check(case, units.parse_duration_ns, "nanos")


def test_the_vectors_are_enough_to_mean_something():
    assert len(vectors["sizes"]) + len(vectors["durations"]) >= 40


def test_ints_are_bytes_and_other_types_are_refused():
    assert units.parse_size(1024) == 1024 and units.parse_size(0) == 0
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            units.parse_size(bad)
    for bad in (True, 1.5, None, b"1GiB"):
        with pytest.raises(TypeError):
            units.parse_size(bad)
    with pytest.raises(TypeError):
        units.parse_duration_ns(5)


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"'5XB': unknown unit 'XB'; use B, KiB"):
        units.parse_size("5XB")
    with pytest.raises(ValueError, match=r"'soon': not a duration \(e.g. 500ms"):
        units.parse_duration_ns("soon")


def test_what_agarun_writes_into_a_trace_parses_back():
    # `agarun --profile` writes a trace for `acb-assigner simulate`, which parses it with the
    # Rust side of this grammar.
    profile = _load("profile")
    job = profile.JobProfile(job="j", pid=1, phases=[("cpu", 1_234_400_000), ("gpu", 300)], memory=80 << 30)
    (written,) = profile.trace([job])["jobs"]
    assert units.parse_size(written["memory"]) == 80 << 30
    assert [units.parse_duration_ns(d) for p in written["phases"] for d in p.values()] == [1_234_000_000, 1_000_000]
