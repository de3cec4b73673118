//! `acb-assigner demo`: the same pipeline jobs run twice, statically (each job owns a GPU for
//! its whole life, so at most one job per GPU runs at a time) and brokered by acb (every job
//! runs at once and holds a GPU only in its GPU phases), then compared side by side, with a
//! timeline picture of each run.
//!
//! Without GPUs, everything is real but the GPUs: each run starts a real assigner process
//! (`serve` on a temporary Unix socket, with simulated GPUs) and real job processes
//! (`demo-job`), which go through libacb's C ABI, loaded from the shared library. CPU and GPU
//! phases are sleeps, so the demo runs anywhere; it says so wherever it shows a figure. Each job
//! keeps state in libacb's swappable device memory (the host backend: simulated GPUs have no
//! memory of their own), which moves to host memory when its GPU goes to another job and comes
//! back after. On real GPUs with PyTorch ([`real`]), the jobs are `python -m acb_broker.demo_job` and
//! their GPU phases run real kernels.

pub mod abi;
pub mod job;
pub mod libacb;
pub mod predict;
pub mod real;
pub mod report;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use acb_core::Policy;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use self::job::{Holding, Line};
use self::report::{RunStats, Stamped};
use crate::Error;
use crate::timeline::{self, Busy, GpuRow};
use acb_core::record::{Event, EventKind};
use acb_proto::Address;
use acb_proto::v1 as proto;

/// What the demo runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoConfig {
    /// Jobs, run at once when brokered.
    pub jobs: u32,
    /// GPUs: simulated ones, or the count of the real ones.
    pub gpus: u32,
    /// Work items per job.
    pub items: u32,
    /// Each item's CPU phase.
    pub cpu: Duration,
    /// Each item's GPU phase.
    pub gpu: Duration,
    /// Device memory each job keeps (0: none).
    pub memory: u64,
    /// The scheduler of the brokered run.
    pub scheduler: Policy,
    /// Where the timeline pictures go.
    pub out_dir: PathBuf,
    /// libacb, which the jobs load.
    pub library: PathBuf,
    /// The `acb-assigner` executable, which serves and runs the jobs.
    pub exe: PathBuf,
    /// Real GPUs and PyTorch jobs (`gpus` is then their count), or None: simulated GPUs.
    pub real: Option<real::RealJobs>,
    /// Why the demo runs on simulated GPUs when real ones were looked for.
    pub simulated_because: Option<String>,
}

impl DemoConfig {
    /// The demo's workload, about a minute in all, or about 15 seconds when `quick`: 8 jobs on 2
    /// GPUs, each item 75% CPU, 25% GPU, as in a CPU-heavy pipeline such as AlphaFold2's.
    pub fn workload(quick: bool) -> (u32, u32, u32, Duration, Duration) {
        if quick {
            (8, 2, 3, Duration::from_millis(450), Duration::from_millis(150))
        } else {
            (8, 2, 6, Duration::from_millis(1200), Duration::from_millis(400))
        }
    }

    /// Checks the numbers: a clear message for anything out of range.
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=64).contains(&self.jobs) {
            return Err(Error::Usage(format!("--jobs {}: from 1 to 64", self.jobs)));
        }
        if !(1..=16).contains(&self.gpus) {
            return Err(Error::Usage(format!("--gpus {}: from 1 to 16 simulated GPUs", self.gpus)));
        }
        if !(1..=1000).contains(&self.items) {
            return Err(Error::Usage(format!("--items {}: from 1 to 1000", self.items)));
        }
        if self.memory != 0 && !(4096..=1 << 30).contains(&self.memory) {
            return Err(Error::Usage(format!("--memory {}: 0 (none), or from 4KiB to 1GiB per job", self.memory)));
        }
        let minute = Duration::from_secs(60);
        if self.cpu > minute || self.gpu > minute || self.gpu.is_zero() {
            return Err(Error::Usage("--cpu and --gpu: phases up to 60s, and a GPU phase longer than 0".into()));
        }
        Ok(())
    }

    /// How long the static run should take: waves of `gpus` jobs, one after the other.
    fn static_estimate(&self) -> Duration {
        (self.cpu + self.gpu) * self.items * self.jobs.div_ceil(self.gpus)
    }
}

/// Runs the demo and prints its progress, table and pictures' paths on stdout.
pub async fn run(cfg: &DemoConfig) -> Result<(), Error> {
    cfg.validate()?;
    // Fail now, not in eight child processes, if libacb will not load.
    libacb::Libacb::load(&cfg.library)?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(Error::io(cfg.out_dir.display().to_string()))?;
    let share = cfg.gpu.as_secs_f64() / (cfg.cpu + cfg.gpu).as_secs_f64() * 100.0;
    if let Some(why) = &cfg.simulated_because {
        println!("acb demo: on SIMULATED GPUs, because {why}.");
    }
    match &cfg.real {
        None => println!(
            "acb demo on {} SIMULATED GPUs (no GPU is used): {} pipeline jobs, each {} work items of a {} CPU phase \
             then a {} GPU phase ({share:.0}% GPU), keeping {} of device memory.\nEach phase is a sleep; each job is a \
             real process calling libacb ({}), each run a real assigner.\n",
            cfg.gpus,
            cfg.jobs,
            cfg.items,
            ms(cfg.cpu),
            ms(cfg.gpu),
            acb_core::Bytes(cfg.memory),
            cfg.library.display(),
        ),
        Some(r) => println!(
            "acb demo on {} GPU(s): {}.\n{} pipeline jobs, each {} work items of a {} CPU phase (a sleep) then a {} \
             GPU phase of real kernels (PyTorch, {}: python -m acb_broker.demo_job), keeping {} of state plus 16 MiB of \
             weights, in pinned host memory between phases.\n",
            cfg.gpus,
            r.names.join(", "),
            cfg.jobs,
            cfg.items,
            ms(cfg.cpu),
            ms(cfg.gpu),
            r.python.display(),
            acb_core::Bytes(cfg.memory),
        ),
    }
    let where_ = match &cfg.real {
        None => format!("{} SIMULATED GPUs", cfg.gpus),
        Some(r) if !r.simulated() => format!("{} GPU(s)", cfg.gpus),
        Some(_) => format!("{} SIMULATED GPUs (PyTorch jobs)", cfg.gpus),
    };
    let runs = [("static", Holding::Static, Policy::Simple), ("brokered", Holding::Brokered, cfg.scheduler)];
    let mut stats = Vec::new();
    let mut pictures = Vec::new();
    let mut brokered = None;
    for (name, holding, policy) in runs {
        let label = match holding {
            Holding::Static => format!("static, {} at a time", cfg.gpus.min(cfg.jobs)),
            Holding::Brokered => format!("acb {}, all at once", policy.name()),
        };
        let outcome = run_once(cfg, name, &label, holding, policy).await?;
        let title = format!("acb demo, {label}: {} jobs on {where_}", cfg.jobs);
        let svg = timeline::render_svg_with_busy(&title, &outcome.rows, &outcome.events, outcome.span, &outcome.busy);
        let path = cfg.out_dir.join(format!("{name}.svg"));
        std::fs::write(&path, svg).map_err(Error::io(path.display().to_string()))?;
        pictures.push(path);
        if holding == Holding::Brokered {
            brokered = Some((outcome.events, outcome.busy));
        }
        stats.push(outcome.stats);
    }
    println!("\n{}", report::table(&stats));
    let prediction = brokered.and_then(|(events, busy)| predict_run(cfg, &stats, &events, &busy).transpose());
    if let Some(text) = prediction.transpose()? {
        println!("{text}");
    }
    if cfg.real.is_none() {
        println!(
            "note 1: SIMULATED GPUs: phases are sleeps, so these figures show how acb schedules, not how fast a GPU \
             computes.\nnote 2: the jobs' device memory is libacb's host backend (simulated GPUs have none): it is \
             copied out when a job's GPU goes to another job, and back, checked, when it has one again."
        );
    } else if cfg.real.as_ref().is_some_and(real::RealJobs::simulated) {
        println!(
            "note: SIMULATED GPUs (ACB_DEMO_TEST_GPUS), with PyTorch jobs computing on the CPU in their GPU phases \
             (ACB_TORCH_DEVICE=cpu): a test of the real-GPU demo's jobs, not of a GPU."
        );
    } else {
        println!(
            "note: GPU phases ran real kernels for their set length; each job's weights and state went to pinned \
             host memory after every brokered phase and came back, checked, before the next."
        );
    }
    println!(
        "GPU busy: time some job computed on a GPU, over GPUs x wall time. Wait: from the job's begin to its \
         return.\n"
    );
    for p in pictures {
        println!("timeline: {}", p.display());
    }
    Ok(())
}

/// `simulate`'s prediction of the workload beside what was measured, with the handover costs
/// measured in the brokered run; and the equivalent trace, written to `trace.json`.
fn predict_run(
    cfg: &DemoConfig,
    measured: &[RunStats],
    events: &[Event],
    busy: &[Busy],
) -> Result<Option<String>, Error> {
    let [stat, brokered] = measured else { return Ok(None) };
    // Real jobs also move their 16 MiB of weights (acb_broker.demo_job).
    let memory = cfg.memory + if cfg.real.is_some() { 16 << 20 } else { 0 };
    let handover = predict::Handover::measure(events, busy);
    let jobs = predict::workload(cfg.jobs, cfg.items, cfg.cpu, cfg.gpu, memory);
    let Ok((sim_static, sim_brokered)) = predict::simulate(cfg.gpus, &jobs, cfg.scheduler, handover.as_ref()) else {
        return Ok(None);
    };
    let path = cfg.out_dir.join("trace.json");
    let trace = predict::trace_json(cfg.gpus, cfg.jobs, cfg.items, cfg.cpu, cfg.gpu, memory, handover.as_ref());
    std::fs::write(&path, trace).map_err(Error::io(path.display().to_string()))?;
    let how = match &handover {
        Some(h) => {
            let swaps = match h.swap_bandwidth(memory) {
                Some(b) => format!("{} each way at {:.2} GB/s", acb_core::Bytes(memory), b as f64 / 1e9),
                None => "no memory to swap".to_owned(),
            };
            format!(
                "the handover measured in the brokered run (medians): grant to computing {:.1} ms, memory back \
                 {:.1} ms, computing end to release {:.1} ms, so {swaps}",
                h.grant_latency.as_secs_f64() * 1e3,
                h.swap_in.as_secs_f64() * 1e3,
                h.swap_out.as_secs_f64() * 1e3,
            )
        }
        None => "no handover measured (20 GB/s swaps, no grant latency)".to_owned(),
    };
    let ratio = |s: Duration, b: Duration| s.as_secs_f64() / b.as_secs_f64().max(1e-9);
    let (m, p) = (ratio(stat.makespan, brokered.makespan), ratio(sim_static.makespan, sim_brokered.makespan));
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    Ok(Some(format!(
        "simulate's prediction of this workload, with {how}:\n{:<30}{:>12}{:>12}\n{:<30}{:>12}{:>12}\n\
         {:<30}{:>12}{:>12}\n{:<30}{:>12}{:>12}   (prediction {:+.1}% off)\n\
         the same with acb-assigner simulate --trace {} --scheduler {}\n",
        "",
        "measured",
        "predicted",
        "static wall time",
        secs(stat.makespan),
        secs(sim_static.makespan),
        "brokered wall time",
        secs(brokered.makespan),
        secs(sim_brokered.makespan),
        "brokered vs static",
        format!("{m:.2}x"),
        format!("{p:.2}x"),
        (p - m) / m * 100.0,
        path.display(),
        cfg.scheduler.name(),
    )))
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// What one run gives.
struct Outcome {
    stats: RunStats,
    rows: Vec<GpuRow>,
    events: Vec<Event>,
    /// The run, from its start to its last job's exit, in the record's time.
    span: (Duration, Duration),
    /// When each GPU computed, in the record's time.
    busy: Vec<Busy>,
}

enum Report {
    Line(usize, Instant, Line),
    Exit(usize, Instant, std::io::Result<std::process::ExitStatus>, String),
}

/// One run: an assigner, `jobs` job processes, their lines, the assigner's record.
async fn run_once(
    cfg: &DemoConfig,
    name: &str,
    label: &str,
    holding: Holding,
    policy: Policy,
) -> Result<Outcome, Error> {
    let dir = std::env::temp_dir().join(format!("acb-demo-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(Error::io(dir.display().to_string()))?;
    let socket = dir.join("assigner.sock");
    let outcome = match start_assigner(cfg, &socket, policy).await {
        Ok(mut assigner) => {
            let outcome = run_jobs(cfg, label, holding, &socket).await;
            stop(&mut assigner).await;
            outcome
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// The jobs of one run against a started assigner, and what its record says of them.
async fn run_jobs(cfg: &DemoConfig, label: &str, holding: Holding, socket: &std::path::Path) -> Result<Outcome, Error> {
    let (mut stats, t0) = drive_jobs(cfg, label, holding, socket).await?;
    let record = read_record(socket).await.map_err(|e| Error::Record(Box::new(e)))?;
    stats.grants = record.events.iter().filter(|e| matches!(e.kind, EventKind::Granted { .. })).count() as u64;
    // The record counts from the assigner's start: the run started `uptime - (asked - t0)` into it.
    let run_start = record.uptime.saturating_sub(record.asked.saturating_duration_since(t0));
    let busy = stats
        .busy
        .iter()
        .filter_map(|b| {
            let gpu = *record.index_to_id.get(&b.gpu)?;
            Some(Busy { gpu, from: b.from + run_start, to: b.to + run_start })
        })
        .collect();
    let span = (run_start, run_start + stats.makespan);
    Ok(Outcome { span, stats, rows: record.rows, events: record.events, busy })
}

async fn start_assigner(cfg: &DemoConfig, socket: &std::path::Path, policy: Policy) -> Result<Child, Error> {
    let mut child = Command::new(&cfg.exe)
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--gpus")
        .arg(match &cfg.real {
            Some(r) => r.gpus.clone(),
            None => format!("fake:{}x80GiB", cfg.gpus),
        })
        .arg("--scheduler")
        .arg(policy.name())
        .arg("--node-name")
        .arg("demo")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(Error::io(format!("cannot start {} serve", cfg.exe.display())))?;
    let stdout = child.stdout.take().ok_or_else(|| Error::Run("the assigner has no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    match ready {
        Ok(Ok(Some(line))) if line.starts_with("acb-assigner ready") => Ok(child),
        Ok(Ok(other)) => Err(Error::Run(format!("the demo's assigner did not start (it said {other:?})"))),
        Ok(Err(e)) => Err(Error::Io { what: "the demo's assigner".into(), source: e }),
        Err(_) => Err(Error::Run("the demo's assigner did not say it was ready within 30 s".into())),
    }
}

/// SIGTERM (the assigner drains and exits), then SIGKILL if it lingers.
async fn stop(assigner: &mut Child) {
    if let Some(pid) = assigner.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) on our own child, which has not been reaped yet (we still own it).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(15), assigner.wait()).await.is_err() {
        let _ = assigner.kill().await;
    }
}

/// Starts the jobs, shows progress, and reads their lines until every one has exited.
async fn drive_jobs(
    cfg: &DemoConfig,
    label: &str,
    holding: Holding,
    socket: &std::path::Path,
) -> Result<(RunStats, Instant), Error> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
    let t0 = Instant::now();
    let mut children = Vec::new();
    for j in 0..cfg.jobs as usize {
        let mut command = match &cfg.real {
            None => {
                let mut c = Command::new(&cfg.exe);
                c.arg("demo-job");
                c
            }
            Some(r) => {
                let mut c = Command::new(&r.python);
                c.args(["-m", "acb_broker.demo_job"]);
                if let Some(p) = &r.pythonpath {
                    c.env("PYTHONPATH", p);
                }
                c
            }
        };
        let mut child = command
            .arg("--items")
            .arg(cfg.items.to_string())
            .arg("--cpu")
            .arg(format!("{}ms", cfg.cpu.as_millis()))
            .arg("--gpu")
            .arg(format!("{}ms", cfg.gpu.as_millis()))
            .arg("--memory")
            .arg(cfg.memory.to_string())
            .args(if holding == Holding::Static { &["--static"][..] } else { &[] })
            .env("ACB_ASSIGNER", format!("unix:{}", socket.display()))
            .env("ACB_JOB_ID", format!("job-{j}"))
            .env("ACB_LIBRARY", &cfg.library)
            .env_remove("ACB_AUTH_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::io(format!("cannot start job {j}")))?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Error::Run(format!("job {j} has no stdout or stderr")));
        };
        let tx = tx.clone();
        children.push(tokio::spawn(async move {
            let errors = tokio::spawn(async move {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text).await;
                text
            });
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(text)) = lines.next_line().await {
                if let Some(line) = Line::parse(&text) {
                    let _ = tx.send(Report::Line(j, Instant::now(), line));
                }
            }
            let status = child.wait().await;
            let errors = errors.await.unwrap_or_default();
            let _ = tx.send(Report::Exit(j, Instant::now(), status, errors));
        }));
    }
    drop(tx);

    let total = u64::from(cfg.items) * u64::from(cfg.jobs);
    let mut progress = Progress::new(label, total, cfg.gpus);
    let limit = cfg.static_estimate() * 3 + Duration::from_secs(60);
    let mut lines = Vec::new();
    let mut last_exit = t0;
    let mut failures = Vec::new();
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            report = rx.recv() => match report {
                Some(Report::Line(job, at, line)) => {
                    progress.saw(job, line);
                    lines.push(Stamped { job, at: at - t0, line });
                }
                Some(Report::Exit(job, at, status, errors)) => {
                    last_exit = last_exit.max(at);
                    match status {
                        Ok(s) if s.success() => {}
                        Ok(s) => failures.push(format!("job-{job} exited with {s}: {}", errors.trim())),
                        Err(e) => failures.push(format!("job-{job}: {e}")),
                    }
                }
                None => break,
            },
            _ = tick.tick() => progress.draw(t0.elapsed(), false),
            () = &mut deadline => {
                for c in &children {
                    c.abort();
                }
                progress.finish(t0.elapsed());
                return Err(Error::Run(format!("the jobs did not finish within {} s", limit.as_secs())));
            }
        }
    }
    let makespan = last_exit - t0;
    progress.finish(makespan);
    if !failures.is_empty() {
        return Err(Error::Run(format!(
            "{} of {} jobs failed:\n  {}",
            failures.len(),
            cfg.jobs,
            failures.join("\n  ")
        )));
    }
    Ok((RunStats::read(label, cfg.gpus, cfg.jobs as usize, makespan, &lines), t0))
}

/// What the assigner recorded of a run.
struct Record {
    events: Vec<Event>,
    /// Its GPUs, as timeline rows.
    rows: Vec<GpuRow>,
    /// GPU index (what a lease names) -> GPU id (what events name).
    index_to_id: std::collections::BTreeMap<u32, u32>,
    /// The assigner's uptime when asked, and when that was.
    uptime: Duration,
    asked: Instant,
}

async fn read_record(socket: &std::path::Path) -> Result<Record, Error> {
    let addr = Address::Unix(socket.to_path_buf());
    let mut rpc = acb_client::connection::connect(&addr, None, Duration::from_secs(5)).await?;
    let status = rpc.status(proto::StatusRequest::default()).await?.into_inner();
    let asked = Instant::now();
    let mut stream = rpc.watch(proto::WatchRequest { replay: true }).await?.into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await? {
        if matches!(e.kind, Some(proto::event::Kind::HistoryEnd(_))) {
            break;
        }
        events.extend(acb_client::events::from_proto(e));
    }
    let rows = status
        .gpus
        .iter()
        .map(|g| GpuRow {
            id: g.id,
            label: if g.fake { format!("gpu{} (simulated)", g.index) } else { format!("gpu{} {}", g.index, g.name) },
        })
        .collect();
    let index_to_id = status.gpus.iter().map(|g| (g.index, g.id)).collect();
    Ok(Record { events, rows, index_to_id, uptime: Duration::from_millis(status.uptime_ms), asked })
}

/// One line of progress per run: redrawn in place on a terminal, every quarter otherwise.
struct Progress {
    label: String,
    total: u64,
    done: u64,
    gpus: u32,
    computing: std::collections::BTreeSet<usize>,
    waiting: std::collections::BTreeSet<usize>,
    tty: bool,
    quarter: u64,
}

impl Progress {
    fn new(label: &str, total: u64, gpus: u32) -> Progress {
        Progress {
            label: label.to_owned(),
            total,
            done: 0,
            gpus,
            computing: Default::default(),
            waiting: Default::default(),
            tty: std::io::stdout().is_terminal(),
            quarter: 0,
        }
    }

    fn saw(&mut self, job: usize, line: Line) {
        match line {
            Line::Want => {
                self.waiting.insert(job);
            }
            Line::Got(_) => {
                self.waiting.remove(&job);
            }
            Line::GpuStart => {
                self.computing.insert(job);
            }
            Line::GpuEnd => {
                self.computing.remove(&job);
            }
            Line::Item => self.done += 1,
            Line::Ended | Line::Swapped(..) => {}
        }
    }

    fn text(&self, elapsed: Duration) -> String {
        const WIDTH: u64 = 30;
        let filled = (self.done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
        format!(
            "{:<26} [{bar}] {:>4}/{} items  computing {}/{} GPUs, {} waiting  {:>6.1} s",
            self.label,
            self.done,
            self.total,
            self.computing.len(),
            self.gpus,
            self.waiting.len(),
            elapsed.as_secs_f64()
        )
    }

    fn draw(&mut self, elapsed: Duration, last: bool) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r{}{}", self.text(elapsed), if last { "\n" } else { "" });
        } else {
            let quarter = (self.done * 4).checked_div(self.total).unwrap_or(4);
            if quarter > self.quarter || last {
                self.quarter = quarter;
                let _ = writeln!(out, "{}", self.text(elapsed));
            }
        }
        let _ = out.flush();
    }

    fn finish(&mut self, elapsed: Duration) {
        self.computing.clear();
        self.waiting.clear();
        self.draw(elapsed, true);
    }
}
