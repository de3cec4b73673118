//! The demo on real GPUs: when the driver shows GPUs (NVML) and Python has PyTorch with CUDA
//! and the `acb` package, the demo's assigner manages those GPUs and its jobs are
//! `python -m acb_broker.demo_job`, whose GPU phases run real kernels under `acb_broker.torch.on_device`.

use std::path::{Path, PathBuf};
use std::process::Command;

use acb_core::inventory::GpuSpec;

use crate::Error;

/// What `--device` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// Real GPUs when there are (and PyTorch can use them), simulated ones otherwise.
    Auto,
    /// Simulated GPUs, whatever the machine has.
    Simulated,
    /// Real GPUs, or an error that says what is missing.
    Real,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<DeviceChoice, Error> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "simulated" => Ok(DeviceChoice::Simulated),
            "real" => Ok(DeviceChoice::Real),
            other => Err(Error::Usage(format!("{other:?}: expected auto, simulated or real"))),
        }
    }
}

/// How the jobs of a real-GPU demo run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealJobs {
    /// The Python interpreter (`ACB_PYTHON`, else python3).
    pub python: PathBuf,
    /// The source tree's bindings/python, put on PYTHONPATH when the package is not installed.
    pub pythonpath: Option<PathBuf>,
    /// The assigner's `--gpus`: `auto` (NVML), or, for tests only, `ACB_DEMO_TEST_GPUS`.
    pub gpus: String,
    /// How many.
    pub count: u32,
    /// Their names, for the header.
    pub names: Vec<String>,
}

impl RealJobs {
    /// Test set-up (`ACB_DEMO_TEST_GPUS`): simulated GPUs stand in for the driver's.
    pub fn simulated(&self) -> bool {
        self.gpus != "auto"
    }
}

/// How the demo finds GPUs: the assigner's discovery (NVML, or `fake:` GPUs) as the names of
/// the GPUs a spec gives, or why none can be found ([`Error::NoGpu`], without the hints for
/// `serve`). The CLI passes it in: this crate has no NVML.
pub type Discover<'a> = &'a dyn Fn(&GpuSpec) -> Result<Vec<String>, Error>;

/// Decides where the demo runs: `Ok((Some(jobs), _))` on real GPUs, `Ok((None, why))` on
/// simulated ones (with the reason when real ones were looked for), `Err` when `Real` was asked
/// for and cannot be had.
pub fn detect(
    choice: DeviceChoice,
    exe: &Path,
    library: &Path,
    discover: Discover<'_>,
) -> Result<(Option<RealJobs>, Option<String>), Error> {
    if choice == DeviceChoice::Simulated {
        return Ok((None, None));
    }
    let fail = |why: String| match choice {
        DeviceChoice::Real => Err(Error::NoRealGpu(why)),
        _ => Ok((None, Some(why))),
    };
    // Tests without a GPU stand simulated GPUs in for the driver's (and the CPU in for CUDA,
    // with ACB_TORCH_DEVICE=cpu); the demo then still labels every GPU as simulated.
    let (gpus, names) = match std::env::var("ACB_DEMO_TEST_GPUS") {
        Ok(spec) => {
            let parsed: GpuSpec = spec.parse().map_err(|e| Error::NoGpu(format!("ACB_DEMO_TEST_GPUS: {e}")))?;
            let found = discover(&parsed)?;
            (spec, found.into_iter().map(|name| format!("{name} (SIMULATED)")).collect::<Vec<_>>())
        }
        Err(_) => match discover(&GpuSpec::Auto) {
            Ok(found) => ("auto".to_owned(), found),
            // (Without the hint for `serve` about fake GPUs, which `discover` leaves out: the demo
            // picks those itself.)
            Err(e) => return fail(format!("no GPU was found: {e}")),
        },
    };
    let python = PathBuf::from(std::env::var_os("ACB_PYTHON").unwrap_or_else(|| "python3".into()));
    let pythonpath = source_tree_package(exe);
    let check = "import sys, torch, acb_broker.torch\n\
                 sys.exit(0 if acb_broker.torch._simulated() or torch.cuda.is_available() else 3)";
    let mut cmd = Command::new(&python);
    cmd.args(["-c", check]).env("ACB_LIBRARY", library);
    if let Some(p) = &pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    match cmd.output() {
        Err(e) => return fail(format!("cannot run {}: {e}", python.display())),
        Ok(out) if out.status.code() == Some(3) => {
            return fail(format!("{} has PyTorch, but PyTorch sees no CUDA device", python.display()));
        }
        Ok(out) if !out.status.success() => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.trim().lines().last().unwrap_or("it failed").to_owned();
            return fail(format!(
                "{} cannot import torch and acb ({last}); the GPU phases need PyTorch with CUDA and `pip install ./bindings/python`",
                python.display()
            ));
        }
        Ok(_) => {}
    }
    let count = u32::try_from(names.len()).map_err(|_| Error::NoGpu("too many GPUs".to_owned()))?;
    Ok((Some(RealJobs { python, pythonpath, gpus, count, names }), None))
}

/// bindings/python of the source tree the executable was built in (target/<profile>/acb-assigner).
fn source_tree_package(exe: &Path) -> Option<PathBuf> {
    let root = exe.parent()?.parent()?.parent()?;
    let pkg = root.join("bindings/python");
    pkg.join("acb_broker/__init__.py").is_file().then_some(pkg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn device_choices_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("real".parse::<DeviceChoice>().unwrap(), DeviceChoice::Real);
        assert_eq!("simulated".parse::<DeviceChoice>().unwrap(), DeviceChoice::Simulated);
        let e = "gpu".parse::<DeviceChoice>().unwrap_err();
        assert!(matches!(e, Error::Usage(_)) && e.to_string().contains("auto, simulated or real"), "{e:?}");
    }

    #[test]
    fn simulated_never_looks_for_gpus() {
        let looked = std::cell::Cell::new(false);
        let discover = |_: &GpuSpec| {
            looked.set(true);
            Ok(Vec::new())
        };
        let (jobs, why) =
            detect(DeviceChoice::Simulated, Path::new("/nonexistent"), Path::new("/x"), &discover).unwrap();
        assert!(jobs.is_none() && why.is_none() && !looked.get());
    }

    #[test]
    fn the_source_tree_package_is_found_from_the_executable() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let exe = root.join("target/release/acb-assigner");
        assert_eq!(source_tree_package(&exe), Some(root.join("bindings/python")));
        assert_eq!(source_tree_package(Path::new("/usr/bin/acb-assigner")), None);
    }
}
