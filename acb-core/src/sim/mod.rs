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
//! Simplifications, stated so nobody mistakes them for measurements: CPU phases never contend
//! for CPU cores; a GPU phase takes the same time whoever else is on the GPU (under
//! `gpu-sharing` co-located jobs are assumed not to slow each other); swap-in and swap-out of
//! different jobs do not contend for PCIe; the very first GPU phase of a job copies nothing in
//! (its memory does not exist yet).

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
    Action, ClientConfig, ClientId, ClientMachine, Error, GpuDemand, GpuId, GpuPool, Instant, LeaseId, Output, Policy,
    Request, RequestTag, Scheduler, SchedulerConfig,
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
    /// Device memory per GPU, in bytes: what is swapped, and what `gpu-sharing` packs by.
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
    /// Stop with [`SimError::EventLimit`] after this many events (a guard, not a feature).
    pub max_events: u64,
}

impl SimConfig {
    /// Settings for `pool` in `mode`, lazy release, 20 GB/s swaps.
    pub fn new(pool: GpuPool, mode: Mode) -> Self {
        SimConfig {
            pool,
            mode,
            client: ClientConfig::default(),
            swap_bandwidth: 20_000_000_000,
            max_events: 50_000_000,
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
        } else if j.memory_per_gpu == 0 {
            Some("memory per GPU must be more than 0 bytes")
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
    Sim::new(config, jobs).run()
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
    done: bool,
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
                    let req = Request::new(client, spec.name.clone(), spec.gpus)
                        .with_memory(spec.memory_per_gpu)
                        .with_priority(spec.priority);
                    if let Err(error) = self.scheduler.submit(req, now) {
                        self.fail(j, error);
                    }
                } else {
                    self.start_phase(j, now);
                }
            }
            Event::PhaseDone(j) => self.phase_done(j, now),
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
                    memory_per_gpu: Some(spec.memory_per_gpu),
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

    fn compute(&mut self, j: usize, now: Instant) {
        let Some(d) = self.jobs[j].waiting_gpu.take() else {
            return;
        };
        self.activity(j, now, now + d, SpanKind::Compute);
        self.report.compute += duration_nanos(d) as u128 * u128::from(self.jobs[j].spec.gpus);
        self.push(now + d, Event::PhaseDone(j));
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
                if self.stat {
                    self.start_phase(j, now);
                } else {
                    let tag = self.jobs[j].request_tag;
                    self.jobs[j].machine.handle_granted(tag, g.lease, g.gpus, g.memory_per_gpu, now);
                    self.dirty.push_back(j);
                }
            }
            Output::YieldAsked { client, lease, .. } => {
                self.report.yields += 1;
                if let Some(&j) = self.by_client.get(&client) {
                    self.jobs[j].machine.handle_yield(lease, now);
                    self.dirty.push_back(j);
                }
            }
            Output::Revoked { client, .. } | Output::Rejected { client, .. } => {
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
                    self.scheduler.submit(req, now).map(|_| ())
                }
                Action::SendCancel => Ok(()),
                Action::SwapIn { .. } => {
                    if self.jobs[j].has_host_copy {
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
                Action::SwapOut { .. } if exiting => Ok(()),
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
