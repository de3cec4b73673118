//! `bench-cluster`: what the cluster costs, measured side by side in one run (SIMULATED GPUs).
//!
//! 1. Grant+release round trips through an executor and the controller (two daemons in this
//!    process, real gRPC: the client's Unix socket to the executor, TCP loopback to the
//!    controller), alternated with the same cycles against a standalone daemon.
//! 2. The controller's cost per event with a large pool: its driver with 125 executors' nodes of
//!    8 GPUs (1,000 GPUs) beside one node of 8, fed heartbeats and grant+release cycles directly
//!    (no sockets: the nodes are simulated in this process), alternated.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BenchClusterArgs, CliError};
use crate::config::{Address, RoleConfig, ServeConfig};
use crate::discovery::FoundGpu;
use crate::driver::{self, AllocSpec, Command, Handle, Peer, ReportedGpu, Role};

pub(super) async fn run(
    BenchClusterArgs { clients, time, rounds, nodes, cycles }: BenchClusterArgs,
) -> Result<(), CliError> {
    if clients == 0 || clients > 256 || rounds == 0 || rounds > 100 || nodes == 0 || nodes > 1000 || cycles == 0 {
        return Err(CliError::usage("--clients 1..=256, --rounds 1..=100, --nodes 1..=1000, --cycles at least 1"));
    }
    print!("{}", round_trips(clients, time, rounds).await?);
    print!("{}", controller_cost(nodes, cycles, rounds).await?);
    Ok(())
}

/// An in-process daemon, stopped on `stop`.
struct Daemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), crate::Error>>,
}

impl Daemon {
    fn start(cfg: ServeConfig) -> Daemon {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::server::serve(cfg, async {
            let _ = stop_rx.await;
        }));
        Daemon { stop: Some(stop), task }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::failed(e.to_string())
}

async fn round_trips(clients: usize, time: Duration, rounds: usize) -> Result<String, CliError> {
    use std::fmt::Write;
    let dir: PathBuf = std::env::temp_dir().join(format!("acb-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(failed)?;
    let token_file = dir.join("cluster.token");
    let token = format!("bench-{}", std::process::id());
    let count = u32::try_from(clients).unwrap_or(u32::MAX);
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(failed)?.port();
    let tcp: Address = format!("tcp:127.0.0.1:{port}").parse().map_err(failed)?;
    let _ = std::fs::write(&token_file, &token);

    let standalone_sock = dir.join("standalone.sock");
    let standalone = Daemon::start(ServeConfig::simulated(standalone_sock.clone(), count, acb_core::Policy::Simple));
    let mut ctl = ServeConfig::simulated(dir.join("controller.sock"), 0, acb_core::Policy::Simple);
    ctl.listen.push(tcp.clone());
    ctl.gpus = crate::config::GpuSpec::None;
    ctl.role = RoleConfig::Controller;
    ctl.cluster_token = Some(token.clone());
    ctl.node_name = "controller".into();
    let controller = Daemon::start(ctl);
    let executor_sock = dir.join("executor.sock");
    let mut exe = ServeConfig::simulated(executor_sock.clone(), count, acb_core::Policy::Simple);
    exe.role = RoleConfig::Executor { controller: crate::config::ControllerAddr { host: "127.0.0.1".into(), port } };
    exe.cluster_token = Some(token);
    exe.node_name = "node-1".into();
    let executor = Daemon::start(exe);

    let (standalone_addr, executor_addr) = (Address::Unix(standalone_sock), Address::Unix(executor_sock));
    let result = async {
        acb_lab::bench::wait_ready(&standalone_addr).await.map_err(failed)?;
        wait_registered(&executor_addr, clients).await?;
        let (mut plain, mut through) = (acb_lab::bench::Sample::default(), acb_lab::bench::Sample::default());
        for _ in 0..rounds {
            plain.merge(acb_lab::bench::broker_run(&standalone_addr, clients, time).await.map_err(failed)?);
            through.merge(acb_lab::bench::broker_run(&executor_addr, clients, time).await.map_err(failed)?);
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "acb-assigner bench-cluster: grant+release cycles, {clients} client(s), {rounds} alternations of {:.1} s; \
             SIMULATED GPUs",
            time.as_secs_f64()
        );
        let _ = writeln!(out, "{:<34} {:>12} {:>12} {:>10}", "path", "cycle p50 us", "cycle p99 us", "cycles /s");
        for (name, s) in [("standalone (Unix socket)", &plain), ("executor -> controller (Unix + TCP)", &through)] {
            let _ = writeln!(
                out,
                "{name:<34} {:>12.1} {:>12.1} {:>10.0}",
                us(s.quantile(0.5)),
                us(s.quantile(0.99)),
                s.throughput()
            );
        }
        let _ = writeln!(
            out,
            "through the executor / standalone: p50 {:.2}x, p99 {:.2}x, throughput {:.2}x (goal: p50 within 2x)\n",
            us(through.quantile(0.5)) / us(plain.quantile(0.5)).max(f64::MIN_POSITIVE),
            us(through.quantile(0.99)) / us(plain.quantile(0.99)).max(f64::MIN_POSITIVE),
            through.throughput() / plain.throughput().max(f64::MIN_POSITIVE),
        );
        Ok::<_, CliError>(out)
    }
    .await;
    executor.stop().await;
    controller.stop().await;
    standalone.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Waits, bounded, until the executor at `addr` answers and the controller has `gpus` GPUs.
async fn wait_registered(addr: &Address, gpus: usize) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut rpc) = acb_client::connection::connect(addr, None, Duration::from_millis(500)).await
            && let Ok(s) = rpc.status(crate::proto::StatusRequest::default()).await
            && s.get_ref().gpus.iter().filter(|g| g.healthy).count() >= gpus
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::failed("the benchmark's executor did not register with its controller"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A controller's driver with `nodes` nodes of 8 simulated GPUs each, fed directly.
async fn controller(nodes: usize) -> Result<(Handle, tokio::task::JoinHandle<()>), CliError> {
    let persistence = driver::Persistence {
        store: None,
        saved: None,
        reclaim_grace: crate::config::DEFAULT_RECLAIM_GRACE,
        one_off_ttl: crate::config::DEFAULT_ONE_OFF_TTL,
        admin_uid: 0,
        max_one_off_clients: crate::config::DEFAULT_MAX_ONE_OFF_CLIENTS,
    };
    let (handle, task) = driver::spawn(
        Role::Controller { heartbeat: Duration::from_secs(3600) },
        acb_core::Policy::Simple,
        None,
        "controller".into(),
        Vec::new(),
        Arc::new(crate::metrics::Metrics::default()),
        persistence,
    );
    for n in 0..nodes {
        let gpus = (0..8)
            .map(|i| ReportedGpu {
                gpu: FoundGpu {
                    index: i,
                    uuid: format!("fake-node{n}-{i}"),
                    name: "simulated GPU".into(),
                    memory: 80 << 30,
                    fake: true,
                },
                healthy: true,
            })
            .collect();
        let node = format!("node-{n}");
        let link = n as u64 + 1;
        handle.ask(|reply| Command::Register { node, gpus, link, reply }).await.and_then(|r| r).map_err(failed)?;
    }
    Ok((handle, task))
}

/// Per-event costs on one controller: (heartbeat, grant+release cycle), each the mean over
/// `cycles`.
async fn costs(handle: &Handle, nodes: usize, cycles: usize) -> Result<(Duration, Duration), CliError> {
    let start = Instant::now();
    for i in 0..cycles {
        let node = format!("node-{}", i % nodes);
        let link = (i % nodes) as u64 + 1;
        let health: Vec<(u32, bool, Option<u64>)> = (0..8).map(|g| (g, true, Some(1 << 30))).collect();
        handle.ask(|reply| Command::Heartbeat { node, link, health, reply }).await.map_err(failed)?;
    }
    let heartbeat = start.elapsed() / u32::try_from(cycles).unwrap_or(u32::MAX);
    // One session on the last node (its GPUs are the pool's last: the search goes past all).
    let (tx, _rx) = driver::session_channel();
    let welcomed = handle
        .ask(|reply| Command::Connect {
            job: "bench".into(),
            grants: false,
            to_client: tx,
            peer: Peer { uid: Some(0), pid: 1 },
            resume_token: String::new(),
            held: Vec::new(),
            node: Some(format!("node-{}", nodes - 1)),
            reply,
        })
        .await
        .and_then(|r| r)
        .map_err(failed)?;
    let start = Instant::now();
    for key in 0..cycles {
        let spec = AllocSpec {
            token: welcomed.token.clone(),
            job: String::new(),
            gpus: 1,
            memory_per_gpu: None,
            priority: 0,
            peer: Peer { uid: Some(0), pid: 1 },
            required: Vec::new(),
            preferred: Vec::new(),
            tag: 0,
            group: None,
            node: None,
        };
        let grant = handle
            .ask(|reply| Command::Allocate { key: key as u64, spec, reply })
            .await
            .and_then(|r| r)
            .map_err(failed)?;
        let token = welcomed.token.clone();
        handle
            .ask(|reply| Command::Release {
                token,
                lease: grant.lease,
                uid: Some(0),
                node: Some(format!("node-{}", nodes - 1)),
                reply,
            })
            .await
            .and_then(|r| r)
            .map_err(failed)?;
    }
    let cycle = start.elapsed() / u32::try_from(cycles).unwrap_or(u32::MAX);
    Ok((heartbeat, cycle))
}

async fn controller_cost(nodes: usize, cycles: usize, rounds: usize) -> Result<String, CliError> {
    use std::fmt::Write;
    let (small, small_task) = controller(1).await?;
    let (large, large_task) = controller(nodes).await?;
    let (mut s_hb, mut s_cy, mut l_hb, mut l_cy) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let (hb, cy) = costs(&small, 1, cycles).await?;
        s_hb += hb;
        s_cy += cy;
        let (hb, cy) = costs(&large, nodes, cycles).await?;
        l_hb += hb;
        l_cy += cy;
    }
    for h in [&small, &large] {
        let _ = h.send(Command::Shutdown).await;
    }
    let _ = small_task.await;
    let _ = large_task.await;
    let n = u32::try_from(rounds).unwrap_or(1);
    let us = |d: Duration| (d / n).as_secs_f64() * 1e6;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "controller cost per event (its driver fed directly, {rounds} alternations of {cycles} events; nodes \
         SIMULATED in this process, 8 GPUs each)"
    );
    let _ = writeln!(out, "{:<26} {:>14} {:>22}", "pool", "heartbeat us", "grant+release us");
    let _ = writeln!(out, "{:<26} {:>14.2} {:>22.2}", "1 node, 8 GPUs", us(s_hb), us(s_cy));
    let _ = writeln!(out, "{:<26} {:>14.2} {:>22.2}", format!("{nodes} nodes, {} GPUs", nodes * 8), us(l_hb), us(l_cy));
    let _ = writeln!(
        out,
        "large / small: heartbeat {:.2}x, grant+release {:.2}x",
        us(l_hb) / us(s_hb).max(f64::MIN_POSITIVE),
        us(l_cy) / us(s_cy).max(f64::MIN_POSITIVE)
    );
    Ok(out)
}
