//! `slurm`: acb over a Slurm job's allocation, from its batch script.
//!
//! `eval "$(acb-assigner slurm up)"` starts a supervisor (detached, so that the command
//! substitution returns) which starts the controller on the batch script's node and, with one
//! `srun --overlap` step, an executor on every node of the job; once every node's executor has
//! registered, `up` prints the `export` lines that point the job's steps at their node's
//! executor, and returns. The supervisor tears everything down when the shell that ran `up`
//! ends (the script finished, failed or was cancelled), on `acb-assigner slurm down`, or on
//! SIGTERM, so that nothing of acb outlives the job. When acb cannot come up, `up` says why on
//! stderr, with the end of the logs, leaves nothing behind, and prints `false` for the script to
//! evaluate, so that a script under `set -e` stops there.
//!
//! On every node the files live in one node-local directory (default
//! `$TMPDIR/acb-slurm-<job>`, `/tmp` without `TMPDIR`): `<node>.sock` (that node's executor,
//! what `ACB_ASSIGNER=unix:DIR/%N.sock` finds), `controller.sock`, the cluster token and the
//! logs. The token goes to the executors in their step's environment, never on a command line.

use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use tokio::process::{Child, Command};

use super::CliError;
use crate::config::{self, Address};
use crate::proto;

/// The environment variable that carries the cluster token to the executors' step.
const TOKEN_VAR: &str = "ACB_SLURM_CLUSTER_TOKEN";
/// The controller's node name (it owns no GPU; every node's GPUs are its executor's).
const CONTROLLER_NODE: &str = "acb-controller";

#[derive(Debug, Args)]
pub(super) struct SlurmArgs {
    #[command(subcommand)]
    cmd: SlurmCmd,
}

#[derive(Debug, Subcommand)]
enum SlurmCmd {
    /// In a batch script: bring acb up over the job's nodes and print the `export` lines for
    /// its steps: `eval "$(acb-assigner slurm up)"`, then `srun ... agarun -- CMD`. Torn down
    /// when the script's shell ends.
    Up(UpArgs),
    /// Stop what `up` started in this job (it also stops by itself when the script ends).
    Down(DownArgs),
    /// What `up` starts: the controller, the executors' step, the teardown.
    #[command(hide = true)]
    Supervise(UpArgs),
    /// One node's executor, as the supervisor's `srun` step starts it.
    #[command(hide = true)]
    Executor(ExecutorArgs),
}

#[derive(Clone, Debug, Args)]
struct UpArgs {
    /// The node-local directory for sockets, token and logs, the same path on every node.
    /// Default: $TMPDIR/acb-slurm-<job>, or /tmp/acb-slurm-<job>.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// simple, gpu-sharing or gpu-affinity.
    #[arg(long, default_value = "simple", value_parser = super::parse_policy)]
    scheduler: acb_core::Policy,
    /// Time slice: a holder blocking the queue's head is asked to yield after this long.
    #[arg(long, value_parser = config::parse_duration)]
    quantum: Option<Duration>,
    /// The controller's IP, which every node must reach. Default: this node's NodeAddr (from
    /// `scontrol show node`), else its name resolved.
    #[arg(long)]
    address: Option<IpAddr>,
    /// The controller's TCP port. Default: a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How long to wait for every node's executor to register.
    #[arg(long, value_parser = config::parse_duration, default_value = "60s")]
    timeout: Duration,
    /// How often the executors heartbeat (a node is lost after 3 missed).
    #[arg(long, value_parser = config::parse_duration, default_value = "1s")]
    heartbeat: Duration,
    /// Go down when this process ends. Default: the process that runs `up` (the batch
    /// script's shell, for `eval "$(acb-assigner slurm up)"`).
    #[arg(long)]
    watch_pid: Option<u32>,
    /// When going down, write the controller's event record here first (one JSON object per
    /// line, as `watch --replay --json` prints it).
    #[arg(long)]
    record: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DownArgs {
    /// The directory `up` used. Default: $ACB_SLURM_DIR, else up's default.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How long to wait for everything to stop.
    #[arg(long, value_parser = config::parse_duration, default_value = "30s")]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct ExecutorArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    controller: String,
    #[arg(long, value_parser = config::parse_duration)]
    heartbeat: Duration,
}

pub(super) async fn run(args: SlurmArgs) -> Result<(), CliError> {
    match args.cmd {
        SlurmCmd::Up(a) => up(a).await,
        SlurmCmd::Down(a) => down(a).await,
        SlurmCmd::Supervise(a) => supervise(a).await,
        SlurmCmd::Executor(a) => executor(a).await,
    }
}

/// A variable of the job's environment, trimmed; `None` when unset or blank.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn job_id() -> Result<String, CliError> {
    let job = var("SLURM_JOB_ID").ok_or_else(|| {
        CliError::usage("not inside a Slurm job (SLURM_JOB_ID is unset): run it in an sbatch script or under salloc")
    })?;
    if !job.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(CliError::usage(format!("SLURM_JOB_ID={job:?} is not a job id")));
    }
    Ok(job)
}

fn default_dir(job: &str) -> PathBuf {
    let base = std::env::var_os("TMPDIR").map(PathBuf::from).filter(|p| p.is_absolute());
    base.unwrap_or_else(|| PathBuf::from("/tmp")).join(format!("acb-slurm-{job}"))
}

/// Makes `dir` (0700) or checks that an existing one is a directory of this user's that no one
/// else may write (its sockets and token live there).
fn make_dir(dir: &Path) -> Result<(), CliError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta =
                std::fs::symlink_metadata(dir).map_err(|e| CliError::failed(format!("{}: {e}", dir.display())))?;
            use std::os::unix::fs::MetadataExt;
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
                return Err(CliError::failed(format!(
                    "{}: not a directory of this user's that only it may write; remove it or give --dir",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) => Err(CliError::failed(format!("cannot make {}: {e}", dir.display()))),
    }
}

/// Writes `text` to `path`, readable by this user only, replacing what was there.
fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(|e| CliError::failed(format!("{}: {e}", path.display())))
}

/// The files acb keeps in its directory (beside `<node>.sock` and `cluster-<node>.token` for
/// each node): only these are ever removed, never anything else a user keeps in a `--dir`.
const OWN_FILES: [&str; 10] = [
    "supervisor.pid",
    "ready",
    "ready.tmp",
    "failed",
    "acb.log",
    "controller.log",
    "executors.log",
    "cluster.token",
    "cluster.toml",
    "controller.sock",
];

/// The job's nodes, as far as the environment says (for the files named after them).
fn job_nodes() -> Vec<String> {
    var("SLURM_JOB_NODELIST")
        .or_else(|| var("SLURM_NODELIST"))
        .and_then(|l| crate::hostlist::expand(&l).ok())
        .unwrap_or_default()
}

/// Removes acb's own files from `dir` but those in `keep`, then `dir` itself if that left it
/// empty (a user's own `--dir` with files of theirs stays, with them).
fn clean(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = OWN_FILES.iter().map(|f| (*f).to_owned()).collect();
    for n in job_nodes() {
        names.push(format!("{n}.sock"));
        names.push(format!("cluster-{n}.token"));
    }
    for name in names.iter().filter(|n| !keep.contains(&n.as_str())) {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

/// `value` quoted for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The last lines of a log, for an error message.
fn tail(path: &Path, lines: usize) -> String {
    tail_without(path, lines, "\0")
}

/// [`tail`] without the lines that repeat `said` (the error the message already gives).
fn tail_without(path: &Path, lines: usize, said: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let first = said.lines().next().unwrap_or(said);
    let all: Vec<&str> = text.lines().filter(|l| !l.contains(first)).collect();
    let from = all.len().saturating_sub(lines);
    all[from..].iter().map(|l| format!("\n  | {l}")).collect()
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a pid this process started (or read from its own pid file).
        unsafe { libc::kill(pid, sig) };
    }
}

async fn up(args: UpArgs) -> Result<(), CliError> {
    let result = bring_up(args).await;
    if result.is_err() {
        // What the script evaluates: a failing command, so that `set -e` stops it there.
        println!("false");
    }
    result
}

async fn bring_up(args: UpArgs) -> Result<(), CliError> {
    let job = job_id()?;
    let dir = args.dir.clone().unwrap_or_else(|| default_dir(&job));
    if !dir.is_absolute() {
        return Err(CliError::usage(format!(
            "--dir {}: give an absolute path (the same on every node)",
            dir.display()
        )));
    }
    check_socket_room(&dir)?;
    make_dir(&dir)?;
    let pid_file = dir.join("supervisor.pid");
    if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok())
        && alive(pid)
        && is_supervisor(pid)
    {
        return Err(CliError::failed(format!(
            "acb is already up for job {job} (supervisor pid {pid}, {}); `acb-assigner slurm down` first",
            dir.display()
        )));
    }
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let watch = args.watch_pid.unwrap_or_else(script_shell);
    let record = match &args.record {
        Some(r) if r.is_relative() => Some(std::env::current_dir().map_err(CliError::failed)?.join(r)),
        r => r.clone(),
    };
    let log_path = dir.join("acb.log");
    let (log_out, log_err) = output_to(&log_path)?;
    let mut cmd = std::process::Command::new(this_program()?);
    cmd.args(["slurm", "supervise", "--dir"])
        .arg(&dir)
        .args(["--scheduler", &args.scheduler.to_string(), "--port", &args.port.to_string()])
        .args(["--timeout", &format!("{}ms", args.timeout.as_millis())])
        .args(["--heartbeat", &format!("{}ms", args.heartbeat.as_millis())])
        .args(["--watch-pid", &watch.to_string()])
        .stdin(Stdio::null())
        .stdout(log_out)
        .stderr(log_err);
    if let Some(q) = args.quantum {
        cmd.args(["--quantum", &format!("{}ms", q.as_millis())]);
    }
    if let Some(a) = args.address {
        cmd.args(["--address", &a.to_string()]);
    }
    if let Some(r) = &record {
        cmd.arg("--record").arg(r);
    }
    // SAFETY: setsid(2) is async-signal-safe; the supervisor leaves the shell's session so that
    // a terminal's signals (salloc's Ctrl-C) do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| CliError::failed(format!("cannot start the supervisor: {e}")))?;
    let deadline = Instant::now() + args.timeout + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && text.ends_with('\n')
        {
            if let Some(why) = text.strip_prefix("error: ") {
                let _ = child.wait();
                let why = format!("{}{}", why.trim(), tail_without(&log_path, 20, why.trim()));
                clean(&dir, &[]);
                return Err(CliError::failed(why));
            }
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let why = format!("the supervisor ended ({status}) before acb was up{}", tail(&log_path, 20));
            clean(&dir, &[]);
            return Err(CliError::failed(why));
        }
        if Instant::now() > deadline {
            signal(child.id(), libc::SIGTERM);
            return Err(CliError::failed(format!("acb was not up after {:?}{}", args.timeout, tail(&log_path, 20))));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let assigner = format!("unix:{}/%N.sock", dir.display());
    let controller = format!("unix:{}", dir.join("controller.sock").display());
    println!("export ACB_ASSIGNER={}", shell_quote(&assigner));
    println!("export ACB_SLURM_DIR={}", shell_quote(&dir.display().to_string()));
    println!("export ACB_SLURM_CONTROLLER={}", shell_quote(&controller));
    eprintln!(
        "acb-assigner slurm: up for job {job}: {}; steps find their node's executor at ACB_ASSIGNER={assigner}",
        std::fs::read_to_string(&ready).unwrap_or_default().trim()
    );
    Ok(())
}

/// A Unix socket's path has at most 107 bytes: `DIR/<node>.sock` must fit for every node of
/// the job, and `DIR/controller.sock`.
fn check_socket_room(dir: &Path) -> Result<(), CliError> {
    const SUN_PATH_MAX: usize = 107;
    let longest =
        job_nodes().iter().map(|n| n.len() + ".sock".len()).chain(["controller.sock".len()]).max().unwrap_or(0);
    let need = dir.as_os_str().len() + 1 + longest;
    if need > SUN_PATH_MAX {
        return Err(CliError::usage(format!(
            "{}: too long for the sockets in it ({need} bytes; a socket's path has at most {SUN_PATH_MAX}); give a \
             shorter --dir or TMPDIR",
            dir.display()
        )));
    }
    Ok(())
}

/// The process `up` stays up for: its ancestor whose parent is slurmstepd (the batch script's
/// shell, however `up` was called: `eval "$(acb-assigner slurm up | tee log)"` runs it in a
/// subshell), else its session's leader (an interactive shell under salloc), else its parent.
fn script_shell() -> u32 {
    // SAFETY: getppid(2) and getsid(2) of the calling process have no preconditions.
    let (parent, session) = unsafe { (libc::getppid() as u32, libc::getsid(0) as u32) };
    let parent_of = |pid: u32| -> Option<(u32, String)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces and parentheses; it ends at the last ')'.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
        Some((ppid, comm))
    };
    let mut pid = parent;
    for _ in 0..64 {
        let Some((ppid, _)) = parent_of(pid) else { break };
        if ppid <= 1 {
            break;
        }
        if parent_of(ppid).is_some_and(|(_, comm)| comm == "slurmstepd") {
            return pid;
        }
        pid = ppid;
    }
    if session > 1 && session != std::process::id() { session } else { parent }
}

/// Whether `pid` runs `acb-assigner slurm supervise` (a pid file's process, before signalling it).
fn is_supervisor(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2).any(|w| w[0] == b"slurm" && w[1] == b"supervise")
}

async fn down(args: DownArgs) -> Result<(), CliError> {
    let dir = match (args.dir, std::env::var_os("ACB_SLURM_DIR")) {
        (Some(d), _) => d,
        (None, Some(d)) if !d.is_empty() => PathBuf::from(d),
        _ => default_dir(&job_id()?),
    };
    let pid_file = dir.join("supervisor.pid");
    let failed = || -> Result<(), CliError> {
        let Ok(why) = std::fs::read_to_string(dir.join("failed")) else { return Ok(()) };
        let logs: String =
            ["acb.log", "controller.log", "executors.log"].iter().map(|l| tail(&dir.join(l), 10)).collect();
        clean(&dir, &[]);
        Err(CliError::failed(format!("acb went down before `slurm down`: {}{logs}", why.trim())))
    };
    let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok()) else {
        failed()?;
        eprintln!("acb-assigner slurm: acb is not up here (no {})", pid_file.display());
        return Ok(());
    };
    if !alive(pid) || !is_supervisor(pid) {
        failed()?;
        eprintln!("acb-assigner slurm: acb is not up here (pid {pid} in {} is gone)", pid_file.display());
        return Ok(());
    }
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + args.timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return Err(CliError::failed(format!("the supervisor (pid {pid}) still runs after {:?}", args.timeout)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    failed()?;
    eprintln!("acb-assigner slurm: down");
    Ok(())
}

/// The IP this node is reached at: Slurm's NodeAddr for it, else its name resolved.
fn node_address(node: &str) -> Result<IpAddr, CliError> {
    let from_scontrol = std::process::Command::new("scontrol")
        .args(["show", "node", node, "-o"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find_map(|f| f.strip_prefix("NodeAddr=").map(str::to_owned))
        });
    for name in from_scontrol.iter().map(String::as_str).chain([node]) {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(ip);
        }
        if let Some(a) = (name, 0).to_socket_addrs().ok().and_then(|mut a| a.find(|a| a.is_ipv4())) {
            return Ok(a.ip());
        }
    }
    Err(CliError::failed(format!("cannot find the address of node {node:?}; give it with --address")))
}

fn random_token() -> Result<String, CliError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| CliError::failed(format!("no randomness for the cluster token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// This program's path, for the processes it starts (the same binary on every node).
fn this_program() -> Result<PathBuf, CliError> {
    std::env::current_exe().map_err(|e| CliError::failed(format!("cannot find this program: {e}")))
}

/// The file a child's stdout and stderr both append to.
fn output_to(path: &Path) -> Result<(std::fs::File, std::fs::File), CliError> {
    let out = log_file(path)?;
    let err = out.try_clone().map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
    Ok((out, err))
}

fn log_file(path: &Path) -> Result<std::fs::File, CliError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))
}

/// Ends a child: SIGTERM, then SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    if let Some(pid) = child.id() {
        signal(pid, libc::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

/// The supervisor: everything between `up` and the end of the job.
async fn supervise(args: UpArgs) -> Result<(), CliError> {
    let dir = args.dir.clone().ok_or_else(|| CliError::usage("supervise needs --dir"))?;
    let ready = dir.join("ready");
    let say_error = |why: &str| {
        let tmp = dir.join("ready.tmp");
        if std::fs::write(&tmp, format!("error: {why}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, &ready);
        }
    };
    let pid_file = dir.join("supervisor.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).map_err(CliError::failed)?;
    let mut parts = Parts { controller: None, executors: None };
    let result = start(&args, &dir, &mut parts).await;
    let outcome = match result {
        Err(e) => {
            say_error(&e.to_string());
            Err(e)
        }
        Ok(summary) => {
            let tmp = dir.join("ready.tmp");
            std::fs::write(&tmp, format!("{summary}\n")).map_err(CliError::failed)?;
            std::fs::rename(&tmp, &ready).map_err(CliError::failed)?;
            say(&format!("up: {summary}"));
            let end = wait_for_the_end(&args, &mut parts).await;
            say(&format!("going down: {}", end.why()));
            match end {
                End::Asked(_) => Ok(()),
                End::Broke(why) => {
                    // Kept for `slurm down` (and whoever looks) to say, with the logs.
                    let _ = std::fs::write(dir.join("failed"), format!("{why}\n"));
                    Err(CliError::failed(why))
                }
            }
        }
    };
    if let (Some(record), Some(_)) = (&args.record, &parts.controller)
        && let Err(e) = save_record(&dir, record).await
    {
        say(&format!("the event record was not saved to {}: {e}", record.display()));
    }
    if let Some(mut srun) = parts.executors.take() {
        stop(&mut srun, Duration::from_secs(15)).await;
    }
    if let Some(mut ctl) = parts.controller.take() {
        stop(&mut ctl, Duration::from_secs(5)).await;
    }
    match &outcome {
        Ok(()) => clean(&dir, &[]),
        // `up` (before it printed anything) or `down` (after) reads why, then cleans up.
        Err(_) => clean(&dir, &["ready", "failed", "acb.log", "controller.log", "executors.log"]),
    }
    say("down");
    outcome
}

/// A line on the supervisor's log (its stderr, DIR/acb.log).
fn say(line: &str) {
    eprintln!("acb-assigner slurm supervise: {line}");
}

struct Parts {
    controller: Option<Child>,
    executors: Option<Child>,
}

/// Starts the controller and the executors' step and waits until every node is up; the
/// summary for `up` to print.
async fn start(args: &UpArgs, dir: &Path, parts: &mut Parts) -> Result<String, CliError> {
    let list = var("SLURM_JOB_NODELIST")
        .or_else(|| var("SLURM_NODELIST"))
        .ok_or_else(|| CliError::usage("SLURM_JOB_NODELIST is unset: not inside a Slurm allocation"))?;
    let nodes = crate::hostlist::expand(&list).map_err(|e| CliError::failed(format!("SLURM_JOB_NODELIST: {e}")))?;
    let here = acb_proto::address::node_name();
    let ip = match args.address {
        Some(ip) => ip,
        None => node_address(&here)?,
    };
    let port = match args.port {
        0 => std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| CliError::failed(format!("no free port on {ip}: {e}")))?
            .port(),
        p => p,
    };
    let controller_tcp = Address::Tcp((ip, port).into());
    let token = random_token()?;
    let token_file = dir.join("cluster.token");
    write_private(&token_file, &format!("{token}\n"))?;
    let mut cluster = format!(
        "# Written by `acb-assigner slurm up` for job {} from SLURM_JOB_NODELIST={list}\n\
         cluster_token_file = {:?}\nheartbeat = \"{}ms\"\n",
        var("SLURM_JOB_ID").unwrap_or_default(),
        token_file.display().to_string(),
        args.heartbeat.as_millis()
    );
    for n in &nodes {
        cluster.push_str(&format!("\n[[nodes]]\nname = {:?}\n", n));
    }
    let cluster_file = dir.join("cluster.toml");
    write_private(&cluster_file, &cluster)?;
    let exe = this_program()?;
    let controller_sock = dir.join("controller.sock");
    let (ctl_out, ctl_err) = output_to(&dir.join("controller.log"))?;
    let mut ctl = Command::new(&exe);
    ctl.args(["serve", "--role", "controller", "--gpus", "none", "--state-dir", "none"])
        .args(["--listen", &controller_tcp.to_string()])
        .arg("--listen")
        .arg(format!("unix:{}", controller_sock.display()))
        .arg("--cluster-file")
        .arg(&cluster_file)
        .args(["--node-name", CONTROLLER_NODE, "--scheduler", &args.scheduler.to_string()])
        .stdin(Stdio::null())
        .stdout(ctl_out)
        .stderr(ctl_err)
        .env_remove(TOKEN_VAR)
        .kill_on_drop(true);
    if let Some(q) = args.quantum {
        ctl.args(["--quantum", &format!("{}ms", q.as_millis())]);
    }
    if !ip.is_loopback() {
        // The cluster's own network: the executors' calls carry the cluster token in the clear.
        ctl.arg("--insecure");
    }
    parts.controller = Some(ctl.spawn().map_err(|e| CliError::failed(format!("cannot start the controller: {e}")))?);
    let n = nodes.len().to_string();
    let (exe_out, exe_err) = output_to(&dir.join("executors.log"))?;
    let mut srun = Command::new("srun");
    srun.args(["--overlap", "--nodes", &n, "--ntasks", &n, "--ntasks-per-node", "1", "--kill-on-bad-exit=0"])
        .args(["--export=ALL", "--job-name", "acb-executors", "--label"])
        .arg(&exe)
        .args(["slurm", "executor", "--dir"])
        .arg(dir)
        .args(["--controller", &controller_tcp.to_string()])
        .args(["--heartbeat", &format!("{}ms", args.heartbeat.as_millis())])
        .env(TOKEN_VAR, &token)
        .stdin(Stdio::null())
        .stdout(exe_out)
        .stderr(exe_err)
        .kill_on_drop(true);
    parts.executors = Some(srun.spawn().map_err(|e| CliError::failed(format!("cannot run srun: {e}")))?);
    let deadline = Instant::now() + args.timeout;
    let status_addr = Address::Unix(controller_sock);
    let mut missing: Vec<String> = nodes.clone();
    loop {
        for (what, child, log) in [
            ("the controller", parts.controller.as_mut(), "controller.log"),
            ("the executors' srun step", parts.executors.as_mut(), "executors.log"),
        ] {
            if let Some(Ok(Some(s))) = child.map(|c| c.try_wait()) {
                return Err(CliError::failed(format!("{what} ended ({s}){}", tail(&dir.join(log), 15))));
            }
        }
        if let Ok(nodes_up) = nodes_up(&status_addr).await {
            missing.retain(|n| !nodes_up.contains(n));
            if missing.is_empty() {
                return Ok(format!(
                    "{} node(s) ({}), controller {controller_tcp} on {here}",
                    nodes.len(),
                    nodes.join(", ")
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(CliError::failed(format!(
                "the executors of {} did not register within {:?}{}",
                missing.join(", "),
                args.timeout,
                tail(&dir.join("executors.log"), 15)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The nodes the controller has up now.
async fn nodes_up(addr: &Address) -> Result<Vec<String>, CliError> {
    let mut rpc = acb_client::connection::connect(addr, None, Duration::from_secs(2)).await?;
    let s = rpc.status(proto::StatusRequest { queue_limit: 0, client_limit: 0 }).await?.into_inner();
    Ok(s.nodes.into_iter().filter(|n| n.up).map(|n| n.name).collect())
}

/// Waits until it is time to go down; why.
/// Why the supervisor goes down.
enum End {
    /// As it should: the script ended, `slurm down`, a signal.
    Asked(String),
    /// A part of acb died under the job.
    Broke(String),
}

impl End {
    fn why(&self) -> &str {
        match self {
            End::Asked(w) | End::Broke(w) => w,
        }
    }
}

/// Waits until it is time to go down.
async fn wait_for_the_end(args: &UpArgs, parts: &mut Parts) -> End {
    use tokio::signal::unix::{SignalKind, signal as on};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (on(SignalKind::terminate()), on(SignalKind::interrupt()), on(SignalKind::hangup()))
    else {
        return End::Broke("cannot watch signals".into());
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => return End::Asked("SIGTERM".into()),
            _ = int.recv() => return End::Asked("SIGINT".into()),
            _ = hup.recv() => return End::Asked("SIGHUP".into()),
            _ = tick.tick() => {
                if let Some(pid) = args.watch_pid
                    && !alive(pid)
                {
                    return End::Asked(format!("the batch script's shell (pid {pid}) ended"));
                }
                if let Some(Ok(Some(s))) = parts.controller.as_mut().map(|c| c.try_wait()) {
                    return End::Broke(format!("the controller ended ({s}) while the job ran; see controller.log"));
                }
                if let Some(Ok(Some(s))) = parts.executors.as_mut().map(|c| c.try_wait()) {
                    return End::Broke(format!("the executors' srun step ended ({s}) while the job ran; see executors.log"));
                }
            }
        }
    }
}

/// Writes the controller's event record to `out` (JSON lines).
async fn save_record(dir: &Path, out: &Path) -> Result<(), CliError> {
    let addr = Address::Unix(dir.join("controller.sock"));
    let work = async {
        let mut rpc = acb_client::connection::connect(&addr, None, Duration::from_secs(2)).await?;
        let mut stream = rpc.watch(proto::WatchRequest { replay: true }).await?.into_inner();
        let mut text = String::new();
        while let Some(e) = stream.message().await? {
            if matches!(e.kind, Some(proto::event::Kind::HistoryEnd(_))) {
                break;
            }
            if let Some(event) = acb_client::events::from_proto(e) {
                text.push_str(&acb_client::events::to_json(&event).to_string());
                text.push('\n');
            }
        }
        std::fs::write(out, text).map_err(|e| CliError::failed(format!("{}: {e}", out.display())))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| CliError::failed("the controller did not send its record within 10s"))?
}

/// One node's executor: the token from the step's environment into a private file, then
/// `serve --role executor` on `DIR/<node>.sock` with Slurm's GPUs, until the step is signalled.
async fn executor(args: ExecutorArgs) -> Result<(), CliError> {
    let token = std::env::var(TOKEN_VAR)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| CliError::usage(format!("{TOKEN_VAR} is unset (this command is started by `slurm up`)")))?;
    // The name clients' `%N` stands for (SLURMD_NODENAME): the socket must be where they look.
    let node = acb_proto::address::node_name();
    make_dir(&args.dir)?;
    let token_file = args.dir.join(format!("cluster-{node}.token"));
    write_private(&token_file, &format!("{}\n", token.trim()))?;
    let exe = this_program()?;
    let socket = args.dir.join(format!("{node}.sock"));
    let mut serve = Command::new(exe);
    serve
        .args(["serve", "--role", "executor", "--gpus", "slurm", "--state-dir", "none"])
        .args(["--controller", &args.controller, "--node-name", &node])
        .arg("--cluster-token-file")
        .arg(&token_file)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .args(["--heartbeat", &format!("{}ms", args.heartbeat.as_millis())])
        .env_remove(TOKEN_VAR)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = serve.spawn().map_err(|e| CliError::failed(format!("cannot start the executor: {e}")))?;
    use tokio::signal::unix::{SignalKind, signal as on};
    let (mut term, mut int) = (
        on(SignalKind::terminate()).map_err(CliError::failed)?,
        on(SignalKind::interrupt()).map_err(CliError::failed)?,
    );
    // Stopped by a signal (the supervisor's srun forwards its SIGTERM) is the normal end; the
    // daemon ending by itself, however, is a failure, whatever its status.
    let (status, asked) = tokio::select! {
        s = child.wait() => (s.ok(), false),
        _ = term.recv() => (stop(&mut child, Duration::from_secs(5)).await, true),
        _ = int.recv() => (stop(&mut child, Duration::from_secs(5)).await, true),
    };
    let _ = std::fs::remove_file(&token_file);
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_dir(&args.dir); // only if empty: the batch node's supervisor still uses it
    match status {
        Some(s) if asked && (s.success() || s.code().is_none()) => Ok(()),
        Some(s) if asked => Err(CliError::failed(format!("the executor on {node} stopped with {s}"))),
        Some(s) => Err(CliError::failed(format!("the executor on {node} ended by itself ({s}) while the job ran"))),
        None => Err(CliError::failed(format!("the executor on {node} could not be waited for"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("unix:/tmp/a b/%N.sock"), "'unix:/tmp/a b/%N.sock'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
