//! The `acb-assigner` command line: the clap types and the dispatch; each subcommand lives in a
//! file of its own. A failure is a [`CliError`], printed as one line; bad flags and addresses
//! exit with status 2, failures of the work with 1, a lease the assigner took back with 3.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use acb_core::Policy;
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Address, GpuSpec, LogFormat};
use acb_client::connection;

mod alloc;
mod bench;
mod bench_cluster;
mod demo;
mod demo_job;
mod device_plugin;
mod docs;
mod error;
mod release;
mod serve;
mod simulate;
mod slurm;
mod status;
mod timeline;
mod watch;

pub use error::CliError;
pub use serve::resolve_settings;

/// The acb GPU assigner: owns a node's GPUs and grants them to jobs by policy.
#[derive(Debug, Parser)]
#[command(name = "acb-assigner", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the assigner daemon.
    Serve(Box<ServeArgs>),
    /// Show GPUs with their holders, the queue and the clients.
    Status(StatusArgs),
    /// Print one line per event, live.
    Watch(WatchArgs),
    /// Draw who held which GPU when, from the assigner's event record, as SVG.
    Timeline(TimelineArgs),
    /// Give a lease back: any lease, as the admin (the assigner's admin uid, over its Unix socket).
    Release(ReleaseArgs),
    /// Ask for GPUs, print the lease, hold it, give it back (a debugging aid; also used by tests).
    Alloc(AllocArgs),
    /// Benchmark grant+release round trips beside a bare tonic unary call, same run.
    Bench(BenchArgs),
    /// Benchmark the cluster: grant+release through an executor and the controller beside a
    /// standalone daemon, and the controller's cost per event with 1,000 GPUs (SIMULATED).
    BenchCluster(BenchClusterArgs),
    /// Predict, before deploying, what acb does to a workload: the simulator on a job trace,
    /// static baseline beside each scheduler (SIMULATED: no GPU is used).
    Simulate(SimulateArgs),
    /// The demo: the same pipeline jobs run statically, then brokered by acb, with real job
    /// processes through libacb, on real GPUs with PyTorch when there are, on SIMULATED ones
    /// otherwise; a table side by side and a timeline of each.
    Demo(DemoArgs),
    /// acb over a Slurm job's nodes, from its batch script: `eval "$(acb-assigner slurm up)"`.
    Slurm(slurm::SlurmArgs),
    /// The Kubernetes device plugin: the node's GPUs as time-shared devices (`acb.io/gpu`).
    DevicePlugin(device_plugin::DevicePluginArgs),
    /// Print a shell completion script (e.g. `acb-assigner completions bash >
    /// /etc/bash_completion.d/acb-assigner`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page acb-assigner(1), or write it and one page per subcommand into a
    /// directory (e.g. `acb-assigner man --out-dir /usr/local/share/man/man1`).
    Man {
        /// Write acb-assigner.1 and acb-assigner-SUBCOMMAND.1 here instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// One job of the demo (started by `demo`).
    #[command(hide = true)]
    DemoJob(DemoJobArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Where to listen: unix:/path/to.sock or tcp:IP:PORT; repeatable. Default:
    /// /run/acb/assigner.sock, or $XDG_RUNTIME_DIR/acb/assigner.sock for a daemon not run as
    /// root. A socket's directory is created (0755) if missing, and refused if it is a symlink,
    /// not this user's, or writable by group or others.
    #[arg(long, value_parser = str::parse::<Address>)]
    listen: Vec<Address>,
    /// The GPUs: auto (NVML), auto:0,1 (only those NVML GPUs, by index or UUID), slurm (the
    /// GPUs Slurm gave the job here), none, or fake:COUNTxSIZE[,COUNTxSIZE] (simulated).
    /// Default: auto.
    #[arg(long, value_parser = str::parse::<GpuSpec>)]
    gpus: Option<GpuSpec>,
    /// simple, gpu-sharing or gpu-affinity. Default: simple.
    #[arg(long, value_parser = parse_policy)]
    scheduler: Option<Policy>,
    /// Time slice: a busy holder blocking the queue's head is asked to yield after this long.
    #[arg(long, value_parser = config::parse_duration)]
    quantum: Option<Duration>,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9400).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// A file whose first line is a token every call must carry; required for non-loopback TCP.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Settings file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log format (filter with RUST_LOG).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Open connections at most, all listeners together; past it new ones are closed at once.
    /// Default 4096, lowered to fit the file descriptor limit.
    #[arg(long)]
    max_connections: Option<usize>,
    /// A new connection that sends nothing (no HTTP/2 preface, no TLS hello) for this long is
    /// closed. Default: 10s.
    #[arg(long, value_parser = config::parse_duration)]
    handshake_timeout: Option<Duration>,
    /// TLS on the TCP listeners: the server's certificate chain (PEM). Needs --tls-key.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS on the TCP listeners: the server's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: TCP clients must present a certificate signed by this CA (PEM).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback TCP listener without TLS (the token then crosses the network in
    /// the clear).
    #[arg(long)]
    insecure: bool,
    /// The most one-off clients (calls with no session) waiting for a grant at once; past it a
    /// call fails with RESOURCE_EXHAUSTED, reason LIMIT_REACHED. Default: 1024.
    #[arg(long)]
    max_one_off_clients: Option<usize>,
    /// Where the leases are saved, so that a restarted assigner does not grant a GPU a client
    /// still computes on; `none` saves nothing. Default, for a daemon on the default socket:
    /// /var/lib/acb as root, else $XDG_STATE_HOME/acb or ~/.local/state/acb; on any other
    /// socket, none (give one).
    #[arg(long)]
    state_dir: Option<String>,
    /// How long a restarted assigner holds its previous run's session leases for their clients
    /// to resume them (e.g. 30s). Default: 30s.
    #[arg(long, value_parser = config::parse_duration)]
    reclaim_grace: Option<Duration>,
    /// How long a one-off lease (AllocRequest without a session) lives unless its holder renews
    /// it (Renew). Default: 5m.
    #[arg(long, value_parser = config::parse_duration)]
    one_off_ttl: Option<Duration>,
    /// The uid that may release any lease over the Unix socket (`acb-assigner release --lease N`).
    /// Default: 0.
    #[arg(long)]
    admin_uid: Option<u32>,
    /// standalone (one node), controller (owns every node's GPUs and decides) or executor
    /// (serves its node's clients, forwards to --controller). Default: standalone.
    #[arg(long)]
    role: Option<String>,
    /// An executor's controller: tcp:HOST:PORT (an IP, or a DNS name resolved at every
    /// connection attempt).
    #[arg(long)]
    controller: Option<String>,
    /// The secret between the controller and its executors (a file whose first line is it):
    /// required for both roles; a caller without it cannot join as an executor.
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
    /// How often executors heartbeat; a node is lost after 3 missed. Default: 1s.
    #[arg(long, value_parser = config::parse_duration)]
    heartbeat: Option<Duration>,
    /// A cluster file (TOML: controller, cluster_token_file, heartbeat, nodes) shared by every
    /// node; flags and --config override it.
    #[arg(long)]
    cluster_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// List at most this many queued requests and this many clients (default 1000, at most
    /// 5000); the totals are always shown.
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Debug, Args)]
struct ReleaseArgs {
    #[command(flatten)]
    conn: Conn,
    /// The lease (its id in `status`).
    #[arg(long)]
    lease: u64,
    /// The holder's client token; without it the assigner allows only its admin uid.
    #[arg(long)]
    token: Option<String>,
}

#[derive(Debug, Args)]
struct WatchArgs {
    #[command(flatten)]
    conn: Conn,
    /// Print the recorded history first.
    #[arg(long)]
    replay: bool,
    /// With --replay: print the record up to now and exit, instead of following live events.
    #[arg(long, requires = "replay")]
    no_follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TimelineArgs {
    #[command(flatten)]
    conn: Conn,
    /// Where to write the SVG.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct AllocArgs {
    #[command(flatten)]
    conn: Conn,
    /// GPUs.
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// Memory per GPU (e.g. 20GiB); whole GPUs when unset.
    #[arg(long, value_parser = config::parse_size)]
    memory: Option<u64>,
    /// Priority (higher first).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Job name.
    #[arg(long, default_value = "acb-assigner-alloc")]
    job: String,
    /// A gang across processes: requests naming the same group are granted together once
    /// --group-size of them wait.
    #[arg(long)]
    group: Option<String>,
    /// The group's size (with --group).
    #[arg(long, requires = "group")]
    group_size: Option<u32>,
    /// Hold the lease this long (e.g. 5s), then release; forever (until killed) when unset.
    #[arg(long, value_parser = config::parse_duration)]
    hold: Option<Duration>,
}

#[derive(Debug, Args)]
struct BenchClusterArgs {
    /// Concurrent clients in the round-trip measurement.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Length of each round-trip measurement (e.g. 2s).
    #[arg(long, value_parser = config::parse_duration, default_value = "2s")]
    time: Duration,
    /// Alternations of each comparison.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Nodes of 8 simulated GPUs in the large pool of the controller-cost measurement.
    #[arg(long, default_value_t = 125)]
    nodes: usize,
    /// Events of each kind per alternation in the controller-cost measurement.
    #[arg(long, default_value_t = 2000)]
    cycles: usize,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Length of each measurement (e.g. 2s).
    #[arg(long, value_parser = config::parse_duration, default_value = "2s")]
    time: Duration,
    /// Alternations of echo and broker runs per client count.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Rounds of the regrant measurement (a holder process SIGKILLed beside a holder that
    /// releases; 0 skips it).
    #[arg(long, default_value_t = 20)]
    regrant_rounds: usize,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// The trace (JSON; see the README for the format).
    #[arg(long)]
    trace: PathBuf,
    /// Schedulers to compare with the static baseline, comma-separated, or `all`.
    #[arg(long, default_value = "simple")]
    scheduler: String,
    /// The GPUs (fake:COUNTxSIZE[,...]); overrides the trace's.
    #[arg(long, value_parser = str::parse::<GpuSpec>)]
    gpus: Option<GpuSpec>,
    /// Eager release (give the GPU back after every phase) instead of lazy.
    #[arg(long)]
    eager: bool,
    /// Time slice for the schedulers.
    #[arg(long, value_parser = config::parse_duration)]
    quantum: Option<Duration>,
    /// Host<->device bandwidth for swaps (e.g. 20GB, per second); overrides the trace's.
    #[arg(long, value_parser = config::parse_size)]
    swap_bandwidth: Option<u64>,
    /// Write one timeline SVG per run into this directory (static.svg, simple.svg, ...).
    #[arg(long)]
    svg_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// About 15 seconds instead of about a minute (fewer, shorter work items).
    #[arg(long)]
    quick: bool,
    /// Jobs (default 8).
    #[arg(long)]
    jobs: Option<u32>,
    /// Simulated GPUs (default 2). On real GPUs the demo uses every GPU the driver shows.
    #[arg(long)]
    gpus: Option<u32>,
    /// auto: real GPUs when the driver shows some and Python has PyTorch with CUDA and the acb
    /// package (its jobs then run real kernels), simulated ones otherwise; simulated; or real
    /// (an error if they cannot be had).
    #[arg(long, default_value = "auto", value_parser = str::parse::<acb_lab::demo::real::DeviceChoice>)]
    device: acb_lab::demo::real::DeviceChoice,
    /// Work items per job (default 6; 3 with --quick).
    #[arg(long)]
    items: Option<u32>,
    /// Each item's CPU phase (default 1200ms; 450ms with --quick).
    #[arg(long, value_parser = config::parse_duration)]
    cpu: Option<Duration>,
    /// Each item's GPU phase (default 400ms; 150ms with --quick).
    #[arg(long, value_parser = config::parse_duration)]
    gpu: Option<Duration>,
    /// Device memory each job keeps in libacb, swapped with its GPU (0 for none).
    #[arg(long, value_parser = config::parse_size, default_value = "32MiB")]
    memory: u64,
    /// The scheduler of the brokered run.
    #[arg(long, value_parser = parse_policy, default_value = "simple")]
    scheduler: Policy,
    /// Where to write the timelines (static.svg, brokered.svg).
    #[arg(long, default_value = "acb-demo")]
    out_dir: PathBuf,
}

#[derive(Debug, Args)]
struct DemoJobArgs {
    /// Work items.
    #[arg(long)]
    items: u32,
    /// Each item's CPU phase.
    #[arg(long, value_parser = config::parse_duration)]
    cpu: Duration,
    /// Each item's GPU phase.
    #[arg(long, value_parser = config::parse_duration)]
    gpu: Duration,
    /// Hold one GPU for the whole job (static allocation).
    #[arg(long = "static")]
    whole_life: bool,
    /// Bytes of device memory the job keeps (0: none).
    #[arg(long, value_parser = config::parse_size, default_value = "0")]
    memory: u64,
}

// How the client subcommands reach the assigner (no doc comment: clap would take it for the
// subcommand's about).
#[derive(Debug, Args)]
struct Conn {
    /// The assigner's address (unix:/path or tcp:IP:PORT); default: $ACB_ASSIGNER, else the
    /// default socket. A tcp: address is reached over TLS when ACB_TLS_CA names the assigner's
    /// CA (PEM); ACB_TLS_CERT and ACB_TLS_KEY give this client's certificate for mutual TLS.
    #[arg(long, value_parser = str::parse::<Address>)]
    assigner: Option<Address>,
    /// A file whose first line is the auth token the assigner requires.
    #[arg(long, env = "ACB_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
}

fn parse_policy(s: &str) -> Result<Policy, acb_core::UnknownPolicy> {
    s.parse::<Policy>()
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Sockets systemd passed are taken before any thread starts (the environment is changed).
    let activated = match &cli.cmd {
        Cmd::Serve(_) => crate::systemd::listen_fds(),
        _ => Ok(Vec::new()),
    };
    let activated = match activated {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("acb-assigner: socket activation: {e}");
            return ExitCode::from(CliError::usage(e).status());
        }
    };
    let result = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli, activated)),
        Err(e) => Err(CliError::failed(format!("cannot start the runtime: {e}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acb-assigner: {e}");
            ExitCode::from(e.status())
        }
    }
}

async fn run(cli: Cli, activated: Vec<std::os::fd::OwnedFd>) -> Result<(), CliError> {
    match cli.cmd {
        Cmd::Serve(args) => serve::run(*args, activated).await,
        Cmd::Status(args) => status::run(args).await,
        Cmd::Watch(args) => watch::run(args).await,
        Cmd::Release(args) => release::run(args).await,
        Cmd::Timeline(args) => timeline::run(args).await,
        Cmd::Alloc(args) => alloc::run(args).await,
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::BenchCluster(args) => bench_cluster::run(args).await,
        Cmd::Simulate(args) => simulate::run(args),
        Cmd::Demo(args) => demo::run(args).await,
        Cmd::DemoJob(args) => demo_job::run(args).await,
        Cmd::Slurm(args) => slurm::run(args).await,
        Cmd::DevicePlugin(args) => device_plugin::run(args).await,
        Cmd::Completions { shell } => docs::completions(shell),
        Cmd::Man { out_dir } => docs::man(out_dir.as_deref()),
    }
}

/// Connects to the assigner `conn` names, with its token if it gives one.
async fn connect(conn: &Conn) -> Result<connection::Rpc, CliError> {
    let addr = match &conn.assigner {
        Some(a) => a.clone(),
        None => Address::from_env().map_err(CliError::failed)?,
    };
    let token = conn
        .auth_token_file
        .as_deref()
        .map(|p| acb_client::read_token(p).map_err(|e| CliError::failed(format!("--auth-token-file: {e}"))))
        .transpose()?;
    Ok(connection::connect(&addr, token.as_deref(), Duration::from_secs(5)).await?)
}
