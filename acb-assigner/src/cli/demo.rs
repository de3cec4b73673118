//! `demo`: the demo's settings resolved, checked (status 2) and then what the machine lacks
//! (status 1), before `acb_lab::demo` runs the jobs statically and brokered.

use std::path::PathBuf;

use super::{CliError, DemoArgs};
use crate::config::GpuSpec;

pub(super) async fn run(args: DemoArgs) -> Result<(), CliError> {
    let (jobs, gpus, items, cpu, gpu) = acb_lab::demo::DemoConfig::workload(args.quick);
    let exe =
        std::env::current_exe().map_err(|e| CliError::failed(format!("cannot find the running executable: {e}")))?;
    let mut cfg = acb_lab::demo::DemoConfig {
        jobs: args.jobs.unwrap_or(jobs),
        gpus: args.gpus.unwrap_or(gpus),
        items: args.items.unwrap_or(items),
        cpu: args.cpu.unwrap_or(cpu),
        gpu: args.gpu.unwrap_or(gpu),
        memory: args.memory,
        scheduler: args.scheduler,
        out_dir: args.out_dir,
        library: PathBuf::new(),
        exe,
        real: None,
        simulated_because: None,
    };
    // Bad settings first (status 2), then what is missing from the machine (status 1).
    cfg.validate()?;
    cfg.library = acb_lab::demo::libacb::locate()?;
    // The lab says why no GPU was found, without the hint for `serve` about fake GPUs: the demo
    // picks those itself.
    let discover = |spec: &GpuSpec| match crate::discovery::discover(spec) {
        Ok(found) => Ok(found.into_iter().map(|g| g.name).collect()),
        Err(crate::Error::NoGpu(why)) => Err(acb_lab::Error::NoGpu(why)),
        Err(e) => Err(acb_lab::Error::NoGpu(e.to_string())),
    };
    let (real, why) = acb_lab::demo::real::detect(args.device, &cfg.exe, &cfg.library, &discover)?;
    if let Some(r) = &real {
        if args.gpus.is_some() {
            return Err(CliError::usage(
                "--gpus sets the number of simulated GPUs; on real GPUs the demo uses every GPU the driver shows \
                 (use --device simulated to choose)",
            ));
        }
        cfg.gpus = r.count;
    }
    cfg.real = real;
    cfg.simulated_because = why;
    acb_lab::demo::run(&cfg).await?;
    Ok(())
}
