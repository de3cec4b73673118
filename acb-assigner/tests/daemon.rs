//! End-to-end: the real daemon on a temp socket, real client processes, real signals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use acb_assigner::config::Address;
use acb_assigner::proto;
use acb_client::connection::{self as client, Session};
use common::{BIN, Daemon, TempDir, wait_exit};
use tonic::Code;

const T: Duration = Duration::from_secs(20);

#[test]
fn a_sigkilled_holder_loses_its_gpu_and_the_next_waiter_is_granted() {
    let d = Daemon::start(&["--gpus", "fake:1x80GiB"]);
    let (mut holder, holder_out) = d.alloc(&["--job", "holder"]);
    holder_out.wait_for("granted lease", T);
    let (mut waiter, waiter_out) = d.alloc(&["--job", "waiter", "--hold", "100ms"]);
    // The waiter is queued behind the holder.
    let deadline = std::time::Instant::now() + T;
    while d.status_json()["queue"].as_array().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the waiter never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = d.status_json();
    assert_eq!(status["gpus"][0]["holders"][0]["job"], "holder");
    assert_eq!(status["gpus"][0]["simulated"], true);

    // SIGKILL: no goodbye. The session's end releases the GPU at once.
    holder.kill().unwrap();
    holder.wait().unwrap();
    waiter_out.wait_for("granted lease", T);
    waiter_out.wait_for("released lease", T);
    assert!(wait_exit(&mut waiter, T).success());
    let status = d.status_json();
    assert!(status["gpus"][0]["holders"].as_array().unwrap().is_empty());
    assert!(status["clients"].as_array().unwrap().is_empty(), "{status}");
}

#[test]
fn the_socket_is_group_only_and_status_says_gpus_are_simulated() {
    let d = Daemon::start(&["--gpus", "fake:2x80GiB,1x40GiB", "--scheduler", "gpu-affinity"]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let out = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scheduler gpu-affinity"), "{text}");
    assert!(text.contains("SIMULATED"), "{text}");
    assert_eq!(text.matches("(fake)").count(), 3, "{text}");
}

#[test]
fn sigterm_tells_clients_drains_and_exits_zero() {
    let mut d = Daemon::start(&["--gpus", "fake:1x80GiB"]);
    let (mut holder, out) = d.alloc(&["--job", "holder"]);
    out.wait_for("granted lease", T);
    d.signal(libc::SIGTERM);
    // The holder is told, and its `alloc` ends with status 3 (lease ended by the assigner).
    assert_eq!(wait_exit(&mut holder, T).code(), Some(3));
    let status = wait_exit(&mut d.child, T);
    assert!(status.success(), "{status:?}");
    assert!(!d.socket.exists(), "the socket file is removed");
}

#[test]
fn bad_flags_and_addresses_are_one_line_errors_with_status_2() {
    for args in [
        vec!["serve", "--listen", "/no/scheme.sock"],
        vec!["serve", "--gpus", "fake:two"],
        vec!["serve", "--scheduler", "fifo"],
        vec!["serve", "--quantum", "soon"],
        vec!["serve", "--gpus", "fake:2x80"],
        vec!["status", "--assigner", "tcp:localhost"],
        vec!["no-such-command"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.lines().next().is_some_and(|l| l.starts_with("error:")), "{args:?}: {err}");
    }
    let dir = TempDir::new("bad-config");
    let cfg = dir.0.join("c.toml");
    std::fs::write(&cfg, "scheduler = \"fifo\"\n").unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config scheduler"));
    // A time slice of 0 would ask every holder to yield at once.
    let out = Command::new(BIN).args(["serve", "--gpus", "fake:1x1GiB", "--quantum", "0s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give a time slice over 0"));
}

/// `serve ARGS` on a socket of its own with `RUST_LOG=info` and stderr piped, stopped by
/// SIGTERM once ready: its exit status and what it logged.
fn serve_logs(args: &[&str]) -> (std::process::ExitStatus, String) {
    let dir = TempDir::new("logs");
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .arg("--listen")
        .arg(format!("unix:{}", dir.0.join("acb").join("a.sock").display()))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::Lines::new(child.stdout.take().unwrap());
    lines.wait_for("ready", T);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (wait_exit(&mut child, T), err)
}

#[test]
fn logs_to_a_file_or_pipe_carry_no_colour_codes() {
    let (_, err) = serve_logs(&["--gpus", "fake:1x1GiB"]);
    assert!(err.contains("INFO") && !err.contains('\x1b'), "{err:?}");
}

#[test]
fn no_driver_and_no_fake_gpus_is_a_clear_refusal() {
    if nvml_present() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let dir = TempDir::new("auto");
    let out = Command::new(BIN)
        .args(["serve", "--gpus", "auto", "--listen"])
        .arg(format!("unix:{}", dir.0.join("s.sock").display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no NVIDIA driver") && err.contains("--gpus fake:"), "{err}");
}

fn nvml_present() -> bool {
    ["/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.1", "/usr/lib/libnvidia-ml.so.1"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

#[test]
fn a_non_loopback_listener_needs_a_token_and_then_every_call_carries_it() {
    let out = Command::new(BIN).args(["serve", "--gpus", "none", "--listen", "tcp:0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--auth-token-file"));

    let dir = TempDir::new("auth");
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
    let port = common::free_port();
    let d = Daemon::start(&[
        "--gpus",
        "fake:1x8GiB",
        "--listen",
        &format!("tcp:127.0.0.1:{port}"),
        "--auth-token-file",
        token.to_str().unwrap(),
    ]);
    let tcp = format!("tcp:127.0.0.1:{port}");
    let without = Command::new(BIN).args(["status", "--assigner", &tcp]).output().unwrap();
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("auth token"));
    let with = Command::new(BIN)
        .args(["status", "--assigner", &tcp, "--auth-token-file", token.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    // The Unix socket demands it too.
    assert!(!d.cli(&["status"]).status.success());
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn wrong_inputs_get_the_right_grpc_codes() {
    let d = Daemon::start(&["--gpus", "fake:1x80GiB"]);
    let addr: Address = d.addr().parse().unwrap();
    rt().block_on(async {
        let rpc = client::connect(&addr, None, T).await.unwrap();
        let mut a = Session::open(rpc.clone(), "a").await.unwrap();
        let mut b = Session::open(rpc.clone(), "b").await.unwrap();
        let zero = a.allocate(proto::AllocateRequest { gpus: 0, ..Default::default() }).await.unwrap_err();
        assert_eq!(zero.code(), Code::InvalidArgument);
        assert!(zero.message().contains("at least one GPU"), "{}", zero.message());
        let big = a
            .allocate(proto::AllocateRequest { gpus: 1, memory_per_gpu: Some(u64::MAX), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(big.code(), Code::InvalidArgument);
        let grant = a.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }).await.unwrap();
        assert_eq!(grant.gpus[0].uuid, "fake-0");
        // b cannot release a's lease; an unknown lease is not found; a bogus token is refused.
        assert_eq!(b.release(grant.lease_id).await.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(b.release(9999).await.unwrap_err().code(), Code::NotFound);
        let mut raw = rpc.clone();
        let bogus = raw
            .release(proto::ReleaseRequest { client_token: "nope".into(), lease_id: grant.lease_id })
            .await
            .unwrap_err();
        assert_eq!(bogus.code(), Code::PermissionDenied);
        a.release(grant.lease_id).await.unwrap();
        assert_eq!(a.release(grant.lease_id).await.unwrap_err().code(), Code::FailedPrecondition);
        // A session that does not start with Hello is refused.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(proto::SessionRequest { msg: None }).await.unwrap();
        let r = raw.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
    });
}

#[test]
fn grants_and_yields_come_over_the_session_and_a_cancelled_call_leaves_the_queue() {
    let d = Daemon::start(&["--gpus", "fake:1x80GiB"]);
    let addr: Address = d.addr().parse().unwrap();
    rt().block_on(async {
        let rpc = client::connect(&addr, None, T).await.unwrap();
        let mut a = Session::open_with(rpc.clone(), "a", true).await.unwrap();
        let grant = a.allocate(proto::AllocateRequest { gpus: 1, request_tag: 7, ..Default::default() }).await.unwrap();
        // The grant comes on the session too, with the request's tag.
        let ev = tokio::time::timeout(T, a.events.message()).await.unwrap().unwrap().unwrap();
        match ev.event {
            Some(proto::session_event::Event::Granted(g)) => {
                assert_eq!(g.request_tag, 7);
                assert_eq!(g.grant, Some(grant.clone()));
            }
            other => panic!("expected the grant's session copy, got {other:?}"),
        }
        // b waits with a short deadline: the call is cancelled and the request withdrawn.
        let mut b = Session::open(rpc.clone(), "b").await.unwrap();
        let short = tokio::time::timeout(
            Duration::from_millis(300),
            b.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }),
        )
        .await;
        assert!(short.is_err(), "b cannot be granted while a holds the only GPU");
        let mut status_rpc = rpc.clone();
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let s = status_rpc.status(proto::StatusRequest::default()).await.unwrap().into_inner();
            if s.queue.is_empty() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the abandoned request stayed queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Now b waits for real; a reports idle (lazy release) and is asked to yield.
        let waiter =
            tokio::spawn(async move { b.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.report_phase(grant.lease_id, true).await.unwrap();
        let ev = tokio::time::timeout(T, a.events.message()).await.unwrap().unwrap().unwrap();
        match ev.event {
            Some(proto::session_event::Event::YieldRequest(y)) => {
                assert_eq!(y.lease_id, grant.lease_id);
                assert_eq!(y.reason(), proto::YieldReason::Contended);
            }
            other => panic!("expected a yield request, got {other:?}"),
        }
        a.release(grant.lease_id).await.unwrap();
        let granted = tokio::time::timeout(T, waiter).await.unwrap().unwrap().unwrap();
        assert_eq!(granted.gpus.len(), 1);
    });
}

/// A client that does not ask for grants on its session (an older libacb, which would take an
/// event it does not know for the session's end) gets none: its next event is the yield.
#[test]
fn grants_come_over_a_session_only_when_it_asks() {
    let d = Daemon::start(&["--gpus", "fake:1x80GiB"]);
    let addr: Address = d.addr().parse().unwrap();
    rt().block_on(async {
        let mut rpc = client::connect(&addr, None, T).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = proto::Hello { job: "old".into(), pid: 1, ..Default::default() };
        tx.send(proto::SessionRequest { msg: Some(proto::session_request::Msg::Hello(hello)) }).await.unwrap();
        let mut events = rpc.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let Some(proto::session_event::Event::Welcome(w)) = events.message().await.unwrap().unwrap().event else {
            panic!("no Welcome");
        };
        let req = proto::AllocateRequest {
            client_token: w.client_token.clone(),
            gpus: 1,
            request_tag: 3,
            ..Default::default()
        };
        let grant = rpc.alloc_request(req).await.unwrap().into_inner();
        // Someone waits; the holder reports idle and is asked to yield.
        let mut other = Session::open(rpc.clone(), "new").await.unwrap();
        let waiter =
            tokio::spawn(async move { other.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }).await });
        let phase = proto::PhaseReport { lease_id: grant.lease_id, idle: true };
        tx.send(proto::SessionRequest { msg: Some(proto::session_request::Msg::Phase(phase)) }).await.unwrap();
        let ev = tokio::time::timeout(T, events.message()).await.unwrap().unwrap().unwrap();
        assert!(
            matches!(ev.event, Some(proto::session_event::Event::YieldRequest(ref y)) if y.lease_id == grant.lease_id),
            "expected the yield first, got {ev:?}"
        );
        let release = proto::ReleaseRequest { client_token: w.client_token, lease_id: grant.lease_id };
        rpc.release(release).await.unwrap();
        tokio::time::timeout(T, waiter).await.unwrap().unwrap().unwrap();
    });
}

#[test]
fn watch_timeline_and_metrics_show_what_happened() {
    let port = common::free_port();
    let d = Daemon::start(&["--gpus", "fake:1x80GiB", "--metrics", &format!("127.0.0.1:{port}")]);
    for job in ["first", "second"] {
        let (mut c, out) = d.alloc(&["--job", job, "--hold", "200ms"]);
        out.wait_for("released lease", T);
        assert!(wait_exit(&mut c, T).success());
    }
    // watch --replay prints the record, one line per event.
    let mut watch = Command::new(BIN)
        .args(["watch", "--replay", "--json", "--assigner", &d.addr()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::Lines::new(watch.stdout.take().unwrap());
    let granted = lines.wait_for("\"granted\"", T);
    assert!(granted.contains("\"job\":\"first\""), "{granted}");
    lines.wait_for("\"released\"", T);
    // The replayed record ends with a marker; live events follow it.
    lines.wait_for("\"history-end\"", T);
    let _ = watch.kill();
    let _ = watch.wait();

    let svg = d.dir.0.join("t.svg");
    let out = d.cli(&["timeline", "--out", svg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    assert!(text.contains("first") && text.contains("second") && text.contains("SIMULATED"));

    let body = http_get(port, "/metrics");
    assert!(body.contains("acb_grants_total 2"), "{body}");
    assert!(body.contains("acb_releases_total 2"), "{body}");
    assert!(body.contains("acb_gpus_free 1"), "{body}");
    assert!(body.contains("acb_grant_wait_seconds_bucket"), "{body}");
}

#[test]
fn metrics_are_promtool_clean_negotiated_and_labelled_per_gpu_and_job() {
    let port = common::free_port();
    let d = Daemon::start(&["--gpus", "fake:2x80GiB", "--metrics", &format!("127.0.0.1:{port}")]);
    let (mut c, out) = d.alloc(&["--job", "trainer", "--hold", "300ms"]);
    out.wait_for("released lease", T);
    assert!(wait_exit(&mut c, T).success());
    // A job holding a GPU while we scrape.
    let (mut holder, out) = d.alloc(&["--job", "server", "--hold", "30s"]);
    out.wait_for("granted lease", T);
    std::thread::sleep(Duration::from_millis(200));

    let text = http_get(port, "/metrics");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(!body.contains("# EOF") && !body.contains("# UNIT"), "{body}");
    // Every counter's HELP and TYPE name its samples (the `_total` name): promtool's complaint.
    assert!(body.contains("# HELP acb_grants_total ") && body.contains("# TYPE acb_grants_total counter"), "{body}");
    for want in [
        "acb_grants_total 2\n",
        "acb_job_grants_total{acb_job=\"trainer\"} 1\n",
        "acb_job_grants_total{acb_job=\"server\"} 1\n",
        "acb_gpu_holder_leases{gpu=\"0\",acb_job=\"server\"} 1\n",
        "acb_gpu_state{gpu=\"0\",state=\"computing\"} 1\n",
        "acb_gpu_state{gpu=\"1\",state=\"free\"} 1\n",
        "acb_gpu_memory_granted_bytes{gpu=\"0\"} 85899345920\n",
        "acb_gpu_info{gpu=\"1\",uuid=\"fake-1\",name=\"simulated GPU\",simulated=\"true\"} 1\n",
    ] {
        assert!(body.contains(want), "no {want:?} in\n{body}");
    }
    // The trainer's holder series went with its lease.
    assert!(!body.lines().any(|l| l.starts_with("acb_gpu_holder_leases") && l.contains("trainer")), "{body}");
    let sample = |name: &str| -> f64 {
        let line = body.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{body}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // The trainer computed for about 300 ms; the server holds its GPU as we scrape.
    let trainer = sample("acb_job_gpu_seconds_total{acb_job=\"trainer\",state=\"computing\"}");
    assert!(trainer > 0.2 && trainer < 10.0, "{trainer}");
    assert!(sample("acb_job_gpu_seconds_total{acb_job=\"server\",state=\"computing\"}") > 0.1);
    assert!(sample("acb_gpu_seconds_total{gpu=\"0\",state=\"computing\"}") > trainer);

    let om = http_get_with(port, "/metrics", "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n");
    let (head, om_body) = om.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text; version=1.0.0"), "{head}");
    assert!(om_body.trim_end().ends_with("# EOF"), "{om_body}");
    assert!(om_body.contains("# TYPE acb_grants counter"), "{om_body}");

    // Real parsers, when this machine has them (CI installs both and sets ACB_REQUIRE_PROMTOOL).
    let require = std::env::var_os("ACB_REQUIRE_PROMTOOL").is_some();
    let dir = TempDir::new("metrics");
    let (text_file, om_file) = (dir.0.join("text.prom"), dir.0.join("om.txt"));
    std::fs::write(&text_file, body).unwrap();
    std::fs::write(&om_file, om_body).unwrap();
    match Command::new("promtool").args(["check", "metrics"]).stdin(std::fs::File::open(&text_file).unwrap()).output() {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(!require, "ACB_REQUIRE_PROMTOOL is set but promtool cannot run: {e}");
            eprintln!("skipped promtool: {e}");
        }
    }
    let parse = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
                 n = sum(len(f.samples) for f in p(open(sys.argv[1]).read()))\nprint('parsed', n)";
    let out = Command::new("python3").args(["-c", parse]).arg(&om_file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        assert!(!require, "ACB_REQUIRE_PROMTOOL is set but python3 has no prometheus_client");
        eprintln!("skipped the OpenMetrics parser: pip install prometheus-client");
    } else {
        assert!(out.status.success(), "the OpenMetrics parser refused it: {stderr}");
    }
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn error_texts_name_the_os_error_once() {
    let dir = TempDir::new("os-error");
    let missing = dir.0.join("missing");
    let m = missing.to_str().unwrap();
    let sock = format!("unix:{m}/a.sock");
    let cases: [&[&str]; 5] = [
        &["status", "--assigner", &sock],
        &["alloc", "--assigner", &sock],
        &["simulate", "--trace", m],
        &["serve", "--config", m],
        &["serve", "--gpus", "fake:1x1GiB", "--listen", &sock, "--auth-token-file", m],
    ];
    for args in cases {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        let last = err.lines().last().unwrap_or("");
        assert_eq!(last.matches("(os error 2)").count(), 1, "{args:?}: {last}");
        assert_eq!(last.matches("No such file or directory").count(), 1, "{args:?}: {last}");
    }
}

#[test]
fn systemd_socket_activation_and_readiness() {
    let has = Command::new("systemd-socket-activate").arg("--version").output().is_ok_and(|o| o.status.success());
    if !has {
        assert!(
            std::env::var_os("ACB_REQUIRE_SYSTEMD").is_none(),
            "ACB_REQUIRE_SYSTEMD is set but systemd-socket-activate cannot run"
        );
        eprintln!("skipped: no systemd-socket-activate (Debian's systemd package)");
        return;
    }
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("systemd");
    let sock = dir.0.join("act.sock");
    let notify = UnixDatagram::bind(dir.0.join("notify")).unwrap();
    notify.set_read_timeout(Some(T)).unwrap();
    // systemd's own tool: it listens, and on the first connection execs the daemon with the
    // listening socket as descriptor 3 and LISTEN_PID/LISTEN_FDS set, as a .socket unit does.
    let mut daemon = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        // It gives the daemon only the environment named here.
        .arg(format!("--setenv=NOTIFY_SOCKET={}", dir.0.join("notify").display()))
        .args([BIN, "serve", "--gpus", "fake:1x8GiB", "--state-dir", "none", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + T;
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "systemd-socket-activate made no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first client's connection starts the daemon, which serves it on the passed socket.
    let addr = format!("unix:{}", sock.display());
    let out = Command::new(BIN).args(["status", "--assigner", &addr]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SIMULATED"));
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.starts_with("READY=1\n") && ready.contains(&addr), "{ready}");
    // systemd-socket-activate exec'd the daemon: same pid.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    let status = wait_exit(&mut daemon, T);
    let mut err = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("socket activation: serving"), "{err}");
    // The socket is systemd's: the daemon leaves it in place.
    assert!(sock.exists());
}

fn http_get(port: u16, path: &str) -> String {
    http_get_with(port, path, "")
}

/// A GET with extra header lines (each ending in CRLF); the whole response, headers first.
fn http_get_with(port: u16, path: &str, headers: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn a_settings_file_configures_serve() {
    let dir = TempDir::new("settings");
    let sock = dir.0.join("s.sock");
    let cfg = dir.0.join("acb.toml");
    std::fs::write(
        &cfg,
        format!("listen = [\"unix:{}\"]\ngpus = \"fake:3x16GiB\"\nscheduler = \"gpu-sharing\"\n", sock.display()),
    )
    .unwrap();
    let mut child =
        Command::new(BIN).args(["serve", "--config"]).arg(&cfg).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let lines = common::Lines::new(child.stdout.take().unwrap());
    lines.wait_for("ready", T);
    let out = Command::new(BIN)
        .args(["status", "--json", "--assigner"])
        .arg(format!("unix:{}", sock.display()))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scheduler"], "gpu-sharing");
    assert_eq!(v["gpus"].as_array().unwrap().len(), 3);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_benchmark_runs_and_prints_both_sides() {
    let out = Command::new(BIN)
        .args(["bench", "--clients", "1,2", "--time", "100ms", "--rounds", "1", "--regrant-rounds", "2"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("echo p50 us") && text.contains("cycles /s") && text.contains("saved/cycle"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with(['1', '2'])).collect();
    assert_eq!(rows.len(), 2, "{text}");
    // Every row has the three sides: echo, cycles, and cycles of the assigner that saves.
    assert!(rows.iter().all(|r| r.matches('x').count() == 3), "{text}");
    let regrant = text.lines().find(|l| l.starts_with("regrant (2 rounds")).unwrap_or_default();
    assert!(regrant.contains("SIGKILLed -> waiter granted p50") && regrant.contains("ratio"), "{text}");
    let bad = Command::new(BIN).args(["bench", "--clients", "0"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn grpc_reflection_and_health_are_served_for_generic_clients() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let d = Daemon::start(&["--gpus", "fake:1x8GiB"]);
    let path = d.socket.clone();
    rt().block_on(async {
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let h = health
            .check(tonic_health::pb::HealthCheckRequest { service: "acb.v1.Assigner".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);

        let mut reflection = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = reflection.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let resp = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("no service list: {resp:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"acb.v1.Assigner".to_string()), "{names:?}");
    });
}

#[test]
fn simulate_predicts_static_vs_brokered_on_the_alphafold2_trace() {
    let dir = TempDir::new("simulate");
    let trace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/alphafold2-sim/trace.json");
    let out = Command::new(BIN)
        .args(["simulate", "--scheduler", "simple,gpu-sharing", "--svg-dir"])
        .arg(&dir.0)
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("SIMULATED") && text.contains("static") && text.contains("simple"), "{text}");
    assert!(!text.contains("upper bound"), "sharing is modelled, so no column is a mere upper bound: {text}");
    assert!(text.contains("hardware bound: no run of these jobs on 1 GPU(s) ends before"), "{text}");
    let items: Vec<&str> = text.lines().find(|l| l.starts_with("items per hour")).unwrap().split_whitespace().collect();
    let (stat, simple): (f64, f64) = (items[3].parse().unwrap(), items[4].parse().unwrap());
    assert!(simple > 4.0 * stat, "8 CPU-heavy jobs on 1 GPU: brokered beats static by far: {text}");
    for run in ["static", "simple", "gpu-sharing"] {
        let svg = std::fs::read_to_string(dir.0.join(format!("{run}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("SIMULATED"));
        // Held and computing, both: a static GPU is held all along but computes 18% of it.
        assert!(svg.contains("solid: computing, pale: held but idle") && svg.contains(", computing "), "{run}");
    }
    let heading = std::fs::read_to_string(dir.0.join("static.svg")).unwrap();
    assert!(heading.contains("GPUs held 100.0%, computing 18.3%"), "{heading}");
    let bad = dir.0.join("bad.json");
    std::fs::write(&bad, r#"{"jobs": [{"name": "x", "memory": "1GiB", "phases": [{"gpu": "soon"}]}]}"#).unwrap();
    let out = Command::new(BIN).args(["simulate", "--gpus", "fake:1x8GiB", "--trace"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("phase 1"));
}

#[test]
fn simulate_on_the_readmes_profiled_pipeline_predicts_a_speed_up_within_the_hardware_bound() {
    // What `agarun --profile` writes for `pipeline.py 4 500 150` (no swappable memory, so no
    // "memory"), with "count" raised to 8 as the README says. It used to say "memory": 80 GiB
    // (the lease's fence), and simulate predicted 0.10x with 4.2 TiB swapped.
    let dir = TempDir::new("simulate-profile");
    let trace = dir.0.join("fold.json");
    let phases = [r#"{"cpu": "500ms"}, {"gpu": "150ms"}"#; 4].join(", ");
    std::fs::write(&trace, format!(r#"{{"jobs": [{{"name": "fold", "count": 8, "phases": [{phases}]}}]}}"#)).unwrap();
    let out = Command::new(BIN)
        .args(["simulate", "--gpus", "fake:1x80GiB", "--scheduler", "all", "--trace"])
        .arg(&trace)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let row = |label: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.starts_with(label)).unwrap();
        line[label.len()..].split_whitespace().map(str::to_owned).collect()
    };
    let speedups: Vec<f64> =
        row("  vs first column").iter().map(|c| c.trim_end_matches('x').parse().unwrap()).collect();
    let bound: f64 = text
        .split("at most ")
        .nth(1)
        .and_then(|rest| rest.split('x').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no hardware bound in {text}"));
    // 8 jobs, 77% CPU, on 1 GPU: the GPU work (8 x 600 ms) bounds the speed-up at 21 s / 4.8 s.
    assert!((4.3..4.45).contains(&bound), "{text}");
    for s in &speedups[1..] {
        assert!(*s > 3.5 && *s <= bound, "every brokered column is a real gain within the bound: {text}");
    }
    assert_eq!(row("bytes swapped (out + in)").join(" "), "0 B 0 B 0 B 0 B", "{text}");
}

#[test]
fn logs_can_be_json_lines_filtered_by_rust_log() {
    let (status, stderr) = serve_logs(&["--gpus", "fake:1x8GiB", "--log-format", "json"]);
    assert!(status.success());
    let records: Vec<serde_json::Value> = stderr.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        records
            .iter()
            .any(|r| r["level"] == "INFO" && r["fields"]["message"].as_str().is_some_and(|m| m.contains("listening"))),
        "{stderr}"
    );
}
