//! The `acb-assigner` command line. Bad flags and addresses: a one-line error, exit status 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use acb_core::{Bytes, Policy};
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Address, FileConfig, GpuSpec, LogFormat, ServeConfig};
use crate::proto;
use acb_client::connection;
use acb_client::events::from_proto as event_from_proto;

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
    Serve(ServeArgs),
    /// Show GPUs with their holders, the queue and the clients.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one line per event, live.
    Watch {
        #[command(flatten)]
        conn: Conn,
        /// Print the recorded history first.
        #[arg(long)]
        replay: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Draw who held which GPU when, from the assigner's event record, as SVG.
    Timeline {
        #[command(flatten)]
        conn: Conn,
        /// Where to write the SVG.
        #[arg(long)]
        out: PathBuf,
    },
    /// Ask for GPUs, print the lease, hold it, give it back (a debugging aid; also used by tests).
    Alloc {
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
        /// Hold the lease this long (e.g. 5s), then release; forever (until killed) when unset.
        #[arg(long, value_parser = config::parse_duration)]
        hold: Option<Duration>,
    },
    /// Benchmark grant+release round trips beside a bare tonic unary call, same run.
    Bench {
        /// Concurrent clients, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Length of each measurement (e.g. 2s).
        #[arg(long, value_parser = config::parse_duration, default_value = "2s")]
        time: Duration,
        /// Alternations of echo and broker runs per client count.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Predict, before deploying, what acb does to a workload: the simulator on a job trace,
    /// static baseline beside each scheduler (SIMULATED: no GPU is used).
    Simulate {
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
    },
    /// The demo: the same pipeline jobs run statically, then brokered by acb, with real job
    /// processes through libacb, on real GPUs with PyTorch when there are, on SIMULATED ones
    /// otherwise; a table side by side and a timeline of each.
    Demo(DemoArgs),
    /// One job of the demo (started by `demo`).
    #[command(hide = true)]
    DemoJob {
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
    },
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
struct Conn {
    /// The assigner's address (unix:/path or tcp:IP:PORT); default: $ACB_ASSIGNER, else the
    /// default socket.
    #[arg(long, value_parser = str::parse::<Address>)]
    assigner: Option<Address>,
    /// A file whose first line is the auth token the assigner requires.
    #[arg(long, env = "ACB_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Where to listen: unix:/path/to.sock or tcp:IP:PORT; repeatable. Default: the default
    /// socket ($XDG_RUNTIME_DIR/acb/assigner.sock, or /tmp/acb/assigner.sock).
    #[arg(long, value_parser = str::parse::<Address>)]
    listen: Vec<Address>,
    /// The GPUs: auto (NVML), none, or fake:COUNTxSIZE[,COUNTxSIZE] (simulated). Default: auto.
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
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse::<Policy>().map_err(|e| e.to_string())
}

/// Resolves `serve`'s flags over its settings file.
fn resolve(args: ServeArgs) -> Result<ServeConfig, String> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let listen = if !args.listen.is_empty() {
        args.listen
    } else if let Some(l) = file.listen {
        l.iter().map(|s| s.parse::<Address>().map_err(|e| format!("config listen: {e}"))).collect::<Result<_, _>>()?
    } else {
        vec![Address::default_socket()]
    };
    let gpus = match (args.gpus, file.gpus) {
        (Some(g), _) => g,
        (None, Some(s)) => s.parse().map_err(|e| format!("config gpus: {e}"))?,
        (None, None) => GpuSpec::Auto,
    };
    let scheduler = match (args.scheduler, file.scheduler) {
        (Some(p), _) => p,
        (None, Some(s)) => parse_policy(&s).map_err(|e| format!("config scheduler: {e}"))?,
        (None, None) => Policy::Simple,
    };
    let quantum = match (args.quantum, file.quantum) {
        (Some(q), _) => Some(q),
        (None, Some(s)) => Some(config::parse_duration(&s).map_err(|e| format!("config quantum: {e}"))?),
        (None, None) => None,
    };
    let metrics = match (args.metrics, file.metrics) {
        (Some(m), _) => Some(m),
        (None, Some(s)) => Some(s.parse().map_err(|_| format!("config metrics: {s:?} is not IP:PORT"))?),
        (None, None) => None,
    };
    let auth_token = args
        .auth_token_file
        .or(file.auth_token_file)
        .map(|p| acb_client::read_token(&p).map_err(|e| format!("--auth-token-file: {e}")))
        .transpose()?;
    Ok(ServeConfig {
        listen,
        gpus,
        scheduler,
        quantum,
        metrics,
        auth_token,
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        node_name: args.node_name.or(file.node_name).unwrap_or_else(config::host_name),
    })
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("acb-assigner: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("acb-assigner: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(conn: &Conn) -> Result<connection::Rpc, String> {
    let addr = match &conn.assigner {
        Some(a) => a.clone(),
        None => Address::from_env().map_err(|e| e.to_string())?,
    };
    let token = conn
        .auth_token_file
        .as_deref()
        .map(|p| acb_client::read_token(p).map_err(|e| format!("--auth-token-file: {e}")))
        .transpose()?;
    connection::connect(&addr, token.as_deref(), Duration::from_secs(5)).await.map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.cmd {
        Cmd::Serve(args) => {
            let cfg = match resolve(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("acb-assigner: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            init_logs(cfg.log_format);
            crate::server::serve(cfg, crate::server::termination()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { conn, json } => {
            let mut rpc = connect(&conn).await?;
            let s = rpc.status(proto::StatusRequest {}).await.map_err(|e| e.message().to_string())?.into_inner();
            if json {
                println!("{}", acb_client::status_json(&s));
            } else {
                print!("{}", status_table(&s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Watch { conn, replay, json } => {
            let mut rpc = connect(&conn).await?;
            let mut stream =
                rpc.watch(proto::WatchRequest { replay }).await.map_err(|e| e.message().to_string())?.into_inner();
            while let Some(e) = stream.message().await.map_err(|e| e.message().to_string())? {
                if let Some(event) = event_from_proto(e) {
                    if json {
                        println!("{}", acb_client::events::to_json(&event));
                    } else {
                        println!("{event}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Timeline { conn, out } => {
            let mut rpc = connect(&conn).await?;
            let status = rpc.status(proto::StatusRequest {}).await.map_err(|e| e.message().to_string())?.into_inner();
            let mut stream = rpc
                .watch(proto::WatchRequest { replay: true })
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            let mut events = Vec::new();
            while let Some(e) = stream.message().await.map_err(|e| e.message().to_string())? {
                if matches!(e.kind, Some(proto::event::Kind::HistoryEnd(_))) {
                    break;
                }
                events.extend(event_from_proto(e));
            }
            let simulated = status.gpus.iter().any(|g| g.fake);
            let rows: Vec<acb_lab::timeline::GpuRow> = status
                .gpus
                .iter()
                .map(|g| acb_lab::timeline::GpuRow {
                    id: g.id,
                    label: format!("gpu{} ({}{})", g.id, if g.fake { "simulated, " } else { "" }, Bytes(g.memory)),
                })
                .collect();
            let title = format!(
                "acb-assigner timeline, scheduler {}{}",
                status.scheduler,
                if simulated { " (SIMULATED GPUs)" } else { "" }
            );
            let end = Duration::from_millis(status.uptime_ms);
            let svg = acb_lab::timeline::render_svg(&title, &rows, &events, Some(end));
            std::fs::write(&out, svg).map_err(|e| format!("{}: {e}", out.display()))?;
            println!("wrote {} ({} events)", out.display(), events.len());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Alloc { conn, gpus, memory, priority, job, hold } => {
            let rpc = connect(&conn).await?;
            let mut session = connection::Session::open(rpc, &job).await.map_err(|e| e.message().to_string())?;
            let req = proto::AllocateRequest { gpus, memory_per_gpu: memory, priority, ..Default::default() };
            let grant = session.allocate(req).await.map_err(|e| e.message().to_string())?;
            let ids: Vec<String> = grant.gpus.iter().map(|g| format!("{}:{}", g.node, g.index)).collect();
            println!(
                "granted lease {} on {} after {:.3} s",
                grant.lease_id,
                ids.join(","),
                grant.waited_us as f64 / 1e6
            );
            let held = async {
                match hold {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            // Hold until the time is up, the assigner asks for the lease back (a time slice),
            // or the assigner goes away.
            let ended = tokio::select! {
                () = held => None,
                ended = session_ended(&mut session.events, grant.lease_id) => Some(ended),
            };
            match ended {
                None | Some(SessionEnd::Yield) => {
                    session.release(grant.lease_id).await.map_err(|e| e.message().to_string())?;
                    println!("released lease {}", grant.lease_id);
                    Ok(ExitCode::SUCCESS)
                }
                Some(SessionEnd::Gone(why)) => {
                    eprintln!("acb-assigner: lease {} ended: {why}", grant.lease_id);
                    Ok(ExitCode::from(3))
                }
            }
        }
        Cmd::Bench { clients, time, rounds } => {
            if clients.is_empty() || clients.iter().any(|c| *c == 0 || *c > 1024) || rounds == 0 {
                eprintln!("acb-assigner: --clients takes counts from 1 to 1024, --rounds at least 1");
                return Ok(ExitCode::from(2));
            }
            print!("{}", bench(&clients, time, rounds).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Simulate { trace, scheduler, gpus, eager, quantum, swap_bandwidth, svg_dir } => {
            match simulate(&trace, &scheduler, gpus, eager, quantum, swap_bandwidth, svg_dir.as_deref()) {
                Ok(out) => {
                    print!("{out}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("acb-assigner: {e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Cmd::Demo(args) => {
            let (jobs, gpus, items, cpu, gpu) = acb_lab::demo::DemoConfig::workload(args.quick);
            let exe = std::env::current_exe().map_err(|e| format!("cannot find the running executable: {e}"))?;
            let mut cfg = acb_lab::demo::DemoConfig {
                jobs: args.jobs.unwrap_or(jobs),
                gpus: args.gpus.unwrap_or(gpus),
                items: args.items.unwrap_or(items),
                cpu: args.cpu.unwrap_or(cpu),
                gpu: args.gpu.unwrap_or(gpu),
                memory: args.memory,
                scheduler: args.scheduler,
                out_dir: args.out_dir,
                library: PathBuf::new(),
                exe,
                real: None,
                simulated_because: None,
            };
            // Bad settings first (status 2), then what is missing from the machine (status 1).
            if let Err(e) = cfg.validate() {
                eprintln!("acb-assigner: {e}");
                return Ok(ExitCode::from(2));
            }
            cfg.library = acb_lab::demo::libacb::locate()?;
            let discover = |spec: &GpuSpec| {
                crate::discovery::discover(spec).map(|found| found.into_iter().map(|g| g.name).collect())
            };
            let (real, why) = acb_lab::demo::real::detect(args.device, &cfg.exe, &cfg.library, &discover)?;
            if let Some(r) = &real {
                if args.gpus.is_some() {
                    eprintln!(
                        "acb-assigner: --gpus sets the number of simulated GPUs; on real GPUs the demo uses every GPU \
                         the driver shows (use --device simulated to choose)"
                    );
                    return Ok(ExitCode::from(2));
                }
                cfg.gpus = r.count;
            }
            cfg.real = real;
            cfg.simulated_because = why;
            acb_lab::demo::run(&cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::DemoJob { items, cpu, gpu, whole_life, memory } => {
            let memory = usize::try_from(memory).map_err(|_| format!("--memory {memory}: too large"))?;
            let plan = acb_lab::demo::job::JobPlan {
                items,
                cpu,
                gpu,
                memory,
                holding: if whole_life {
                    acb_lab::demo::job::Holding::Static
                } else {
                    acb_lab::demo::job::Holding::Brokered
                },
            };
            let library = acb_lab::demo::libacb::locate()?;
            // libacb blocks its caller: run the job on a thread of its own, off the runtime.
            tokio::task::spawn_blocking(move || acb_lab::demo::job::run(&library, plan))
                .await
                .map_err(|e| format!("the job's thread: {e}"))??;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn simulate(
    trace: &std::path::Path,
    schedulers: &str,
    gpus: Option<GpuSpec>,
    eager: bool,
    quantum: Option<Duration>,
    swap_bandwidth: Option<u64>,
    svg_dir: Option<&std::path::Path>,
) -> Result<String, String> {
    use acb_core::sim::{self, Comparison, Mode, SimConfig};
    use acb_core::{ClientConfig, ReleaseMode, SchedulerConfig};
    let t = acb_lab::trace::load(trace)?;
    let policies: Vec<Policy> = if schedulers == "all" {
        Policy::ALL.to_vec()
    } else {
        schedulers.split(',').map(|s| parse_policy(s.trim())).collect::<Result<_, _>>()?
    };
    let spec = gpus.or(t.gpus.clone()).ok_or("no GPUs: give --gpus fake:COUNTxSIZE or \"gpus\" in the trace")?;
    let GpuSpec::Fake(_) = &spec else {
        return Err("simulate takes simulated GPUs: --gpus fake:COUNTxSIZE[,COUNTxSIZE]".into());
    };
    let found = crate::discovery::discover(&spec)?;
    let pool = crate::discovery::pool_of("simulated", &found);
    let client =
        ClientConfig { release: if eager { ReleaseMode::Eager } else { ReleaseMode::Lazy }, idle_timeout: None };
    let bandwidth = swap_bandwidth.or(t.swap_bandwidth).unwrap_or(20_000_000_000);
    let mut reports = Vec::new();
    let modes = std::iter::once(Mode::Static).chain(policies.iter().map(|p| {
        let mut c = SchedulerConfig::new(*p);
        c.quantum = quantum;
        Mode::Brokered(c)
    }));
    for mode in modes {
        let mut cfg = SimConfig::new(pool.clone(), mode);
        cfg.client = client.clone();
        cfg.swap_bandwidth = bandwidth;
        let report = sim::run(&cfg, &t.jobs).map_err(|e| e.to_string())?;
        if let Some(dir) = svg_dir {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let rows: Vec<acb_lab::timeline::GpuRow> = found
                .iter()
                .map(|g| acb_lab::timeline::GpuRow {
                    id: g.index,
                    label: format!("gpu{} (simulated, {})", g.index, Bytes(g.memory)),
                })
                .collect();
            let events = acb_lab::trace::events_of(&report, &t.jobs);
            let title = format!("{}: {} (SIMULATED)", trace.display(), report.label);
            let svg = acb_lab::timeline::render_svg(&title, &rows, &events, Some(report.makespan));
            let path = dir.join(format!("{}.svg", report.label));
            std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        reports.push(report);
    }
    let mut out = format!(
        "SIMULATED with the acb-core simulator (no GPU used): {} jobs on {} GPU(s), swaps at {:.1} GB/s, {} release\n\n",
        t.jobs.len(),
        found.len(),
        bandwidth as f64 / 1e9,
        if eager { "eager" } else { "lazy" }
    );
    out.push_str(&Comparison { reports }.to_string());
    if policies.contains(&Policy::GpuSharing) {
        out.push_str(
            "\nnote: the simulator does not model compute contention: under gpu-sharing, jobs on one GPU are \
             assumed not to slow each other, so treat that column as an upper bound\n",
        );
    }
    if let Some(dir) = svg_dir {
        out.push_str(&format!("\ntimelines written to {}\n", dir.display()));
    }
    Ok(out)
}

enum SessionEnd {
    Yield,
    Gone(String),
}

/// Waits for what ends a held lease: a yield request for it, its revocation, or the session's
/// end.
async fn session_ended(events: &mut tonic::Streaming<proto::SessionEvent>, lease: u64) -> SessionEnd {
    use proto::session_event::Event as E;
    loop {
        match events.message().await {
            Ok(Some(proto::SessionEvent { event: Some(E::YieldRequest(y)) })) if y.lease_id == lease => {
                println!("asked to yield lease {lease}");
                return SessionEnd::Yield;
            }
            Ok(Some(proto::SessionEvent { event: Some(E::Revoked(r)) })) if r.lease_id == lease => {
                return SessionEnd::Gone(r.reason);
            }
            Ok(Some(proto::SessionEvent { event: Some(E::ShuttingDown(s)) })) => return SessionEnd::Gone(s.reason),
            Ok(Some(_)) => {}
            Ok(None) => return SessionEnd::Gone("the assigner closed the session".into()),
            Err(e) => return SessionEnd::Gone(e.message().to_string()),
        }
    }
}

/// `bench`: an in-process assigner on a temporary socket, with one simulated GPU per client (the
/// benchmark measures the broker, not queueing), measured by `acb_lab::bench`.
async fn bench(clients: &[usize], time: Duration, rounds: usize) -> Result<String, String> {
    let max = clients.iter().copied().max().unwrap_or(1).max(1);
    let dir = std::env::temp_dir().join(format!("acb-bench-{}", std::process::id()));
    let socket = dir.join("assigner.sock");
    let cfg = ServeConfig::simulated(socket.clone(), u32::try_from(max).unwrap_or(u32::MAX), acb_core::Policy::Simple);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::serve(cfg, async {
        let _ = stop_rx.await;
    }));
    let result = acb_lab::bench::run(&Address::Unix(socket), clients, time, rounds).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn status_table(s: &proto::StatusResponse) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let simulated = s.gpus.iter().any(|g| g.fake);
    let _ = writeln!(
        o,
        "acb-assigner {}, scheduler {}, up {:.1} s{}",
        s.version,
        s.scheduler,
        s.uptime_ms as f64 / 1000.0,
        if simulated { ", SIMULATED GPUs" } else { "" }
    );
    let _ = writeln!(o, "\nGPU  NODE:IDX        NAME                    MEMORY     GRANTED    STATE      HOLDERS");
    for g in &s.gpus {
        let state = if !g.healthy {
            "LOST"
        } else if g.holders.is_empty() {
            "free"
        } else if g.holders.iter().all(|h| h.idle) {
            "idle-held"
        } else {
            "busy"
        };
        let holders: Vec<String> = g
            .holders
            .iter()
            .map(|h| {
                format!("{} (client#{}, lease#{}, {:.1} s)", h.job, h.client_id, h.lease_id, h.held_ms as f64 / 1e3)
            })
            .collect();
        let name = if g.fake { format!("{} (fake)", g.name) } else { g.name.clone() };
        let _ = writeln!(
            o,
            "{:<4} {:<15} {:<23} {:<10} {:<10} {:<10} {}{}",
            g.id,
            format!("{}:{}", g.node, g.index),
            name,
            Bytes(g.memory).to_string(),
            Bytes(g.granted).to_string(),
            state,
            holders.join("; "),
            if g.reserved { "  [reserved for the head of the queue]" } else { "" }
        );
    }
    let _ = writeln!(o, "\nQUEUE ({} waiting)", s.queue.len());
    for q in &s.queue {
        let mem = q.memory_per_gpu.map(|m| format!(" memory={}", Bytes(m))).unwrap_or_default();
        let _ = writeln!(
            o,
            "  request#{} client#{} {} gpus={}{} priority={} waiting {:.1} s",
            q.request_id,
            q.client_id,
            q.job,
            q.gpus,
            mem,
            q.priority,
            q.waiting_ms as f64 / 1e3
        );
    }
    let _ = writeln!(o, "\nCLIENTS ({})", s.clients.len());
    for c in &s.clients {
        let _ = writeln!(
            o,
            "  client#{} {} pid {} leases {} queued {}{}",
            c.client_id,
            c.job,
            c.pid,
            c.leases,
            c.queued,
            if c.one_off { " (one-off)" } else { "" }
        );
    }
    o
}
