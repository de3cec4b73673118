//! The demo beside `simulate`'s prediction of it: what a handover of a GPU cost in the brokered
//! run, measured from its record, and the acb-core simulator run on the same workload with those
//! costs. Pure, so it is tested on its own.
//!
//! A handover is measured on the GPU's timeline, from the assigner's grants and releases and the
//! jobs' own computing:
//! - **grant latency**: from a grant to the job computing, on each job's first grant (its memory
//!   does not exist yet, so nothing comes back): the grant's message, the job's thread waking;
//! - **swap in**: the same on later grants, less the grant latency: the job's memory coming back;
//! - **swap out**: from the end of the holder's computing to its release: its memory going out,
//!   and the release's message.
//!
//! The simulator takes the grant latency as it is, and the swaps as a bandwidth: the bytes of
//! both directions over the time of both. Medians, so that one slow handover does not count.

use std::collections::BTreeMap;
use std::time::Duration;

use acb_core::record::{Event, EventKind};
use acb_core::sim::{self, JobSpec, Mode, Phase, Report, SimConfig};
use acb_core::{GpuPool, Policy, SchedulerConfig};

use crate::timeline::Busy;

/// What a handover of a GPU cost in a brokered run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Handover {
    /// From a grant to the job computing, when nothing comes back (first grants).
    pub grant_latency: Duration,
    /// Bringing a job's memory back (later grants, less the grant latency).
    pub swap_in: Duration,
    /// From the end of a holder's computing to its release.
    pub swap_out: Duration,
    /// Grants measured: first ones, later ones; releases measured.
    pub samples: (usize, usize, usize),
}

impl Handover {
    /// Reads a brokered run's record (`events`) and when its GPUs computed (`busy`, by GPU
    /// id, in the record's time). `None` when the run had no handover to measure.
    pub fn measure(events: &[Event], busy: &[Busy]) -> Option<Handover> {
        struct Hold {
            client: u64,
            gpu: u32,
            from: Duration,
            to: Option<Duration>,
        }
        let mut holds: BTreeMap<u64, Hold> = BTreeMap::new();
        for e in events {
            match &e.kind {
                EventKind::Granted { client, lease, gpus, .. } => {
                    if let Some(&gpu) = gpus.first() {
                        holds.insert(*lease, Hold { client: *client, gpu, from: e.at, to: None });
                    }
                }
                EventKind::Released { lease, by_disconnect: false, .. } => {
                    if let Some(h) = holds.get_mut(lease) {
                        h.to = Some(e.at);
                    }
                }
                _ => {}
            }
        }
        let (mut first, mut later, mut out) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = std::collections::BTreeSet::new();
        let mut by_start: Vec<&Hold> = holds.values().collect();
        by_start.sort_by_key(|h| h.from);
        for h in by_start {
            let end = h.to.unwrap_or(Duration::MAX);
            let inside: Vec<&Busy> =
                busy.iter().filter(|b| b.gpu == h.gpu && b.from >= h.from && b.to <= end).collect();
            let (Some(start), Some(stop)) = (inside.iter().map(|b| b.from).min(), inside.iter().map(|b| b.to).max())
            else {
                continue;
            };
            if seen.insert(h.client) {
                first.push(start - h.from)
            } else {
                later.push(start - h.from)
            }
            if let Some(to) = h.to {
                out.push(to.saturating_sub(stop));
            }
        }
        let grant_latency = median(&mut first)?;
        let swap_in = median(&mut later).map_or(Duration::ZERO, |d| d.saturating_sub(grant_latency));
        let swap_out = median(&mut out).unwrap_or_default();
        Some(Handover { grant_latency, swap_in, swap_out, samples: (first.len(), later.len(), out.len()) })
    }

    /// The swap bandwidth that moves `memory` bytes out and back in the measured time, in bytes
    /// per second; `None` when there is no memory or no measured swap time.
    pub fn swap_bandwidth(&self, memory: u64) -> Option<u64> {
        let both = (self.swap_in + self.swap_out).as_secs_f64();
        (memory > 0 && both > 0.0).then(|| (2.0 * memory as f64 / both).round() as u64).filter(|&b| b > 0)
    }
}

fn median(values: &mut [Duration]) -> Option<Duration> {
    values.sort();
    values.get(values.len() / 2).copied()
}

/// The demo's workload as a simulator trace: `jobs` jobs of `items` work items, each a `cpu`
/// phase then a `gpu` phase, keeping `memory` bytes.
pub fn workload(jobs: u32, items: u32, cpu: Duration, gpu: Duration, memory: u64) -> Vec<JobSpec> {
    (0..jobs).map(|j| JobSpec::new(format!("job-{j}"), memory, vec![Phase::Cpu(cpu), Phase::Gpu(gpu)], items)).collect()
}

/// The simulator's static and brokered runs of `jobs` on `gpus` GPUs under `policy`, with the
/// measured handover's costs (20 GB/s swaps where none was measured).
pub fn simulate(
    gpus: u32,
    jobs: &[JobSpec],
    policy: Policy,
    handover: Option<&Handover>,
) -> Result<(Report, Report), sim::SimError> {
    let pool = GpuPool::uniform("demo", gpus, 80 << 30);
    let memory = jobs.first().map_or(0, |j| j.memory_per_gpu);
    let mut cfg = SimConfig::new(pool, Mode::Static);
    if let Some(h) = handover {
        cfg.grant_latency = h.grant_latency;
        if let Some(b) = h.swap_bandwidth(memory) {
            cfg.swap_bandwidth = b;
        }
    }
    let stat = sim::run(&cfg, jobs)?;
    cfg.mode = Mode::Brokered(SchedulerConfig::new(policy));
    let brokered = sim::run(&cfg, jobs)?;
    Ok((stat, brokered))
}

/// The trace `acb-assigner simulate --trace` reads for the same prediction.
pub fn trace_json(
    gpus: u32,
    jobs: u32,
    items: u32,
    cpu: Duration,
    gpu: Duration,
    memory: u64,
    h: Option<&Handover>,
) -> String {
    let mut top = vec![format!(r#""gpus": "fake:{gpus}x80GiB""#)];
    if let Some(h) = h {
        top.push(format!(r#""grant_latency": "{:.3}ms""#, h.grant_latency.as_secs_f64() * 1e3));
        if let Some(b) = h.swap_bandwidth(memory) {
            top.push(format!(r#""swap_bandwidth": "{b}""#));
        }
    }
    format!(
        "{{ {},\n  \"jobs\": [ {{ \"name\": \"job\", \"count\": {jobs}, \"memory\": \"{memory}B\", \"repeat\": {items},\n             \"phases\": [ {{ \"cpu\": \"{}ms\" }}, {{ \"gpu\": \"{}ms\" }} ] }} ] }}\n",
        top.join(", "),
        cpu.as_millis(),
        gpu.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn granted(at: u64, client: u64, lease: u64) -> Event {
        Event {
            seq: 0,
            at: ms(at),
            kind: EventKind::Granted {
                client,
                job: String::new(),
                request: lease,
                lease,
                gpus: vec![0],
                memory_per_gpu: 0,
                waited: Duration::ZERO,
            },
        }
    }

    fn released(at: u64, client: u64, lease: u64) -> Event {
        Event { seq: 0, at: ms(at), kind: EventKind::Released { client, lease, by_disconnect: false } }
    }

    fn busy(from: u64, to: u64) -> Busy {
        Busy { gpu: 0, from: ms(from), to: ms(to) }
    }

    #[test]
    fn a_handover_splits_into_grant_latency_swap_in_and_swap_out() {
        // One GPU. Job 1's first grant at 0, computing 2..102, released at 110 (8 ms out); job
        // 2's first at 110, computing 112..212, released at 220; job 1 again at 220, computing
        // from 242 (2 ms latency + 20 ms in) to 342, released at 350.
        let events = [
            granted(0, 1, 1),
            released(110, 1, 1),
            granted(110, 2, 2),
            released(220, 2, 2),
            granted(220, 1, 3),
            released(350, 1, 3),
        ];
        let h = Handover::measure(&events, &[busy(2, 102), busy(112, 212), busy(242, 342)]).unwrap();
        assert_eq!((h.grant_latency, h.swap_in, h.swap_out), (ms(2), ms(20), ms(8)));
        assert_eq!(h.samples, (2, 1, 3));
        // 32 MiB each way in 28 ms: 2.4 GB/s.
        assert_eq!(h.swap_bandwidth(32 << 20), Some((2.0 * f64::from(32u32 << 20) / 0.028).round() as u64));
        assert_eq!(h.swap_bandwidth(0), None);
    }

    #[test]
    fn the_prediction_uses_the_measured_costs() {
        let jobs = workload(4, 3, ms(300), ms(100), 32 << 20);
        let (stat, quick) = simulate(1, &jobs, Policy::Simple, None).unwrap();
        let slow = Handover { grant_latency: ms(5), swap_in: ms(20), swap_out: ms(10), samples: (4, 8, 11) };
        let (_, slower) = simulate(1, &jobs, Policy::Simple, Some(&slow)).unwrap();
        assert_eq!(stat.makespan, ms(4 * 3 * 400));
        assert!(slower.makespan > quick.makespan + ms(8 * 30), "{:?} vs {:?}", slower.makespan, quick.makespan);
        let text = trace_json(1, 4, 3, ms(300), ms(100), 32 << 20, Some(&slow));
        let parsed = crate::trace::parse(&text).unwrap();
        assert_eq!(parsed.grant_latency, ms(5));
        assert_eq!(parsed.jobs.len(), 4);
        assert_eq!(parsed.swap_bandwidth, slow.swap_bandwidth(32 << 20));
    }
}
