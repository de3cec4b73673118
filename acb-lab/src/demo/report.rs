//! What a demo run measured, from its jobs' stamped lines: pure, so it is tested on its own.

use std::time::Duration;

use acb_core::stats::{self, Busy, RunFigures, Table};

use super::job::Line;

/// A line from job `job`, stamped when the demo read it (time since the run started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamped {
    /// The job's number.
    pub job: usize,
    /// When the line arrived.
    pub at: Duration,
    /// What it said.
    pub line: Line,
}

/// One run's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStats {
    /// The column's heading.
    pub label: String,
    /// GPUs in the pool.
    pub gpus: u32,
    /// Jobs run.
    pub jobs: usize,
    /// From the start of the run to the last job's exit.
    pub makespan: Duration,
    /// Work items done.
    pub items: u64,
    /// Each job's waits for a GPU: from asking (`acb_on_device_begin`) to having one.
    pub waits: Vec<Duration>,
    /// Grants the assigner made.
    pub grants: u64,
    /// Bytes the jobs' device memory moved, out and in, as they reported it at exit.
    pub swapped: u64,
    /// When each GPU computed (by GPU index), in the run's time.
    pub busy: Vec<Busy>,
}

impl RunStats {
    /// Reads the lines of a run of `jobs` jobs on `gpus` GPUs that took `makespan`.
    pub fn read(label: &str, gpus: u32, jobs: usize, makespan: Duration, lines: &[Stamped]) -> RunStats {
        #[derive(Clone, Copy, Default)]
        struct Job {
            asked: Option<Duration>,
            gpu: Option<u32>,
            computing: Option<Duration>,
        }
        let mut state = vec![Job::default(); jobs];
        let (mut items, mut waits, mut busy, mut swapped) = (0, Vec::new(), Vec::new(), 0u64);
        for s in lines {
            let Some(job) = state.get_mut(s.job) else { continue };
            match s.line {
                Line::Want => job.asked = Some(s.at),
                Line::Got(gpu) => {
                    waits.extend(job.asked.take().map(|asked| s.at.saturating_sub(asked)));
                    job.gpu = Some(gpu);
                }
                Line::GpuStart => job.computing = Some(s.at),
                Line::GpuEnd => {
                    if let (Some(from), Some(gpu)) = (job.computing.take(), job.gpu) {
                        busy.push(Busy { gpu, from, to: s.at.max(from) });
                    }
                }
                Line::Item => items += 1,
                Line::Ended => job.gpu = None,
                Line::Swapped(out, into) => swapped = swapped.saturating_add(out).saturating_add(into),
            }
        }
        RunStats { label: label.to_owned(), gpus, jobs, makespan, items, waits, grants: 0, swapped, busy }
    }

    /// Work items per hour.
    pub fn items_per_hour(&self) -> f64 {
        stats::per_hour(self.items, self.makespan)
    }

    /// The fraction of GPU-time spent computing, over all GPUs and the whole run; two jobs
    /// computing at once on one GPU count once.
    pub fn busy_fraction(&self) -> f64 {
        stats::busy_fraction(self.gpus, self.makespan, self.busy.iter().copied())
    }

    /// Mean wait for a GPU per acquisition (zero when there were none).
    pub fn mean_wait(&self) -> Duration {
        match u32::try_from(self.waits.len()) {
            Ok(n) if n > 0 => self.waits.iter().sum::<Duration>() / n,
            _ => Duration::ZERO,
        }
    }

    /// The longest wait for a GPU.
    pub fn max_wait(&self) -> Duration {
        self.waits.iter().max().copied().unwrap_or_default()
    }
}

impl RunStats {
    /// The run's figures as every comparison of runs shows them.
    pub fn figures(&self) -> RunFigures {
        RunFigures {
            label: self.label.clone(),
            gpus: self.gpus,
            jobs: self.jobs,
            items: self.items,
            wall_time: self.makespan,
            gpu_busy: self.busy_fraction(),
            acquisitions: Some(self.waits.len() as u64),
            mean_wait: self.mean_wait(),
            max_wait: self.max_wait(),
            grants: self.grants,
            bytes_swapped: self.swapped,
        }
    }
}

/// The side-by-side table (`acb_core::stats::Table`, as the simulator prints it), the first
/// column the baseline the others are compared with.
pub fn table(runs: &[RunStats]) -> String {
    Table::compare(&runs.iter().map(RunStats::figures).collect::<Vec<_>>()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(job: usize, ms: u64, line: Line) -> Stamped {
        Stamped { job, at: Duration::from_millis(ms), line }
    }

    /// Two jobs on one GPU, brokered: job 0 computes 100..300 ms, job 1 waits from 200 ms and
    /// computes 300..500 ms; the run ends at 1 s.
    fn two_jobs() -> Vec<Stamped> {
        vec![
            at(0, 100, Line::Want),
            at(0, 100, Line::Got(0)),
            at(0, 100, Line::GpuStart),
            at(1, 200, Line::Want),
            at(0, 300, Line::GpuEnd),
            at(0, 300, Line::Ended),
            at(0, 300, Line::Item),
            at(1, 300, Line::Got(0)),
            at(1, 300, Line::GpuStart),
            at(1, 500, Line::GpuEnd),
            at(1, 500, Line::Ended),
            at(1, 500, Line::Item),
        ]
    }

    #[test]
    fn two_jobs_on_one_gpu_compute_four_tenths_of_the_run() {
        let r = RunStats::read("brokered", 1, 2, Duration::from_secs(1), &two_jobs());
        assert_eq!(r.items, 2);
        assert!((r.busy_fraction() - 0.4).abs() < 1e-9, "{}", r.busy_fraction());
        assert_eq!(r.waits, vec![Duration::ZERO, Duration::from_millis(100)]);
        assert_eq!(r.mean_wait(), Duration::from_millis(50));
        assert_eq!(r.max_wait(), Duration::from_millis(100));
        assert!((r.items_per_hour() - 7200.0).abs() < 1e-6);
    }

    #[test]
    fn overlapping_computing_on_one_gpu_counts_once() {
        let lines = vec![
            at(0, 0, Line::Got(0)),
            at(1, 0, Line::Got(0)),
            at(0, 0, Line::GpuStart),
            at(1, 100, Line::GpuStart),
            at(0, 300, Line::GpuEnd),
            at(1, 400, Line::GpuEnd),
        ];
        let r = RunStats::read("sharing", 2, 2, Duration::from_secs(1), &lines);
        // 0..400 ms on GPU 0, nothing on GPU 1: 0.4 of 2 GPU-seconds.
        assert!((r.busy_fraction() - 0.2).abs() < 1e-9, "{}", r.busy_fraction());
    }

    #[test]
    fn lines_from_unknown_jobs_or_out_of_order_are_ignored() {
        let lines =
            vec![at(7, 0, Line::Item), at(0, 0, Line::GpuEnd), at(0, 10, Line::Got(0)), at(0, 20, Line::GpuEnd)];
        let r = RunStats::read("odd", 1, 1, Duration::ZERO, &lines);
        assert_eq!((r.items, r.busy.len(), r.waits.len()), (0, 0, 0));
        assert_eq!(r.busy_fraction(), 0.0);
        assert_eq!(r.items_per_hour(), 0.0);
    }

    #[test]
    fn the_table_compares_with_the_first_column() {
        let base = RunStats::read("static", 1, 2, Duration::from_secs(2), &two_jobs());
        let fast = RunStats::read("brokered", 1, 2, Duration::from_secs(1), &two_jobs());
        let t = table(&[base, fast]);
        assert!(t.contains("1.00x") && t.contains("2.00x"), "{t}");
        assert!(t.contains("bytes swapped (out + in)"), "{t}");
    }

    #[test]
    fn swaps_the_jobs_report_are_added_up() {
        let lines = vec![at(0, 10, Line::Swapped(100, 50)), at(1, 20, Line::Swapped(1, 2))];
        assert_eq!(RunStats::read("b", 1, 2, Duration::from_secs(1), &lines).swapped, 153);
    }
}
