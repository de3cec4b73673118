//! The one error type of the lab: what failed, with the message people read.

/// Why a lab task (the demo, a demo job, the benchmark, a trace) failed. The text is one line
/// (a demo's failed jobs add one line each) that names what failed and, where it can, what to
/// do; the `acb-assigner` CLI prints it after `acb-assigner: `.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings: a number out of range, a choice not among the allowed ones.
    #[error("{0}")]
    Usage(String),
    /// A job trace that is not what [`crate::trace`] describes: where (the file, the job and
    /// field; empty for the whole trace) and why.
    #[error("{}", at_why(at, why))]
    Trace {
        /// Where: `path`, `job 2 ("af"): memory`, or both, or nothing.
        at: String,
        /// What is wrong there.
        why: String,
    },
    /// libacb could not be found or loaded, or one of its calls failed (with its own message).
    #[error("{0}")]
    Libacb(String),
    /// A file, a process or a pipe failed: what was being done, and the system's reason.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (often a path).
        what: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// No assigner could be reached.
    #[error("{0}")]
    Connect(#[from] acb_client::Error),
    /// The assigner refused or broke a call (its own words).
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// GPUs could not be found or named (`ACB_DEMO_TEST_GPUS`, the driver).
    #[error("{0}")]
    NoGpu(String),
    /// `--device real` was asked for and the machine cannot run the demo on real GPUs.
    #[error("--device real: {0}")]
    NoRealGpu(String),
    /// The demo's or the benchmark's assigner, or the demo's jobs, failed or did not finish.
    #[error("{0}")]
    Run(String),
    /// The assigner's record of a demo run could not be read.
    #[error("reading the assigner's record: {0}")]
    Record(Box<Error>),
    /// A demo job's device memory did not come back as it left.
    #[error("device memory came back changed (phase {found}, expected {expected})")]
    MemoryChanged {
        /// The phase number found in memory.
        found: u64,
        /// The last phase that wrote it.
        expected: u64,
    },
    /// A task of the lab's own (a benchmark client) panicked or was cancelled.
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
}

fn at_why(at: &str, why: &str) -> String {
    if at.is_empty() { why.to_owned() } else { format!("{at}: {why}") }
}

impl Error {
    /// A failure of a file, process or pipe, described by `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// A trace error about the whole trace.
    pub(crate) fn trace(why: impl std::fmt::Display) -> Error {
        Error::Trace { at: String::new(), why: why.to_string() }
    }

    /// Whether the error is in the user's settings or trace (not in the machine or the run).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_) | Error::Trace { .. })
    }
}
