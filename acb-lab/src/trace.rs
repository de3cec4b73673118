//! Job traces for `acb-assigner simulate`: a small JSON format, documented in the README.
//!
//! ```json
//! {
//!   "gpus": "fake:1x80GiB",
//!   "swap_bandwidth": "20GB",
//!   "jobs": [
//!     { "name": "alphafold2", "count": 8, "memory": "8GiB", "repeat": 10,
//!       "phases": [ { "cpu": "490s" }, { "gpu": "110s" } ] }
//!   ]
//! }
//! ```
//! Each job is a list of phases (`cpu` or `gpu`, with a duration) that make one work item,
//! repeated `repeat` times; `count` makes that many identical jobs. Required per job: `name`,
//! `phases`; optional: `memory` (per GPU, what is swapped; `0`, the default, for none),
//! `count` and `repeat` (1), `arrival` (0s), `gpus` (1), `priority` (0). The top-level `gpus`
//! is required unless `simulate --gpus` gives the pool; `swap_bandwidth` and `grant_latency`
//! (0s) are optional.

use std::path::Path;
use std::time::Duration;

use acb_core::sim::{JobSpec, Phase, Report, SpanKind};
use serde::Deserialize;

use acb_core::inventory::GpuSpec;
use acb_core::record::{Event, EventKind};

use crate::Error;
use acb_core::units::{parse_duration, parse_size};

/// The most jobs a trace may describe.
pub const MAX_JOBS: u64 = 100_000;
/// The most phases a trace may describe in all, each job's counted once per copy (`count`):
/// every copy holds its own list, so a 4 KB trace once asked for 745 MB.
pub const MAX_PHASES: u64 = 1_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceFile {
    gpus: Option<String>,
    swap_bandwidth: Option<String>,
    grant_latency: Option<String>,
    jobs: Vec<TraceJob>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceJob {
    name: String,
    count: Option<u32>,
    arrival: Option<String>,
    gpus: Option<u32>,
    memory: Option<String>,
    priority: Option<i32>,
    repeat: Option<u32>,
    phases: Vec<TracePhase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TracePhase {
    cpu: Option<String>,
    gpu: Option<String>,
}

/// A parsed trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The GPUs the trace names, if any.
    pub gpus: Option<GpuSpec>,
    /// Host<->device bandwidth for swaps, bytes per second, if given.
    pub swap_bandwidth: Option<u64>,
    /// From a grant to the job acting on it (zero when not given).
    pub grant_latency: Duration,
    /// The jobs, expanded (`count` copies each).
    pub jobs: Vec<JobSpec>,
}

/// Reads and checks a trace file; the message says what is wrong and where.
pub fn load(path: &Path) -> Result<Trace, Error> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(Error::io(file.clone()))?;
    parse(&text).map_err(|e| match e {
        Error::Trace { at, why } if at.is_empty() => Error::Trace { at: file, why },
        Error::Trace { at, why } => Error::Trace { at: format!("{file}: {at}"), why },
        other => other,
    })
}

/// Parses a trace from JSON text.
pub fn parse(text: &str) -> Result<Trace, Error> {
    let file: TraceFile = serde_json::from_str(text).map_err(Error::trace)?;
    let gpus = file.gpus.as_deref().map(str::parse::<GpuSpec>).transpose().map_err(Error::trace)?;
    let swap_bandwidth = file.swap_bandwidth.as_deref().map(parse_size).transpose().map_err(Error::trace)?;
    let grant_latency = file
        .grant_latency
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| Error::trace(format!("grant_latency: {e}")))?
        .unwrap_or(Duration::ZERO);
    if swap_bandwidth == Some(0) {
        return Err(Error::trace("swap_bandwidth must be more than 0 bytes per second"));
    }
    if file.jobs.is_empty() {
        return Err(Error::trace("the trace has no jobs"));
    }
    let total: u64 = file.jobs.iter().map(|j| u64::from(j.count.unwrap_or(1))).sum();
    if total > MAX_JOBS {
        return Err(Error::trace(format!("the trace describes {total} jobs; at most {MAX_JOBS}")));
    }
    let phases: u64 = file
        .jobs
        .iter()
        .map(|j| u64::from(j.count.unwrap_or(1)).saturating_mul(u64::try_from(j.phases.len()).unwrap_or(u64::MAX)))
        .fold(0, u64::saturating_add);
    if phases > MAX_PHASES {
        return Err(Error::trace(format!(
            "the trace describes {phases} phases in all (each job's times its count); at most {MAX_PHASES}"
        )));
    }
    let mut jobs = Vec::new();
    for (i, j) in file.jobs.iter().enumerate() {
        let at = |what: &str, why: &dyn std::fmt::Display| Error::Trace {
            at: format!("job {} ({:?}): {what}", i + 1, j.name),
            why: why.to_string(),
        };
        let memory = j.memory.as_deref().map(parse_size).transpose().map_err(|e| at("memory", &e))?.unwrap_or(0);
        let arrival = j.arrival.as_deref().map(parse_duration).transpose().map_err(|e| at("arrival", &e))?;
        let mut phases = Vec::new();
        for (k, p) in j.phases.iter().enumerate() {
            let phase = match (&p.cpu, &p.gpu) {
                (Some(d), None) => Phase::Cpu(parse_duration(d).map_err(|e| at(&format!("phase {}", k + 1), &e))?),
                (None, Some(d)) => Phase::Gpu(parse_duration(d).map_err(|e| at(&format!("phase {}", k + 1), &e))?),
                _ => return Err(at(&format!("phase {}", k + 1), &"give exactly one of \"cpu\" or \"gpu\"")),
            };
            phases.push(phase);
        }
        let count = j.count.unwrap_or(1);
        if count == 0 {
            return Err(at("count", &"must be at least 1"));
        }
        for c in 0..count {
            let name = if count == 1 { j.name.clone() } else { format!("{}-{c}", j.name) };
            jobs.push(JobSpec {
                name,
                arrival: arrival.unwrap_or(Duration::ZERO),
                gpus: j.gpus.unwrap_or(1),
                memory_per_gpu: memory,
                priority: j.priority.unwrap_or(0),
                phases: phases.clone(),
                repeat: j.repeat.unwrap_or(1),
            });
        }
    }
    Ok(Trace { gpus, swap_bandwidth, grant_latency, jobs })
}

/// When each GPU computed in a simulation, for the timeline: computing drawn solid inside
/// the holds, utilisation counted as computing.
pub fn busy_of(report: &Report) -> Vec<crate::timeline::Busy> {
    report
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Compute)
        .map(|s| crate::timeline::Busy {
            gpu: s.gpu.0,
            from: Duration::from_nanos(s.start.as_nanos()),
            to: Duration::from_nanos(s.end.as_nanos()),
        })
        .collect()
}

/// A simulation's record as assigner events, so the same timeline renderer draws it: a lease
/// per hold (granted at its start, released at its end), a request per wait.
pub fn events_of(report: &Report, jobs: &[JobSpec]) -> Vec<Event> {
    use std::collections::BTreeMap;
    let mut holds: BTreeMap<(usize, u64, u64), Vec<u32>> = BTreeMap::new();
    for s in report.spans.iter().filter(|s| s.kind == SpanKind::Held) {
        holds.entry((s.job, s.start.as_nanos(), s.end.as_nanos())).or_default().push(s.gpu.0);
    }
    let name = |j: usize| jobs.get(j).map(|x| x.name.clone()).unwrap_or_default();
    let mut out: Vec<(u64, u8, EventKind)> = Vec::new();
    for j in 0..jobs.len() {
        out.push((0, 0, EventKind::Connected { client: j as u64 + 1, job: name(j) }));
    }
    let mut waits: BTreeMap<(usize, u64), u64> = BTreeMap::new();
    for w in &report.waits {
        waits.insert((w.job, w.end.as_nanos()), w.start.as_nanos());
    }
    for (n, ((job, start, end), gpus)) in holds.into_iter().enumerate() {
        let (client, id) = (job as u64 + 1, n as u64 + 1);
        let asked = waits.get(&(job, start)).copied().unwrap_or(start);
        out.push((
            asked,
            1,
            EventKind::Requested {
                client,
                job: name(job),
                request: id,
                gpus: gpus.len() as u32,
                memory_per_gpu: None,
                priority: 0,
                group: None,
            },
        ));
        out.push((
            start,
            2,
            EventKind::Granted {
                client,
                job: name(job),
                request: id,
                lease: id,
                gpus,
                memory_per_gpu: 0,
                waited: Duration::from_nanos(start - asked),
            },
        ));
        out.push((end, 3, EventKind::Released { client, lease: id, by_disconnect: false }));
    }
    out.sort_by_key(|(t, order, _)| (*t, *order));
    out.into_iter()
        .enumerate()
        .map(|(i, (t, _, kind))| Event { seq: i as u64 + 1, at: Duration::from_nanos(t), kind })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_parses_and_expands_counts() {
        let t = parse(
            r#"{"gpus": "fake:1x80GiB", "swap_bandwidth": "20GB",
                "jobs": [{"name": "af", "count": 3, "memory": "8GiB", "repeat": 2,
                          "phases": [{"cpu": "490s"}, {"gpu": "110s"}]}]}"#,
        )
        .unwrap();
        assert_eq!(t.jobs.len(), 3);
        assert_eq!(t.jobs[2].name, "af-2");
        assert_eq!(t.jobs[0].phases, vec![Phase::Cpu(Duration::from_secs(490)), Phase::Gpu(Duration::from_secs(110))]);
        assert_eq!(t.swap_bandwidth, Some(20_000_000_000));
        assert_eq!(t.grant_latency, Duration::ZERO);
    }

    #[test]
    fn memory_is_optional_and_none_means_nothing_to_swap() {
        // What `agarun --profile` writes for a job with no swappable memory.
        let t = parse(
            r#"{"grant_latency": "2ms", "jobs": [{"name": "fold", "phases": [{"cpu": "500ms"}, {"gpu": "150ms"}]},
                                                 {"name": "zero", "memory": "0B", "phases": [{"gpu": "1s"}]}]}"#,
        )
        .unwrap();
        assert_eq!((t.jobs[0].memory_per_gpu, t.jobs[1].memory_per_gpu), (0, 0));
        assert_eq!(t.grant_latency, Duration::from_millis(2));
    }

    #[test]
    fn bad_traces_say_what_and_where() {
        // Found while fuzzing the parser: each of 100,000 copies held its own 300 phases, so a
        // 4 KB trace took 745 MB (fuzz/corpus/trace/regression-phases). Here 11 phases each.
        let many_phases = format!(
            r#"{{"jobs": [{{"name": "x", "count": 100000, "memory": "1", "phases": [{}]}}]}}"#,
            [r#"{"gpu": "1s"}"#; 11].join(", ")
        );
        let bad = [
            (r#"{"jobs": []}"#, "no jobs"),
            (r#"{"jobs": [{"name": "x", "memory": "lots", "phases": []}]}"#, "memory"),
            (r#"{"jobs": [{"name": "x", "memory": "1GiB", "phases": [{"cpu": "1s", "gpu": "1s"}]}]}"#, "exactly one"),
            (r#"{"jobs": [{"name": "x", "memory": "1GiB", "phases": [{"gpu": "soon"}]}]}"#, "phase 1"),
            (r#"{"jobs": [{"name": "x", "memory": "1GiB", "phases": [], "colour": 3}]}"#, "colour"),
            (r#"{"jobs": [{"name": "x", "count": 200000, "memory": "1GiB", "phases": []}]}"#, "at most"),
            (many_phases.as_str(), "1100000 phases in all (each job's times its count); at most 1000000"),
            (r#"{"swap_bandwidth": "0", "jobs": [{"name": "x", "memory": "1GiB", "phases": []}]}"#, "more than 0"),
            ("not json", "expected"),
        ];
        for (text, needle) in bad {
            let e = parse(text).unwrap_err();
            assert!(matches!(e, Error::Trace { .. }), "{text}: {e:?}");
            let e = e.to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
