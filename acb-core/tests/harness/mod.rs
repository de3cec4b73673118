//! A harness over the scheduler with a virtual clock: tests read as stories.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use acb_core::{
    ClientId, Gpu, GpuId, GpuPool, Grant, Instant, LeaseId, Output, Policy, Request, RequestId, Scheduler,
    SchedulerConfig, YieldReason,
};

pub const GIB: u64 = 1 << 30;

pub struct Harness {
    pub sched: Scheduler,
    pub now: Instant,
    next_client: u64,
    /// Everything the scheduler said, in order, not yet looked at.
    pending: Vec<Output>,
}

impl Harness {
    /// One node with GPUs of these sizes (GiB).
    pub fn new(policy: Policy, gpus_gib: &[u64]) -> Self {
        Self::with_config(SchedulerConfig::new(policy), &[gpus_gib])
    }

    /// One node per slice, GPUs of these sizes (GiB).
    pub fn with_config(config: SchedulerConfig, nodes: &[&[u64]]) -> Self {
        let mut pool = GpuPool::new();
        for (n, gpus) in nodes.iter().enumerate() {
            let node = pool.add_node(&format!("node{n}"));
            for (i, gib) in gpus.iter().enumerate() {
                pool.add_gpu(node, format!("fake-{n}-{i}"), gib * GIB);
            }
        }
        Harness { sched: Scheduler::new(config, pool), now: Instant::ZERO, next_client: 1, pending: Vec::new() }
    }

    pub fn gpu(&self, i: u32) -> &Gpu {
        self.sched.pool().gpu(GpuId(i)).unwrap()
    }

    /// A new connected client.
    pub fn client(&mut self) -> ClientId {
        let c = ClientId(self.next_client);
        self.next_client += 1;
        self.sched.connect(c, self.now).unwrap();
        c
    }

    /// Submits and collects outputs.
    pub fn submit(&mut self, req: Request) -> RequestId {
        let id = self.sched.submit(req, self.now).unwrap();
        self.collect();
        self.check();
        id
    }

    /// Asks `gpus` whole GPUs for `client`.
    pub fn ask(&mut self, client: ClientId, gpus: u32) -> RequestId {
        self.submit(Request::new(client, format!("job-{}", client.0), gpus))
    }

    pub fn release(&mut self, client: ClientId, lease: LeaseId) {
        self.sched.release(client, lease, self.now).unwrap();
        self.collect();
        self.check();
    }

    pub fn idle(&mut self, client: ClientId, lease: LeaseId) {
        self.sched.report_idle(client, lease, self.now).unwrap();
        self.collect();
        self.check();
    }

    pub fn busy(&mut self, client: ClientId, lease: LeaseId) {
        self.sched.report_busy(client, lease, self.now).unwrap();
        self.collect();
        self.check();
    }

    /// Advances the clock, firing the scheduler's timer whenever it is due.
    pub fn step(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(t) = self.sched.poll_timeout().filter(|t| *t <= until) {
            self.now = self.now.max(t);
            self.sched.handle_timeout(self.now);
            self.collect();
            if self.sched.poll_timeout() == Some(t) {
                break; // nothing more happens at t
            }
        }
        self.now = until;
        self.check();
    }

    fn collect(&mut self) {
        while let Some(o) = self.sched.poll_output() {
            self.pending.push(o);
        }
    }

    pub fn check(&self) {
        if let Err(e) = self.sched.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }

    /// Takes every output not looked at yet.
    pub fn outputs(&mut self) -> Vec<Output> {
        self.collect();
        std::mem::take(&mut self.pending)
    }

    /// Takes the outputs, which must be exactly one grant, to `client`.
    pub fn granted(&mut self, client: ClientId) -> Grant {
        let out = self.outputs();
        match out.as_slice() {
            [Output::Granted(g)] if g.client == client => g.clone(),
            _ => panic!("expected one grant to {client}, got {out:?}"),
        }
    }

    /// Takes the outputs, which must be empty.
    pub fn nothing(&mut self) {
        let out = self.outputs();
        assert!(out.is_empty(), "expected nothing to happen, got {out:?}");
    }

    /// Takes the outputs, which must be exactly one yield request.
    pub fn yield_asked(&mut self, client: ClientId, lease: LeaseId, reason: YieldReason) {
        let out = self.outputs();
        assert_eq!(out, vec![Output::YieldAsked { client, lease, reason }]);
    }
}
