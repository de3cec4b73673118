//! Property tests: random event sequences against the scheduler, the client machine and the
//! simulator. Each case checks the invariants after every step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use acb_core::sim::{self, JobSpec, Mode, Phase, SimConfig};
use acb_core::{
    Action, Affinity, ClientConfig, ClientId, ClientMachine, GpuDemand, GpuId, GpuPool, Health, Instant, LeaseId,
    Output, Policy, ReleaseMode, Request, RequestId, RequestTag, Scheduler, SchedulerConfig, State,
};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

#[derive(Clone, Debug)]
enum Op {
    Connect,
    Disconnect(usize),
    Submit {
        client: usize,
        gpus: u32,
        mem_gib: Option<u64>,
        priority: i32,
        affinity: (u8, Vec<u32>),
    },
    /// A gang member from a new client (a rank), pinned to one node's GPUs or not.
    Member {
        group: u8,
        size: u32,
        gpus: u32,
        mem_gib: Option<u64>,
        priority: i32,
        node: Option<usize>,
    },
    Release(usize),
    ReleaseBogus {
        client: usize,
        lease: u64,
    },
    Idle(usize),
    Busy(usize),
    Cancel {
        client: usize,
        nth: usize,
    },
    Advance(u64),
    Health {
        gpu: u32,
        lost: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Connect),
        1 => any::<usize>().prop_map(Op::Disconnect),
        6 => (
            any::<usize>(),
            0u32..5,
            prop::option::of(0u64..100),
            -2i32..3,
            (0u8..3, prop::collection::vec(0u32..9, 0..4)),
        )
            .prop_map(|(client, gpus, mem_gib, priority, affinity)| Op::Submit {
                client,
                gpus,
                mem_gib,
                priority,
                affinity
            }),
        4 => (0u8..3, 1u32..4, 1u32..3, prop::option::of(1u64..60), -1i32..2, prop::option::of(any::<usize>()))
            .prop_map(|(group, size, gpus, mem_gib, priority, node)| Op::Member { group, size, gpus, mem_gib, priority, node }),
        4 => any::<usize>().prop_map(Op::Release),
        1 => (any::<usize>(), 0u64..40).prop_map(|(client, lease)| Op::ReleaseBogus { client, lease }),
        3 => any::<usize>().prop_map(Op::Idle),
        1 => any::<usize>().prop_map(Op::Busy),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(client, nth)| Op::Cancel { client, nth }),
        2 => (0u64..20_000).prop_map(Op::Advance),
        1 => (0u32..9, any::<bool>()).prop_map(|(gpu, lost)| Op::Health { gpu, lost }),
    ]
}

fn setup() -> impl Strategy<Value = (Policy, Option<u64>, Vec<Vec<u64>>)> {
    (
        prop::sample::select(Policy::ALL.to_vec()),
        prop::option::of(1u64..30_000),
        prop::collection::vec(prop::collection::vec(prop::sample::select(vec![40u64, 80]), 1..4), 1..3),
    )
}

/// Drives a scheduler and checks every output against what was asked.
struct World {
    sched: Scheduler,
    now: Instant,
    clients: Vec<ClientId>,
    next_client: u64,
    asked: BTreeMap<RequestId, (ClientId, u32)>,
    leases: BTreeMap<LeaseId, ClientId>,
    /// Gang members waiting, by group (name -> size, members).
    waiting: BTreeMap<String, (u32, BTreeSet<RequestId>)>,
    member_of: BTreeMap<RequestId, String>,
}

impl World {
    fn new(policy: Policy, quantum_ms: Option<u64>, nodes: &[Vec<u64>]) -> Self {
        let mut pool = GpuPool::new();
        for (n, gpus) in nodes.iter().enumerate() {
            let node = pool.add_node(&format!("n{n}"));
            for (i, gib) in gpus.iter().enumerate() {
                pool.add_gpu(node, format!("fake-{n}-{i}"), gib * GIB);
            }
        }
        let mut config = SchedulerConfig::new(policy);
        config.quantum = quantum_ms.map(Duration::from_millis);
        World {
            sched: Scheduler::new(config, pool),
            now: Instant::ZERO,
            clients: Vec::new(),
            next_client: 1,
            asked: BTreeMap::new(),
            leases: BTreeMap::new(),
            waiting: BTreeMap::new(),
            member_of: BTreeMap::new(),
        }
    }

    fn pick<T: Copy>(v: &[T], i: usize) -> Option<T> {
        if v.is_empty() { None } else { Some(v[i % v.len()]) }
    }

    fn connect(&mut self) -> ClientId {
        let c = ClientId(self.next_client);
        self.next_client += 1;
        self.sched.connect(c, self.now).unwrap();
        self.clients.push(c);
        c
    }

    fn submit(&mut self, req: Request) -> Option<RequestId> {
        let (client, gpus) = (req.client, req.gpus);
        let group = req.group.clone().filter(|g| g.size > 1);
        match self.sched.submit(req, self.now) {
            Ok(id) => {
                self.asked.insert(id, (client, gpus));
                if let Some(g) = group {
                    self.waiting.entry(g.name.clone()).or_insert((g.size, BTreeSet::new())).1.insert(id);
                    self.member_of.insert(id, g.name);
                }
                Some(id)
            }
            Err(_) => None,
        }
    }

    /// A member no longer waits (cancelled, rejected, its client gone).
    fn forget_member(&mut self, id: RequestId) {
        if let Some(name) = self.member_of.remove(&id)
            && let Some((_, m)) = self.waiting.get_mut(&name)
        {
            m.remove(&id);
            if m.is_empty() {
                self.waiting.remove(&name);
            }
        }
    }

    fn release(&mut self, lease: LeaseId) {
        let client = self.leases[&lease];
        self.sched.release(client, lease, self.now).unwrap();
        self.leases.remove(&lease);
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match op {
            Op::Connect => {
                self.connect();
            }
            Op::Disconnect(i) => {
                if let Some(c) = Self::pick(&self.clients, *i) {
                    let gone = self.sched.disconnect(c, now).unwrap();
                    for r in gone.requests {
                        self.forget_member(r);
                    }
                    self.clients.retain(|x| *x != c);
                    self.leases.retain(|_, holder| *holder != c);
                    assert_eq!(self.sched.leases_of(c).count(), 0);
                    assert_eq!(self.sched.queued_of(c).count(), 0);
                }
            }
            Op::Submit { client, gpus, mem_gib, priority, affinity } => {
                let Some(c) = Self::pick(&self.clients, *client) else { return };
                let ids: Vec<GpuId> = affinity.1.iter().map(|g| GpuId(*g)).collect();
                let affinity = match affinity.0 {
                    0 => Affinity::Any,
                    1 => Affinity::Preferred(ids),
                    _ => Affinity::Required(ids),
                };
                let mut req = Request::new(c, "p", *gpus).with_priority(*priority).with_affinity(affinity);
                req.memory_per_gpu = mem_gib.map(|m| m * GIB);
                self.submit(req);
            }
            Op::Member { group, size, gpus, mem_gib, priority, node } => {
                let c = self.connect();
                let nodes = self.sched.pool().nodes().len();
                let affinity = match node {
                    Some(n) => Affinity::Required(self.sched.pool().nodes()[n % nodes].gpus.clone()),
                    None => Affinity::Any,
                };
                let mut req = Request::new(c, "rank", *gpus)
                    .with_priority(*priority)
                    .with_affinity(affinity)
                    .with_group(format!("g{group}"), *size);
                req.memory_per_gpu = mem_gib.map(|m| m * GIB);
                self.submit(req);
            }
            Op::Release(i) => {
                let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
                if let Some(l) = Self::pick(&ids, *i) {
                    self.release(l);
                }
            }
            Op::ReleaseBogus { client, lease } => {
                if let Some(c) = Self::pick(&self.clients, *client) {
                    let owned = self.leases.get(&LeaseId(*lease)) == Some(&c);
                    let r = self.sched.release(c, LeaseId(*lease), now);
                    assert_eq!(r.is_ok(), owned, "release of {lease} by {c}: {r:?}");
                    if owned {
                        self.leases.remove(&LeaseId(*lease));
                    }
                }
            }
            Op::Idle(i) | Op::Busy(i) => {
                let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
                if let Some(l) = Self::pick(&ids, *i) {
                    let c = self.leases[&l];
                    if matches!(op, Op::Idle(_)) {
                        self.sched.report_idle(c, l, now).unwrap();
                    } else {
                        self.sched.report_busy(c, l, now).unwrap();
                    }
                }
            }
            Op::Cancel { client, nth } => {
                if let Some(c) = Self::pick(&self.clients, *client) {
                    let queued: Vec<RequestId> = self.sched.queued_of(c).collect();
                    if let Some(r) = Self::pick(&queued, *nth) {
                        self.sched.cancel(c, r, now).unwrap();
                        self.forget_member(r);
                    }
                }
            }
            Op::Advance(ms) => {
                self.now = self.now + Duration::from_millis(*ms);
                // Fire the timer as a driver would; once more, early, to check it is harmless.
                self.sched.handle_timeout(self.now);
                self.sched.handle_timeout(now);
            }
            Op::Health { gpu, lost } => {
                let h = if *lost { Health::Lost } else { Health::Healthy };
                let r = self.sched.set_health(GpuId(*gpu), h, now);
                assert_eq!(r.is_ok(), (*gpu as usize) < self.sched.pool().len());
            }
        }
        self.absorb();
    }

    /// Drains outputs, checking each; returns the grants.
    fn absorb(&mut self) -> Vec<(RequestId, LeaseId)> {
        let mut grants = Vec::new();
        let mut asked_yield = BTreeSet::new();
        let mut outs = Vec::new();
        while let Some(out) = self.sched.poll_output() {
            outs.push(out);
        }
        for (i, out) in outs.iter().cloned().enumerate() {
            // The members of one gang are granted together: the grants of a group's waiting
            // members come out of one input, consecutively, all of them, once all wait.
            if let Output::Granted(g) = &out
                && let Some(name) = self.member_of.get(&g.request).cloned()
                && let Some((size, members)) = self.waiting.remove(&name)
            {
                assert_eq!(members.len(), size as usize, "{name}: granted with {} of {size} members", members.len());
                let run: BTreeSet<RequestId> = outs[i..]
                    .iter()
                    .take(members.len())
                    .filter_map(|o| match o {
                        Output::Granted(x) => Some(x.request),
                        _ => None,
                    })
                    .collect();
                assert_eq!(run, members, "{name}: its members' grants are not one consecutive decision: {outs:?}");
                for m in &members {
                    self.member_of.remove(m);
                }
            }
            match out {
                Output::Granted(g) => {
                    let (client, gpus) = self.asked[&g.request];
                    assert_eq!(g.client, client);
                    assert!(self.sched.is_connected(client), "granted to a disconnected client");
                    assert_eq!(g.gpus.len(), gpus as usize, "a gang is granted whole");
                    let distinct: BTreeSet<_> = g.gpus.iter().collect();
                    assert_eq!(distinct.len(), g.gpus.len(), "distinct GPUs");
                    for gpu in &g.gpus {
                        assert_eq!(self.sched.pool().gpu(*gpu).unwrap().health, Health::Healthy);
                    }
                    assert!(self.leases.insert(g.lease, client).is_none());
                    grants.push((g.request, g.lease));
                }
                Output::YieldAsked { lease, client, .. } => {
                    assert_eq!(self.leases.get(&lease), Some(&client));
                    assert!(asked_yield.insert(lease), "a lease is asked to yield once");
                    assert!(self.sched.lease(lease).unwrap().yield_asked);
                }
                Output::Revoked { lease, client, .. } => {
                    assert_eq!(self.leases.remove(&lease), Some(client));
                }
                Output::Rejected { request, client, .. } => {
                    assert_eq!(self.asked[&request].0, client);
                    self.forget_member(request);
                }
                Output::GroupBroken { lease, client, .. } => {
                    assert_eq!(self.leases.remove(&lease), Some(client));
                }
            }
        }
        if let Err(e) = self.sched.check_invariants() {
            panic!("invariant broken: {e}");
        }
        let poll = self.sched.poll_timeout();
        assert!(
            poll.is_none_or(|t| t > self.now),
            "a timer in the past after handle_timeout would make a driver spin: {poll:?} <= {:?}",
            self.now
        );
        grants
    }

    /// Holders keep releasing, and new one-GPU requests keep arriving behind the head: the head
    /// is granted (or rejected) by the time every lease that existed when it became head has
    /// been released. Round after round, the queue empties.
    fn drain_without_starvation(&mut self, arrivals: &[bool]) {
        // At most 24 late arrivals, so that the queue can drain.
        let mut arrivals = arrivals.iter().cycle().take(24);
        let mut rounds = 0;
        loop {
            let head = self.sched.queued().next().map(|q| (q.id, q.priority()));
            let Some(head) = head else { break };
            rounds += 1;
            assert!(rounds < 1000, "the queue does not drain");
            self.sched.handle_timeout(self.now);
            self.absorb();
            let existing: Vec<LeaseId> = self.leases.keys().copied().collect();
            let mut done = self.sched.queued_request(head.0).is_none();
            for l in existing {
                if done {
                    break;
                }
                if self.leases.contains_key(&l) {
                    self.now = self.now + Duration::from_millis(7);
                    self.release(l);
                    self.absorb();
                }
                if *arrivals.next().unwrap_or(&false) {
                    let c = self.connect();
                    // Behind the head: same or lower priority, arriving later.
                    let req = Request::new(c, "late", 1).with_priority(head.1 - 1);
                    self.submit(req);
                    self.absorb();
                }
                done = self.sched.queued_request(head.0).is_none();
            }
            assert!(
                self.sched.queued_request(head.0).is_none(),
                "{:?} starved: every lease present when it became head was released",
                head.0
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn scheduler_invariants_hold_and_nobody_starves(
        (policy, quantum, nodes) in setup(),
        ops in prop::collection::vec(op(), 1..60),
        arrivals in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let mut w = World::new(policy, quantum, &nodes);
        for _ in 0..2 {
            w.connect();
        }
        for op in &ops {
            w.apply(op);
        }
        w.drain_without_starvation(&arrivals);
    }

    #[test]
    fn the_client_machine_never_panics_and_its_state_matches_its_lease(
        inputs in prop::collection::vec((0u8..12, 1u64..4, 1u32..3), 1..40),
        eager in any::<bool>(),
    ) {
        let release = if eager { ReleaseMode::Eager } else { ReleaseMode::Lazy };
        let mut m = ClientMachine::new(ClientConfig { release, idle_timeout: Some(Duration::from_millis(50)) });
        let mut now = Instant::ZERO;
        let mut tag = RequestTag(0);
        for (kind, lease, gpus) in inputs {
            now = now + Duration::from_millis(10);
            let lease = LeaseId(lease);
            match kind {
                0 | 1 => { let _ = m.begin(GpuDemand::gpus(gpus), now); }
                2 | 3 => { let _ = m.end(now); }
                4 => m.handle_granted(tag, lease, (0..gpus).map(GpuId).collect(), GIB, now),
                5 => m.handle_yield(lease, now),
                6 => { let session = m.session(); m.handle_release_acked(lease, session, now) }
                7 => m.handle_disconnect(now),
                8 => m.handle_reconnected(now),
                9 => m.handle_timeout(now),
                10 => { let _ = m.safe_point(now); let _ = m.cancel(now); }
                _ => m.handle_revoked(lease, now),
            }
            while let Some(a) = m.poll_action() {
                match a {
                    Action::Ready { lease } => prop_assert_eq!(m.lease(), Some(lease), "Ready names the lease held"),
                    Action::SendRequest { tag: sent, .. } => tag = sent,
                    _ => {}
                }
            }
            let holds = matches!(m.state(), State::Active | State::IdleHeld | State::Releasing);
            prop_assert_eq!(m.lease().is_some(), holds, "state {:?} vs lease {:?}", m.state(), m.lease());
            prop_assert!(m.poll_timeout().is_none() || m.state() == State::IdleHeld, "a timer only while a GPU is kept idle");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn every_simulated_job_finishes_under_every_policy(
        jobs in prop::collection::vec(
            (1u32..3, 1u64..60, prop::collection::vec((any::<bool>(), 1u64..50), 1..4), 1u32..4, 0u64..30, -1i32..2),
            1..7,
        ),
        gpus in 1u32..4,
        eager in any::<bool>(),
        quantum in prop::option::of(1u64..40),
    ) {
        let specs: Vec<JobSpec> = jobs
            .iter()
            .enumerate()
            .map(|(i, (g, mem, phases, repeat, arrival, priority))| JobSpec {
                name: format!("j{i}"),
                arrival: Duration::from_secs(*arrival),
                gpus: (*g).min(gpus),
                memory_per_gpu: mem * GIB,
                priority: *priority,
                phases: phases
                    .iter()
                    .map(|(cpu, s)| if *cpu { Phase::Cpu(Duration::from_secs(*s)) } else { Phase::Gpu(Duration::from_secs(*s)) })
                    .collect(),
                repeat: *repeat,
            })
            .collect();
        let items: u64 = specs.iter().map(|j| u64::from(j.repeat)).sum();
        let pool = GpuPool::uniform("n", gpus, 80 * GIB);
        for policy in [Policy::GpuSharing, Policy::GpuAffinity] {
            let mut sc = SchedulerConfig::new(policy);
            sc.quantum = quantum.map(Duration::from_secs);
            let mut cfg = SimConfig::new(pool.clone(), Mode::Brokered(sc));
            if eager {
                cfg.client.release = ReleaseMode::Eager;
            }
            let r = sim::run(&cfg, &specs);
            prop_assert!(r.is_ok(), "{:?}: {:?}", policy, r);
            let r = r.unwrap();
            prop_assert_eq!(r.items, items);
            prop_assert!(r.gpu_busy() <= 1.0 + 1e-9);
        }
        let stat = sim::run(&SimConfig::new(pool, Mode::Static), &specs).unwrap();
        prop_assert_eq!(stat.items, items);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// No run, static or brokered under any policy, does more GPU work than its GPUs can: the
    /// GPU-phase work over makespan x GPUs is at most 1, and no run ends before the hardware
    /// bound (so no brokered speed-up exceeds static makespan / bound). Memory may be 0 (none),
    /// so that `gpu-sharing` packs as many jobs on a GPU as it likes.
    #[test]
    fn no_policy_does_more_gpu_work_than_the_gpus_can(
        jobs in prop::collection::vec(
            (1u32..3, 0u64..30, prop::collection::vec((any::<bool>(), 0u64..50_000), 1..4), 1u32..4, 0u64..30_000),
            1..8,
        ),
        gpus in 1u32..4,
        eager in any::<bool>(),
        latency_ms in 0u64..50,
    ) {
        let specs: Vec<JobSpec> = jobs
            .iter()
            .enumerate()
            .map(|(i, (g, mem, phases, repeat, arrival))| JobSpec {
                name: format!("j{i}"),
                arrival: Duration::from_millis(*arrival),
                gpus: (*g).min(gpus),
                memory_per_gpu: mem * GIB / 4,
                priority: 0,
                phases: phases
                    .iter()
                    .map(|(cpu, ms)| if *cpu { Phase::Cpu(Duration::from_millis(*ms)) } else { Phase::Gpu(Duration::from_millis(*ms)) })
                    .collect(),
                repeat: *repeat,
            })
            .collect();
        let pool = GpuPool::uniform("n", gpus, 80 * GIB);
        let bound = sim::makespan_lower_bound(gpus as usize, &specs);
        let modes = [Mode::Static, Mode::Brokered(SchedulerConfig::new(Policy::GpuSharing)), Mode::Brokered(SchedulerConfig::new(Policy::GpuAffinity))];
        let mut makespans = Vec::new();
        for mode in modes {
            let mut cfg = SimConfig::new(pool.clone(), mode.clone());
            cfg.grant_latency = Duration::from_millis(latency_ms);
            if eager {
                cfg.client.release = ReleaseMode::Eager;
            }
            let r = sim::run(&cfg, &specs);
            prop_assert!(r.is_ok(), "{:?}: {:?}", mode, r);
            let r = r.unwrap();
            let capacity = r.makespan.as_nanos() * u128::from(gpus);
            prop_assert!(r.compute <= capacity, "{:?}: {} ns of GPU work in {} GPU-ns", mode, r.compute, capacity);
            prop_assert!(r.makespan >= bound, "{:?}: makespan {:?} under the bound {:?}", mode, r.makespan, bound);
            makespans.push(r.makespan);
        }
        let hardware = makespans[0].as_secs_f64() / bound.as_secs_f64().max(1e-9);
        for m in &makespans[1..] {
            prop_assert!(makespans[0].as_secs_f64() / m.as_secs_f64().max(1e-9) <= hardware + 1e-9);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Gangs on a multi-node pool: a gang of ranks (one per node, pinned) beside pinned and
    /// free jobs always finishes, its ranks granted in the same instants, each job on its node,
    /// and no run does more GPU work than its GPUs can.
    #[test]
    fn simulated_gangs_finish_in_lockstep_within_the_hardware(
        phases in prop::collection::vec((any::<bool>(), 1u64..40), 1..4),
        repeat in 1u32..4,
        rank_gpus in 1u32..3,
        others in prop::collection::vec((1u64..30, prop::collection::vec((any::<bool>(), 1u64..40), 1..3), 1u32..3, prop::option::of(0u32..2)), 0..4),
        mode in 0u8..4,
        eager in any::<bool>(),
    ) {
        let mut pool = GpuPool::new();
        for n in 0..2 {
            let node = pool.add_node(&format!("n{n}"));
            for i in 0..2 {
                pool.add_gpu(node, format!("fake-{n}-{i}"), 80 * GIB);
            }
        }
        let to_phases = |p: &[(bool, u64)]| -> Vec<Phase> {
            p.iter().map(|(cpu, s)| if *cpu { Phase::Cpu(Duration::from_secs(*s)) } else { Phase::Gpu(Duration::from_secs(*s)) }).collect()
        };
        let mut specs = Vec::new();
        let mut pinned = BTreeMap::new();
        for r in 0..2 {
            let mut rank = JobSpec::new(format!("rank{r}"), 8 * GIB, to_phases(&phases), repeat);
            rank.gpus = rank_gpus;
            pinned.insert(r, acb_core::NodeId(r as u32));
            specs.push(rank);
        }
        for (i, (mem, p, rep, node)) in others.iter().enumerate() {
            let mut j = JobSpec::new(format!("o{i}"), mem * GIB, to_phases(p), *rep);
            j.arrival = Duration::from_secs(i as u64);
            if let Some(n) = node {
                pinned.insert(specs.len(), acb_core::NodeId(*n));
            }
            specs.push(j);
        }
        let mode = match mode {
            0 => Mode::Static,
            1 => Mode::Brokered(SchedulerConfig::new(Policy::GpuAffinity)),
            2 => Mode::Brokered(SchedulerConfig::new(Policy::GpuSharing)),
            _ => Mode::Brokered(SchedulerConfig::new(Policy::GpuAffinity).with_quantum(Duration::from_secs(3))),
        };
        let mut cfg = SimConfig::new(pool.clone(), mode.clone());
        cfg.pinned = pinned.clone();
        cfg.gangs = vec![vec![0, 1]];
        if eager {
            cfg.client.release = ReleaseMode::Eager;
        }
        let r = sim::run(&cfg, &specs);
        prop_assert!(r.is_ok(), "{:?}: {:?}", mode, r);
        let r = r.unwrap();
        let items: u64 = specs.iter().map(|j| u64::from(j.repeat)).sum();
        prop_assert_eq!(r.items, items);
        let grants_of = |j: usize| r.waits.iter().filter(|w| w.job == j).map(|w| w.end).collect::<Vec<_>>();
        prop_assert_eq!(grants_of(0), grants_of(1));
        for s in &r.spans {
            if let Some(n) = pinned.get(&s.job) {
                prop_assert_eq!(pool.gpu(s.gpu).unwrap().node, *n);
            }
        }
        prop_assert!(r.compute <= r.makespan.as_nanos() * 4);
        prop_assert!(r.makespan >= sim::makespan_lower_bound(4, &specs));
    }
}
