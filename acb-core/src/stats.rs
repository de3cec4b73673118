//! What a run of jobs achieved, computed one way for the simulator, the demo and the timeline:
//! the union of intervals (two jobs computing at once on one GPU count once), the GPU-busy
//! fraction built on it, and the side-by-side table that compares runs.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::iter::Sum;
use core::ops::Sub;
use core::time::Duration;

use crate::units::{Bytes, Human};

/// The union of `intervals` (`(from, to)` pairs), as disjoint intervals sorted by start.
/// Overlapping and touching intervals merge; empty and inverted ones (`to <= from`, and any
/// with a NaN end) are dropped.
pub fn union<T: Copy + PartialOrd>(intervals: impl IntoIterator<Item = (T, T)>) -> Vec<(T, T)> {
    let mut sorted: Vec<(T, T)> = intervals.into_iter().filter(|(from, to)| to > from).collect();
    // No NaN is left (a comparison with NaN is false), so this order is total.
    sorted.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(core::cmp::Ordering::Equal));
    let mut merged: Vec<(T, T)> = Vec::with_capacity(sorted.len());
    for (from, to) in sorted {
        match merged.last_mut() {
            Some(last) if from <= last.1 => {
                if to > last.1 {
                    last.1 = to;
                }
            }
            _ => merged.push((from, to)),
        }
    }
    merged
}

/// The total length of the union of `intervals`: time covered at least once.
pub fn union_length<T, D>(intervals: impl IntoIterator<Item = (T, T)>) -> D
where
    T: Copy + PartialOrd + Sub<Output = D>,
    D: Sum<D>,
{
    union(intervals).into_iter().map(|(from, to)| to - from).sum()
}

/// `count` per hour of `over` (zero for no time).
pub fn per_hour(count: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 { count as f64 * 3600.0 / secs } else { 0.0 }
}

/// A time GPU `gpu` computed, measured from the start of the run (or of the record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy {
    /// The GPU, by its index in the pool.
    pub gpu: u32,
    /// When it started computing.
    pub from: Duration,
    /// When it stopped.
    pub to: Duration,
}

/// The fraction of the time of GPUs `0..gpus` over `over` in which at least one job computed,
/// in `0.0..=1.0`: per GPU the union of its [`Busy`] times, so two jobs computing at once count
/// once. Times on other GPUs are ignored; zero GPUs or a zero `over` give zero.
pub fn busy_fraction(gpus: u32, over: Duration, busy: impl IntoIterator<Item = Busy>) -> f64 {
    let capacity = f64::from(gpus) * over.as_secs_f64();
    if capacity <= 0.0 {
        return 0.0;
    }
    let mut per_gpu: BTreeMap<u32, Vec<(Duration, Duration)>> = BTreeMap::new();
    for b in busy.into_iter().filter(|b| b.gpu < gpus) {
        per_gpu.entry(b.gpu).or_default().push((b.from, b.to));
    }
    let computing: Duration = per_gpu.into_values().map(union_length).sum();
    (computing.as_secs_f64() / capacity).clamp(0.0, 1.0)
}

/// One run's figures, as the comparison table shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct RunFigures {
    /// The column's heading.
    pub label: String,
    /// GPUs in the pool.
    pub gpus: u32,
    /// Jobs run.
    pub jobs: usize,
    /// Work items done.
    pub items: u64,
    /// From the start of the run to the last job's end.
    pub wall_time: Duration,
    /// See [`busy_fraction`].
    pub gpu_busy: f64,
    /// Times a job got a GPU it had asked for, where that differs from the grants (a job's
    /// own count beside the assigner's); `None` where it is the same number.
    pub acquisitions: Option<u64>,
    /// Mean wait for a GPU: from asking to having it.
    pub mean_wait: Duration,
    /// The longest wait for a GPU.
    pub max_wait: Duration,
    /// Grants the scheduler made.
    pub grants: u64,
    /// Bytes of device memory swapped, out and in.
    pub bytes_swapped: u64,
}

impl RunFigures {
    /// Work items per hour of wall time (zero for a run of no time).
    pub fn items_per_hour(&self) -> f64 {
        per_hour(self.items, self.wall_time)
    }
}

/// A table of runs side by side: a heading per column, then labelled rows of cells. Its
/// `Display` is the text the simulator and the demo print: labels left, cells right-aligned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The columns' headings.
    pub columns: Vec<String>,
    /// Each row's label and its cells, one per column.
    pub rows: Vec<(String, Vec<String>)>,
}

impl Table {
    /// The comparison of `runs`, the first the baseline the others' rates are compared with.
    /// The rows and their wording are the same wherever runs are compared.
    pub fn compare(runs: &[RunFigures]) -> Table {
        let mut table = Table { columns: runs.iter().map(|r| r.label.clone()).collect(), rows: Vec::new() };
        let Some(base) = runs.first().map(RunFigures::items_per_hour) else { return table };
        let mut row = |label: &str, cell: &dyn Fn(&RunFigures) -> String| {
            table.rows.push((label.to_string(), runs.iter().map(cell).collect()));
        };
        row("GPUs / jobs", &|r| format!("{} / {}", r.gpus, r.jobs));
        row("work items done", &|r| r.items.to_string());
        row("wall time", &|r| Human(r.wall_time).to_string());
        row("items per hour", &|r| format!("{:.1}", r.items_per_hour()));
        row("  vs first column", &|r| {
            if base > 0.0 { format!("{:.2}x", r.items_per_hour() / base) } else { "-".to_string() }
        });
        row("items per GPU-hour", &|r| {
            if r.gpus > 0 { format!("{:.1}", r.items_per_hour() / f64::from(r.gpus)) } else { "-".to_string() }
        });
        row("GPU busy", &|r| format!("{:.1} %", r.gpu_busy * 100.0));
        if runs.iter().any(|r| r.acquisitions.is_some()) {
            row("GPU acquisitions", &|r| r.acquisitions.map_or_else(|| "-".to_string(), |n| n.to_string()));
        }
        row("mean wait for a GPU", &|r| Human(r.mean_wait).to_string());
        row("max wait for a GPU", &|r| Human(r.max_wait).to_string());
        row("grants", &|r| r.grants.to_string());
        row("bytes swapped (out + in)", &|r| Bytes(r.bytes_swapped).to_string());
        table
    }

    /// The cell of row `label` in column `column`, if both exist.
    pub fn cell(&self, label: &str, column: usize) -> Option<&str> {
        self.rows.iter().find(|(l, _)| l == label).and_then(|(_, cells)| cells.get(column)).map(String::as_str)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.columns.is_empty() {
            return Ok(());
        }
        let label_width = self.rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        let cells = self.rows.iter().flat_map(|(_, cells)| cells).chain(&self.columns);
        let column_width = cells.map(String::len).max().unwrap_or(0).max(10);
        let heading = (String::new(), self.columns.clone());
        for (label, cells) in core::iter::once(&heading).chain(&self.rows) {
            write!(f, "{label:<label_width$}")?;
            for cell in cells {
                write!(f, "  {cell:>column_width$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(from: u64, to: u64) -> (Duration, Duration) {
        (Duration::from_millis(from), Duration::from_millis(to))
    }

    #[test]
    fn overlapping_and_touching_intervals_merge_and_empty_ones_drop() {
        let u = union([ms(300, 400), ms(0, 100), ms(50, 200), ms(200, 250), ms(500, 500), ms(700, 600)]);
        assert_eq!(u, [ms(0, 250), ms(300, 400)]);
        assert_eq!(union_length::<_, Duration>([ms(300, 400), ms(0, 100), ms(50, 200)]), Duration::from_millis(300));
        assert_eq!(union_length::<Duration, Duration>([]), Duration::ZERO);
    }

    #[test]
    fn float_intervals_with_nan_are_dropped_not_a_panic() {
        let u = union([(f64::NAN, 1.0), (0.0, f64::NAN), (2.0, 3.0), (1.0, 2.5)]);
        assert_eq!(u, [(1.0, 3.0)]);
        assert_eq!(union_length::<f64, f64>([(0.0, 1.0), (0.5, 1.5)]), 1.5);
    }

    #[test]
    fn two_jobs_at_once_on_one_gpu_count_once_and_other_gpus_are_ignored() {
        let busy = |gpu, (from, to)| Busy { gpu, from, to };
        let spans = [busy(0, ms(0, 300)), busy(0, ms(100, 400)), busy(1, ms(0, 200)), busy(5, ms(0, 1000))];
        // GPU 0: 400 ms, GPU 1: 200 ms, of 2 x 1 s.
        assert!((busy_fraction(2, Duration::from_secs(1), spans) - 0.3).abs() < 1e-12);
        assert_eq!(busy_fraction(0, Duration::from_secs(1), spans), 0.0);
        assert_eq!(busy_fraction(2, Duration::ZERO, spans), 0.0);
    }

    fn run(label: &str, wall_secs: u64, acquisitions: Option<u64>) -> RunFigures {
        RunFigures {
            label: label.to_string(),
            gpus: 2,
            jobs: 8,
            items: 48,
            wall_time: Duration::from_secs(wall_secs),
            gpu_busy: 0.252,
            acquisitions,
            mean_wait: Duration::from_millis(254),
            max_wait: Duration::from_secs(75),
            grants: 8,
            bytes_swapped: 5 << 29,
        }
    }

    #[test]
    fn the_table_compares_with_the_first_column() {
        let t = Table::compare(&[run("static", 36, None), run("brokered", 12, Some(48))]);
        assert_eq!(t.cell("wall time", 0), Some("36.0 s"));
        assert_eq!(t.cell("items per hour", 0), Some("4800.0"));
        assert_eq!(t.cell("  vs first column", 1), Some("3.00x"));
        assert_eq!(t.cell("items per GPU-hour", 1), Some("7200.0"));
        assert_eq!(t.cell("GPU acquisitions", 0), Some("-"));
        assert_eq!(t.cell("max wait for a GPU", 1), Some("1m 15s"));
        assert_eq!(t.cell("bytes swapped (out + in)", 1), Some("2.5 GiB"));
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + t.rows.len());
        assert_eq!(lines[0], "                              static    brokered");
        assert_eq!(lines[4], "items per hour                4800.0     14400.0");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{text}");
    }

    #[test]
    fn a_run_of_no_time_or_no_gpus_shows_dashes_not_infinities() {
        let mut empty = run("empty", 0, None);
        empty.gpus = 0;
        let t = Table::compare(&[empty]);
        assert_eq!(t.cell("items per hour", 0), Some("0.0"));
        assert_eq!(t.cell("  vs first column", 0), Some("-"));
        assert_eq!(t.cell("items per GPU-hour", 0), Some("-"));
        assert_eq!(t.cell("GPU acquisitions", 0), None);
        assert_eq!(Table::compare(&[]).to_string(), "");
    }
}
