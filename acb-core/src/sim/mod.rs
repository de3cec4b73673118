//! A discrete-event simulator: the real [`Scheduler`] and one real [`ClientMachine`] per job,
//! driven over job traces in virtual time.
//!
//! A job is a list of phases (CPU or GPU, each with a duration) repeated `repeat` times; one
//! repetition is one *work item* (one protein, one batch). In a GPU phase a brokered job asks
//! for GPUs through its client machine, exactly as libacb does; swapping its memory in or out
//! takes `memory × GPUs / swap_bandwidth`. The *static* baseline runs the same jobs with each
//! job holding whole GPUs from its start to its end, at most as many jobs at once as GPUs, in
//! arrival order (a batch scheduler with backfill).
//!
//! **Compute contention.** A GPU phase's duration is the time it takes alone on its GPUs. Jobs
//! computing on one GPU at once share it (processor sharing): while `k` jobs compute on a GPU,
//! each progresses at `1/k` of its speed alone, so a GPU never does more than one second of
//! work per second, whatever the policy. A multi-GPU job progresses at the pace of its most
//! shared GPU. So no run can end before [`makespan_lower_bound`].
//!
//! **Grant latency.** [`SimConfig::grant_latency`] is the time from the scheduler's grant to
//! the job acting on it (the grant's message, the job waking up): the GPU is held, idle, meanwhile.
//! Zero by default; `acb-assigner demo` measures it on its own runs.
//!
//! **Nodes and gangs.** A job may be pinned to one node of a multi-node pool
//! ([`SimConfig::pinned`]): it is granted GPUs of that node only, as the daemon grants a client
//! GPUs of its own node. Jobs may form a gang ([`SimConfig::gangs`]: the ranks of one torchrun
//! job, one process each): they ask for GPUs as one group, so the scheduler grants them together
//! or not at all, and they run in lockstep: a rank that ends its GPU phase first waits for the
//! others (a collective), holding its GPUs, and the ranks exit together.
//!
//! Simplifications, stated so nobody mistakes them for measurements: CPU phases never contend
//! for CPU cores; jobs sharing a GPU share it evenly and lose nothing to switching between them;
//! swap-in and swap-out of different jobs do not contend for PCIe; the very first GPU phase of a
//! job copies nothing in (its memory does not exist yet). A job with no memory (`0` bytes) asks
//! for GPUs without a memory size (under `gpu-sharing` that is the whole GPU, as libacb asks) and
//! swaps nothing.

mod report;

use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::fmt;
use core::time::Duration;

pub use self::report::{Comparison, Report, Span, SpanKind, Wait};
use crate::time::duration_nanos;
use crate::{
    Action, Affinity, ClientConfig, ClientId, ClientMachine, Error, GpuDemand, GpuId, GpuPool, Instant, LeaseId,
    NodeId, Output, Policy, Request, RequestTag, Scheduler, SchedulerConfig,
};

/// One phase of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Work on the CPU only: the GPU is not needed.
    Cpu(Duration),
    /// Work on the GPU(s).
    Gpu(Duration),
}

/// One job of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// Its name.
    pub name: String,
    /// When it starts, from the beginning of the simulation.
    pub arrival: Duration,
    /// GPUs per GPU phase (a gang).
    pub gpus: u32,
    /// Device memory per GPU, in bytes: what is swapped, and what `gpu-sharing` packs by. Zero:
    /// the job keeps nothing on the GPU between phases, and asks for no particular amount.
    pub memory_per_gpu: u64,
    /// Priority (higher first).
    pub priority: i32,
    /// The phases of one work item.
    pub phases: Vec<Phase>,
    /// How many work items.
    pub repeat: u32,
}

impl JobSpec {
    /// A job named `name` of `repeat` items, each `phases`, on one GPU, arriving at 0.
    pub fn new(name: impl Into<String>, memory_per_gpu: u64, phases: Vec<Phase>, repeat: u32) -> Self {
        JobSpec { name: name.into(), arrival: Duration::ZERO, gpus: 1, memory_per_gpu, priority: 0, phases, repeat }
    }
}

/// How the jobs get GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each job holds whole GPUs for its whole life.
    Static,
    /// Jobs ask for GPUs per GPU phase, through the scheduler with these settings.
    Brokered(SchedulerConfig),
}

/// A simulation's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// The GPUs.
    pub pool: GpuPool,
    /// Static or brokered.
    pub mode: Mode,
    /// The jobs' client settings (lazy or eager release, idle timeout).
    pub client: ClientConfig,
    /// Host<->device copy bandwidth for swaps, bytes per second (each direction).
    pub swap_bandwidth: u64,
    /// From a grant to the job acting on it (see the module docs); zero by default.
    pub grant_latency: Duration,
    /// Stop with [`SimError::EventLimit`] after this many events (a guard, not a feature).
    pub max_events: u64,
    /// Jobs pinned to a node, by index in the job list: they are granted that node's GPUs only.
    /// Jobs not listed may use any GPU.
    pub pinned: BTreeMap<usize, NodeId>,
    /// Gangs, each the indices in the job list of its ranks (same phases, same repeat): they
    /// are granted together and run in lockstep (see the module docs). Empty by default.
    pub gangs: Vec<Vec<usize>>,
}

impl SimConfig {
    /// Settings for `pool` in `mode`, lazy release, 20 GB/s swaps.
    pub fn new(pool: GpuPool, mode: Mode) -> Self {
        SimConfig {
            pool,
            mode,
            client: ClientConfig::default(),
            swap_bandwidth: 20_000_000_000,
            grant_latency: Duration::ZERO,
            max_events: 50_000_000,
            pinned: BTreeMap::new(),
            gangs: Vec::new(),
        }
    }
}

/// Why a simulation could not run to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// A job is malformed.
    InvalidJob {
        /// Its name.
        job: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The scheduler refused a job's request (more GPUs or memory than the pool has, ...).
    Rejected {
        /// Its name.
        job: String,
        /// The scheduler's error.
        error: Error,
    },
    /// Nothing left to happen but jobs are unfinished: a bug, reported rather than hidden.
    Stuck {
        /// When.
        at: Duration,
        /// Jobs not finished.
        unfinished: usize,
    },
    /// More events than [`SimConfig::max_events`].
    EventLimit(u64),
    /// The swap bandwidth is zero.
    ZeroBandwidth,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::InvalidJob { job, reason } => write!(f, "job {job:?}: {reason}"),
            SimError::Rejected { job, error } => write!(f, "job {job:?} cannot run: {error}"),
            SimError::Stuck { at, unfinished } => {
                write!(f, "simulation stuck at {at:?} with {unfinished} unfinished jobs")
            }
            SimError::EventLimit(n) => write!(f, "simulation stopped after {n} events"),
            SimError::ZeroBandwidth => f.write_str("swap bandwidth must be more than 0 bytes/s"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SimError {}

/// Runs `jobs` under `config`.
pub fn run(config: &SimConfig, jobs: &[JobSpec]) -> Result<Report, SimError> {
    for j in jobs {
        let reason = if j.gpus == 0 {
            Some("needs at least one GPU")
        } else if j.repeat == 0 {
            Some("repeat must be at least 1")
        } else if j.phases.is_empty() {
            Some("has no phases")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(SimError::InvalidJob { job: j.name.clone(), reason });
        }
    }
    if config.swap_bandwidth == 0 {
        return Err(SimError::ZeroBandwidth);
    }
    check_layout(config, jobs)?;
    Sim::new(config, jobs).run()
}

/// Checks the pins and the gangs of `config` against `jobs`.
fn check_layout(config: &SimConfig, jobs: &[JobSpec]) -> Result<(), SimError> {
    let invalid = |j: usize, reason| {
        Err(SimError::InvalidJob {
            job: jobs.get(j).map_or_else(|| alloc::format!("#{j}"), |s| s.name.clone()),
            reason,
        })
    };
    for (&j, node) in &config.pinned {
        if j >= jobs.len() {
            return invalid(j, "is pinned but not in the job list");
        }
        if config.pool.node(*node).is_none() {
            return invalid(j, "is pinned to a node not in the pool");
        }
    }
    let mut seen = alloc::collections::BTreeSet::new();
    for gang in &config.gangs {
        let Some(&first) = gang.first() else {
            return Err(SimError::InvalidJob { job: String::new(), reason: "a gang has no jobs" });
        };
        for &j in gang {
            if j >= jobs.len() {
                return invalid(j, "is in a gang but not in the job list");
            }
            if !seen.insert(j) {
                return invalid(j, "is in two gangs, or twice in one");
            }
            if first < jobs.len() && (jobs[j].phases != jobs[first].phases || jobs[j].repeat != jobs[first].repeat) {
                return invalid(j, "is in a gang whose ranks have other phases or repeat");
            }
        }
        if gang.len() as u64 > u64::from(crate::MAX_GROUP_SIZE) {
            return invalid(first, "is in a gang larger than the largest group");
        }
    }
    Ok(())
}

/// The earliest any run of `jobs` on `gpus` GPUs can end, whatever the policy: a GPU does at
/// most one second of GPU-phase work per second, so not before all GPU-phase work (a phase of
/// a two-GPU job counts twice) spread evenly over the GPUs is done; and no job ends before its
/// arrival plus its phases back to back. A brokered run's speed-up over the static one is at
/// most the static makespan over this.
pub fn makespan_lower_bound(gpus: usize, jobs: &[JobSpec]) -> Duration {
    let mut work: u128 = 0;
    let mut longest: u128 = 0;
    for j in jobs {
        let (mut cpu, mut gpu) = (0u128, 0u128);
        for p in &j.phases {
            match p {
                Phase::Cpu(d) => cpu += d.as_nanos(),
                Phase::Gpu(d) => gpu += d.as_nanos(),
            }
        }
        let repeat = u128::from(j.repeat);
        work += gpu * repeat * u128::from(j.gpus);
        longest = longest.max(j.arrival.as_nanos() + (cpu + gpu) * repeat);
    }
    let spread = work.div_ceil(gpus.max(1) as u128);
    Duration::from_nanos(u64::try_from(spread.max(longest)).unwrap_or(u64::MAX))
}

/// Runs the static baseline and then each scheduler in `policies` on the same jobs.
pub fn compare(
    pool: &GpuPool,
    jobs: &[JobSpec],
    policies: &[SchedulerConfig],
    client: &ClientConfig,
    swap_bandwidth: u64,
) -> Result<Comparison, SimError> {
    let mut reports = Vec::new();
    let mut cfg = SimConfig::new(pool.clone(), Mode::Static);
    cfg.client = client.clone();
    cfg.swap_bandwidth = swap_bandwidth;
    reports.push(run(&cfg, jobs)?);
    for p in policies {
        cfg.mode = Mode::Brokered(p.clone());
        reports.push(run(&cfg, jobs)?);
    }
    Ok(Comparison { reports })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(usize),
    PhaseDone(usize),
    /// Job `j`'s GPU phase ends, unless its computing was rescheduled since (generation).
    ComputeDone(usize, u64),
    /// Job `j`'s grant reaches it, after the grant latency.
    GrantDelivered(usize),
    SwapInDone(usize),
    SwapOutDone(usize, LeaseId),
    Timer,
}

#[derive(Debug)]
struct JobRun<'a> {
    spec: &'a JobSpec,
    client: ClientId,
    machine: ClientMachine,
    /// Items done.
    item: u32,
    /// Phase within the item.
    phase: usize,
    /// The lease held, its GPUs, and since when.
    lease: Option<(LeaseId, Vec<GpuId>, Instant)>,
    /// A swap-in is under way: compute starts when it is done.
    swapping_in: bool,
    /// A swap-out was started and the release waits for it.
    swap_out_until: Option<Instant>,
    /// The job's memory exists in host memory (it has been swapped out once).
    has_host_copy: bool,
    /// The phase to compute once the lease is ready.
    waiting_gpu: Option<Duration>,
    /// The tag of the job's last request, which its grant carries back to the machine.
    request_tag: RequestTag,
    /// A grant on its way to the job (the grant latency): lease, GPUs, memory per GPU, tag.
    grant_in_flight: Option<(LeaseId, Vec<GpuId>, u64, RequestTag)>,
    /// A yield asked of a lease whose grant has not reached the job yet.
    yield_in_flight: Option<LeaseId>,
    /// The GPU phase under way.
    computing: Option<Computing>,
    /// Bumped at each (re)scheduling of the end of a GPU phase, over the job's whole life, so
    /// that an end scheduled for an earlier phase never ends a later one.
    compute_generation: u64,
    /// Its gang (index in [`SimConfig::gangs`]), if it is a rank of one.
    gang: Option<usize>,
    /// A rank whose GPU phase is done waits here for the others.
    at_barrier: bool,
    /// A rank whose last item is done waits here for the others to exit with them.
    exiting: bool,
    done: bool,
}

/// A GPU phase under way, shared with whoever else computes on its GPUs.
#[derive(Debug)]
struct Computing {
    /// Its GPUs.
    gpus: Vec<GpuId>,
    /// When it started.
    started: Instant,
    /// Work left, in nanoseconds of computing alone, as of `since`.
    remaining: u64,
    since: Instant,
    /// The job's compute generation when this was scheduled to end: a `ComputeDone` of
    /// another generation is stale.
    generation: u64,
}

struct Sim<'a> {
    config: &'a SimConfig,
    scheduler: Scheduler,
    jobs: Vec<JobRun<'a>>,
    by_client: BTreeMap<ClientId, usize>,
    events: BinaryHeap<Reverse<(Instant, u64, Event)>>,
    seq: u64,
    timer_armed: Option<Instant>,
    dirty: VecDeque<usize>,
    /// The jobs computing on each GPU now.
    computing_on: BTreeMap<GpuId, Vec<usize>>,
    report: Report,
    stat: bool,
    error: Option<SimError>,
}

impl<'a> Sim<'a> {
    fn new(config: &'a SimConfig, specs: &'a [JobSpec]) -> Self {
        let (sched_cfg, stat) = match &config.mode {
            // A batch scheduler: whole GPUs, FIFO with backfill.
            Mode::Static => (SchedulerConfig::new(Policy::GpuAffinity), true),
            Mode::Brokered(c) => (c.clone(), false),
        };
        let label = if stat { String::from("static") } else { String::from(sched_cfg.policy.name()) };
        let jobs = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| JobRun {
                spec,
                client: ClientId(i as u64 + 1),
                machine: ClientMachine::new(config.client.clone()),
                item: 0,
                phase: 0,
                lease: None,
                swapping_in: false,
                swap_out_until: None,
                has_host_copy: false,
                waiting_gpu: None,
                request_tag: RequestTag(0),
                grant_in_flight: None,
                yield_in_flight: None,
                computing: None,
                compute_generation: 0,
                gang: config.gangs.iter().position(|g| g.contains(&i)),
                at_barrier: false,
                exiting: false,
                done: false,
            })
            .collect::<Vec<_>>();
        let by_client = jobs.iter().enumerate().map(|(i, j)| (j.client, i)).collect();
        Sim {
            config,
            scheduler: Scheduler::new(sched_cfg, config.pool.clone()),
            report: Report::new(label, config.pool.len(), specs.len()),
            jobs,
            by_client,
            events: BinaryHeap::new(),
            seq: 0,
            timer_armed: None,
            dirty: VecDeque::new(),
            computing_on: BTreeMap::new(),
            stat,
            error: None,
        }
    }

    fn push(&mut self, at: Instant, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, e)));
    }

    fn run(mut self) -> Result<Report, SimError> {
        for i in 0..self.jobs.len() {
            let at = Instant::ZERO + self.jobs[i].spec.arrival;
            self.push(at, Event::Arrive(i));
        }
        let mut count = 0u64;
        let mut now = Instant::ZERO;
        while let Some(Reverse((at, _, event))) = self.events.pop() {
            count += 1;
            if count > self.config.max_events {
                return Err(SimError::EventLimit(self.config.max_events));
            }
            now = at;
            self.handle(event, now);
            self.pump(now);
            if let Some(e) = self.error.take() {
                return Err(e);
            }
            self.arm_timer(now);
            if self.jobs.iter().all(|j| j.done) {
                break;
            }
        }
        let unfinished = self.jobs.iter().filter(|j| !j.done).count();
        if unfinished > 0 {
            return Err(SimError::Stuck { at: now - Instant::ZERO, unfinished });
        }
        self.report.finish(now);
        Ok(self.report)
    }

    fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Arrive(j) => {
                let client = self.jobs[j].client;
                if let Err(error) = self.scheduler.connect(client, now) {
                    self.fail(j, error);
                    return;
                }
                if self.stat {
                    // The job owns its GPUs from now to its end.
                    let spec = self.jobs[j].spec;
                    let req = Request::new(client, spec.name.clone(), spec.gpus).with_priority(spec.priority);
                    let req = if spec.memory_per_gpu > 0 { req.with_memory(spec.memory_per_gpu) } else { req };
                    let req = self.placed(j, req);
                    if let Err(error) = self.scheduler.submit(req, now) {
                        self.fail(j, error);
                    }
                } else {
                    self.start_phase(j, now);
                }
            }
            Event::PhaseDone(j) => self.phase_done(j, now),
            Event::ComputeDone(j, generation) => {
                if self.jobs[j].computing.as_ref().is_some_and(|c| c.generation == generation) {
                    self.compute_done(j, now);
                }
            }
            Event::GrantDelivered(j) => self.deliver_grant(j, now),
            Event::SwapInDone(j) => {
                self.jobs[j].swapping_in = false;
                self.compute(j, now);
            }
            Event::SwapOutDone(j, _) if self.jobs[j].done => {}
            Event::SwapOutDone(j, lease) => {
                let client = self.jobs[j].client;
                self.jobs[j].swap_out_until = None;
                self.close_hold(j, now);
                if let Err(error) = self.scheduler.release(client, lease, now) {
                    self.fail(j, error);
                    return;
                }
                // One session for the whole run: every ack is of the current one.
                let session = self.jobs[j].machine.session();
                self.jobs[j].machine.handle_release_acked(lease, session, now);
                self.dirty.push_back(j);
            }
            Event::Timer => {
                self.timer_armed = None;
                self.scheduler.handle_timeout(now);
                for j in 0..self.jobs.len() {
                    if !self.jobs[j].done && self.jobs[j].machine.poll_timeout().is_some_and(|t| t <= now) {
                        self.jobs[j].machine.handle_timeout(now);
                        self.dirty.push_back(j);
                    }
                }
            }
        }
    }

    /// Starts the current phase of job `j`.
    fn start_phase(&mut self, j: usize, now: Instant) {
        let job = &self.jobs[j];
        match job.spec.phases[job.phase] {
            Phase::Cpu(d) => self.push(now + d, Event::PhaseDone(j)),
            Phase::Gpu(d) if self.stat => {
                self.jobs[j].waiting_gpu = Some(d);
                self.compute(j, now);
            }
            Phase::Gpu(d) => {
                let spec = job.spec;
                let demand = GpuDemand {
                    gpus: spec.gpus,
                    memory_per_gpu: (spec.memory_per_gpu > 0).then_some(spec.memory_per_gpu),
                    priority: spec.priority,
                    affinity: crate::Affinity::Any,
                };
                self.jobs[j].waiting_gpu = Some(d);
                if let Err(e) = self.jobs[j].machine.begin(demand, now) {
                    self.error = Some(SimError::InvalidJob { job: spec.name.clone(), reason: client_error_text(&e) });
                }
                self.dirty.push_back(j);
            }
        }
    }

    fn phase_done(&mut self, j: usize, now: Instant) {
        let was_gpu = matches!(self.jobs[j].spec.phases[self.jobs[j].phase], Phase::Gpu(_));
        if was_gpu && !self.stat {
            if let Err(e) = self.jobs[j].machine.end(now) {
                self.error =
                    Some(SimError::InvalidJob { job: self.jobs[j].spec.name.clone(), reason: client_error_text(&e) });
            }
            self.dirty.push_back(j);
        }
        let job = &mut self.jobs[j];
        job.phase += 1;
        if job.phase == job.spec.phases.len() {
            job.phase = 0;
            job.item += 1;
            self.report.items += 1;
            if job.item == job.spec.repeat {
                self.finish_job(j, now);
                return;
            }
        }
        self.start_phase(j, now);
    }

    fn finish_job(&mut self, j: usize, now: Instant) {
        if let Some(k) = self.jobs[j].gang {
            // Ranks exit together: the first to be done waits for the others.
            self.jobs[j].exiting = true;
            let ranks = self.config.gangs[k].clone();
            if !ranks.iter().all(|&r| self.jobs[r].exiting) {
                return;
            }
            // What each rank still had to say goes out before any exits: a rank's exit breaks
            // the gang, taking the others' leases (they exit too, and lose nothing).
            for &r in &ranks {
                self.drain_actions(r, now, true);
            }
            for r in ranks {
                self.exit(r, now);
            }
            return;
        }
        self.exit(j, now);
    }

    /// The request of job `j`, pinned to its node and in its gang as configured.
    fn placed(&self, j: usize, req: Request) -> Request {
        let req = match self.config.pinned.get(&j).and_then(|n| self.config.pool.node(*n)) {
            Some(node) => req.with_affinity(Affinity::Required(node.gpus.clone())),
            None => req,
        };
        match self.jobs[j].gang {
            Some(k) => req.with_group(alloc::format!("gang-{k}"), self.config.gangs[k].len() as u32),
            None => req,
        }
    }

    fn exit(&mut self, j: usize, now: Instant) {
        // The process exits: its session ends and whatever it held goes back, no swap needed.
        self.drain_actions(j, now, true);
        self.close_hold(j, now);
        let job = &mut self.jobs[j];
        job.done = true;
        self.report.jobs_done += 1;
        let client = job.client;
        if let Err(error) = self.scheduler.disconnect(client, now) {
            self.fail(j, error);
        }
    }

    /// Job `j` starts computing its GPU phase on its lease's GPUs, sharing them with whoever
    /// computes there already.
    fn compute(&mut self, j: usize, now: Instant) {
        let Some(d) = self.jobs[j].waiting_gpu.take() else {
            return;
        };
        let gpus: Vec<GpuId> = self.jobs[j].lease.as_ref().map(|l| l.1.clone()).unwrap_or_default();
        self.report.compute += duration_nanos(d) as u128 * u128::from(self.jobs[j].spec.gpus);
        let sharers = self.sharers(&gpus, j);
        for &o in &sharers {
            self.progress(o, now);
        }
        for gpu in &gpus {
            self.computing_on.entry(*gpu).or_default().push(j);
        }
        let remaining = duration_nanos(d);
        self.jobs[j].computing = Some(Computing { gpus, started: now, remaining, since: now, generation: 0 });
        for o in sharers.into_iter().chain([j]) {
            self.reschedule(o, now);
        }
    }

    /// Job `j`'s GPU phase is done: its GPUs' other jobs speed up.
    fn compute_done(&mut self, j: usize, now: Instant) {
        let Some(c) = self.jobs[j].computing.take() else {
            return;
        };
        let sharers = self.sharers(&c.gpus, j);
        for &o in &sharers {
            self.progress(o, now);
        }
        for gpu in &c.gpus {
            if let Some(on) = self.computing_on.get_mut(gpu) {
                on.retain(|&x| x != j);
            }
        }
        for o in sharers {
            self.reschedule(o, now);
        }
        self.activity(j, c.started, now, SpanKind::Compute);
        if let Some(k) = self.jobs[j].gang {
            // A collective: the ranks end the phase together, once every one has computed.
            self.jobs[j].at_barrier = true;
            let ranks = self.config.gangs[k].clone();
            if !ranks.iter().all(|&r| self.jobs[r].at_barrier) {
                return;
            }
            for &r in &ranks {
                self.jobs[r].at_barrier = false;
            }
            for r in ranks {
                self.phase_done(r, now);
            }
            return;
        }
        self.phase_done(j, now);
    }

    /// The jobs other than `j` computing on any of `gpus`, each once.
    fn sharers(&self, gpus: &[GpuId], j: usize) -> Vec<usize> {
        let mut out: Vec<usize> =
            gpus.iter().filter_map(|g| self.computing_on.get(g)).flatten().copied().filter(|&o| o != j).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// How many jobs share job `j`'s most shared GPU (itself included): it computes at 1/that.
    fn share(&self, j: usize) -> u64 {
        let gpus = self.jobs[j].computing.as_ref().map(|c| c.gpus.as_slice()).unwrap_or_default();
        gpus.iter().map(|g| self.computing_on.get(g).map_or(0, Vec::len)).max().unwrap_or(1).max(1) as u64
    }

    /// Credits job `j` with the work done since its last update, at its current share. Rounded
    /// down: the simulator never credits more work than a GPU can do.
    fn progress(&mut self, j: usize, now: Instant) {
        let share = self.share(j);
        if let Some(c) = self.jobs[j].computing.as_mut() {
            let done = now.as_nanos().saturating_sub(c.since.as_nanos()) / share;
            c.remaining = c.remaining.saturating_sub(done);
            c.since = now;
        }
    }

    /// Schedules the end of job `j`'s GPU phase at its current share (rounded up).
    fn reschedule(&mut self, j: usize, now: Instant) {
        let share = self.share(j);
        let job = &mut self.jobs[j];
        let Some(c) = job.computing.as_mut() else {
            return;
        };
        job.compute_generation += 1;
        c.generation = job.compute_generation;
        let (generation, left) = (c.generation, c.remaining.saturating_mul(share));
        self.push(Instant::from_nanos(now.as_nanos().saturating_add(left)), Event::ComputeDone(j, generation));
    }

    /// A grant reaches job `j`, after the grant latency.
    fn deliver_grant(&mut self, j: usize, now: Instant) {
        let Some((lease, gpus, memory_per_gpu, tag)) = self.jobs[j].grant_in_flight.take() else {
            return;
        };
        if self.stat {
            self.start_phase(j, now);
        } else {
            self.jobs[j].machine.handle_granted(tag, lease, gpus, memory_per_gpu, now);
            if let Some(asked) = self.jobs[j].yield_in_flight.take() {
                self.jobs[j].machine.handle_yield(asked, now);
            }
            self.dirty.push_back(j);
        }
    }

    /// Acts on scheduler outputs and client actions until neither has anything left.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.scheduler.poll_output() {
                progressed = true;
                self.on_output(out, now);
            }
            while let Some(j) = self.dirty.pop_front() {
                progressed = true;
                self.drain_actions(j, now, false);
            }
            if !progressed {
                break;
            }
        }
    }

    fn on_output(&mut self, out: Output, now: Instant) {
        match out {
            Output::Granted(g) => {
                let Some(&j) = self.by_client.get(&g.client) else {
                    return;
                };
                self.report.record_wait(g.waited);
                let asked = Instant::from_nanos(now.as_nanos().saturating_sub(duration_nanos(g.waited)));
                self.report.waits.push(Wait { job: j, start: asked, end: now });
                self.jobs[j].lease = Some((g.lease, g.gpus.clone(), now));
                let tag = self.jobs[j].request_tag;
                self.jobs[j].grant_in_flight = Some((g.lease, g.gpus, g.memory_per_gpu, tag));
                if self.config.grant_latency.is_zero() {
                    self.deliver_grant(j, now);
                } else {
                    self.push(now + self.config.grant_latency, Event::GrantDelivered(j));
                }
            }
            Output::YieldAsked { client, lease, .. } => {
                self.report.yields += 1;
                if let Some(&j) = self.by_client.get(&client) {
                    if self.jobs[j].grant_in_flight.as_ref().is_some_and(|g| g.0 == lease) {
                        // The job does not know the lease yet: it yields once it does.
                        self.jobs[j].yield_in_flight = Some(lease);
                    } else {
                        self.jobs[j].machine.handle_yield(lease, now);
                        self.dirty.push_back(j);
                    }
                }
            }
            Output::GroupBroken { client, .. }
                if self.by_client.get(&client).is_some_and(|&j| self.jobs[j].done || self.jobs[j].exiting) =>
            {
                // A rank exiting with its gang: nothing is lost.
            }
            Output::Revoked { client, .. } | Output::GroupBroken { client, .. } | Output::Rejected { client, .. } => {
                let j = self.by_client.get(&client).copied().unwrap_or(0);
                let error = match out {
                    Output::Rejected { error, .. } => error,
                    _ => Error::UnknownClient(client),
                };
                self.fail(j, error);
            }
        }
    }

    /// Performs job `j`'s client actions. When the job is exiting, swaps are skipped: its
    /// memory is simply freed.
    fn drain_actions(&mut self, j: usize, now: Instant, exiting: bool) {
        if self.jobs[j].done {
            // The process has exited: whatever its machine still says (the answer to a yield
            // asked before the exit was seen) has no one to do it.
            while self.jobs[j].machine.poll_action().is_some() {}
            return;
        }
        while let Some(action) = self.jobs[j].machine.poll_action() {
            let client = self.jobs[j].client;
            let spec = self.jobs[j].spec;
            let bytes = spec.memory_per_gpu.saturating_mul(u64::from(spec.gpus));
            let result = match action {
                Action::SendRequest { tag, demand: d } => {
                    self.jobs[j].request_tag = tag;
                    let req = Request::new(client, spec.name.clone(), d.gpus)
                        .with_priority(d.priority)
                        .with_affinity(d.affinity);
                    let req = match d.memory_per_gpu {
                        Some(m) => req.with_memory(m),
                        None => req,
                    };
                    let req = self.placed(j, req);
                    self.scheduler.submit(req, now).map(|_| ())
                }
                Action::SendCancel => Ok(()),
                Action::SwapIn { .. } => {
                    if self.jobs[j].has_host_copy && bytes > 0 {
                        let t = self.transfer_time(bytes);
                        self.report.bytes_swapped += u128::from(bytes);
                        self.activity(j, now, now + t, SpanKind::SwapIn);
                        self.jobs[j].swapping_in = true;
                        self.push(now + t, Event::SwapInDone(j));
                    }
                    Ok(())
                }
                Action::Ready { .. } => {
                    if !self.jobs[j].swapping_in {
                        self.compute(j, now);
                    }
                    Ok(())
                }
                Action::ReportIdle { lease } => self.scheduler.report_idle(client, lease, now),
                Action::ReportBusy { lease } => self.scheduler.report_busy(client, lease, now),
                Action::SwapOut { .. } if exiting || bytes == 0 => Ok(()),
                Action::SwapOut { .. } => {
                    let t = self.transfer_time(bytes);
                    self.report.bytes_swapped += u128::from(bytes);
                    self.activity(j, now, now + t, SpanKind::SwapOut);
                    self.jobs[j].has_host_copy = true;
                    self.jobs[j].swap_out_until = Some(now + t);
                    Ok(())
                }
                Action::SendRelease { .. } if exiting => Ok(()),
                Action::SendRelease { lease } => match self.jobs[j].swap_out_until {
                    Some(until) => {
                        self.push(until, Event::SwapOutDone(j, lease));
                        Ok(())
                    }
                    None => {
                        self.close_hold(j, now);
                        let r = self.scheduler.release(client, lease, now);
                        let session = self.jobs[j].machine.session();
                        self.jobs[j].machine.handle_release_acked(lease, session, now);
                        r
                    }
                },
                Action::Failed(e) => {
                    self.error = Some(SimError::InvalidJob { job: spec.name.clone(), reason: client_error_text(&e) });
                    Ok(())
                }
                Action::Lost { .. } => Ok(()),
            };
            if let Err(error) = result {
                self.fail(j, error);
            }
        }
    }

    fn transfer_time(&self, bytes: u64) -> Duration {
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.config.swap_bandwidth);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn activity(&mut self, j: usize, start: Instant, end: Instant, kind: SpanKind) {
        let gpus: Vec<GpuId> = self.jobs[j].lease.as_ref().map(|l| l.1.clone()).unwrap_or_default();
        for gpu in gpus {
            self.report.spans.push(Span { gpu, job: j, start, end, kind });
        }
    }

    /// The job's hold of its lease ends now: record it.
    fn close_hold(&mut self, j: usize, now: Instant) {
        if let Some((_, gpus, since)) = self.jobs[j].lease.take() {
            for gpu in gpus {
                self.report.spans.push(Span { gpu, job: j, start: since, end: now, kind: SpanKind::Held });
            }
        }
    }

    fn fail(&mut self, j: usize, error: Error) {
        let job = self.jobs.get(j).map_or_else(String::new, |r| r.spec.name.clone());
        if self.error.is_none() {
            self.error = Some(SimError::Rejected { job, error });
        }
    }

    fn arm_timer(&mut self, now: Instant) {
        let next = self
            .jobs
            .iter()
            .filter(|j| !j.done)
            .filter_map(|j| j.machine.poll_timeout())
            .chain(self.scheduler.poll_timeout())
            .min();
        if let Some(t) = next {
            let t = t.max(now);
            if self.timer_armed.is_none_or(|armed| t < armed) {
                self.timer_armed = Some(t);
                self.push(t, Event::Timer);
            }
        }
    }
}

fn client_error_text(e: &crate::ClientError) -> &'static str {
    match e {
        crate::ClientError::AlreadyActive => "began a GPU phase twice",
        crate::ClientError::AlreadyRequesting => "asked for GPUs twice",
        crate::ClientError::NotActive => "ended a GPU phase it was not in",
        crate::ClientError::NotRequesting => "cancelled with nothing asked",
        crate::ClientError::Rejected(_) => "its request was refused",
        crate::ClientError::Revoked(_) => "its lease was revoked",
    }
}

impl fmt::Debug for Sim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim").field("jobs", &self.jobs.len()).finish_non_exhaustive()
    }
}
