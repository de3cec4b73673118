//! Sizes and durations as people write them (`80GiB`, `512M`, `1.5s`) and as people read them
//! (`80 GiB`, `1m 05s`): the one grammar every acb front-end parses with. The Python package
//! (`bindings/python/acb_broker/_units.py`) follows it too; both test suites read the same vectors,
//! `tests/vectors/units.json`, so a change here that Python does not follow fails a test.
//!
//! # The grammar
//!
//! ```text
//! size          = number [space] [size-unit]
//! duration      = number [space] [duration-unit]
//! number        = digit+ ["." digit+]           at most 9 digits after the point
//! size-unit     = "B"                           bytes (also no unit)
//!               | "K" | "KiB" | "M" | "MiB" | "G" | "GiB" | "T" | "TiB"    powers of 1024
//!               | "kB" | "KB" | "MB" | "GB" | "TB"                        powers of 1000
//! duration-unit = "ms" | "s" | "m" | "h"        milliseconds, seconds, minutes, hours;
//!                                               no unit: seconds
//! ```
//!
//! - Units are case-sensitive: `m` is minutes, `M` is MiB, and `gib` or `mb` are refused rather
//!   than guessed at. The one-letter size units are binary, as in Slurm's `--mem=512M` and `dd`.
//! - ASCII whitespace around the input and between the number and the unit is ignored, so
//!   what [`Bytes`] prints (`1.5 GiB`) parses back.
//! - Digits are ASCII `0`-`9` only: no sign, no exponent (`1e3`), no separators (`1_000`,
//!   `1,5`), no bare point (`.5`, `5.`).
//! - A fraction is exact decimal arithmetic, not floating point, rounded to the nearest byte or
//!   nanosecond, halves up: `1.5GiB` is 1610612736 bytes, `0.5` is 1 byte, in every language.
//! - A size is at most `u64::MAX` bytes; a duration at most `u64::MAX` nanoseconds (about 584
//!   years). Beyond is an error, never a silent saturation.
//!
//! Anything else is a [`ParseError`] that names the input and says what is wrong with it.

use alloc::string::{String, ToString};
use core::fmt;
use core::time::Duration;

/// What was being parsed, for the error message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    /// A number of bytes.
    Size,
    /// A length of time.
    Duration,
}

/// Why an input is not a size or a duration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Nothing but whitespace.
    Empty,
    /// A leading `-`.
    Negative,
    /// No number where it should be: no digits, a bare point, two points.
    BadNumber,
    /// More than 9 digits after the point.
    TooPrecise,
    /// A unit that is not in the grammar (the unit as written).
    UnknownUnit(String),
    /// More than `u64::MAX` bytes or nanoseconds.
    OutOfRange,
}

/// An input that is not a size or a duration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    quantity: Quantity,
    input: String,
    kind: ParseErrorKind,
}

impl ParseError {
    /// Why the input was refused.
    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }

    /// Whether a size or a duration was expected.
    pub fn quantity(&self) -> Quantity {
        self.quantity
    }

    /// The input, as given.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, example, units, max) = match self.quantity {
            Quantity::Size => (
                "size",
                "80GiB, 512M, 1.5GiB, 40GB, 1024",
                "B, KiB, MiB, GiB, TiB (or K, M, G, T), kB, MB, GB or TB",
                "2^64 - 1 bytes",
            ),
            Quantity::Duration => ("duration", "500ms, 30s, 1.5m, 2h", "ms, s, m or h", "about 584 years"),
        };
        let input = &self.input;
        match &self.kind {
            ParseErrorKind::Empty => write!(f, "{input:?}: empty; expected a {what} (e.g. {example})"),
            ParseErrorKind::Negative => write!(f, "{input:?}: a {what} cannot be negative"),
            ParseErrorKind::BadNumber => write!(f, "{input:?}: not a {what} (e.g. {example})"),
            ParseErrorKind::TooPrecise => write!(f, "{input:?}: at most 9 digits after the point"),
            ParseErrorKind::UnknownUnit(unit) => write!(f, "{input:?}: unknown unit {unit:?}; use {units}"),
            ParseErrorKind::OutOfRange => write!(f, "{input:?}: out of range (at most {max})"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ParseError {}

const SIZE_UNITS: [(&str, u64); 15] = [
    ("", 1),
    ("B", 1),
    ("K", 1 << 10),
    ("KiB", 1 << 10),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("G", 1 << 30),
    ("GiB", 1 << 30),
    ("T", 1 << 40),
    ("TiB", 1 << 40),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

const NANOS_PER_SECOND: u64 = 1_000_000_000;

const DURATION_UNITS: [(&str, u64); 5] = [
    ("", NANOS_PER_SECOND),
    ("ms", 1_000_000),
    ("s", NANOS_PER_SECOND),
    ("m", 60 * NANOS_PER_SECOND),
    ("h", 3600 * NANOS_PER_SECOND),
];

/// The most digits after the point: nanoseconds of a second, and more than any size needs.
const MAX_DECIMALS: usize = 9;

/// Parses a size in bytes: `80GiB`, `512M`, `40GB`, `1.5 GiB`, `1024` (see the grammar above).
pub fn parse_size(input: &str) -> Result<u64, ParseError> {
    parse(input, Quantity::Size, &SIZE_UNITS)
}

/// Parses a duration: `500ms`, `30s`, `1.5m`, `2h`, `10` (seconds; see the grammar above).
pub fn parse_duration(input: &str) -> Result<Duration, ParseError> {
    parse(input, Quantity::Duration, &DURATION_UNITS).map(Duration::from_nanos)
}

/// `number [space] [unit]`, in units of `table`'s multipliers (bytes or nanoseconds).
fn parse(input: &str, quantity: Quantity, table: &[(&str, u64)]) -> Result<u64, ParseError> {
    let error = |kind| ParseError { quantity, input: input.to_string(), kind };
    let text = input.trim_ascii();
    if text.is_empty() {
        return Err(error(ParseErrorKind::Empty));
    }
    if text.starts_with('-') {
        return Err(error(ParseErrorKind::Negative));
    }
    let number_len = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    let well_formed =
        !whole.is_empty() && !fraction.contains('.') && (number.len() == whole.len() || !fraction.is_empty());
    if !well_formed {
        return Err(error(ParseErrorKind::BadNumber));
    }
    if fraction.len() > MAX_DECIMALS {
        return Err(error(ParseErrorKind::TooPrecise));
    }
    let unit = unit.trim_ascii_start();
    let Some(&(_, multiplier)) = table.iter().find(|(name, _)| *name == unit) else {
        return Err(error(ParseErrorKind::UnknownUnit(unit.to_string())));
    };
    scale(whole, fraction, multiplier).ok_or_else(|| error(ParseErrorKind::OutOfRange))
}

/// `whole.fraction * multiplier`, rounded to the nearest integer (halves up), if it fits a `u64`.
/// Both parts are ASCII digits, the fraction at most [`MAX_DECIMALS`] of them.
fn scale(whole: &str, fraction: &str, multiplier: u64) -> Option<u64> {
    let digits = |s: &str| s.bytes().try_fold(0u128, |n, d| n.checked_mul(10)?.checked_add(u128::from(d - b'0')));
    let whole = digits(whole)?.checked_mul(u128::from(multiplier))?;
    // At most 10^9 - 1 times at most 3.6 * 10^12: far inside a u128.
    let denominator = 10u128.pow(fraction.len() as u32);
    let fraction = (digits(fraction)? * u128::from(multiplier) * 2 + denominator) / (denominator * 2);
    u64::try_from(whole.checked_add(fraction)?).ok()
}

/// Bytes for people: `80 GiB`, `512 MiB`, `1.5 GiB` (tenths truncated, so never more than it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut unit = 0;
        let mut scaled = self.0;
        while unit + 1 < UNITS.len() && scaled >= 1024 && scaled.is_multiple_of(1024) {
            scaled /= 1024;
            unit += 1;
        }
        if scaled >= 1024 && unit + 1 < UNITS.len() {
            // Not a whole number of the next unit: one decimal is enough for people.
            let tenths = (u128::from(self.0) * 10 / (1u128 << (10 * (unit + 1)))) as u64;
            return write!(f, "{}.{} {}", tenths / 10, tenths % 10, UNITS[unit + 1]);
        }
        write!(f, "{scaled} {}", UNITS[unit])
    }
}

/// A duration for people: `1h 02m`, `3m 05s`, `4.2 s`, `12 ms`. Under a minute it has one
/// decimal (rounded); from a minute on, whole seconds or minutes (truncated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        let secs = self.0.as_secs();
        // Tenths of a second, rounded; 59.96 s is "1m 00s", not "60.0 s".
        let tenths = (nanos + 50_000_000) / 100_000_000;
        if secs >= 3600 {
            write!(f, "{}h {:02}m", secs / 3600, (secs % 3600) / 60)
        } else if tenths >= 600 {
            let secs = secs.max(60);
            write!(f, "{}m {:02}s", secs / 60, secs % 60)
        } else if secs >= 1 {
            write!(f, "{}.{} s", tenths / 10, tenths % 10)
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn human_durations_pick_a_readable_unit() {
        let h = |nanos: u64| format!("{}", Human(Duration::from_nanos(nanos)));
        assert_eq!(h(0), "0 ms");
        assert_eq!(h(12_900_000), "12 ms");
        assert_eq!(h(999_000_000), "999 ms");
        assert_eq!(h(999_999_999), "999 ms");
        assert_eq!(h(4_250_000_000), "4.3 s");
        assert_eq!(h(59_940_000_000), "59.9 s");
        assert_eq!(h(59_960_000_000), "1m 00s");
        assert_eq!(h(185_000_000_000), "3m 05s");
        assert_eq!(h(3_720_000_000_000), "1h 02m");
        assert_eq!(format!("{}", Human(Duration::MAX)), "5124095576030431h 00m");
    }

    #[test]
    fn bytes_for_people_parse_back() {
        for n in [0, 1023, 1024, 512 << 20, 3 << 29, 80 << 30, (1 << 40) + (1 << 39)] {
            let text = format!("{}", Bytes(n));
            assert_eq!(parse_size(&text), Ok(n), "{text}");
        }
    }

    #[test]
    fn errors_name_the_input_and_the_units() {
        let e = parse_size("5XB").unwrap_err();
        assert_eq!(e.kind(), &ParseErrorKind::UnknownUnit("XB".into()));
        assert_eq!(
            format!("{e}"),
            "\"5XB\": unknown unit \"XB\"; use B, KiB, MiB, GiB, TiB (or K, M, G, T), kB, MB, GB or TB"
        );
        let e = parse_duration("soon").unwrap_err();
        assert_eq!((e.quantity(), e.input()), (Quantity::Duration, "soon"));
        assert_eq!(format!("{e}"), "\"soon\": not a duration (e.g. 500ms, 30s, 1.5m, 2h)");
    }
}
