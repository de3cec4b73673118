//! GPU discovery: NVML for real GPUs (the library is loaded at run time, so the daemon runs on
//! machines without a driver), `fake:` inventories for machines without one.

use acb_core::GpuPool;

use crate::Error;
use crate::config::GpuSpec;

/// One GPU found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundGpu {
    /// Index on this node.
    pub index: u32,
    /// `GPU-...` from NVML, or `fake-N`.
    pub uuid: String,
    /// Product name, or `simulated GPU`.
    pub name: String,
    /// Total memory, bytes.
    pub memory: u64,
    /// A simulated GPU.
    pub fake: bool,
}

/// Finds the GPUs `spec` names. `auto` without a working NVIDIA driver is an error whose message
/// says what to do instead.
pub fn discover(spec: &GpuSpec) -> Result<Vec<FoundGpu>, Error> {
    match spec {
        GpuSpec::None => Ok(Vec::new()),
        GpuSpec::Fake(groups) => {
            let mut out = Vec::new();
            for &(count, memory) in groups {
                for _ in 0..count {
                    let index = out.len() as u32;
                    out.push(FoundGpu {
                        index,
                        uuid: format!("fake-{index}"),
                        name: "simulated GPU".into(),
                        memory,
                        fake: true,
                    });
                }
            }
            Ok(out)
        }
        GpuSpec::Auto => nvml_gpus(),
        GpuSpec::Select(items) => select(nvml_gpus()?, items, &format!("--gpus auto:{}", items.join(","))),
        GpuSpec::Slurm => {
            let (var, items) = slurm_gpu_ids(|name| std::env::var(name).ok())?;
            slurm_gpus(nvml_gpus(), var, &items)
        }
    }
}

/// The memory of each simulated GPU `--gpus slurm` makes where there is no NVIDIA driver.
pub const SLURM_SIMULATED_MEMORY: u64 = 80 << 30;

/// The GPUs Slurm gave this job on this node, as Slurm lists them, and the variable that said:
/// `SLURM_STEP_GPUS` (set by slurmd for a step, per node), else `CUDA_VISIBLE_DEVICES` inside a
/// step (`SLURM_STEP_ID` set), else `SLURM_JOB_GPUS` (the batch script's node, Prolog), else
/// `CUDA_VISIBLE_DEVICES`. (`SLURM_JOB_GPUS` comes before `CUDA_VISIBLE_DEVICES` outside a step
/// since a site's cgroup may number the latter from 0.) Not in a Slurm job, or a job without
/// GPUs, is an error saying so.
pub fn slurm_gpu_ids(var: impl Fn(&str) -> Option<String>) -> Result<(&'static str, Vec<String>), Error> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("SLURM_JOB_ID").is_none() {
        return Err(Error::Slurm(
            "--gpus slurm: not inside a Slurm job (SLURM_JOB_ID is unset); run it in a job, or name the GPUs \
             with --gpus auto:INDEX,..."
                .into(),
        ));
    }
    let in_step = set("SLURM_STEP_ID").is_some();
    let order: &[&'static str] = if in_step {
        &["SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS"]
    } else {
        &["SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"]
    };
    let Some((name, value)) = order.iter().find_map(|&n| set(n).map(|v| (n, v))) else {
        return Err(Error::Slurm(
            "--gpus slurm: Slurm gave this job no GPU here (SLURM_STEP_GPUS, SLURM_JOB_GPUS and \
             CUDA_VISIBLE_DEVICES are unset); ask for some with --gres=gpu:N or --gpus=N"
                .into(),
        ));
    };
    let mut items: Vec<String> = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.is_empty() || items.iter().any(|i| i == item) || item.chars().any(|c| c.is_control()) {
            return Err(Error::Slurm(format!("--gpus slurm: {name}={value:?} is not a list of distinct GPUs")));
        }
        items.push(item.to_owned());
    }
    if items.len() > 4096 {
        return Err(Error::Slurm(format!("--gpus slurm: {name} lists {} GPUs; at most 4096", items.len())));
    }
    Ok((name, items))
}

/// The GPUs `--gpus slurm` manages: of the GPUs NVML found, those Slurm listed (by index, which
/// is Slurm's GPU index with `File=/dev/nvidia[N]` or `AutoDetect=nvml`, or by UUID); where NVML
/// found no driver, one SIMULATED GPU per Slurm GPU (a test cluster's fake gres), said on the log.
pub fn slurm_gpus(nvml: Result<Vec<FoundGpu>, Error>, var: &str, items: &[String]) -> Result<Vec<FoundGpu>, Error> {
    match nvml {
        Ok(found) => select(found, items, &format!("--gpus slurm ({var}={})", items.join(","))),
        Err(Error::NoGpu(why)) => {
            tracing::warn!(
                "--gpus slurm: {why}; running {} SIMULATED GPUs for Slurm's GPUs {var}={} (no real GPU is used)",
                items.len(),
                items.join(",")
            );
            Ok(items
                .iter()
                .enumerate()
                .map(|(i, item)| FoundGpu {
                    index: i as u32,
                    uuid: format!("fake-slurm-{item}"),
                    name: "simulated GPU".into(),
                    memory: SLURM_SIMULATED_MEMORY,
                    fake: true,
                })
                .collect())
        }
        Err(e) => Err(e),
    }
}

/// The GPUs of `found` that `items` list, each by its index or its UUID (a UUID may be given
/// without its `GPU-` prefix), in the node's order, keeping their node indexes. An item that
/// names no GPU, or names one another item already named, is an error listing what there is.
pub fn select(found: Vec<FoundGpu>, items: &[String], spec: &str) -> Result<Vec<FoundGpu>, Error> {
    let mut chosen = vec![false; found.len()];
    for item in items {
        let hit = found.iter().position(|g| {
            item.parse::<u32>().is_ok_and(|i| i == g.index)
                || g.uuid.eq_ignore_ascii_case(item)
                || g.uuid.strip_prefix("GPU-").is_some_and(|u| u.eq_ignore_ascii_case(item))
        });
        let there = || found.iter().map(|g| format!("{} ({})", g.index, g.uuid)).collect::<Vec<_>>().join(", ");
        match hit {
            None => {
                return Err(Error::NoGpu(format!("{spec}: no GPU {item:?} here; there are {}", there())));
            }
            Some(i) if chosen[i] => {
                return Err(Error::NoGpu(format!("{spec}: {item:?} names GPU {} a second time", found[i].index)));
            }
            Some(i) => chosen[i] = true,
        }
    }
    Ok(found.into_iter().zip(chosen).filter_map(|(g, c)| c.then_some(g)).collect())
}

fn nvml_gpus() -> Result<Vec<FoundGpu>, Error> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| Error::NoGpu(format!("no NVIDIA driver found (NVML: {e})")))?;
    let count = nvml.device_count().map_err(|e| Error::NoGpu(format!("NVML could not count GPUs: {e}")))?;
    let mut out = Vec::new();
    for index in 0..count {
        let dev = nvml.device_by_index(index).map_err(|e| Error::Nvml(format!("GPU {index}: {e}")))?;
        let uuid = dev.uuid().map_err(|e| Error::Nvml(format!("GPU {index} uuid: {e}")))?;
        let name = dev.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        let memory = dev.memory_info().map_err(|e| Error::Nvml(format!("GPU {index} memory: {e}")))?.total;
        out.push(FoundGpu { index, uuid, name, memory, fake: false });
    }
    if out.is_empty() {
        return Err(Error::NoGpu("the NVIDIA driver reports no GPU".into()));
    }
    Ok(out)
}

/// Reads a node's GPUs as they are now, for an executor's heartbeat: real GPUs through NVML
/// (healthy while NVML can read them, and their memory in use), simulated ones always healthy
/// with no memory reading.
pub struct Probe {
    nvml: Option<nvml_wrapper::Nvml>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("nvml", &self.nvml.is_some()).finish()
    }
}

impl Probe {
    /// A probe for `gpus` (NVML is opened only if one of them is real).
    pub fn new(gpus: &[FoundGpu]) -> Probe {
        let nvml = if gpus.iter().any(|g| !g.fake) { nvml_wrapper::Nvml::init().ok() } else { None };
        Probe { nvml }
    }

    /// `g`'s health and memory in use now.
    pub fn read(&self, g: &FoundGpu) -> (bool, Option<u64>) {
        if g.fake {
            return (true, None);
        }
        let Some(nvml) = &self.nvml else { return (false, None) };
        match nvml.device_by_uuid(g.uuid.as_str()).and_then(|d| d.memory_info()) {
            Ok(m) => (true, Some(m.used)),
            Err(e) => {
                tracing::warn!(gpu = g.index, uuid = %g.uuid, "NVML cannot read this GPU: {e}; reporting it unhealthy");
                (false, None)
            }
        }
    }
}

/// A one-node pool of `gpus`, named `node`.
pub fn pool_of(node: &str, gpus: &[FoundGpu]) -> GpuPool {
    let mut pool = GpuPool::new();
    let n = pool.add_node(node);
    for g in gpus {
        pool.add_gpu(n, g.uuid.clone(), g.memory);
    }
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_gpus_are_labelled_fake() {
        let gpus = discover(&"fake:2x80GiB,1x40GiB".parse().unwrap()).unwrap();
        assert_eq!(gpus.len(), 3);
        assert!(gpus.iter().all(|g| g.fake && g.uuid.starts_with("fake-") && g.name.contains("simulated")));
        assert_eq!(gpus[2].memory, 40 << 30);
        assert_eq!(pool_of("n", &gpus).len(), 3);
    }

    /// A node of four real (test) GPUs, `GPU-<index>abc`.
    fn four_gpus() -> Vec<FoundGpu> {
        (0..4)
            .map(|index| FoundGpu {
                index,
                uuid: format!("GPU-{index}abc"),
                name: "test GPU".into(),
                memory: 80 << 30,
                fake: false,
            })
            .collect()
    }

    #[test]
    fn a_selection_keeps_the_listed_gpus_by_index_or_uuid() {
        let node = four_gpus;
        let items = |s: &[&str]| s.iter().map(ToString::to_string).collect::<Vec<_>>();
        let select = |found, items: &[String]| select(found, items, "--gpus auto:test");
        let picked = select(node(), &items(&["3", "GPU-1abc"])).unwrap();
        assert_eq!(picked.iter().map(|g| g.index).collect::<Vec<_>>(), [1, 3], "node order, node indexes");
        assert_eq!(select(node(), &items(&["2ABC"])).unwrap()[0].index, 2, "a UUID without GPU-, any case");
        let e = select(node(), &items(&["4"])).unwrap_err().to_string();
        assert!(e.contains("no GPU \"4\"") && e.contains("3 (GPU-3abc)"), "{e}");
        let e = select(node(), &items(&["1", "GPU-1abc"])).unwrap_err().to_string();
        assert!(e.contains("a second time"), "{e}");
    }

    fn vars<'a>(set: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| set.iter().find(|(k, _)| *k == n).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn slurm_gpus_come_from_the_step_then_the_job() {
        let ids = |set: &[(&str, &str)]| slurm_gpu_ids(vars(set)).map_err(|e| e.to_string());
        let job = [("SLURM_JOB_ID", "7"), ("SLURM_JOB_GPUS", "2,3"), ("CUDA_VISIBLE_DEVICES", "0,1")];
        assert_eq!(ids(&job).unwrap(), ("SLURM_JOB_GPUS", vec!["2".into(), "3".into()]), "batch script, Prolog");
        let step = [&job[..], &[("SLURM_STEP_ID", "0"), ("SLURM_STEP_GPUS", "3")]].concat();
        assert_eq!(ids(&step).unwrap(), ("SLURM_STEP_GPUS", vec!["3".into()]), "a step's own GPUs, per node");
        let step_cvd = [&job[..], &[("SLURM_STEP_ID", "0")]].concat();
        assert_eq!(ids(&step_cvd).unwrap().0, "CUDA_VISIBLE_DEVICES", "a step: not the batch node's SLURM_JOB_GPUS");
        let e = ids(&[("SLURM_JOB_GPUS", "0")]).unwrap_err();
        assert!(e.contains("not inside a Slurm job"), "{e}");
        let e = ids(&[("SLURM_JOB_ID", "7")]).unwrap_err();
        assert!(e.contains("no GPU") && e.contains("--gres=gpu:N"), "{e}");
        for bad in ["0,,1", "0,0", "0,\u{1}"] {
            let e = ids(&[("SLURM_JOB_ID", "7"), ("SLURM_JOB_GPUS", bad)]).unwrap_err();
            assert!(e.contains("not a list of distinct GPUs"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn slurm_gpus_match_nvml_or_are_simulated_without_a_driver() {
        let items = vec!["1".to_string(), "GPU-3abc".to_string()];
        let node = four_gpus();
        let real = slurm_gpus(Ok(node.clone()), "SLURM_STEP_GPUS", &items).unwrap();
        assert_eq!(real.iter().map(|g| g.index).collect::<Vec<_>>(), [1, 3], "never another GPU of the node");
        let e = slurm_gpus(Ok(node), "SLURM_STEP_GPUS", &["7".into()]).unwrap_err().to_string();
        assert!(e.contains("--gpus slurm (SLURM_STEP_GPUS=7): no GPU \"7\""), "{e}");
        let sim = slurm_gpus(Err(Error::NoGpu("no NVIDIA driver found".into())), "SLURM_JOB_GPUS", &items).unwrap();
        assert_eq!(sim.len(), 2);
        assert!(sim.iter().all(|g| g.fake && g.memory == SLURM_SIMULATED_MEMORY));
        assert_eq!(sim[1].uuid, "fake-slurm-GPU-3abc");
        let e = slurm_gpus(Err(Error::Nvml("GPU 0: lost".into())), "SLURM_JOB_GPUS", &items).unwrap_err();
        assert!(e.to_string().contains("lost"), "a broken driver is not simulated away: {e}");
    }

    #[test]
    fn auto_without_a_driver_says_what_to_do() {
        // On machines with a driver this finds real GPUs; without one it must be a clear error.
        match discover(&GpuSpec::Auto) {
            Ok(gpus) => assert!(gpus.iter().all(|g| !g.fake)),
            Err(e) => assert!(e.to_string().contains("--gpus fake:"), "{e}"),
        }
    }
}
