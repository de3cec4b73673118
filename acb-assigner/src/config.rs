//! What users type: addresses, GPU inventories, sizes, durations, and the TOML settings file.
//! Every parser returns a one-line message saying what is wrong and what is expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use acb_core::Policy;
use serde::Deserialize;

pub use acb_proto::Address;

pub use acb_core::inventory::GpuSpec;

use crate::Error;

/// Parses a size: `80GiB`, `512M`, `40GB`, `1024` (bytes), `1.5GiB`; the grammar is
/// [`acb_core::units`]'s.
pub fn parse_size(s: &str) -> Result<u64, Error> {
    Ok(acb_core::units::parse_size(s)?)
}

/// Parses a duration: `500ms`, `30s`, `1.5m`, `1h`; the grammar is [`acb_core::units`]'s.
pub fn parse_duration(s: &str) -> Result<Duration, Error> {
    Ok(acb_core::units::parse_duration(s)?)
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The settings file given with `--config`. Every key is optional; flags override it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Like `--listen`, as a list.
    pub listen: Option<Vec<String>>,
    /// Like `--gpus`.
    pub gpus: Option<String>,
    /// Like `--scheduler`.
    pub scheduler: Option<String>,
    /// Like `--quantum`.
    pub quantum: Option<String>,
    /// Like `--metrics`.
    pub metrics: Option<String>,
    /// Like `--auth-token-file`.
    pub auth_token_file: Option<PathBuf>,
    /// Like `--log-format`.
    pub log_format: Option<LogFormat>,
    /// Like `--node-name`.
    pub node_name: Option<String>,
    /// Like `--max-connections`.
    pub max_connections: Option<usize>,
    /// Like `--handshake-timeout`.
    pub handshake_timeout: Option<String>,
    /// Like `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// Like `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// Like `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// Like `--insecure`.
    pub insecure: Option<bool>,
    /// Like `--max-one-off-clients`.
    pub max_one_off_clients: Option<usize>,
    /// Like `--state-dir` (`"none"`: save nothing).
    pub state_dir: Option<String>,
    /// Like `--reclaim-grace`.
    pub reclaim_grace: Option<String>,
    /// Like `--one-off-ttl`.
    pub one_off_ttl: Option<String>,
    /// Like `--admin-uid`.
    pub admin_uid: Option<u32>,
    /// Like `--role`.
    pub role: Option<String>,
    /// Like `--controller`.
    pub controller: Option<String>,
    /// Like `--cluster-token-file`.
    pub cluster_token_file: Option<PathBuf>,
    /// Like `--heartbeat`.
    pub heartbeat: Option<String>,
    /// Like `--cluster-file`.
    pub cluster_file: Option<PathBuf>,
}

/// The cluster file (`--cluster-file`): what every node of a cluster shares. Every key is
/// optional; a node's own flags and settings file override it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The controller's address, `tcp:IP:PORT` (what executors connect to).
    pub controller: Option<String>,
    /// The file holding the cluster token.
    pub cluster_token_file: Option<PathBuf>,
    /// How often executors heartbeat.
    pub heartbeat: Option<String>,
    /// The nodes, for people and tools (`name`, `address`); each executor still registers
    /// itself.
    #[serde(default)]
    pub nodes: Vec<ClusterNode>,
}

/// A node in the cluster file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// Its node name (`--node-name` on it).
    pub name: String,
    /// Its address, for people.
    pub address: Option<String>,
}

impl ClusterFile {
    /// Reads and parses a cluster file.
    pub fn load(path: &Path) -> Result<ClusterFile, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|source| Error::ReadSettings { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|source| Error::Settings { path: path.to_path_buf(), source })
    }
}

/// What this daemon is in a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RoleConfig {
    /// One node, its own GPUs (the default).
    #[default]
    Standalone,
    /// The controller: owns the pool of every node, decides.
    Controller,
    /// An executor: serves its node's clients, forwards to the controller at this address.
    Executor {
        /// The controller's address.
        controller: ControllerAddr,
    },
}

/// Where an executor finds its controller: `tcp:HOST:PORT`, HOST an IP (`[::1]` for IPv6) or a
/// DNS name (a Kubernetes Service's, say), resolved again at every connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerAddr {
    /// An IP (without brackets) or a DNS name.
    pub host: String,
    /// The controller's TCP port.
    pub port: u16,
}

impl From<std::net::SocketAddr> for ControllerAddr {
    fn from(sa: std::net::SocketAddr) -> ControllerAddr {
        ControllerAddr { host: sa.ip().to_string(), port: sa.port() }
    }
}

impl std::str::FromStr for ControllerAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<ControllerAddr, String> {
        let usage = || format!("{s:?}: the controller is tcp:HOST:PORT (an IP or a DNS name), e.g. tcp:10.0.0.1:7878");
        let rest = s.strip_prefix("tcp:").ok_or_else(usage)?;
        if let Ok(sa) = rest.parse::<std::net::SocketAddr>() {
            return Ok(sa.into());
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(usage)?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(usage)?;
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if host.len() > 253 || name.is_empty() || !name.split('.').all(label_ok) {
            return Err(usage());
        }
        Ok(ControllerAddr { host: host.to_owned(), port })
    }
}

impl std::fmt::Display for ControllerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "tcp:[{}]:{}", self.host, self.port)
        } else {
            write!(f, "tcp:{}:{}", self.host, self.port)
        }
    }
}

/// The default of `--heartbeat`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

impl FileConfig {
    /// Reads and parses a settings file.
    pub fn load(path: &Path) -> Result<FileConfig, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|source| Error::ReadSettings { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|source| Error::Settings { path: path.to_path_buf(), source })
    }
}

/// Everything `serve` needs, resolved from flags, the settings file and defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Listen addresses.
    pub listen: Vec<Address>,
    /// GPU inventory.
    pub gpus: GpuSpec,
    /// Scheduler policy.
    pub scheduler: Policy,
    /// Time slice.
    pub quantum: Option<Duration>,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// The shared secret every call must carry (required for non-loopback TCP).
    pub auth_token: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// This node's name in the pool.
    pub node_name: String,
    /// Where the token came from (warned about when group or others can read it).
    pub auth_token_file: Option<PathBuf>,
    /// Open connections at most, all listeners together (lowered to fit the descriptor limit).
    pub max_connections: usize,
    /// Time a new connection has to start talking (and to finish a TLS handshake).
    pub handshake_timeout: Duration,
    /// TLS for the TCP listeners.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Allows a non-loopback TCP listener without TLS (`--insecure`).
    pub insecure: bool,
    /// The most one-off clients waiting for a grant at once.
    pub max_one_off_clients: usize,
    /// Where the leases are saved across restarts (`None`: nowhere).
    pub state_dir: Option<PathBuf>,
    /// How long a restarted assigner holds its previous run's session leases for their clients.
    pub reclaim_grace: Duration,
    /// How long a one-off lease lives without a renewal.
    pub one_off_ttl: Duration,
    /// The uid that may release any lease (`acb-assigner release --lease N`).
    pub admin_uid: u32,
    /// Standalone, controller or executor.
    pub role: RoleConfig,
    /// The secret between a controller and its executors (`--cluster-token-file`).
    pub cluster_token: Option<String>,
    /// How often executors heartbeat (a controller tells them).
    pub heartbeat: Duration,
    /// The nodes the cluster file lists: a controller shows those that never registered as
    /// down.
    pub cluster_nodes: Vec<String>,
}

/// The default of `--reclaim-grace`.
pub const DEFAULT_RECLAIM_GRACE: Duration = Duration::from_secs(30);
/// The default of `--one-off-ttl`.
pub const DEFAULT_ONE_OFF_TTL: Duration = Duration::from_secs(300);

/// The default of `--max-one-off-clients`.
pub const DEFAULT_MAX_ONE_OFF_CLIENTS: usize = 1024;

impl ServeConfig {
    /// An assigner on one Unix socket with simulated GPUs (`fake:COUNTx80GiB`) under `policy`,
    /// no metrics, no token: what benchmarks and tests start.
    pub fn simulated(socket: PathBuf, count: u32, policy: Policy) -> ServeConfig {
        ServeConfig {
            listen: vec![Address::Unix(socket)],
            gpus: GpuSpec::Fake(vec![(count, 80 << 30)]),
            scheduler: policy,
            quantum: None,
            metrics: None,
            auth_token: None,
            log_format: LogFormat::Text,
            node_name: "simulated".into(),
            auth_token_file: None,
            max_connections: crate::listener::DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: crate::listener::DEFAULT_HANDSHAKE_TIMEOUT,
            tls: None,
            insecure: false,
            max_one_off_clients: DEFAULT_MAX_ONE_OFF_CLIENTS,
            state_dir: None,
            reclaim_grace: DEFAULT_RECLAIM_GRACE,
            one_off_ttl: DEFAULT_ONE_OFF_TTL,
            admin_uid: 0,
            role: RoleConfig::Standalone,
            cluster_token: None,
            heartbeat: DEFAULT_HEARTBEAT,
            cluster_nodes: Vec::new(),
        }
    }
}

/// This machine's host name, for the node's name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_controller_is_an_ip_or_a_dns_name_with_a_port() {
        let ok = |s: &str| s.parse::<ControllerAddr>().unwrap();
        assert_eq!(ok("tcp:10.0.0.1:7878"), ControllerAddr { host: "10.0.0.1".into(), port: 7878 });
        assert_eq!(ok("tcp:[::1]:7878").to_string(), "tcp:[::1]:7878");
        assert_eq!(ok("tcp:acb-controller.acb.svc:7878").host, "acb-controller.acb.svc");
        assert_eq!(ok("tcp:ctl.example.org.:1").to_string(), "tcp:ctl.example.org.:1");
        for bad in [
            "10.0.0.1:7878",
            "tcp:ctl",
            "tcp:ctl:0",
            "tcp:ctl:70000",
            "tcp::7878",
            "tcp:-ctl:1",
            "tcp:a..b:1",
            "tcp:a b:1",
            "tcp:ctl/x:1",
            "unix:/x.sock",
        ] {
            let e = bad.parse::<ControllerAddr>().unwrap_err();
            assert!(e.contains("tcp:HOST:PORT"), "{bad}: {e}");
        }
        let long = format!("tcp:{}:1", vec!["a".repeat(63); 5].join("."));
        assert!(long.parse::<ControllerAddr>().is_err(), "over 253 bytes");
    }

    use super::*;

    #[test]
    fn gpu_specs_parse() {
        assert_eq!("auto".parse(), Ok(GpuSpec::Auto));
        assert_eq!("none".parse(), Ok(GpuSpec::None));
        assert_eq!("fake:2x80GiB,1x40GiB".parse(), Ok(GpuSpec::Fake(vec![(2, 80 << 30), (1, 40 << 30)])));
        for bad in ["fake:", "fake:0x80GiB", "fake:2x", "fake:twox80GiB", "fake:2x80Gb", "gpu:2", "fake:2x0"] {
            assert!(bad.parse::<GpuSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("40GB").unwrap(), 40_000_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1e999GiB").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_settings_file_refuses_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("acb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "listen = [\"tcp:127.0.0.1:1\"]\ngpus = \"fake:1x8GiB\"\nscheduler = \"gpu-sharing\"\n")
            .unwrap();
        let cfg = FileConfig::load(&good).unwrap();
        assert_eq!(cfg.scheduler.as_deref(), Some("gpu-sharing"));
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "schedular = \"simple\"\n").unwrap();
        assert!(FileConfig::load(&bad).unwrap_err().to_string().contains("schedular"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
