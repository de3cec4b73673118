//! The acb GPU assigner: the daemon that owns a node's (or, as controller, a cluster's) GPUs
//! and grants them to jobs through [`acb_core::Scheduler`].
//!
//! Not built yet: the gRPC contract, the tonic server, discovery, the async client and the
//! CLI come with the assigner issue. What exists today is the command-line surface that tells
//! a user so, and the scheduler names it will accept, parsed by the core.

use acb_core::Policy;

/// The subcommands the `acb-assigner` binary will have, as DESIGN.md lists them.
pub const SUBCOMMANDS: [&str; 6] = ["serve", "status", "watch", "timeline", "simulate", "demo"];

/// Parses a `--scheduler` value, with the core's message on error.
pub fn parse_scheduler(name: &str) -> Result<Policy, String> {
    name.parse::<Policy>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_are_the_cores() {
        assert_eq!(parse_scheduler("gpu-affinity"), Ok(Policy::GpuAffinity));
        assert!(parse_scheduler("round-robin").unwrap_err().contains("expected one of"));
    }
}
