//! Multi-node: a controller owns the whole pool and decides; an executor on every node serves
//! that node's clients on the local socket, forwards their calls to the controller, and keeps
//! the node registered (its GPUs, their health, a heartbeat). See `acb.v1.Cluster` in the
//! .proto for the link, and [`crate::peer::forwarded`] for how the controller learns a
//! forwarded call's node (from the executor, under the cluster token; never from the client).

pub mod executor;
pub mod join;

pub use executor::{LinkState, ProxyService, Upstream, run_link};
pub use join::ClusterService;
