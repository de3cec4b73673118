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
    }
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
    fn auto_without_a_driver_says_what_to_do() {
        // On machines with a driver this finds real GPUs; without one it must be a clear error.
        match discover(&GpuSpec::Auto) {
            Ok(gpus) => assert!(gpus.iter().all(|g| !g.fake)),
            Err(e) => assert!(e.to_string().contains("--gpus fake:"), "{e}"),
        }
    }
}
