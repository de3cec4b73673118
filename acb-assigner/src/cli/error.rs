//! What ends a subcommand early, and the exit status it ends with.

use std::fmt::Display;

/// A subcommand's failure: one line, printed after `acb-assigner: `, and an exit status that
/// says what kind of failure it was (scripts and the tests tell them apart by status alone).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad settings (a settings file, a trace, flags clap cannot check alone): status 2, as
    /// clap gives for bad flags.
    #[error("{0}")]
    Usage(String),
    /// The work itself failed (nothing listening, a missing library, a refused call): status 1.
    #[error("{0}")]
    Failed(String),
    /// `alloc` held a lease the assigner took back (revoked, or the assigner stopping): status 3.
    #[error("lease {lease} ended: {why}")]
    LeaseEnded {
        /// The lease.
        lease: u64,
        /// What the assigner said.
        why: String,
    },
}

impl CliError {
    /// Bad settings (status 2).
    pub fn usage(why: impl Display) -> Self {
        CliError::Usage(why.to_string())
    }

    /// A failure of the work itself (status 1).
    pub fn failed(why: impl Display) -> Self {
        CliError::Failed(why.to_string())
    }

    /// The process's exit status for this error.
    pub fn status(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::LeaseEnded { .. } => 3,
        }
    }
}

/// The daemon library's errors (settings, discovery, listeners): unless a subcommand says
/// otherwise (`serve` and `simulate` call bad settings status 2), failures of the work (status 1).
impl From<crate::Error> for CliError {
    fn from(e: crate::Error) -> Self {
        CliError::Failed(e.to_string())
    }
}

/// The lab's errors: bad settings or a bad trace are status 2, the rest failures (status 1).
impl From<acb_lab::Error> for CliError {
    fn from(e: acb_lab::Error) -> Self {
        if e.is_usage() { CliError::Usage(e.to_string()) } else { CliError::Failed(e.to_string()) }
    }
}

/// A refused or broken call to the assigner (status 1), said with the assigner's own words.
impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Failed(status.message().to_string())
    }
}

impl From<acb_client::Error> for CliError {
    fn from(e: acb_client::Error) -> Self {
        CliError::Failed(e.to_string())
    }
}
