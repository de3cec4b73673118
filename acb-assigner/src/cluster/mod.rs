//! Multi-node: a controller owns the whole pool and decides; an executor on every node serves
//! that node's clients on the local socket, forwards their calls to the controller, and keeps
//! the node registered (its GPUs, their health, a heartbeat). See `acb.v1.Cluster` in the
//! .proto for the link, and [`crate::peer::forwarded`] for how the controller learns a
//! forwarded call's node (from the executor, under the cluster token; never from the client).

pub mod executor;
pub mod join;

pub use executor::{LinkState, MAX_WAITING_CALLS, ProxyService, Upstream, run_link};

/// HTTP/2 streams a controller allows on one connection of an executor's: every waiting call
/// of the node's ([`MAX_WAITING_CALLS`]) and room for the short ones beside them.
pub const STREAMS_PER_EXECUTOR: u32 = MAX_WAITING_CALLS as u32 + 4096;
pub use join::ClusterService;

/// The HTTP/2 connection window a controller gives an executor's connection (bytes): h2
/// lets half of it be taken by small buffered messages, a few hundred bytes each.
pub const EXECUTOR_CONNECTION_WINDOW: u32 = STREAMS_PER_EXECUTOR * 1024;
