//! A lab of hosts on one machine: network namespaces on a bridge of their own (the recipe of
//! `shared/LAB.md`), and processes started on them that are killed, by pid, when the lab goes,
//! even when a test panics. Needs root; [`Lab::new`] says why not otherwise.
//!
//! Host `i` (from 1) is `10.200.0.{i+1}/24`, its port on the bridge `p{i}` in the switch
//! namespace. A blackhole route for 10.200.0.0/24 is added first (and removed at the end if this
//! lab added it): nothing addressed to the lab can leave the machine. Labs of one process run one
//! at a time (a lab holds a lock), so tests that each make one run in turn.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::common::TempDir;

/// The lab's subnet.
pub const SUBNET: &str = "10.200.0.0/24";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Hosts as network namespaces on a private bridge.
pub struct Lab {
    /// The namespace holding the bridge and every host's port.
    pub switch: String,
    /// The hosts' namespaces; host `i` is `hosts[i - 1]`.
    pub hosts: Vec<String>,
    /// Logs, sockets and whatever else the test keeps.
    pub dir: TempDir,
    route_added: bool,
    _turn: MutexGuard<'static, ()>,
}

/// `ip ARGS`; its stderr when it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Lab {
    /// A lab of `n` hosts, or `None` (the reason printed) where this machine cannot make one: not
    /// root, or no network namespaces. With `ACB_REQUIRE_ROOT=1` that is a failure instead.
    pub fn new(test: &str, n: usize) -> Option<Lab> {
        // SAFETY: geteuid(2) has no preconditions.
        let why = if unsafe { libc::geteuid() } != 0 {
            "not root".to_string()
        } else {
            match Lab::make(n) {
                Ok(lab) => return Some(lab),
                Err(e) => format!("cannot make network namespaces: {e}"),
            }
        };
        if std::env::var("ACB_REQUIRE_ROOT").is_ok_and(|v| v == "1") {
            panic!("{test}: ACB_REQUIRE_ROOT=1 but {why}");
        }
        eprintln!("skipping {test}: {why}");
        None
    }

    fn make(n: usize) -> Result<Lab, String> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // FIRST: the blackhole route. "File exists": someone else's, which stays.
        let route_added = match ip(&["route", "add", "blackhole", SUBNET]) {
            Ok(()) => true,
            Err(e) if e.contains("File exists") => false,
            Err(e) => return Err(e),
        };
        let tag = format!("acb{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut lab =
            Lab { switch: format!("{tag}sw"), hosts: Vec::new(), dir: TempDir::new("lab"), route_added, _turn: turn };
        // From here on, a failure cleans up through Drop.
        ip(&["netns", "add", &lab.switch])?;
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let host = format!("{tag}h{i}");
            ip(&["netns", "add", &host])?;
            lab.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&["-n", &lab.switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &host, "addr", "add", &format!("{}/24", Lab::addr(i)), "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Host `i`'s address (from 1).
    pub fn addr(i: usize) -> String {
        format!("10.200.0.{}", i + 1)
    }

    /// Takes host `i`'s port on the bridge down (`false`) or up again (`true`).
    pub fn link(&self, i: usize, up: bool) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), if up { "up" } else { "down" }]).unwrap();
    }

    /// Starts `cmd` on host `host` (from 1; 0: this machine's own namespace), named `name` in
    /// logs: its stdout is read line by line, its stderr goes to `DIR/name.log`.
    pub fn spawn(&self, host: usize, name: &str, mut cmd: Command) -> Proc {
        let log = self.dir.0.join(format!("{name}.log"));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(File::create(&log).unwrap());
        if host > 0 {
            let ns = File::open(format!("/run/netns/{}", self.hosts[host - 1])).unwrap();
            // SAFETY: setns(2) is a plain system call, safe between fork and exec; `ns` stays
            // open in the parent until spawn returns (and closes on exec in the child).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let lines = Out::new(child.stdout.take().unwrap());
        Proc { child: Some(child), lines, name: name.to_string(), log }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Whatever still runs on a host is ours (the namespaces are this lab's): end it by pid.
        for ns in self.hosts.iter().chain([&self.switch]) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()) {
                    // SAFETY: kill(2) on a process of this lab's namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for ns in self.hosts.iter().chain([&self.switch]) {
            let _ = ip(&["netns", "del", ns]);
        }
        if self.route_added {
            let _ = ip(&["route", "del", "blackhole", SUBNET]);
        }
    }
}

/// A process of the lab; SIGKILLed and reaped on drop. Its log's end is printed when it is
/// dropped during a panic.
pub struct Proc {
    child: Option<Child>,
    pub lines: Out,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Waits for it to exit within `timeout`; panics (and kills it) otherwise.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} (log {}) ---\n{}", self.name, self.log.display(), self.log_tail(40));
        }
    }
}

/// A process's stdout, line by line (the tests' common reader).
pub use crate::common::Lines as Out;
