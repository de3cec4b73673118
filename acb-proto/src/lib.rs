//! The acb wire contract, shared by the assigner, the Rust client, libacb and the router:
//! - [`v1`]: the `acb.v1` gRPC protocol (`proto/acb/v1/assigner.proto`). Its Rust code is
//!   generated once and committed (`src/gen/`); `tests/generated.rs` checks it against the
//!   .proto, so no build runs protoc. `ACB_REGENERATE=1 cargo test -p acb-proto --test
//!   generated` rewrites it after a change of the .proto.
//! - [`deviceplugin`]: the kubelet's device-plugin API v1beta1 (`proto/k8s/...`), generated and
//!   committed the same way, for the Kubernetes device plugin.
//! - [`Address`]: where an assigner listens (`unix:/path`, `tcp:IP:PORT`).
//! - [`job`]: the rule for a job's name (length, characters), one copy for daemon and clients.
//! - [`reason`]: machine-readable error reasons (`google.rpc.ErrorInfo` in the status details),
//!   so that clients never match message text.
//!
//! Depends on prost and tonic only: never on the daemon, the core or the client.

pub mod address;
pub mod job;
pub mod reason;

pub use address::{Address, AddressError};
pub use job::{JobNameError, MAX_JOB_BYTES, check_job_name};
pub use reason::{ErrorReason, reason_of, status_with_reason};

/// The generated types and services of `acb.v1`.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!("gen/acb.v1.rs");

    /// The encoded file descriptor set of `acb.v1`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/acb_v1_descriptor.bin");
}

/// The kubelet's device-plugin API, `v1beta1` (`proto/k8s/deviceplugin/v1beta1/api.proto`,
/// written from the public Kubernetes specification: same package, services and field
/// numbers), for `acb-assigner device-plugin`. Generated and committed like [`v1`].
#[allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod deviceplugin {
    include!("gen/k8s.deviceplugin.v1beta1.rs");

    /// The API version a plugin registers with.
    pub const VERSION: &str = "v1beta1";
    /// The kubelet's registration socket, in its device-plugin directory.
    pub const KUBELET_SOCKET: &str = "kubelet.sock";
    /// The kubelet's device-plugin directory.
    pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";
    /// A device's health, as the kubelet spells it.
    pub const HEALTHY: &str = "Healthy";
    /// A device's health, as the kubelet spells it.
    pub const UNHEALTHY: &str = "Unhealthy";
}
