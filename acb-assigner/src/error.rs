//! The one error type of the daemon's library: what was wrong with the settings, or what kept
//! the assigner from finding its GPUs or serving. The CLI turns it into a [`crate::cli::CliError`]
//! with the exit status its subcommand gives.

use std::path::PathBuf;

use acb_core::UnknownPolicy;
use acb_core::inventory::GpuSpecError;
use acb_core::units::ParseError;

use crate::config::Address;

/// What `--gpus auto` failing says to do instead.
pub const NO_GPU_HINT: &str = "use --gpus fake:COUNTxSIZE (e.g. fake:2x80GiB) to run on simulated GPUs, or --gpus none";

/// Why settings were refused, or the assigner could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A size or a duration not in [`acb_core::units`]'s grammar.
    #[error("{0}")]
    Units(#[from] ParseError),
    /// A GPU inventory that is not `auto`, `none` or `fake:...`.
    #[error("{0}")]
    Gpus(#[from] GpuSpecError),
    /// A scheduler that does not exist.
    #[error("{0}")]
    Policy(#[from] UnknownPolicy),
    /// The settings file could not be read.
    #[error("{}: {source}", path.display())]
    ReadSettings {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The settings file is not valid TOML, or has a key that does not exist.
    #[error("{}: {}", path.display(), source.to_string().trim())]
    Settings {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        source: toml::de::Error,
    },
    /// A setting of the file (`config gpus`) or a flag (`--auth-token-file`) with a bad value.
    #[error("{what}: {why}")]
    Setting {
        /// Which setting.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// `--gpus auto` found no GPU: why, followed by [`NO_GPU_HINT`].
    #[error("{0}; {NO_GPU_HINT}")]
    NoGpu(String),
    /// `--gpus slurm` outside a Slurm job, or with no GPU from Slurm, or with a list it cannot read.
    #[error("{0}")]
    Slurm(String),
    /// NVML failed on one GPU.
    #[error("NVML: {0}")]
    Nvml(String),
    /// A non-loopback address without a token.
    #[error("refusing to listen on {0} (not loopback) without --auth-token-file")]
    Insecure(Address),
    /// A non-loopback address without TLS or `--insecure`.
    #[error(
        "refusing to listen on {0} (not loopback) in plaintext: give --tls-cert and --tls-key, or --insecure to \
         send the token in the clear"
    )]
    Plaintext(Address),
    /// A listener (a socket, the metrics endpoint) could not be set up: what was being done,
    /// and the system's reason.
    #[error("{what}: {source}")]
    Listen {
        /// What was being done (`cannot listen on unix:/run/acb.sock`).
        what: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// A Unix socket path taken by something that must not be replaced.
    #[error("{0}")]
    SocketInUse(String),
    /// A socket directory another local user could use to take the socket's place (a symlink,
    /// not ours, writable by others), or a socket path with no file name.
    #[error("{0}")]
    SocketDir(String),
    /// A TLS certificate, key or CA file that cannot be read or used.
    #[error("{0}")]
    Tls(String),
    /// The state directory cannot be used (locked by another daemon, unsafe, unreadable file).
    #[error("{0}")]
    State(#[from] crate::driver::StateError),
    /// The gRPC reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
}
