//! One-off leases that end, and who may release what: a one-off lease not renewed ends at its
//! time to live; a renewed one lives on; SO_PEERCRED's uid and pid are shown in status; a second
//! local user (played with `setpriv`) may not release another uid's lease even with its token,
//! nor any lease without one; the admin uid may (`acb-assigner release --lease N`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use acb_assigner::proto;
use acb_client::events::from_proto;
use acb_core::record::EventKind;
use common::{Daemon, OTHER, can_play_another_user, setpriv_other};

/// `acb-assigner ARGS --assigner ADDR` as the second user.
fn as_other(d: &Daemon, args: &[&str]) -> std::process::Output {
    let (bin, _copy) = common::bin_for_others();
    setpriv_other().arg(&bin).args(args).arg("--assigner").arg(d.addr()).output().unwrap()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

async fn rpc(socket: &Path) -> acb_client::connection::Rpc {
    let addr = format!("unix:{}", socket.display()).parse().unwrap();
    acb_client::connection::connect(&addr, None, Duration::from_secs(5)).await.unwrap()
}

/// A one-off lease (no session): (lease id, token, expires_in_ms).
fn one_off(socket: &Path) -> (u64, String, u64) {
    block_on(async {
        let req = proto::AllocateRequest { gpus: 1, job: "one-off".into(), ..Default::default() };
        let g = rpc(socket).await.alloc_request(req).await.unwrap().into_inner();
        (g.lease_id, g.client_token, g.expires_in_ms)
    })
}

fn events(socket: &Path) -> Vec<EventKind> {
    block_on(async {
        let mut s = rpc(socket).await.watch(proto::WatchRequest { replay: true }).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(e) = s.message().await.unwrap() {
            if matches!(e.kind, Some(proto::event::Kind::HistoryEnd(_))) {
                break;
            }
            out.extend(from_proto(e).map(|e| e.kind));
        }
        out
    })
}

fn holders(d: &Daemon) -> Vec<serde_json::Value> {
    let s = d.status_json();
    s["gpus"].as_array().unwrap().iter().flat_map(|g| g["holders"].as_array().unwrap().clone()).collect()
}

#[test]
fn a_one_off_lease_not_renewed_ends_at_its_ttl_and_a_renewed_one_lives_on() {
    let d = Daemon::start(&["--gpus", "fake:2x1GiB", "--one-off-ttl", "1s"]);
    let (dead, _, ttl) = one_off(&d.socket);
    assert_eq!(ttl, 1000, "the grant says when the lease ends unless renewed");
    let (kept, token, _) = one_off(&d.socket);
    let h = holders(&d);
    assert_eq!(h.len(), 2, "{h:?}");
    assert!(h.iter().all(|h| h["expires_in_ms"].as_u64().is_some_and(|ms| ms <= 1000)), "{h:?}");
    // Renew `kept` every 250 ms for 2.5 s; `dead` is never renewed (its holder was SIGKILLed).
    block_on(async {
        let mut rpc = rpc(&d.socket).await;
        for _ in 0..10 {
            let req = proto::RenewRequest { client_token: token.clone(), lease_id: kept };
            let left = rpc.renew(req).await.unwrap().into_inner().expires_in_ms;
            assert_eq!(left, 1000);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let leases: Vec<u64> = holders(&d).iter().map(|h| h["lease"].as_u64().unwrap()).collect();
    assert_eq!(leases, vec![kept], "the lease not renewed ended, the renewed one lives");
    let why = events(&d.socket).into_iter().find_map(|e| match e {
        EventKind::TakenBack { lease, reason, .. } if lease == dead => Some(reason),
        _ => None,
    });
    assert!(why.as_deref().is_some_and(|w| w.contains("time to live")), "{why:?}");
    // A renewal of the ended lease, or with a wrong token, is refused with a clear reason.
    block_on(async {
        let mut rpc = rpc(&d.socket).await;
        let e = rpc.renew(proto::RenewRequest { client_token: token.clone(), lease_id: dead }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("already released"), "{e:?}");
        let e = rpc.renew(proto::RenewRequest { client_token: "nope".into(), lease_id: kept }).await.unwrap_err();
        assert_eq!(acb_proto::reason_of(&e), Some(acb_proto::ErrorReason::UnknownToken), "{e:?}");
    });
}

#[test]
fn a_session_lease_needs_no_renewal() {
    let d = Daemon::start(&["--gpus", "fake:1x1GiB", "--one-off-ttl", "1s"]);
    block_on(async {
        let mut s = acb_client::connection::Session::open(rpc(&d.socket).await, "session").await.unwrap();
        let g = s.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }).await.unwrap();
        assert_eq!(g.expires_in_ms, 0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let st = s.rpc().status(proto::StatusRequest::default()).await.unwrap().into_inner();
        assert_eq!(st.gpus[0].holders.len(), 1, "a session's lease lives as long as its session");
        assert_eq!(st.gpus[0].holders[0].expires_in_ms, 0);
        s.release(g.lease_id).await.unwrap();
    });
}

#[test]
fn only_the_holders_uid_or_the_admin_may_release_and_status_shows_peer_credentials() {
    if !can_play_another_user("only_the_holders_uid_or_the_admin_may_release") {
        return;
    }
    let d = Daemon::start(&["--gpus", "fake:2x1GiB"]);
    // The second user must be able to reach the socket (the daemon makes it 0660).
    std::fs::set_permissions(&d.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let (lease, token, _) = one_off(&d.socket);
    let h = holders(&d);
    assert_eq!(h[0]["uid"], 0, "SO_PEERCRED's uid: {h:?}");
    assert_eq!(h[0]["pid"], std::process::id(), "SO_PEERCRED's pid, not a claim: {h:?}");
    let s = d.status_json();
    let c = &s["clients"][0];
    assert_eq!((c["uid"].as_u64(), c["pid"].as_u64()), (Some(0), Some(u64::from(std::process::id()))), "{s}");
    let table = d.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("uid 0 pid {}", std::process::id())), "{table}");

    let lease_arg = lease.to_string();
    // Another uid, with the holder's token: refused.
    let out = as_other(&d, &["release", "--lease", &lease_arg, "--token", &token]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("uid {OTHER} may not release a lease of uid 0")), "{err}");
    // Another uid, without a token (as an admin would): refused.
    let out = as_other(&d, &["release", "--lease", &lease_arg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("only the admin uid 0"), "{err}");
    assert_eq!(holders(&d).len(), 1, "the lease is still held");
    // The second user's own client shows its uid.
    let start = Instant::now();
    let out = as_other(&d, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(10));

    // The admin (uid 0) releases it without a token.
    let out = d.cli(&["release", "--lease", &lease_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(holders(&d).is_empty());
    let taken = events(&d.socket).into_iter().any(
        |e| matches!(e, EventKind::TakenBack { lease: l, ref reason, .. } if l == lease && reason.contains("admin")),
    );
    assert!(taken, "the record says the admin took it back");
    // An unknown lease is a clear error, not a hang.
    let out = d.cli(&["release", "--lease", "999"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("lease#999 was never granted"), "{err}");
}

#[test]
fn status_shows_the_uid_and_pid_of_another_users_holder() {
    if !can_play_another_user("status_shows_the_uid_and_pid_of_another_users_holder") {
        return;
    }
    let d = Daemon::start(&["--gpus", "fake:1x1GiB"]);
    std::fs::set_permissions(&d.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let (bin, _copy) = common::bin_for_others();
    let mut child = setpriv_other()
        .arg(&bin)
        .args(["alloc", "--hold", "20s", "--job", "nobodys"])
        .arg("--assigner")
        .arg(d.addr())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::Lines::new(child.stdout.take().unwrap());
    lines.wait_for("granted lease", Duration::from_secs(10));
    let h = holders(&d);
    // setpriv execs the client: the holder's pid is the child's.
    let seen = (h[0]["uid"].as_u64(), h[0]["pid"].as_u64(), h[0]["job"].as_str());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, (Some(u64::from(OTHER)), Some(u64::from(child.id())), Some("nobodys")), "{h:?}");
}

/// A daemon that cannot write its state directory refuses to start, instead of granting
/// without saving (it only logged an error at each grant). Played by uid 65534 on a directory
/// of its own with mode 0500 (root could write anywhere).
#[test]
fn a_state_directory_the_daemon_cannot_write_refuses_the_start() {
    if !can_play_another_user("a_state_directory_the_daemon_cannot_write_refuses_the_start") {
        return;
    }
    let base = common::TempDir::new("ro-state");
    std::fs::set_permissions(&base.0, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let state = base.0.join("state");
    // As left by an earlier run (its lock file there), then made read-only.
    let made = setpriv_other()
        .args(["sh", "-c", "mkdir -m 0700 \"$0\" && touch \"$0/lock\" && chmod 0500 \"$0\""])
        .arg(&state)
        .status()
        .unwrap();
    assert!(made.success());
    let (bin, _copy) = common::bin_for_others();
    let mut child = setpriv_other()
        .arg(&bin)
        .args(["serve", "--gpus", "fake:1x1GiB", "--state-dir"])
        .arg(&state)
        .arg("--listen")
        .arg(format!("unix:{}", base.0.join("acb").join("a.sock").display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let status = common::wait_exit(&mut child, Duration::from_secs(20));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut err, &mut text).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("cannot write in it"), "{text}");
}
