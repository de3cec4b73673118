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
    fn merge(&mut self, other: Sample) {
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

async fn broker_run(addr: &Address, clients: usize, time: Duration) -> Result<Sample, Error> {
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

/// Runs the benchmark against the assigner at `addr` (which the caller started, with at least
/// one simulated GPU per client, so that it measures the broker, not queueing): for each client
/// count, `rounds` alternations of echo and broker runs of `time` each. Returns the table.
pub async fn run(addr: &Address, client_counts: &[usize], time: Duration, rounds: usize) -> Result<String, Error> {
    use std::fmt::Write;
    let deadline = Instant::now() + Duration::from_secs(10);
    while connection::connect(addr, None, Duration::from_millis(200)).await.is_err() {
        if Instant::now() > deadline {
            return Err(Error::Run("the benchmark's assigner did not start".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "acb-assigner bench: grant+release cycles over a Unix socket vs two bare tonic unary calls \
         (grpc.health.v1.Check), same run, {rounds} alternations of {:.1} s each; SIMULATED GPUs",
        time.as_secs_f64()
    );
    let _ = writeln!(
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
    for &n in client_counts {
        let (mut echo, mut broker) = (Sample::default(), Sample::default());
        for _ in 0..rounds {
            echo.merge(echo_run(addr, n, time).await?);
            broker.merge(broker_run(addr, n, time).await?);
        }
        let ratio = us(broker.quantile(0.5)) / us(echo.quantile(0.5)).max(f64::MIN_POSITIVE);
        let thr = broker.throughput() / echo.throughput().max(f64::MIN_POSITIVE);
        let _ = writeln!(
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
    }
    Ok(out)
}
