//! Which GPUs an assigner owns, as users type it: `auto`, `none`, or simulated GPUs
//! (`fake:2x80GiB,1x40GiB`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use crate::units::ParseError;

/// Which GPUs the assigner owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuSpec {
    /// Every GPU NVML finds; no driver is an error.
    Auto,
    /// Only the GPUs NVML finds that are listed, by index or UUID: `auto:0,1`,
    /// `auto:GPU-8c1e...` (what a batch system or `CUDA_VISIBLE_DEVICES` hands a job).
    Select(Vec<String>),
    /// The GPUs Slurm gave the job (`slurm`): read from the job's environment by the daemon
    /// (`SLURM_STEP_GPUS`, `SLURM_JOB_GPUS`, `CUDA_VISIBLE_DEVICES`).
    Slurm,
    /// No GPU at all (requests are refused).
    None,
    /// Simulated GPUs: `(count, bytes)` groups, e.g. `fake:2x80GiB,1x40GiB`.
    Fake(Vec<(u32, u64)>),
}

/// Why a text is not a [`GpuSpec`]: the spec as given, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSpecError {
    spec: String,
    kind: GpuSpecErrorKind,
}

/// What is wrong with a GPU spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuSpecErrorKind {
    /// Neither `auto`, `slurm`, `none` nor `fake:...`.
    Unknown,
    /// A group (as written) that is not `COUNTxSIZE`.
    NotAGroup(String),
    /// A count (as written) that is not a number.
    BadCount(String),
    /// A group (as written) with no GPUs, or more than 4096.
    CountOutOfRange(String),
    /// A group's size is not a size.
    BadSize(ParseError),
    /// A group (as written) of GPUs with no memory.
    NoMemory(String),
    /// A group (as written) whose memory has no unit (`2x80`: 80 bytes was never meant).
    NoUnit(String),
    /// `auto:` with an empty item, or an item listed twice (as written).
    BadSelection(String),
}

impl GpuSpecError {
    fn new(spec: &str, kind: GpuSpecErrorKind) -> Self {
        GpuSpecError { spec: spec.into(), kind }
    }

    /// The spec, as given.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &GpuSpecErrorKind {
        &self.kind
    }
}

impl fmt::Display for GpuSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.spec;
        match &self.kind {
            GpuSpecErrorKind::Unknown => {
                write!(
                    f,
                    "{s:?}: expected auto, auto:INDEX|UUID[,...] (e.g. auto:0,1), slurm, none, or \
                     fake:COUNTxSIZE[,COUNTxSIZE...] (e.g. fake:2x80GiB)"
                )
            }
            GpuSpecErrorKind::NotAGroup(g) => write!(f, "{g:?} in {s:?}: expected COUNTxSIZE, e.g. 2x80GiB"),
            GpuSpecErrorKind::BadCount(count) => write!(f, "{count:?} in {s:?}: not a GPU count"),
            GpuSpecErrorKind::CountOutOfRange(g) => write!(f, "{g:?} in {s:?}: a group has 1 to 4096 GPUs"),
            GpuSpecErrorKind::BadSize(e) => write!(f, "{e} (in {s:?})"),
            GpuSpecErrorKind::NoMemory(g) => write!(f, "{g:?} in {s:?}: a GPU needs some memory"),
            GpuSpecErrorKind::BadSelection(item) => {
                write!(f, "{item:?} in {s:?}: list each GPU once, by index or UUID, e.g. auto:0,1")
            }
            GpuSpecErrorKind::NoUnit(g) => {
                write!(f, "{g:?} in {s:?}: give the memory with a unit, e.g. 80GiB (a bare number would be bytes)")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for GpuSpecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            GpuSpecErrorKind::BadSize(e) => Some(e),
            _ => None,
        }
    }
}

impl FromStr for GpuSpec {
    type Err = GpuSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use GpuSpecErrorKind as K;
        let err = |kind| GpuSpecError::new(s, kind);
        match s {
            "auto" => return Ok(GpuSpec::Auto),
            "none" => return Ok(GpuSpec::None),
            "slurm" => return Ok(GpuSpec::Slurm),
            _ => {}
        }
        if let Some(list) = s.strip_prefix("auto:") {
            let mut items: Vec<String> = Vec::new();
            for item in list.split(',').map(str::trim) {
                if item.is_empty() || items.iter().any(|i| i == item) {
                    return Err(err(K::BadSelection(item.into())));
                }
                items.push(item.into());
            }
            return Ok(GpuSpec::Select(items));
        }
        let Some(groups) = s.strip_prefix("fake:") else {
            return Err(err(K::Unknown));
        };
        let mut out = Vec::new();
        for g in groups.split(',') {
            let (count, size) = g.split_once(['x', 'X']).ok_or_else(|| err(K::NotAGroup(g.into())))?;
            let count: u32 = count.trim().parse().map_err(|_| err(K::BadCount(count.into())))?;
            if count == 0 || count > 4096 {
                return Err(err(K::CountOutOfRange(g.into())));
            }
            if size.trim() != "0" && size.trim().ends_with(|c: char| c.is_ascii_digit()) {
                return Err(err(K::NoUnit(g.into())));
            }
            let bytes = crate::units::parse_size(size.trim()).map_err(|e| err(K::BadSize(e)))?;
            if bytes == 0 {
                return Err(err(K::NoMemory(g.into())));
            }
            out.push((count, bytes));
        }
        Ok(GpuSpec::Fake(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn specs_parse_and_errors_name_the_input() {
        assert_eq!("auto".parse::<GpuSpec>(), Ok(GpuSpec::Auto));
        assert_eq!("slurm".parse::<GpuSpec>(), Ok(GpuSpec::Slurm));
        assert_eq!(
            "auto:1, GPU-8c1e".parse::<GpuSpec>(),
            Ok(GpuSpec::Select(vec!["1".to_string(), "GPU-8c1e".to_string()]))
        );
        assert_eq!("fake:2x80GiB,1X40GiB".parse::<GpuSpec>(), Ok(GpuSpec::Fake(vec![(2, 80 << 30), (1, 40 << 30)])));
        let cases = [
            (
                "gpu0",
                "\"gpu0\": expected auto, auto:INDEX|UUID[,...] (e.g. auto:0,1), slurm, none, or \
                 fake:COUNTxSIZE[,COUNTxSIZE...] (e.g. fake:2x80GiB)",
            ),
            ("auto:", "\"\" in \"auto:\": list each GPU once, by index or UUID, e.g. auto:0,1"),
            ("auto:0,0", "\"0\" in \"auto:0,0\": list each GPU once, by index or UUID, e.g. auto:0,1"),
            ("auto:1,,2", "\"\" in \"auto:1,,2\": list each GPU once, by index or UUID, e.g. auto:0,1"),
            ("fake:2", "\"2\" in \"fake:2\": expected COUNTxSIZE, e.g. 2x80GiB"),
            (
                "fake:2x80",
                "\"2x80\" in \"fake:2x80\": give the memory with a unit, e.g. 80GiB (a bare number would be bytes)",
            ),
            ("fake:ax1G", "\"a\" in \"fake:ax1G\": not a GPU count"),
            ("fake:0x1G", "\"0x1G\" in \"fake:0x1G\": a group has 1 to 4096 GPUs"),
            ("fake:1x0", "\"1x0\" in \"fake:1x0\": a GPU needs some memory"),
        ];
        for (spec, why) in cases {
            let e = spec.parse::<GpuSpec>().unwrap_err();
            assert_eq!(e.spec(), spec);
            assert_eq!(e.to_string(), why);
        }
        let e = "fake:1x8gib".parse::<GpuSpec>().unwrap_err();
        assert!(matches!(e.kind(), GpuSpecErrorKind::BadSize(_)), "{e:?}");
        assert!(e.to_string().contains("unknown unit") && e.to_string().ends_with("(in \"fake:1x8gib\")"), "{e}");
    }
}
