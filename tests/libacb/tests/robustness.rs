//! libacb inside its host process, as faults outside the tests found it (issue 12): a graceful
//! restart of the assigner must not kill C clients with SIGPIPE; a forked child gets a clear
//! status from its parent's client, at once; a job id the assigner would refuse is refused at
//! config time; a socket owned by another user is not trusted. C programs (tests/c/) are built
//! against libacb with the strict flags and sanitizers of c_api.rs and run as real processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use acb_core::record::EventKind;
use common::{Assigner, compile, events_at, root, scratch};

/// The real `acb-assigner` command line (tests/libacb/assigner.rs).
const DAEMON: &str = env!("CARGO_BIN_EXE_libacb-tests-assigner");

fn c_source(name: &str) -> PathBuf {
    root().join("tests/libacb/tests/c").join(name)
}

/// Sends each line `child` prints, tagged with `tag`, into `tx` (a reader thread per child).
fn forward_lines(child: &mut Child, tag: usize, tx: mpsc::Sender<(usize, String)>) {
    let out = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((tag, line)).is_err() {
                break;
            }
        }
    });
}

/// Waits for `child` to exit within `timeout`; kills it (by its pid) past that.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `acb-assigner serve` as a process of its own on `socket`; killed on drop if still running.
struct Daemon(Child);

impl Daemon {
    fn start(socket: &Path) -> Daemon {
        let mut child = Command::new(DAEMON)
            .args(["serve", "--gpus", "fake:4x80GiB", "--listen"])
            .arg(format!("unix:{}", socket.display()))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        forward_lines(&mut child, 0, tx);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, line)) if line.contains("ready") => return Daemon(child),
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("the assigner did not say ready within 20 s");
                }
            }
        }
    }

    /// SIGTERM, as an operator's restart sends it; the daemon drains and exits.
    fn terminate(mut self) -> Option<ExitStatus> {
        // SAFETY: kill(2) on the pid of our own child, not yet waited for.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        wait_exit(&mut self.0, Duration::from_secs(20))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Twenty C clients mid-use, the assigner stopped with SIGTERM and started again on the same
/// socket: every client survives, and every one gets a GPU phase from the new assigner.
///
/// Whether a client writes into its connection after the assigner closed it is a race: a client
/// that reacts to the shutdown before the assigner exits closes its connection itself. On a busy
/// machine clients lose it (the issue saw 6 to 9 of 10 die). Here they always lose it: they are
/// stopped (SIGSTOP) across the SIGTERM, so the assigner gives up waiting for their connections
/// (10 s) and exits; resumed, each reads the shutdown and answers (an HTTP/2 GOAWAY) into the
/// closed socket. Before the fix all 20 died of SIGPIPE there.
#[test]
fn twenty_c_clients_survive_a_restart_of_the_assigner() {
    const CLIENTS: usize = 20;
    let dir = scratch("restart");
    let bin = dir.join("restart_client");
    compile(&c_source("restart_client.c"), &bin);
    let socket = dir.join("assigner.sock");
    let go = dir.join("go");
    let _ = std::fs::remove_file(&go);
    let daemon = Daemon::start(&socket);
    let addr = format!("unix:{}", socket.display());

    let (tx, rx) = mpsc::channel();
    let mut clients: Vec<Child> = (0..CLIENTS)
        .map(|i| {
            let mut c = Command::new(&bin)
                .arg(&go)
                .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
                .env("ACB_ASSIGNER", &addr)
                .env("ACB_JOB_ID", format!("restart-{i}"))
                .env_remove("ACB_PROFILE")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            forward_lines(&mut c, i, tx.clone());
            c
        })
        .collect();
    drop(tx);

    // Every client has had a phase: all are connected and running phases.
    let mut ready = vec![false; CLIENTS];
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.iter().any(|r| !r) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, line)) if line == "ready" => ready[i] = true,
            Ok(_) => {}
            Err(_) => panic!("not every client had a phase within 60 s: {ready:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));

    let signal_all = |sig: i32| {
        for c in &clients {
            // SAFETY: kill(2) on the pids of our own children, not yet waited for.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    };
    signal_all(libc::SIGSTOP);
    let stopped = daemon.terminate();
    signal_all(libc::SIGCONT);
    assert!(stopped.is_some_and(|s| s.success()), "the assigner's exit on SIGTERM: {stopped:?}");
    // Clients keep calling into the closed socket for a moment with no assigner at all.
    std::thread::sleep(Duration::from_millis(500));
    let daemon = Daemon::start(&socket);
    std::fs::write(&go, b"").unwrap();

    let mut died = Vec::new();
    let mut failed = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        match wait_exit(c, Duration::from_secs(60)) {
            Some(s) if s.success() => {}
            Some(s) if s.signal().is_some() => died.push((i, s.signal())),
            other => failed.push((i, other)),
        }
    }
    let pipes = died.iter().filter(|(_, s)| *s == Some(libc::SIGPIPE)).count();
    eprintln!(
        "{CLIENTS} C clients across a SIGTERM restart: {} survived, {} killed by a signal ({pipes} by SIGPIPE), {} failed",
        CLIENTS - died.len() - failed.len(),
        died.len(),
        failed.len()
    );
    assert!(died.is_empty(), "clients killed by a signal (client, signal): {died:?}");
    assert!(failed.is_empty(), "clients that got no phase from the new assigner: {failed:?}");

    // The new assigner's own record: it granted every client.
    let events = events_at(&addr);
    for i in 0..CLIENTS {
        let job = format!("restart-{i}");
        assert!(
            events.iter().any(|e| matches!(&e.kind, EventKind::Granted { job: j, .. } if *j == job)),
            "the new assigner never granted {job}"
        );
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

/// The signals thread `tid` of this process blocks, from /proc (`SigBlk`: bit n-1 is signal n);
/// `None` if the thread has ended meanwhile (other tests' clients come and go).
fn blocked_signals(tid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).expect("a SigBlk line");
    Some(u64::from_str_radix(mask.trim(), 16).unwrap())
}

/// The ids of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map_while(Result::ok)
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .filter(|tid| std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default().trim() == name)
        .collect()
}

/// The restart above depends on timing; this is the rule it relies on, checked directly: every
/// thread libacb starts blocks SIGPIPE (before the fix none did, so a write of theirs into a
/// closed socket killed a C host), and the calling thread's mask is left as it was.
#[test]
fn every_thread_libacb_starts_blocks_sigpipe() {
    let a = Assigner::start("sigmask", "fake:1x80GiB");
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() }.to_string();
    let before = blocked_signals(&me).expect("this thread");
    let job = common::Job::new(&a.addr(), "sigmask");
    job.begin();
    job.end();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0usize;
    let st = acb::client::acb_client_status_json(job.0, buf.as_mut_ptr().cast(), buf.len(), &mut n);
    assert_eq!(st, acb::acb_status::Ok);
    let pipe = 1u64 << (libc::SIGPIPE - 1);
    let threads: Vec<(String, u64)> =
        threads_named("acb-client").into_iter().filter_map(|t| blocked_signals(&t).map(|m| (t, m))).collect();
    assert!(!threads.is_empty(), "the client's runtime threads are named acb-client");
    for (tid, mask) in &threads {
        assert!(mask & pipe != 0, "libacb thread {tid} does not block SIGPIPE (SigBlk {mask:x})");
    }
    assert_eq!(blocked_signals(&me), Some(before), "the calling thread's mask is as it was");
    eprintln!("{} libacb threads, each blocking SIGPIPE; the caller's mask unchanged", threads.len());
}

/// A forked child calls libacb with its parent's client: every call returns
/// ACB_STATUS_FORKED at once (before the fix begin hung forever, and free took 4 s), free
/// returns at once, a client of the child's own works, and the parent's goes on.
#[test]
fn a_forked_child_is_told_at_once_and_the_parent_goes_on() {
    let dir = scratch("fork");
    let bin = dir.join("fork_child");
    compile(&c_source("fork_child.c"), &bin);
    let a = Assigner::start("fork", "fake:1x80GiB");
    let mut child = Command::new(&bin)
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        .env("ACB_ASSIGNER", a.addr())
        .env_remove("ACB_PROFILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    forward_lines(&mut child, 0, tx);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let stdout: Vec<String> = rx.try_iter().map(|(_, l)| l).collect();
    let stdout = stdout.join("\n");
    assert!(status.is_some(), "the forked program hung (killed after 60 s):\n{stdout}");
    assert!(status.is_some_and(|s| s.success()) && stdout.contains("all held"), "{status:?}\n{stdout}");
    let forked = stdout.lines().filter(|l| l.starts_with("child ok") && l.contains("a fork of it")).count();
    assert_eq!(forked, 5, "five calls on the parent's client said why:\n{stdout}");
    eprintln!("{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs tests/c/config_env.c (built once per test) with `env`; returns its stdout.
fn config_env(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        .env_remove("ACB_JOB_ID")
        .env_remove("ACB_ASSIGNER_UID")
        .env_remove("ACB_PROFILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A 300-byte ACB_JOB_ID used to pass acb_config_new and fail begin with UNAVAILABLE ("refused
/// the session"): now acb_config_new refuses it, naming the limit, as acb_config_set_job does.
#[test]
fn a_job_id_the_assigner_would_refuse_is_refused_at_config_time() {
    let dir = scratch("jobid");
    let bin = dir.join("config_env");
    compile(&c_source("config_env.c"), &bin);
    let invalid = acb::acb_status::InvalidArgument as u32;
    let long = "j".repeat(300);
    let out = config_env(&bin, &[], &[("ACB_JOB_ID", &long)]);
    assert!(
        out.starts_with(&format!("config: {invalid} ACB_JOB_ID: a job name has at most 256 bytes, not 300")),
        "{out}"
    );
    let out = config_env(&bin, &[], &[("ACB_JOB_ID", "two\nlines")]);
    assert!(out.starts_with(&format!("config: {invalid} ACB_JOB_ID: a job name has no control characters")), "{out}");
    let out = config_env(&bin, &[], &[("ACB_JOB_ID", &"j".repeat(256))]);
    assert!(out.starts_with("config: 0 "), "256 bytes is the limit, allowed: {out}");

    // The setter says the same.
    let mut cfg = std::ptr::null_mut();
    assert_eq!(acb::config::acb_config_new(&mut cfg), acb::acb_status::Ok);
    let st = acb::config::acb_config_set_job(cfg, long.as_ptr().cast(), long.len());
    assert_eq!(st, acb::acb_status::InvalidArgument);
    assert!(error_message().contains("at most 256 bytes, not 300"), "{}", error_message());
    acb::config::acb_config_free(cfg);
    let _ = std::fs::remove_dir_all(dir);
}

fn error_message() -> String {
    let mut buf = vec![0u8; 1024];
    let mut n = 0usize;
    acb::error::acb_error_message(buf.as_mut_ptr().cast(), buf.len(), &mut n);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A client made through the C ABI for `addr`, allowing `uid` to own the socket if given.
fn ffi_client(addr: &str, uid: Option<u32>) -> *mut acb::acb_client {
    use acb::acb_status::Ok;
    use acb::config::*;
    let mut cfg = std::ptr::null_mut();
    assert_eq!(acb_config_new(&mut cfg), Ok);
    assert_eq!(acb_config_set_assigner(cfg, addr.as_ptr().cast(), addr.len()), Ok);
    assert_eq!(acb_config_set_connect_retries(cfg, 0), Ok);
    if let Some(u) = uid {
        assert_eq!(acb_config_set_assigner_uid(cfg, u), Ok);
    }
    let mut c = std::ptr::null_mut();
    assert_eq!(acb::client::acb_client_new(cfg, &mut c), Ok);
    acb_config_free(cfg);
    c
}

/// Asks the assigner's status through `client`: the status and the error message.
fn status_of(client: *mut acb::acb_client) -> (acb::acb_status, String) {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0usize;
    let st = acb::client::acb_client_status_json(client, buf.as_mut_ptr().cast(), buf.len(), &mut n);
    (st, error_message())
}

/// The assigner's socket owned by another uid (chown, as root): the client refuses to connect,
/// naming the owner and how to allow it; allowed by acb_config_set_assigner_uid or
/// ACB_ASSIGNER_UID, it connects. Needs root; skips otherwise, unless ACB_REQUIRE_ROOT=1.
#[test]
fn a_socket_owned_by_another_user_is_refused_unless_allowed() {
    if !is_root() {
        assert!(!std::env::var("ACB_REQUIRE_ROOT").is_ok_and(|v| v == "1"), "ACB_REQUIRE_ROOT=1 but this is not root");
        eprintln!("skipped: needs root to chown the socket");
        return;
    }
    const OTHER: u32 = 4242;
    let a = Assigner::start("owner", "fake:1x80GiB");
    let addr = a.addr();
    let plain = ffi_client(&addr, None);
    assert_eq!(status_of(plain).0, acb::acb_status::Ok, "root's own socket");
    std::os::unix::fs::chown(&a.socket, Some(OTHER), None).unwrap();

    let (st, why) = status_of(plain);
    assert_eq!(st, acb::acb_status::PermissionDenied, "{why}");
    assert!(
        why.contains(&format!("owned by uid {OTHER}")) && why.contains(&format!("ACB_ASSIGNER_UID={OTHER}")),
        "{why}"
    );
    // begin goes through the client's driver, which says the same after its retries.
    let mut req = std::ptr::null_mut();
    assert_eq!(acb::request::acb_request_new(&mut req), acb::acb_status::Ok);
    let mut lease = std::ptr::null_mut();
    let st = acb::client::acb_on_device_begin(plain, req, &mut lease);
    let why = error_message();
    assert_eq!(st, acb::acb_status::Unavailable, "{why}");
    assert!(why.contains(&format!("owned by uid {OTHER}")), "{why}");
    acb::client::acb_client_free(plain);

    // Allowed by the setter: status and a phase work.
    let allowed = ffi_client(&addr, Some(OTHER));
    assert_eq!(status_of(allowed), (acb::acb_status::Ok, String::new()));
    assert_eq!(acb::client::acb_on_device_begin(allowed, req, &mut lease), acb::acb_status::Ok, "{}", error_message());
    acb::lease::acb_lease_free(lease);
    assert_eq!(acb::client::acb_on_device_end(allowed), acb::acb_status::Ok);
    acb::client::acb_client_free(allowed);
    acb::request::acb_request_free(req);

    // And by the environment, in a C program.
    let dir = scratch("owner-env");
    let bin = dir.join("config_env");
    compile(&c_source("config_env.c"), &bin);
    let denied = acb::acb_status::PermissionDenied as u32;
    let out = config_env(&bin, &["status"], &[("ACB_ASSIGNER", &addr)]);
    assert!(out.contains(&format!("status: {denied} not connecting to")), "{out}");
    let uid = OTHER.to_string();
    let out = config_env(&bin, &["status"], &[("ACB_ASSIGNER", &addr), ("ACB_ASSIGNER_UID", &uid)]);
    assert!(out.contains("status: 0 "), "{out}");
    let out = config_env(&bin, &["status"], &[("ACB_ASSIGNER", &addr), ("ACB_ASSIGNER_UID", "nobody")]);
    let invalid = acb::acb_status::InvalidArgument as u32;
    assert!(out.contains(&format!("config: {invalid} ACB_ASSIGNER_UID=\"nobody\" is not a uid")), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}
