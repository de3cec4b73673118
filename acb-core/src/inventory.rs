//! Which GPUs an assigner owns, as users type it: `auto`, `none`, or simulated GPUs
//! (`fake:2x80GiB,1x40GiB`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::str::FromStr;

/// Which GPUs the assigner owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuSpec {
    /// Every GPU NVML finds; no driver is an error.
    Auto,
    /// No GPU at all (requests are refused).
    None,
    /// Simulated GPUs: `(count, bytes)` groups, e.g. `fake:2x80GiB,1x40GiB`.
    Fake(Vec<(u32, u64)>),
}

impl FromStr for GpuSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => return Ok(GpuSpec::Auto),
            "none" => return Ok(GpuSpec::None),
            _ => {}
        }
        let Some(groups) = s.strip_prefix("fake:") else {
            return Err(format!("{s:?}: expected auto, none, or fake:COUNTxSIZE[,COUNTxSIZE...] (e.g. fake:2x80GiB)"));
        };
        let mut out = Vec::new();
        for g in groups.split(',') {
            let (count, size) =
                g.split_once(['x', 'X']).ok_or_else(|| format!("{g:?} in {s:?}: expected COUNTxSIZE, e.g. 2x80GiB"))?;
            let count: u32 = count.trim().parse().map_err(|_| format!("{count:?} in {s:?}: not a GPU count"))?;
            if count == 0 || count > 4096 {
                return Err(format!("{g:?} in {s:?}: a group has 1 to 4096 GPUs"));
            }
            let bytes = crate::units::parse_size(size.trim()).map_err(|e| format!("{e} (in {s:?})"))?;
            if bytes == 0 {
                return Err(format!("{g:?} in {s:?}: a GPU needs some memory"));
            }
            out.push((count, bytes));
        }
        Ok(GpuSpec::Fake(out))
    }
}
