//! A real Slurm cluster on loopback for tests: munged, slurmctld and `N` slurmd "nodes" on this
//! machine, each node with fake GPUs (character devices made in the lab's directory), everything
//! in a temporary directory of its own (the recipe of `shared/LAB.md`, "Slurm on loopback").
//!
//! - Needs root and slurm-wlm and munge installed; [`SlurmLab::start`] returns `None` (the reason
//!   printed) otherwise, and with `ACB_REQUIRE_SLURM=1` (CI) panics instead.
//! - Nothing outside the lab's directory is written: its own munge key and munged (on a socket in
//!   the directory, which slurm.conf names with `AuthInfo=socket=`), its own slurm.conf (every
//!   command gets `SLURM_CONF`), ports from [`free_port`], state, spool, pid and log files.
//! - Labs may run at once (cargo runs a binary's tests on threads): each has its own directory,
//!   ports and munged, and nothing is shared between them.
//! - On drop (also when a test panics): jobs still there are cancelled (so their Epilog runs),
//!   slurmd, slurmctld and munged are stopped by pid (SIGTERM, SIGKILL after 5 s), then any
//!   process left whose environment names this lab's slurm.conf (a job's, or one a Prolog
//!   started) is killed, and the directory is removed with the devices in it. During a panic
//!   the end of every log is printed first.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TempDir, bin_for_others, free_port, terminate};

/// What a lab has.
#[derive(Clone, Debug)]
pub struct SlurmOpts {
    /// Nodes, named `node1`..`nodeN` (default 2).
    pub nodes: usize,
    /// Fake GPUs per node (default 2).
    pub gpus: usize,
    /// Lines added to slurm.conf (`Prolog=...`, `PrologFlags=Alloc`, ...); `{dir}` in them
    /// stands for the lab's directory (scripts named there may be written once the lab runs,
    /// e.g. with [`SlurmLab::script`], which writes to `{dir}/jobs`).
    pub extra_conf: Vec<String>,
}

impl Default for SlurmOpts {
    fn default() -> Self {
        SlurmOpts { nodes: 2, gpus: 2, extra_conf: Vec::new() }
    }
}

/// A daemon of the lab: its child, and the file its stdout and stderr go to.
struct Proc {
    name: String,
    child: Child,
    out: PathBuf,
}

/// A running Slurm cluster; stopped on drop.
pub struct SlurmLab {
    /// The lab's directory: `slurm.conf`, `gres.conf`, `log/`, `jobs/` (a 1777 working directory
    /// for jobs, any user's), `dev/` (the fake GPUs).
    pub dir: TempDir,
    /// The slurm.conf every command is given.
    pub conf: PathBuf,
    nodes: Vec<String>,
    /// Stopped in reverse order: slurmds, then slurmctld, then munged.
    procs: Vec<Proc>,
    /// PATH for commands and jobs: the directory of `acb-assigner` first.
    path: String,
    /// A copy of the binary others can run, when the build's is out of their reach.
    _bin_copy: Option<TempDir>,
    /// Programs found: name -> path.
    bin: std::collections::HashMap<&'static str, PathBuf>,
}

const DAEMONS: [&str; 3] = ["munged", "slurmctld", "slurmd"];
const CLIENTS: [&str; 6] = ["sbatch", "scontrol", "sinfo", "squeue", "srun", "scancel"];

/// `prog` in PATH or the sbin directories (where Debian puts the daemons).
fn find(prog: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// The short host name (what slurmctld matches `SlurmctldHost` against).
fn short_hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    h.trim().split('.').next().unwrap().to_string()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The uid and gid of local user `name`, from `id`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Job states after which a job does not change any more.
pub const FINAL_STATES: [&str; 10] = [
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "SPECIAL_EXIT",
];

impl SlurmLab {
    /// A cluster as `opts` says, its nodes idle; `None` (with "skipped: <reason>" printed) where
    /// this machine cannot run one: not root, or a program of slurm-wlm, munge or setpriv
    /// missing. With `ACB_REQUIRE_SLURM=1` that is a panic. A cluster that should start and does
    /// not panics, with its logs.
    pub fn start(test: &str, opts: SlurmOpts) -> Option<SlurmLab> {
        // SAFETY: geteuid(2) has no preconditions.
        let why = if unsafe { libc::geteuid() } != 0 {
            Some("not root (the lab runs munged as the munge user, slurmd as root)".to_string())
        } else if let Some(p) = DAEMONS.iter().chain(CLIENTS.iter()).find(|p| find(p).is_none()) {
            Some(format!("{p} is missing (apt-get install slurm-wlm munge)"))
        } else if find("setpriv").is_none() {
            Some("setpriv is missing (util-linux; munged is started as the munge user with it)".to_string())
        } else if user_ids("munge").is_none() {
            Some("no user munge (apt-get install munge)".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            if std::env::var("ACB_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
                panic!("{test}: ACB_REQUIRE_SLURM=1 but {why}");
            }
            eprintln!("skipped: {test}: {why}");
            return None;
        }
        Some(SlurmLab::make(opts))
    }

    fn make(opts: SlurmOpts) -> SlurmLab {
        let dir = TempDir::new("slurm");
        let d = dir.0.clone();
        // munged wants every directory above its socket searchable by all.
        mode(&d, 0o755);
        let bin = DAEMONS.iter().chain(CLIENTS.iter()).map(|p| (*p, find(p).unwrap())).collect();
        let (acb, bin_copy) = bin_for_others();
        let path = format!(
            "{}:{}",
            acb.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
        );
        let mut lab = SlurmLab {
            conf: d.join("slurm.conf"),
            dir,
            nodes: (1..=opts.nodes).map(|i| format!("node{i}")).collect(),
            procs: Vec::new(),
            path,
            _bin_copy: bin_copy,
            bin,
        };
        // From here on a failure panics, and Drop stops what was started.
        lab.start_munged();
        lab.write_conf(&opts);
        let ctld = lab.bin["slurmctld"].clone();
        lab.spawn("slurmctld", Command::new(ctld).args(["-D", "-c"]));
        for node in lab.nodes.clone() {
            let slurmd = lab.bin["slurmd"].clone();
            lab.spawn(&format!("slurmd-{node}"), Command::new(slurmd).args(["-D", "-N", &node]));
        }
        lab.wait_idle(Duration::from_secs(30));
        lab
    }

    /// A key of its own (munge's, 0400, in a 0700 directory of munge's) and munged on a socket
    /// in the lab, run as munge in the foreground (`setpriv` execs it: the child is munged).
    fn start_munged(&mut self) {
        let (uid, gid) = user_ids("munge").unwrap();
        let d = &self.dir.0;
        let key_dir = d.join("munge-key");
        let run = d.join("munge");
        for (dir, m) in [(&key_dir, 0o700), (&run, 0o755)] {
            std::fs::create_dir(dir).unwrap();
            chown(dir, uid, gid);
            mode(dir, m);
        }
        let key = key_dir.join("munge.key");
        let mut bytes = [0u8; 128];
        File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).unwrap();
        std::fs::write(&key, bytes).unwrap();
        chown(&key, uid, gid);
        mode(&key, 0o400);
        let mut cmd = Command::new(find("setpriv").unwrap());
        cmd.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
            .arg(&self.bin["munged"])
            .arg("--foreground")
            .arg(format!("--socket={}", self.munge_socket().display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--pid-file={}", run.join("munged.pid").display()))
            .arg(format!("--log-file={}", run.join("munged.log").display()))
            .arg(format!("--seed-file={}", run.join("munged.seed").display()));
        self.spawn("munged", &mut cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.munge_socket().exists() {
            self.check_alive();
            assert!(Instant::now() < deadline, "munged made no socket within 10 s\n{}", self.logs(30));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lab's munged socket.
    pub fn munge_socket(&self) -> PathBuf {
        self.dir.0.join("munge/munge.sock")
    }

    fn write_conf(&mut self, opts: &SlurmOpts) {
        let d = self.dir.0.clone();
        for sub in ["state", "spool", "log", "dev", "jobs"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        mode(&d.join("jobs"), 0o1777);
        let host = short_hostname();
        let mut conf = vec![
            "ClusterName=acblab".to_string(),
            format!("SlurmctldHost={host}(127.0.0.1)"),
            format!("SlurmctldPort={}", free_port()),
            "SlurmUser=root".into(),
            "AuthType=auth/munge".into(),
            "CredType=cred/munge".into(),
            format!("AuthInfo=socket={}", self.munge_socket().display()),
            format!("StateSaveLocation={}", d.join("state").display()),
            format!("SlurmdSpoolDir={}/%n", d.join("spool").display()),
            format!("SlurmctldPidFile={}", d.join("slurmctld.pid").display()),
            format!("SlurmdPidFile={}/slurmd-%n.pid", d.display()),
            format!("SlurmctldLogFile={}", d.join("log/slurmctld.log").display()),
            format!("SlurmdLogFile={}/slurmd-%n.log", d.join("log").display()),
            "ProctrackType=proctrack/linuxproc".into(),
            "TaskPlugin=task/none".into(),
            "SelectType=select/cons_tres".into(),
            "SelectTypeParameters=CR_Core".into(),
            "SchedulerType=sched/builtin".into(),
            "AccountingStorageType=accounting_storage/none".into(),
            "JobAcctGatherType=jobacct_gather/none".into(),
            "JobCompType=jobcomp/none".into(),
            "MpiDefault=none".into(),
            "ReturnToService=2".into(),
            "GresTypes=gpu".into(),
            // Finished jobs stay in `scontrol show job` for 10 minutes (no accounting here).
            "MinJobAge=600".into(),
        ];
        let mut gres = Vec::new();
        for node in &self.nodes {
            std::fs::create_dir(d.join("spool").join(node)).unwrap();
            conf.push(format!(
                "NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={} CPUs=2 RealMemory=2000{}",
                free_port(),
                if opts.gpus > 0 { format!(" Gres=gpu:{}", opts.gpus) } else { String::new() }
            ));
            let files: Vec<String> = (0..opts.gpus).map(|i| self.make_gpu(node, i).display().to_string()).collect();
            if !files.is_empty() {
                gres.push(format!("NodeName={node} Name=gpu File={}", files.join(",")));
            }
        }
        conf.push(format!("PartitionName=main Nodes={} Default=YES MaxTime=INFINITE State=UP", self.nodes.join(",")));
        conf.extend(opts.extra_conf.iter().map(|l| l.replace("{dir}", &d.display().to_string())));
        std::fs::write(&self.conf, conf.join("\n") + "\n").unwrap();
        std::fs::write(d.join("gres.conf"), gres.join("\n") + "\n").unwrap();
    }

    /// A fake GPU: a character device (1,3, like /dev/null) in the lab's `dev/`; slurmd rejects
    /// plain files, and then the job gets no CUDA_VISIBLE_DEVICES.
    fn make_gpu(&self, node: &str, i: usize) -> PathBuf {
        let p = self.dir.0.join("dev").join(format!("{node}-gpu{i}"));
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mknod(2) with a valid NUL-terminated path.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0, "mknod {}: {}", p.display(), std::io::Error::last_os_error());
        p
    }

    /// Starts a daemon of the lab, its stdout and stderr to `log/NAME.out`.
    fn spawn(&mut self, name: &str, cmd: &mut Command) {
        let out = self.dir.0.join("log").join(format!("{name}.out"));
        let _ = std::fs::create_dir_all(out.parent().unwrap());
        let f = File::create(&out).unwrap();
        self.env(cmd);
        cmd.current_dir(&self.dir.0).stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push(Proc { name: name.to_string(), child, out });
    }

    /// Panics (with the logs) if a daemon of the lab has exited.
    fn check_alive(&mut self) {
        let mut dead = Vec::new();
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                dead.push(format!("{} exited: {status}", p.name));
            }
        }
        assert!(dead.is_empty(), "{}\n{}", dead.join("\n"), self.logs(30));
    }

    fn wait_idle(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive();
            let out = self.cmd("sinfo").args(["-h", "-N", "-o", "%N %T"]).output().unwrap();
            let last = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            let states: Vec<&str> = last.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
            if out.status.success() && states.len() == self.nodes.len() && states.iter().all(|s| *s == "idle") {
                return;
            }
            assert!(Instant::now() < deadline, "nodes not idle within {timeout:?}: {last}\n{}", self.logs(30));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nodes' names.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The environment every command of the lab gets, and jobs inherit (sbatch exports it):
    /// `SLURM_CONF`, and `PATH` with `acb-assigner`'s directory first.
    pub fn job_env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".into(), self.conf.display().to_string()), ("PATH".into(), self.path.clone())]
    }

    /// The directory of the `acb-assigner` jobs run (first in PATH).
    pub fn bin_dir(&self) -> PathBuf {
        PathBuf::from(self.path.split(':').next().unwrap())
    }

    /// Sets the lab's environment on `cmd`, and removes the `SLURM_*` variables this process may
    /// have from a Slurm job of its own, and the `ACB_*` settings of whoever runs the tests (jobs
    /// inherit the environment of sbatch: an `ACB_ASSIGNER` would reach them).
    fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if name.starts_with("SLURM_") || name.starts_with("ACB_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.job_env())
    }

    /// `prog` (sbatch, scontrol, srun, ...) with the lab's environment, run in `jobs/`.
    pub fn cmd(&self, prog: &str) -> Command {
        let path = CLIENTS.iter().find(|p| **p == prog).map_or_else(|| PathBuf::from(prog), |p| self.bin[p].clone());
        let mut c = Command::new(path);
        self.env(&mut c);
        c.current_dir(self.jobs_dir());
        c
    }

    /// The jobs' working directory (mode 1777: jobs of any user may write their output there).
    pub fn jobs_dir(&self) -> PathBuf {
        self.dir.0.join("jobs")
    }

    /// `sbatch --parsable ARGS SCRIPT` in `jobs/`; the job's id. Panics with sbatch's stderr if
    /// it fails.
    pub fn sbatch(&self, script: &Path, args: &[&str]) -> u32 {
        let out = self.cmd("sbatch").arg("--parsable").args(args).arg(script).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "sbatch {args:?} {} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text.trim().split(';').next().unwrap().parse().unwrap_or_else(|_| panic!("sbatch printed {text:?}"))
    }

    /// Writes `body` as an executable script `jobs/NAME` (for sbatch or a Prolog); its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.jobs_dir().join(name);
        std::fs::write(&p, body).unwrap();
        mode(&p, 0o755);
        p
    }

    /// `scontrol show job -o ID`'s fields, or `None` when the job is not known (any more).
    pub fn job_fields(&self, id: u32) -> Option<std::collections::HashMap<String, String>> {
        let out = self.cmd("scontrol").args(["show", "job", "-o", &id.to_string()]).output().unwrap();
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Some(
            text.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// Waits until job `id` has ended and its Epilog has run on every node (state final, no
    /// COMPLETING flag); its final state (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...). Panics,
    /// with the logs, after `timeout`.
    pub fn wait_job(&self, id: u32, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("(unknown job)");
        loop {
            if let Some(f) = self.job_fields(id) {
                let state = f.get("JobState").cloned().unwrap_or_default();
                // While an Epilog runs, squeue shows CG; scontrol keeps the final state and
                // says COMPLETING in the job's flags (or as JobState itself).
                let completing = state == "COMPLETING"
                    || f.get("Flags").is_some_and(|v| v.contains("COMPLETING"))
                    || self.completing_jobs().contains(&id);
                if FINAL_STATES.contains(&state.as_str()) && !completing {
                    return state;
                }
                last = format!("{state} (reason {})", f.get("Reason").map_or("?", String::as_str));
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not end within {timeout:?}: last {last}\n{}",
                self.logs(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Jobs `squeue` still lists as running, pending or completing.
    fn completing_jobs(&self) -> Vec<u32> {
        self.cmd("squeue")
            .args(["-h", "-o", "%i", "-t", "CG"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Every job the cluster still has (pending, running, completing).
    fn live_jobs(&self) -> Vec<u32> {
        self.cmd("squeue")
            .args(["-h", "-o", "%i", "-t", "PD,R,CG,S,CF,RQ,RS,RH,SO,ST"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// A job's output file, `path` relative to `jobs/` (or absolute). Panics if it cannot be
    /// read.
    pub fn job_output(&self, path: impl AsRef<Path>) -> String {
        let p = self.jobs_dir().join(path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}\n{}", p.display(), self.logs(20)))
    }

    /// `scontrol show node NAME`'s `State=` (e.g. IDLE, IDLE+DRAIN) and `Reason=`.
    pub fn node_state(&self, node: &str) -> (String, String) {
        let out = self.cmd("scontrol").args(["show", "node", "-o", node]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let field = |k: &str| {
            text.split(&format!(" {k}=")).nth(1).map(|r| r.split_whitespace().next().unwrap_or("").to_string())
        };
        // Reason may hold spaces: everything up to the next " Key=" (Reason comes last but for the
        // time stamp in brackets).
        let reason = text.split(" Reason=").nth(1).map(|r| r.trim().to_string()).unwrap_or_default();
        (field("State").unwrap_or_default(), reason)
    }

    /// The log of a daemon: `slurmctld`, or a node's slurmd by the node's name (`node1`), whose
    /// log also holds its slurmstepds' messages (Prolog, TaskProlog failures).
    pub fn log(&self, name: &str) -> String {
        let file = if name == "slurmctld" { "slurmctld.log".to_string() } else { format!("slurmd-{name}.log") };
        std::fs::read_to_string(self.dir.0.join("log").join(file)).unwrap_or_default()
    }

    /// The last `n` lines of every file in `log/` (the daemons' logs and their stdout/stderr, and
    /// whatever a test puts there), for a failure's message.
    pub fn logs(&self, n: usize) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.0.join("log"))
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        let mut s = String::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s += &format!("--- {} ---\n{}\n", f.display(), lines[lines.len().saturating_sub(n)..].join("\n"));
        }
        s
    }

    /// Processes other than this one whose environment names this lab's slurm.conf: the jobs'
    /// processes, slurmstepds, and what a Prolog started (slurmd gives it `SLURM_CONF`).
    pub fn stray_pids(&self) -> Vec<i32> {
        let needle = format!("SLURM_CONF={}", self.conf.display());
        let me = std::process::id() as i32;
        let mine: Vec<i32> = self.procs.iter().map(|p| p.child.id() as i32).collect();
        let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me && !mine.contains(pid))
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
            })
            .collect()
    }
}

impl SlurmLab {
    /// The lab's processes running `acb-assigner` (pid, command line): what a job left.
    pub fn acb_procs(&self) -> Vec<(i32, String)> {
        self.stray_pids()
            .into_iter()
            .filter_map(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                cmd.contains("acb-assigner").then_some((pid, cmd))
            })
            .collect()
    }
}

impl Drop for SlurmLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== Slurm lab {} ===\n{}", self.dir.0.display(), self.logs(40));
        }
        // Jobs still there are cancelled, and given 15 s to end (their Epilog runs).
        let alive = self.procs.iter_mut().all(|p| matches!(p.child.try_wait(), Ok(None)));
        if alive {
            let jobs = self.live_jobs();
            if !jobs.is_empty() {
                let ids: Vec<String> = jobs.iter().map(u32::to_string).collect();
                let _ = self.cmd("scancel").args(&ids).status();
                let deadline = Instant::now() + Duration::from_secs(15);
                while !self.live_jobs().is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        // slurmds, slurmctld, munged: the reverse of their start.
        while let Some(mut p) = self.procs.pop() {
            terminate(&mut p.child, Duration::from_secs(5));
        }
        let strays = self.stray_pids();
        if !strays.is_empty() {
            eprintln!("Slurm lab: killing {} process(es) left by its jobs: {strays:?}", strays.len());
            for pid in strays {
                // SAFETY: kill(2) on a process whose environment names this lab's slurm.conf.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // `dir` (TempDir) then removes the directory, the fake GPUs with it.
    }
}

/// A job's TMPDIR for `acb-assigner slurm up` tests, one per lab: labs run at once and number
/// their jobs from 1 each, so up's default directory ($TMPDIR/acb-slurm-<job>) must not be one
/// /tmp for all; short, since sockets live under it (the lab's directory is too long a path for
/// them); 1777, so that jobs of any user make their directory there. Removed on drop.
pub struct JobTmp(pub PathBuf);

impl JobTmp {
    pub fn new() -> JobTmp {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/acbj-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        mode(&dir, 0o1777);
        JobTmp(dir)
    }

    /// `--export=ALL,TMPDIR=<this>`, followed by `,more` unless `more` is empty.
    pub fn export(&self, more: &str) -> String {
        let sep = if more.is_empty() { "" } else { "," };
        format!("--export=ALL,TMPDIR={}{sep}{more}", self.0.display())
    }

    /// The directory `slurm up` makes by default for job `job`.
    pub fn acb_dir(&self, job: u32) -> PathBuf {
        self.0.join(format!("acb-slurm-{job}"))
    }
}

impl Drop for JobTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
