//! A restarted assigner never double-grants: the daemon binary with a state directory is
//! restarted (SIGTERM, then SIGKILL) under Rust clients (host-memory backend, simulated GPUs)
//! mid-phase, idle-holding and swapped out, while another client waits for the mid-phase
//! client's exclusive GPU. The event records of both daemons, read together, never show two
//! holders of a GPU; the waiter gets the GPU only after the mid-phase client's phase ended; every
//! client's memory comes back byte-exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acb_assigner::proto;
use acb_client::{Client, Request};
use acb_core::record::{Event, EventKind};
use common::{BIN, Lines, TempDir, wait_exit};

const SIZE: usize = 1 << 20;

/// A daemon process, killed on drop (a failed test must not leave it running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `acb-assigner serve` on `socket` with `state` as its state directory.
fn serve(socket: &Path, state: &str) -> (Killed, Lines) {
    let mut child = Command::new(BIN)
        .args(["serve", "--gpus", "fake:2x1GiB", "--reclaim-grace", "20s", "--state-dir", state, "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = Lines::new(child.stdout.take().unwrap());
    lines.wait_for("ready", Duration::from_secs(20));
    (Killed(child), lines)
}

fn client(socket: &Path, job: &str) -> Client {
    Client::new(common::client_config(socket, job)).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn rpc(socket: &Path) -> acb_client::connection::Rpc {
    let addr = format!("unix:{}", socket.display()).parse().unwrap();
    acb_client::connection::connect(&addr, None, Duration::from_secs(5)).await.unwrap()
}

/// Collects the daemon's record, replayed and then live, until its stream ends (the daemon
/// stops or is killed).
fn watch(socket: PathBuf) -> std::thread::JoinHandle<Vec<Event>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        runtime().block_on(async {
            let mut s = rpc(&socket).await.watch(proto::WatchRequest { replay: true }).await.unwrap().into_inner();
            let _ = tx.send(());
            let mut out = Vec::new();
            while let Ok(Some(e)) = s.message().await {
                out.extend(acb_client::events::from_proto(e));
            }
            out
        })
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    t
}

/// The record so far (replay only).
fn record(socket: &Path) -> Vec<Event> {
    runtime().block_on(async {
        let mut s = rpc(socket).await.watch(proto::WatchRequest { replay: true }).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(e) = s.message().await.unwrap() {
            if matches!(e.kind, Some(proto::event::Kind::HistoryEnd(_))) {
                break;
            }
            out.extend(acb_client::events::from_proto(e));
        }
        out
    })
}

fn status(socket: &Path) -> proto::StatusResponse {
    runtime().block_on(async { rpc(socket).await.status(proto::StatusRequest::default()).await.unwrap().into_inner() })
}

/// Who holds each GPU, event by event, over the records of two runs: the holders of the
/// first run's end carry over (its clients go on computing); the second run's restored lease
/// (a grant of request 0 with the same id) continues a carried one. Panics at a second holder.
fn check_one_holder(first: &[Event], second: &[Event]) {
    let mut holders: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut gpus_of: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (run, events) in [(1, first), (2, second)] {
        for e in events {
            match &e.kind {
                EventKind::Granted { lease, gpus, request, .. } => {
                    for g in gpus {
                        let h = holders.entry(*g).or_default();
                        let continued = run == 2 && *request == 0 && h.contains(lease);
                        assert!(
                            h.is_empty() || continued,
                            "run {run}: gpu#{g} granted as lease#{lease} while held by {h:?} ({e})"
                        );
                        h.insert(*lease);
                    }
                    gpus_of.insert(*lease, gpus.clone());
                }
                EventKind::Released { lease, .. } => {
                    for g in gpus_of.get(lease).into_iter().flatten() {
                        holders.entry(*g).or_default().remove(lease);
                    }
                }
                _ => {}
            }
        }
    }
}

fn fill(c: &Client, byte: u8) -> *mut u8 {
    let p = c.alloc(SIZE).unwrap().as_ptr();
    // SAFETY: SIZE bytes, resident during the phase.
    unsafe { std::ptr::write_bytes(p, byte, SIZE) };
    p
}

fn intact(p: *mut u8, byte: u8) -> bool {
    // SAFETY: resident during the caller's phase, SIZE bytes.
    unsafe { std::slice::from_raw_parts(p, SIZE) }.iter().all(|&x| x == byte)
}

fn restart_under_clients(signal: i32) {
    let dir = TempDir::new("restart");
    let socket = dir.0.join("assigner.sock");
    let state = dir.0.join("state");
    let state_arg = std::env::var("ACB_TEST_RESTART_STATE").unwrap_or_else(|_| state.display().to_string());
    let (mut first, _lines) = serve(&socket, &state_arg);
    let watcher = watch(socket.clone());

    let timed = Request { timeout: Some(Duration::from_secs(20)), ..Request::default() };
    // A: mid-phase across the restart.
    let a = client(&socket, "mid-phase");
    let lease_a = a.begin(&timed).unwrap();
    let gpu_a = lease_a.devices[0].index;
    let pa = fill(&a, 0xa1);
    // B: its memory swapped out before the restart (C takes its GPU).
    let b = client(&socket, "swapped-out");
    b.begin(&timed).unwrap();
    let pb = fill(&b, 0xb2);
    b.end().unwrap();
    // C: idle-holding at the restart.
    let c = client(&socket, "idle-holding");
    c.begin(&timed).unwrap();
    let pc = fill(&c, 0xc3);
    c.end().unwrap();
    assert_eq!(b.memory_stats().resident_bytes, 0, "B yielded to C: {:?}", b.memory_stats());
    if state_arg != "none" {
        let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
        assert_eq!(mode(&state) & 0o777, 0o700);
        assert_eq!(mode(&state.join("leases.json")) & 0o777, 0o600);
    }

    // Restart.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(first.0.id() as i32, signal) };
    wait_exit(&mut first.0, Duration::from_secs(15));
    let events1 = watcher.join().unwrap();
    let (mut second, _lines2) = serve(&socket, &state_arg);
    let started = Instant::now();

    // The waiter asks for A's GPU at once on the new daemon.
    let granted_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let waiter = {
        let (socket, granted_at) = (socket.clone(), granted_at.clone());
        std::thread::spawn(move || {
            runtime().block_on(async {
                let mut s = acb_client::connection::Session::open(rpc(&socket).await, "waiter").await.unwrap();
                let req = proto::AllocateRequest { gpus: 1, required_gpus: vec![gpu_a], ..Default::default() };
                let grant = tokio::time::timeout(Duration::from_secs(40), s.allocate(req)).await.unwrap().unwrap();
                *granted_at.lock().unwrap() = Some(Instant::now());
                s.release(grant.lease_id).await.unwrap();
            })
        })
    };

    // A and C resume their sessions (A keeps its lease; C's goes back at once).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(&socket);
        let resumed = s.clients.iter().filter(|c| c.job != "waiter").all(|c| !c.orphan);
        if resumed && s.clients.iter().any(|c| c.job == "mid-phase") {
            break;
        }
        assert!(Instant::now() < deadline, "the clients did not resume: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed_after = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    assert!(granted_at.lock().unwrap().is_none(), "the waiter was granted A's GPU while A's phase runs");
    assert!(intact(pa, 0xa1), "A's memory changed under its phase");
    let a_ended = Instant::now();
    a.end().unwrap();
    waiter.join().unwrap();
    let w = granted_at.lock().unwrap().expect("the waiter was granted");
    assert!(w >= a_ended, "the waiter got A's GPU {:?} before A's phase ended", a_ended - w);

    // Everyone's memory comes back, byte-exact.
    for (cl, p, byte) in [(&a, pa, 0xa1), (&b, pb, 0xb2), (&c, pc, 0xc3)] {
        cl.begin(&timed).unwrap();
        assert!(intact(p, byte), "memory of {} came back changed", cl.config().job);
        cl.end().unwrap();
    }
    let events2 = record(&socket);
    check_one_holder(&events1, &events2);
    let restored = events2.iter().filter(|e| matches!(e.kind, EventKind::Granted { request: 0, .. })).count();
    assert_eq!(restored, 2, "A's and C's leases are restored: {events2:?}");
    println!(
        "restart by signal {signal}: the clients resumed {:.0} ms after the new daemon was ready; the \
         waiter was granted {:.1} ms after A's phase ended; {} bytes of 3 clients compared, 0 changed; \
         {} + {} events, no GPU with two holders",
        resumed_after.as_secs_f64() * 1e3,
        (w - a_ended).as_secs_f64() * 1e3,
        3 * SIZE,
        events1.len(),
        events2.len()
    );
    drop((a, b, c));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(second.0.id() as i32, libc::SIGTERM) };
    wait_exit(&mut second.0, Duration::from_secs(15));
}

#[test]
fn a_sigterm_restart_keeps_the_gpu_of_a_phase_running_and_every_clients_memory() {
    restart_under_clients(libc::SIGTERM);
}

#[test]
fn a_sigkill_restart_keeps_the_gpu_of_a_phase_running_and_every_clients_memory() {
    restart_under_clients(libc::SIGKILL);
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let dir = TempDir::new("restart-lock");
    let state = dir.0.join("state").display().to_string();
    let (_first, _lines) = serve(&dir.0.join("one.sock"), &state);
    let out = Command::new(BIN)
        .args(["serve", "--gpus", "fake:1x1GiB", "--state-dir", &state, "--listen"])
        .arg(format!("unix:{}", dir.0.join("two.sock").display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another acb-assigner is using it"), "{err}");
}

/// The lease ids `leases.json` in `state` lists.
fn saved_leases(state: &Path) -> BTreeSet<u64> {
    let text = std::fs::read_to_string(state.join("leases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let clients = v["clients"].as_array().cloned().unwrap_or_default();
    clients
        .iter()
        .flat_map(|c| c["leases"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

#[test]
fn a_grant_is_saved_before_its_reply_and_a_release_soon_after() {
    let dir = TempDir::new("restart-save");
    let socket = dir.0.join("assigner.sock");
    let state = dir.0.join("state");
    let (_daemon, _lines) = serve(&socket, &state.display().to_string());
    runtime().block_on(async {
        let mut s = acb_client::connection::Session::open(rpc(&socket).await, "saver").await.unwrap();
        for _ in 0..20 {
            let g = s.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }).await.unwrap();
            // Read as soon as the reply is here: the file must already hold the lease.
            assert!(saved_leases(&state).contains(&g.lease_id), "lease {} not saved before its reply", g.lease_id);
            s.release(g.lease_id).await.unwrap();
        }
        // Releases are saved together, within a bounded time.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !saved_leases(&state).is_empty() {
            assert!(Instant::now() < deadline, "released leases still saved after 5 s: {:?}", saved_leases(&state));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn a_phase_whose_lease_the_restarted_assigner_did_not_keep_ends_with_lease_revoked() {
    // The restarted daemon saved nothing, as when a client stalled past the grace period: the
    // client's running phase has no lease on the new daemon, which may give its GPU away.
    let dir = TempDir::new("restart-lost");
    let socket = dir.0.join("assigner.sock");
    let (mut first, _lines) = serve(&socket, "none");
    let a = client(&socket, "mid-phase");
    let timed = Request { timeout: Some(Duration::from_secs(20)), ..Request::default() };
    a.begin(&timed).unwrap();
    let p = fill(&a, 0x5a);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(first.0.id() as i32, libc::SIGKILL) };
    wait_exit(&mut first.0, Duration::from_secs(15));
    let (_second, _lines2) = serve(&socket, "none");
    // The client opens a new session on its own (it holds a lease, so it does not wait for a
    // phase): then the new daemon lists it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !status(&socket).clients.iter().any(|c| c.job == "mid-phase") {
        assert!(Instant::now() < deadline, "the client did not reconnect");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let ended = a.end();
    assert!(
        matches!(ended, Err(acb_client::Error::LeaseRevoked(ref m)) if m.contains("not kept through the phase")),
        "{ended:?}"
    );
    // The memory is kept, and the next phase is a normal one.
    a.begin(&timed).unwrap();
    assert!(intact(p, 0x5a), "the memory came back changed");
    a.end().unwrap();
}
