//! What a simulation reports, and the side-by-side table (drawn by [`crate::stats`]).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::stats::{self, Busy, RunFigures, Table};
use crate::time::duration_nanos;
use crate::{GpuId, Instant};

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
        stats::per_hour(self.items, self.makespan)
    }

    /// Fraction of GPU time in which at least one job computed, over all GPUs and the whole
    /// makespan (0..=1). Under `gpu-sharing` two jobs computing at once count once.
    pub fn gpu_busy(&self) -> f64 {
        stats::busy_fraction(u32::try_from(self.gpus).unwrap_or(u32::MAX), self.makespan, self.computing())
    }

    /// Busy fraction of one GPU.
    pub fn gpu_busy_of(&self, gpu: GpuId) -> f64 {
        // Its own times, as those of the only GPU of a pool of one.
        let own = self.computing().filter(|b| b.gpu == gpu.0).map(|b| Busy { gpu: 0, ..b });
        stats::busy_fraction(1, self.makespan, own)
    }

    /// The times each GPU computed, from the start of the simulation.
    fn computing(&self) -> impl Iterator<Item = Busy> + '_ {
        self.spans.iter().filter(|s| s.kind == SpanKind::Compute).map(|s| Busy {
            gpu: s.gpu.0,
            from: s.start - Instant::ZERO,
            to: s.end - Instant::ZERO,
        })
    }

    /// Mean wait for a grant.
    pub fn mean_wait(&self) -> Duration {
        if self.grants == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::try_from(self.wait_total / u128::from(self.grants)).unwrap_or(u64::MAX))
    }

    /// The figures the comparison table shows.
    pub fn figures(&self) -> RunFigures {
        RunFigures {
            label: self.label.clone(),
            gpus: u32::try_from(self.gpus).unwrap_or(u32::MAX),
            jobs: self.jobs,
            items: self.items,
            wall_time: self.makespan,
            gpu_busy: self.gpu_busy(),
            // Every grant ends one wait: the same number as the grants.
            acquisitions: None,
            mean_wait: self.mean_wait(),
            max_wait: self.wait_max,
            grants: self.grants,
            bytes_swapped: u64::try_from(self.bytes_swapped).unwrap_or(u64::MAX),
        }
    }
}

/// Several runs on the same jobs, printed side by side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// The runs; the first is the baseline the ratios are taken against.
    pub reports: Vec<Report>,
}

impl Comparison {
    /// The side-by-side table of the runs.
    pub fn table(&self) -> Table {
        let figures: Vec<RunFigures> = self.reports.iter().map(Report::figures).collect();
        Table::compare(&figures)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.table().fmt(f)
    }
}
