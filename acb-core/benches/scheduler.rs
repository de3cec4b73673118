//! Cost of one scheduling event with 1,000 GPUs and 10,000 clients.
//!
//! Each benchmark keeps the scheduler in a steady state: every GPU is held and the other
//! clients wait. One iteration is a cycle of events (named in the benchmark's id); criterion's
//! "elements" throughput counts the events, so its thrpt line reads as events per second.
//! Goal: under 10 µs per event (100k decisions per second on one core).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use acb_core::{ClientId, GpuPool, Instant, LeaseId, Output, Policy, Request, Scheduler, SchedulerConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const GPUS: u32 = 1_000;
const CLIENTS: u64 = 10_000;
const GIB: u64 = 1 << 30;

/// Makes the request a client sends on its `n`th ask.
type MakeRequest = fn(ClientId, u64) -> Request;

/// A scheduler with `CLIENTS` connected clients, each having asked once.
struct Steady {
    sched: Scheduler,
    /// Leases in grant order: the oldest releases next.
    held: VecDeque<(ClientId, LeaseId)>,
    now: Instant,
    make: MakeRequest,
    n: u64,
}

impl Steady {
    fn new(policy: Policy, make: MakeRequest) -> Self {
        // Eight nodes of 125 GPUs, like a small cluster under one controller.
        let mut pool = GpuPool::new();
        for n in 0..8 {
            let node = pool.add_node(&format!("node{n}"));
            for i in 0..GPUS / 8 {
                pool.add_gpu(node, format!("fake-{n}-{i}"), 80 * GIB);
            }
        }
        let mut s = Steady {
            sched: Scheduler::new(SchedulerConfig::new(policy), pool),
            held: VecDeque::new(),
            now: Instant::ZERO,
            make,
            n: 0,
        };
        for c in 1..=CLIENTS {
            s.sched.connect(ClientId(c), s.now).unwrap();
            s.submit(ClientId(c));
        }
        s
    }

    fn submit(&mut self, c: ClientId) {
        self.n += 1;
        let req = (self.make)(c, self.n);
        self.sched.submit(req, self.now).unwrap();
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(out) = self.sched.poll_output() {
            if let Output::Granted(g) = out {
                self.held.push_back((g.client, g.lease));
            }
        }
    }

    /// Two events: the oldest holder releases (its GPUs go to waiters), then asks again.
    fn release_and_resubmit(&mut self) {
        self.now = self.now + Duration::from_micros(10);
        let (c, l) = self.held.pop_front().unwrap();
        self.sched.release(c, l, self.now).unwrap();
        self.drain();
        self.submit(c);
    }

    /// Three events: the oldest holder's phase ends (idle), it is asked to yield, it releases,
    /// and asks again.
    fn idle_yield_release_resubmit(&mut self) {
        self.now = self.now + Duration::from_micros(10);
        let (c, l) = self.held.pop_front().unwrap();
        self.sched.report_idle(c, l, self.now).unwrap();
        let mut asked = false;
        while let Some(out) = self.sched.poll_output() {
            match out {
                Output::YieldAsked { lease, .. } if lease == l => asked = true,
                Output::Granted(g) => self.held.push_back((g.client, g.lease)),
                _ => {}
            }
        }
        assert!(asked, "a waiter exists, so the idle holder is asked to yield");
        self.sched.release(c, l, self.now).unwrap();
        self.drain();
        self.submit(c);
    }
}

fn one_gpu(c: ClientId, _: u64) -> Request {
    Request::new(c, "job", 1)
}

fn mixed_gangs(c: ClientId, n: u64) -> Request {
    Request::new(c, "job", [1, 1, 2, 1, 4, 1, 2, 8][(n % 8) as usize])
}

fn shared(c: ClientId, n: u64) -> Request {
    Request::new(c, "job", 1).with_memory((10 + (n * 7) % 30) * GIB)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_1000_gpus_10000_clients");
    g.throughput(Throughput::Elements(2));
    let cases: [(&str, Policy, MakeRequest); 3] = [
        ("simple/release+submit", Policy::Simple, one_gpu),
        ("gpu-affinity_gangs_1-8/release+submit", Policy::GpuAffinity, mixed_gangs),
        ("gpu-sharing_10-40GiB/release+submit", Policy::GpuSharing, shared),
    ];
    for (name, policy, make) in cases {
        let mut s = Steady::new(policy, make);
        assert!(s.sched.queue_len() > 1_000, "{name}: the queue must be long for a fair test");
        g.bench_function(name, |b| b.iter(|| black_box(&mut s).release_and_resubmit()));
    }
    g.throughput(Throughput::Elements(3));
    let mut s = Steady::new(Policy::Simple, one_gpu);
    g.bench_function("simple/idle+yield+release+submit", |b| {
        b.iter(|| black_box(&mut s).idle_yield_release_resubmit())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
