//! What a simulation reports, and the side-by-side table.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::time::duration_nanos;
use crate::{Bytes, GpuId, Instant};

/// What a GPU was doing for a job over an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The job held the GPU (from grant to release), busy or not.
    Held,
    /// The job computed on it.
    Compute,
    /// The job's memory was being copied onto it.
    SwapIn,
    /// The job's memory was being copied off it.
    SwapOut,
}

/// One interval of a GPU's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The GPU.
    pub gpu: GpuId,
    /// The job (its index in the trace).
    pub job: usize,
    /// Start.
    pub start: Instant,
    /// End.
    pub end: Instant,
    /// What happened.
    pub kind: SpanKind,
}

/// A job waiting for a grant, from its request to its grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    /// The job (its index in the trace).
    pub job: usize,
    /// When it asked.
    pub start: Instant,
    /// When it was granted.
    pub end: Instant,
}

/// The outcome of one simulation run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `static`, or the scheduler's name.
    pub label: String,
    /// GPUs in the pool.
    pub gpus: usize,
    /// Jobs in the trace.
    pub jobs: usize,
    /// Jobs that finished.
    pub jobs_done: usize,
    /// Work items finished.
    pub items: u64,
    /// From the start to the last job's end.
    pub makespan: Duration,
    /// GPU-nanoseconds of computing (a two-GPU phase of 1 s counts 2 s).
    pub compute: u128,
    /// Grants.
    pub grants: u64,
    /// Sum of the waits for a grant, in nanoseconds.
    pub wait_total: u128,
    /// The longest wait for a grant.
    pub wait_max: Duration,
    /// Bytes copied by swaps, both directions.
    pub bytes_swapped: u128,
    /// Yield requests sent to holders.
    pub yields: u64,
    /// The timeline: holds, computing and swaps per GPU.
    pub spans: Vec<Span>,
    /// Every wait for a grant.
    pub waits: Vec<Wait>,
}

impl Report {
    pub(crate) fn new(label: String, gpus: usize, jobs: usize) -> Self {
        Report {
            label,
            gpus,
            jobs,
            jobs_done: 0,
            items: 0,
            makespan: Duration::ZERO,
            compute: 0,
            grants: 0,
            wait_total: 0,
            wait_max: Duration::ZERO,
            bytes_swapped: 0,
            yields: 0,
            spans: Vec::new(),
            waits: Vec::new(),
        }
    }

    pub(crate) fn record_wait(&mut self, waited: Duration) {
        self.grants += 1;
        self.wait_total += u128::from(duration_nanos(waited));
        self.wait_max = self.wait_max.max(waited);
    }

    pub(crate) fn finish(&mut self, end: Instant) {
        self.makespan = end - Instant::ZERO;
    }

    /// Work items per hour of makespan.
    pub fn items_per_hour(&self) -> f64 {
        let secs = self.makespan.as_secs_f64();
        if secs == 0.0 { 0.0 } else { self.items as f64 * 3600.0 / secs }
    }

    /// Fraction of GPU time in which at least one job computed, over all GPUs and the whole
    /// makespan (0..=1). Under `gpu-sharing` two jobs computing at once count once.
    pub fn gpu_busy(&self) -> f64 {
        let capacity = self.gpus as f64 * self.makespan.as_nanos() as f64;
        let busy: u128 = (0..self.gpus).map(|g| self.busy_nanos(GpuId(g as u32))).sum();
        if capacity == 0.0 { 0.0 } else { busy as f64 / capacity }
    }

    /// Busy fraction of one GPU.
    pub fn gpu_busy_of(&self, gpu: GpuId) -> f64 {
        let capacity = self.makespan.as_nanos() as f64;
        if capacity == 0.0 { 0.0 } else { self.busy_nanos(gpu) as f64 / capacity }
    }

    /// Nanoseconds in which `gpu` computed for anyone: the union of its compute spans.
    fn busy_nanos(&self, gpu: GpuId) -> u128 {
        let mut spans: Vec<(Instant, Instant)> = self
            .spans
            .iter()
            .filter(|s| s.gpu == gpu && s.kind == SpanKind::Compute)
            .map(|s| (s.start, s.end))
            .collect();
        spans.sort_unstable();
        let mut busy = 0u128;
        let mut current: Option<(Instant, Instant)> = None;
        for (start, end) in spans {
            current = match current {
                Some((s, e)) if start <= e => Some((s, e.max(end))),
                Some((s, e)) => {
                    busy += (e - s).as_nanos();
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((s, e)) = current {
            busy += (e - s).as_nanos();
        }
        busy
    }

    /// Mean wait for a grant.
    pub fn mean_wait(&self) -> Duration {
        if self.grants == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::try_from(self.wait_total / u128::from(self.grants)).unwrap_or(u64::MAX))
    }
}

/// Several runs on the same jobs, printed side by side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// The runs; the first is the baseline the ratios are taken against.
    pub reports: Vec<Report>,
}

/// A duration for people: `1h 02m`, `3m 05s`, `4.2 s`, `12 ms`.
#[derive(Clone, Copy, Debug)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        if s >= 3600 {
            write!(f, "{}h {:02}m", s / 3600, (s % 3600) / 60)
        } else if s >= 60 {
            write!(f, "{}m {:02}s", s / 60, s % 60)
        } else if s >= 1 {
            write!(f, "{:.1} s", self.0.as_secs_f64())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(base) = self.reports.first() else {
            return Ok(());
        };
        let mut rows: Vec<(&str, Vec<String>)> = Vec::new();
        let col = |g: &dyn Fn(&Report) -> String| self.reports.iter().map(g).collect::<Vec<_>>();
        rows.push(("", col(&|r| r.label.clone())));
        rows.push(("GPUs / jobs", col(&|r| alloc::format!("{} / {}", r.gpus, r.jobs))));
        rows.push(("work items done", col(&|r| alloc::format!("{}", r.items))));
        rows.push(("makespan", col(&|r| alloc::format!("{}", Human(r.makespan)))));
        rows.push(("items per hour", col(&|r| alloc::format!("{:.1}", r.items_per_hour()))));
        rows.push((
            "  vs first column",
            col(&|r| {
                let b = base.items_per_hour();
                if b == 0.0 { String::from("-") } else { alloc::format!("{:.2}x", r.items_per_hour() / b) }
            }),
        ));
        rows.push((
            "items per GPU-hour",
            col(&|r| {
                if r.gpus == 0 {
                    String::from("-")
                } else {
                    alloc::format!("{:.1}", r.items_per_hour() / r.gpus as f64)
                }
            }),
        ));
        rows.push(("GPU busy", col(&|r| alloc::format!("{:.1} %", r.gpu_busy() * 100.0))));
        rows.push(("mean wait for GPU", col(&|r| alloc::format!("{}", Human(r.mean_wait())))));
        rows.push(("max wait for GPU", col(&|r| alloc::format!("{}", Human(r.wait_max)))));
        rows.push(("grants", col(&|r| alloc::format!("{}", r.grants))));
        rows.push((
            "bytes swapped",
            col(&|r| alloc::format!("{}", Bytes(u64::try_from(r.bytes_swapped).unwrap_or(u64::MAX)))),
        ));
        let label_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let col_w = rows.iter().flat_map(|r| r.1.iter().map(|c| c.len())).max().unwrap_or(0).max(10);
        for (label, cells) in rows {
            write!(f, "{label:<label_w$}")?;
            for c in cells {
                write!(f, "  {c:>col_w$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
