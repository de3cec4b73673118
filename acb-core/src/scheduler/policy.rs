//! The scheduling policies, by the names users know them.

use core::fmt;
use core::str::FromStr;

/// How the scheduler shares GPUs between requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// First in, first out; one whole GPU per request; the head of the queue blocks the rest.
    #[default]
    Simple,
    /// Several requests on one GPU at once, packed by memory (best fit); each lease is fenced
    /// to the memory it asked for. Backfill as in `gpu-affinity`.
    GpuSharing,
    /// Whole GPUs, multi-GPU gangs granted all-or-nothing (across nodes when needed), FIFO with
    /// backfill that never delays the head, and a preference for the GPUs a job used last.
    GpuAffinity,
}

impl Policy {
    /// Every policy, in the order the docs list them.
    pub const ALL: [Policy; 3] = [Policy::Simple, Policy::GpuSharing, Policy::GpuAffinity];

    /// The name users type (`--scheduler simple`).
    pub const fn name(self) -> &'static str {
        match self {
            Policy::Simple => "simple",
            Policy::GpuSharing => "gpu-sharing",
            Policy::GpuAffinity => "gpu-affinity",
        }
    }

    /// Whether a GPU has at most one holder.
    pub const fn exclusive(self) -> bool {
        !matches!(self, Policy::GpuSharing)
    }

    /// The most GPUs one request may ask for.
    pub const fn max_gpus(self) -> u32 {
        match self {
            Policy::Simple => 1,
            Policy::GpuSharing | Policy::GpuAffinity => u32::MAX,
        }
    }

    /// Whether requests behind a blocked head may be granted around it.
    pub const fn backfill(self) -> bool {
        !matches!(self, Policy::Simple)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scheduler name that is not one of [`Policy::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPolicy(pub alloc::string::String);

impl fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown scheduler {:?}: expected one of simple, gpu-sharing, gpu-affinity", self.0)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for UnknownPolicy {}

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| UnknownPolicy(s.into()))
    }
}
