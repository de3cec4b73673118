//! The acb GPU assigner: the daemon that owns a node's GPUs and grants them to jobs through
//! [`acb_core::Scheduler`], over gRPC (`acb-proto`'s `acb.v1`).
//!
//! Layers (linkerd2-style): [`service`] validates and converts, [`driver`] is the one place
//! that drives the core, [`server`] owns listeners, auth and shutdown, [`cli`] is the command
//! line (its client subcommands connect through `acb-client`).

pub mod authority;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod deadline;
pub mod discovery;
pub mod driver;
mod error;
pub mod hostlist;
pub mod k8s;
pub mod listener;
pub mod metrics;
pub mod peer;
pub mod server;
pub mod service;
pub mod systemd;
pub mod tls;
pub mod unix_socket;
pub mod validate;

pub use error::{Error, NO_GPU_HINT};

/// The wire contract (`acb-proto`'s `acb.v1`).
pub use acb_proto::v1 as proto;
