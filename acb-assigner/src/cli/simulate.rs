//! `simulate`: the acb-core simulator on a job trace, the static baseline beside each scheduler
//! asked for, with a timeline per run on request. No GPU is used.

use std::time::Duration;

use acb_core::{Bytes, Policy};

use super::{CliError, SimulateArgs, parse_policy};
use crate::config::GpuSpec;

pub(super) fn run(args: SimulateArgs) -> Result<(), CliError> {
    let SimulateArgs { trace, scheduler, gpus, eager, quantum, swap_bandwidth, svg_dir } = args;
    let out = simulate(&trace, &scheduler, gpus, eager, quantum, swap_bandwidth, svg_dir.as_deref())?;
    print!("{out}");
    Ok(())
}

/// Every failure here is status 2, as for bad flags: the trace or the flags are wrong (a trace
/// that cannot be read or a picture that cannot be written included, as they always were).
fn simulate(
    trace: &std::path::Path,
    schedulers: &str,
    gpus: Option<GpuSpec>,
    eager: bool,
    quantum: Option<Duration>,
    swap_bandwidth: Option<u64>,
    svg_dir: Option<&std::path::Path>,
) -> Result<String, CliError> {
    use acb_core::sim::{self, Comparison, Mode, SimConfig};
    use acb_core::{ClientConfig, ReleaseMode, SchedulerConfig};
    let t = acb_lab::trace::load(trace).map_err(CliError::usage)?;
    let policies: Vec<Policy> = if schedulers == "all" {
        Policy::ALL.to_vec()
    } else {
        schedulers.split(',').map(|s| parse_policy(s.trim())).collect::<Result<_, _>>().map_err(CliError::usage)?
    };
    let spec = gpus
        .or(t.gpus.clone())
        .ok_or_else(|| CliError::usage("no GPUs: give --gpus fake:COUNTxSIZE or \"gpus\" in the trace"))?;
    let GpuSpec::Fake(_) = &spec else {
        return Err(CliError::usage("simulate takes simulated GPUs: --gpus fake:COUNTxSIZE[,COUNTxSIZE]"));
    };
    let found = crate::discovery::discover(&spec).map_err(CliError::usage)?;
    let pool = crate::discovery::pool_of("simulated", &found);
    let client =
        ClientConfig { release: if eager { ReleaseMode::Eager } else { ReleaseMode::Lazy }, idle_timeout: None };
    let bandwidth = swap_bandwidth.or(t.swap_bandwidth).unwrap_or(20_000_000_000);
    let mut reports = Vec::new();
    let modes = std::iter::once(Mode::Static).chain(policies.iter().map(|p| {
        let mut c = SchedulerConfig::new(*p);
        c.quantum = quantum;
        Mode::Brokered(c)
    }));
    for mode in modes {
        let mut cfg = SimConfig::new(pool.clone(), mode);
        cfg.client = client.clone();
        cfg.swap_bandwidth = bandwidth;
        cfg.grant_latency = t.grant_latency;
        let report = sim::run(&cfg, &t.jobs).map_err(CliError::usage)?;
        if let Some(dir) = svg_dir {
            std::fs::create_dir_all(dir).map_err(|e| CliError::usage(format!("{}: {e}", dir.display())))?;
            let rows: Vec<acb_lab::timeline::GpuRow> = found
                .iter()
                .map(|g| acb_lab::timeline::GpuRow {
                    id: g.index,
                    label: format!("gpu{} (simulated, {})", g.index, Bytes(g.memory)),
                })
                .collect();
            let events = acb_lab::trace::events_of(&report, &t.jobs);
            let busy = acb_lab::trace::busy_of(&report);
            let title = format!("{}: {} (SIMULATED)", trace.display(), report.label);
            let svg = acb_lab::timeline::render_svg_with_busy(
                &title,
                &rows,
                &events,
                (Duration::ZERO, report.makespan),
                &busy,
            );
            let path = dir.join(format!("{}.svg", report.label));
            std::fs::write(&path, svg).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
        }
        reports.push(report);
    }
    let latency = if t.grant_latency.is_zero() {
        String::new()
    } else {
        format!(", {} from grant to job", acb_core::units::Human(t.grant_latency))
    };
    let mut out = format!(
        "SIMULATED with the acb-core simulator (no GPU used): {} jobs on {} GPU(s), swaps at {:.1} GB/s{latency}, {} \
         release\n\n",
        t.jobs.len(),
        found.len(),
        bandwidth as f64 / 1e9,
        if eager { "eager" } else { "lazy" }
    );
    let bound = sim::makespan_lower_bound(found.len(), &t.jobs);
    let static_makespan = reports.first().map_or(Duration::ZERO, |r| r.makespan);
    out.push_str(&Comparison { reports }.to_string());
    out.push_str(&format!(
        "\nhardware bound: no run of these jobs on {} GPU(s) ends before {} (all GPU-phase work spread over the \
         GPUs, or the longest job alone): at most {:.2}x the static run's items per hour. Jobs computing on one GPU \
         at once share it (each at 1/k of its speed with k there).\n",
        found.len(),
        acb_core::units::Human(bound),
        static_makespan.as_secs_f64() / bound.as_secs_f64().max(1e-9),
    ));
    if let Some(dir) = svg_dir {
        out.push_str(&format!("\ntimelines written to {}\n", dir.display()));
    }
    Ok(out)
}
