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
        GpuSpec::Select(items) => select(nvml_gpus()?, items),
    }
}

/// The GPUs of `found` that `items` list, each by its index or its UUID (a UUID may be given
/// without its `GPU-` prefix), in the node's order, keeping their node indexes. An item that
/// names no GPU, or names one another item already named, is an error listing what there is.
pub fn select(found: Vec<FoundGpu>, items: &[String]) -> Result<Vec<FoundGpu>, Error> {
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
                return Err(Error::NoGpu(format!(
                    "--gpus auto:{}: no GPU {item:?} here; there are {}",
                    items.join(","),
                    there()
                )));
            }
            Some(i) if chosen[i] => {
                return Err(Error::NoGpu(format!(
                    "--gpus auto:{}: {item:?} names GPU {} a second time",
                    items.join(","),
                    found[i].index
                )));
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

    #[test]
    fn a_selection_keeps_the_listed_gpus_by_index_or_uuid() {
        let node = || {
            (0..4)
                .map(|index| FoundGpu {
                    index,
                    uuid: format!("GPU-{index}abc"),
                    name: "test GPU".into(),
                    memory: 80 << 30,
                    fake: false,
                })
                .collect::<Vec<_>>()
        };
        let items = |s: &[&str]| s.iter().map(ToString::to_string).collect::<Vec<_>>();
        let picked = select(node(), &items(&["3", "GPU-1abc"])).unwrap();
        assert_eq!(picked.iter().map(|g| g.index).collect::<Vec<_>>(), [1, 3], "node order, node indexes");
        assert_eq!(select(node(), &items(&["2ABC"])).unwrap()[0].index, 2, "a UUID without GPU-, any case");
        let e = select(node(), &items(&["4"])).unwrap_err().to_string();
        assert!(e.contains("no GPU \"4\"") && e.contains("3 (GPU-3abc)"), "{e}");
        let e = select(node(), &items(&["1", "GPU-1abc"])).unwrap_err().to_string();
        assert!(e.contains("a second time"), "{e}");
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
