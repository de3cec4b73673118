//! `acb-assigner bench`: grant+release round trips through the real assigner over a Unix
//! socket, beside a bare tonic unary call (the standard health Check) over the same kind of
//! socket, in the same run, alternating so that both see the same machine noise.
//!
//! One broker cycle is two calls (AllocRequest, then Release). One echo cycle is two health
//! Checks. The ratio compares like with like: two unary round trips each.

use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use acb_client::connection::{self, Session};
use acb_proto::Address;
use acb_proto::v1 as proto;

use crate::Error;

/// What one measurement gave.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Cycle latencies.
    pub latencies: Vec<Duration>,
    /// Wall time of the run.
    pub wall: Duration,
}

impl Sample {
    /// Adds `other`'s latencies and time to these.
    pub fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        self.wall += other.wall;
    }

    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i.min(v.len() - 1)]
    }

    /// Cycles per second.
    pub fn throughput(&self) -> f64 {
        let s = self.wall.as_secs_f64();
        if s == 0.0 { 0.0 } else { self.latencies.len() as f64 / s }
    }
}

async fn echo_run(addr: &Address, clients: usize, time: Duration) -> Result<Sample, Error> {
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..clients {
        let channel = connection::channel(addr, Duration::from_secs(5)).await?;
        tasks.push(tokio::spawn(async move {
            let mut h = HealthClient::new(channel);
            let mut lat = Vec::new();
            while start.elapsed() < time {
                let t = Instant::now();
                for _ in 0..2 {
                    h.check(HealthCheckRequest { service: String::new() }).await?;
                }
                lat.push(t.elapsed());
            }
            Ok::<_, Error>(lat)
        }));
    }
    collect(tasks, start).await
}

/// Grant+release cycles by `clients` concurrent sessions against `addr` for `time`.
pub async fn broker_run(addr: &Address, clients: usize, time: Duration) -> Result<Sample, Error> {
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..clients {
        let rpc = connection::connect(addr, None, Duration::from_secs(5)).await?;
        let mut session = Session::open(rpc, &format!("bench-{i}")).await?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < time {
                let t = Instant::now();
                let g = session.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }).await?;
                session.release(g.lease_id).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, Error>(lat)
        }));
    }
    collect(tasks, start).await
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, Error>>>,
    start: Instant,
) -> Result<Sample, Error> {
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Sample { latencies, wall: start.elapsed() })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Waits, bounded, until the assigner at `addr` answers.
pub async fn wait_ready(addr: &Address) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while connection::connect(addr, None, Duration::from_millis(200)).await.is_err() {
        if Instant::now() > deadline {
            return Err(Error::Run("the benchmark's assigner did not start".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs the benchmark against the assigner at `addr` (which the caller started, with at least
/// one simulated GPU per client, so that it measures the broker, not queueing): for each client
/// count, `rounds` alternations of echo and broker runs of `time` each. With `saving`, a second
/// such assigner that saves its leases (a state directory), whose cycles are measured in the
/// same alternation: what saving costs a grant. Returns the table.
pub async fn run(
    addr: &Address,
    saving: Option<&Address>,
    client_counts: &[usize],
    time: Duration,
    rounds: usize,
) -> Result<String, Error> {
    use std::fmt::Write;
    wait_ready(addr).await?;
    if let Some(saving) = saving {
        wait_ready(saving).await?;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "acb-assigner bench: grant+release cycles over a Unix socket vs two bare tonic unary calls \
         (grpc.health.v1.Check), same run, {rounds} alternations of {:.1} s each; SIMULATED GPUs",
        time.as_secs_f64()
    );
    if saving.is_some() {
        let _ = writeln!(
            out,
            "saved: the same cycles against an assigner that saves its leases (--state-dir) before \
             each grant's reply and after each release"
        );
    }
    let _ = write!(
        out,
        "{:>7}  {:>12} {:>12}  {:>12} {:>12}  {:>9}  {:>12} {:>12}  {:>9}",
        "clients",
        "echo p50 us",
        "echo p99 us",
        "cycle p50 us",
        "cycle p99 us",
        "p50 ratio",
        "echo /s",
        "cycles /s",
        "thr ratio"
    );
    if saving.is_some() {
        let _ = write!(out, "  {:>12} {:>12}  {:>11}", "saved p50 us", "saved /s", "saved/cycle");
    }
    let _ = writeln!(out);
    for &n in client_counts {
        let (mut echo, mut broker, mut saved) = (Sample::default(), Sample::default(), Sample::default());
        for _ in 0..rounds {
            echo.merge(echo_run(addr, n, time).await?);
            broker.merge(broker_run(addr, n, time).await?);
            if let Some(saving) = saving {
                saved.merge(broker_run(saving, n, time).await?);
            }
        }
        let ratio = us(broker.quantile(0.5)) / us(echo.quantile(0.5)).max(f64::MIN_POSITIVE);
        let thr = broker.throughput() / echo.throughput().max(f64::MIN_POSITIVE);
        let _ = write!(
            out,
            "{n:>7}  {:>12.1} {:>12.1}  {:>12.1} {:>12.1}  {:>8.2}x  {:>12.0} {:>12.0}  {:>8.2}x",
            us(echo.quantile(0.5)),
            us(echo.quantile(0.99)),
            us(broker.quantile(0.5)),
            us(broker.quantile(0.99)),
            ratio,
            echo.throughput(),
            broker.throughput(),
            thr
        );
        if saving.is_some() {
            let cost = us(saved.quantile(0.5)) / us(broker.quantile(0.5)).max(f64::MIN_POSITIVE);
            let _ = write!(out, "  {:>12.1} {:>12.0}  {:>10.2}x", us(saved.quantile(0.5)), saved.throughput(), cost);
        }
        let _ = writeln!(out);
    }
    Ok(out)
}

/// The time from ending a holder to its waiter's grant, `rounds` times each way, against an
/// assigner with one GPU at `addr`: a holder process (`exe alloc`, the acb-assigner binary)
/// SIGKILLed, and beside it a holder in this process that calls Release. Returns the line.
pub async fn regrant(addr: &Address, exe: &std::path::Path, rounds: usize) -> Result<String, Error> {
    use std::fmt::Write;
    wait_ready(addr).await?;
    let (mut killed, mut released) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // A holder process, then a waiter queued behind it; the time runs from the SIGKILL.
        let mut holder = holder_process(addr, exe).await?;
        let waiter = queued_waiter(addr).await;
        let t0 = Instant::now();
        let kill = holder.kill();
        let _ = tokio::task::spawn_blocking(move || holder.wait()).await;
        kill.map_err(Error::io("SIGKILL of the holder process"))?;
        killed.push(granted(waiter?, t0).await?);
        // The same with a holder that releases.
        let rpc = connection::connect(addr, None, Duration::from_secs(5)).await?;
        let mut holder = Session::open(rpc, "regrant-holder").await?;
        let lease = holder.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }).await?.lease_id;
        let waiter = queued_waiter(addr).await?;
        let t0 = Instant::now();
        holder.release(lease).await?;
        released.push(granted(waiter, t0).await?);
    }
    let k = Sample { latencies: killed, wall: Duration::ZERO };
    let r = Sample { latencies: released, wall: Duration::ZERO };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "regrant ({rounds} rounds each way, one SIMULATED GPU): holder process SIGKILLed -> waiter granted \
         p50 {:.1} us (max {:.1}); holder calls Release -> waiter granted p50 {:.1} us (max {:.1}); \
         kill/release p50 ratio {:.2}x",
        us(k.quantile(0.5)),
        us(k.quantile(1.0)),
        us(r.quantile(0.5)),
        us(r.quantile(1.0)),
        us(k.quantile(0.5)) / us(r.quantile(0.5)).max(f64::MIN_POSITIVE)
    );
    Ok(out)
}

/// `exe alloc --assigner ADDR`, once it says it holds the GPU.
async fn holder_process(addr: &Address, exe: &std::path::Path) -> Result<std::process::Child, Error> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(exe)
        .args(["alloc", "--job", "regrant-holder", "--assigner"])
        .arg(addr.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(Error::io(format!("starting {}", exe.display())))?;
    let out = child.stdout.take();
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            out.map(|o| std::io::BufReader::new(o).read_line(&mut line));
            line
        }),
    )
    .await;
    match line {
        Ok(Ok(line)) if line.starts_with("granted lease") => Ok(child),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Error::Run("the holder process did not get the GPU within 30 s".into()))
        }
    }
}

type Waiter = tokio::task::JoinHandle<Result<(Session, u64, Instant), Error>>;

/// A session whose request for the (only) GPU is queued when this returns; its task ends with
/// the grant's time.
async fn queued_waiter(addr: &Address) -> Result<Waiter, Error> {
    let rpc = connection::connect(addr, None, Duration::from_secs(5)).await?;
    let mut probe = rpc.clone();
    let mut session = Session::open(rpc, "regrant-waiter").await?;
    let task = tokio::spawn(async move {
        let g = session.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }).await?;
        Ok::<_, Error>((session, g.lease_id, Instant::now()))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = probe.status(proto::StatusRequest::default()).await?.into_inner();
        if s.queue_total > 0 {
            return Ok(task);
        }
        if Instant::now() > deadline || task.is_finished() {
            task.abort();
            return Err(Error::Run("the waiter's request was not queued behind the holder".into()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits (bounded) for the waiter's grant; gives its lease back; the time since `t0`.
async fn granted(waiter: Waiter, t0: Instant) -> Result<Duration, Error> {
    let (mut session, lease, at) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .map_err(|_| Error::Run("the waiter was not granted within 30 s".into()))???;
    session.release(lease).await?;
    Ok(at.saturating_duration_since(t0))
}
