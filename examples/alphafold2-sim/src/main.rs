//! The white paper's AlphaFold2 case, in the acb simulator.
//!
//! The paper gives two figures: two AlphaFold2 jobs, each statically owning an A100, make 12
//! proteins per hour; eight jobs brokered on one A100 make 32. It gives no phase lengths, so we
//! derive them from those figures (see README.md beside this file):
//! - static, 2 jobs: 12 proteins/h => each job takes 600 s per protein (CPU + GPU);
//! - brokered, 8 jobs on 1 GPU: 32 proteins/h with the GPU the bottleneck => the GPU phase
//!   (plus its swaps) is about 3600 / 32 = 112.5 s per protein.
//!
//! Hence 490 s of CPU (MSA and template search) then 110 s of GPU (Evoformer and structure
//! module) per protein, and 8 GiB of device memory per job swapped at 20 GB/s (PCIe 4 x16,
//! pinned). Everything here is simulated: no GPU is used.

use std::process::ExitCode;
use std::time::Duration;

use acb_core::sim::{self, Comparison, JobSpec, Mode, Phase, SimConfig};
use acb_core::{GpuPool, Policy, SchedulerConfig};

const GIB: u64 = 1 << 30;
const PROTEINS_PER_JOB: u32 = 10;

fn alphafold_jobs(count: usize) -> Vec<JobSpec> {
    let protein = vec![Phase::Cpu(Duration::from_secs(490)), Phase::Gpu(Duration::from_secs(110))];
    (0..count).map(|i| JobSpec::new(format!("alphafold2-{i}"), 8 * GIB, protein.clone(), PROTEINS_PER_JOB)).collect()
}

fn main() -> ExitCode {
    let a100 = 80 * GIB;
    let statik = SimConfig::new(GpuPool::uniform("node0", 2, a100), Mode::Static);
    let brokered =
        SimConfig::new(GpuPool::uniform("node0", 1, a100), Mode::Brokered(SchedulerConfig::new(Policy::Simple)));
    let runs = [(&statik, alphafold_jobs(2)), (&brokered, alphafold_jobs(8))];
    let mut reports = Vec::new();
    for (config, jobs) in &runs {
        match sim::run(config, jobs) {
            Ok(mut r) => {
                r.label = match config.mode {
                    Mode::Static => "static 2 jobs / 2 GPUs".into(),
                    Mode::Brokered(_) => "acb simple, 8 jobs / 1 GPU".into(),
                };
                reports.push(r);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("AlphaFold2 on A100s, SIMULATED (acb-core simulator, no GPU used)");
    println!("each job: {PROTEINS_PER_JOB} proteins x (490 s CPU, then 110 s GPU), 8 GiB swapped at 20 GB/s");
    println!("white paper: static 12 proteins/h, brokered 32 proteins/h\n");
    print!("{}", Comparison { reports });
    ExitCode::SUCCESS
}
