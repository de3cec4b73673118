//! The assigner's bounds: nothing that changes state is dropped under load, and nothing a
//! client does grows the daemon without bound or makes `status` unusable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use acb_assigner::config::Address;
use acb_assigner::proto;
use acb_client::connection::{self as client, Rpc, Session};
use common::Daemon;

const T: Duration = Duration::from_secs(20);
/// Set in the helper process this file's tests start (see [`queue_one_off_requests`]).
const CHILD_ENV: &str = "ACB_BOUNDS_CHILD";
/// One-off requests the helper queues: enough to overflow the driver's 4,096-slot command
/// queue when they are all withdrawn at once, and to make an unsummarised status 5 MB.
const MANY: usize = 10_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn connect(d: &Daemon) -> Rpc {
    let addr: Address = d.addr().parse().unwrap();
    client::connect(&addr, None, T).await.unwrap()
}

/// (queued requests, clients) in all, from a status that lists almost nothing.
async fn totals(rpc: &mut Rpc) -> (u32, u32) {
    let s = rpc.status(proto::StatusRequest { queue_limit: 1, client_limit: 1 }).await.unwrap().into_inner();
    (s.queue_total, s.clients_total)
}

/// Polls until `done(totals)` or `within` passes; returns the last totals.
async fn wait_totals(rpc: &mut Rpc, within: Duration, done: impl Fn((u32, u32)) -> bool) -> (u32, u32) {
    let deadline = Instant::now() + within;
    loop {
        let t = totals(rpc).await;
        if done(t) || Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A daemon with one simulated GPU held by an `acb-assigner alloc` process.
fn held_daemon(extra: &[&str]) -> (Daemon, std::process::Child) {
    let mut args = vec!["--gpus", "fake:1x80GiB"];
    args.extend_from_slice(extra);
    let d = Daemon::start(&args);
    let (holder, lines) = d.alloc(&["--job", "holder"]);
    lines.wait_for("lease", T);
    (d, holder)
}

/// Starts this test binary again as a helper process that queues `n` one-off requests for
/// job `job` on `d` and then waits to be killed.
fn spawn_queuer(d: &Daemon, n: usize, job: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["queue_one_off_requests", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}\t{n}\t{job}", d.addr()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The helper process (not a test by itself): with [`CHILD_ENV`] set, queues that many one-off
/// requests over 100 connections (at most 100 streams each) and sleeps until killed (at most
/// five minutes); without it, does nothing.
#[test]
#[ignore = "a helper process the tests of this file start"]
fn queue_one_off_requests() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let mut parts = spec.split('\t');
    let addr: Address = parts.next().unwrap().parse().unwrap();
    let n: usize = parts.next().unwrap().parse().unwrap();
    let job = parts.next().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..100 {
            conns.push(client::connect(&addr, None, T).await.unwrap());
        }
        for i in 0..n {
            let mut rpc = conns[i % conns.len()].clone();
            let req = proto::AllocateRequest { job: job.clone(), gpus: 1, ..Default::default() };
            tokio::spawn(async move { rpc.alloc_request(req).await });
        }
        tokio::time::sleep(Duration::from_secs(300)).await;
    });
}

/// Issue 12 item 6: withdrawals went through `try_send` into the driver's 4,096-slot queue and
/// were lost when it was full (15,502 ghost requests stayed queued after a SIGKILL).
#[test]
fn a_client_killed_with_ten_thousand_queued_requests_leaves_none_queued() {
    let (d, mut holder) = held_daemon(&["--max-one-off-clients", "20000"]);
    let mut child = spawn_queuer(&d, MANY, "ghost");
    rt().block_on(async {
        let mut rpc = connect(&d).await;
        let queued = wait_totals(&mut rpc, Duration::from_secs(180), |(q, _)| q as usize == MANY).await;
        assert_eq!(queued.0 as usize, MANY, "the helper did not queue its requests in time");
        child.kill().unwrap();
        let _ = child.wait();
        let killed = Instant::now();
        let (q, c) = wait_totals(&mut rpc, Duration::from_secs(120), |(q, c)| q == 0 && c == 1).await;
        assert_eq!((q, c), (0, 1), "ghost requests (or clients) stayed after the client was killed");
        eprintln!("{MANY} queued requests withdrawn {:.2} s after the SIGKILL", killed.elapsed().as_secs_f64());
    });
    let _ = holder.kill();
    let _ = holder.wait();
}

/// Issue 12 item 7: 20,000 queued requests made Status 10.8 MB, over gRPC's 4 MiB, and
/// `acb-assigner status` failed. It lists the first and says how many more.
#[test]
fn status_with_ten_thousand_queued_requests_lists_the_first_and_counts_the_rest() {
    let (d, mut holder) = held_daemon(&["--max-one-off-clients", "20000"]);
    let job = "j".repeat(250);
    let mut child = spawn_queuer(&d, MANY, &job);
    rt().block_on(async {
        let mut rpc = connect(&d).await;
        let queued = wait_totals(&mut rpc, Duration::from_secs(180), |(q, _)| q as usize == MANY).await;
        assert_eq!(queued, (MANY as u32, MANY as u32 + 1));
        // The most a caller may ask for still fits; more is clamped to it.
        for asked in [0, 5_000, 1_000_000] {
            let s = rpc.status(proto::StatusRequest { queue_limit: asked, client_limit: asked }).await.unwrap();
            let s = s.into_inner();
            eprintln!("status asked for {asked}: {} bytes", prost::Message::encoded_len(&s));
            if asked == 0 {
                assert_eq!((s.queue.len(), s.clients.len()), (1_000, 1_000));
                continue;
            }
            assert_eq!((s.queue.len(), s.clients.len()), (5_000, 5_000));
            assert_eq!((s.queue_total, s.clients_total), (MANY as u32, MANY as u32 + 1));
        }
    });
    let table = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    assert!(text.contains(&format!("QUEUE ({MANY} waiting)")), "{text:.2000}");
    assert!(text.contains(&format!("... and {} more queued requests", MANY - 1000)), "{text:.2000}");
    assert!(text.contains(&format!("... and {} more clients", MANY + 1 - 1000)), "{text:.2000}");
    let short = d.cli(&["status", "--limit", "3"]);
    let short = String::from_utf8_lossy(&short.stdout);
    assert_eq!(short.matches("request#").count(), 3, "{short}");
    let json = d.status_json();
    assert_eq!(json["queue"].as_array().unwrap().len(), 1000);
    assert_eq!(json["queue_total"], MANY);
    assert_eq!(json["clients_total"], MANY + 1);
    let _ = child.kill();
    let _ = child.wait();
    let _ = holder.kill();
    let _ = holder.wait();
}

fn limit_reached(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::ResourceExhausted && acb_proto::reason_of(e) == Some(acb_proto::ErrorReason::LimitReached)
}

/// Issue 12 item 7: one-off clients are capped (`--max-one-off-clients`); past the cap a call
/// fails at once with LIMIT_REACHED, and a withdrawn call frees its place. (A session's queued
/// requests were capped already: 64, the scheduler's limit.)
#[test]
fn one_off_clients_past_the_cap_get_limit_reached() {
    let (d, mut holder) = held_daemon(&["--max-one-off-clients", "50"]);
    rt().block_on(async {
        let mut rpc = connect(&d).await;
        let one_off = || proto::AllocateRequest { job: "capped".into(), gpus: 1, ..Default::default() };
        let mut waiting = Vec::new();
        for _ in 0..50 {
            let mut r = rpc.clone();
            let req = one_off();
            waiting.push(tokio::spawn(async move { r.alloc_request(req).await }));
        }
        assert_eq!(wait_totals(&mut rpc, T, |(q, _)| q == 50).await.0, 50);
        let e = tokio::time::timeout(T, rpc.alloc_request(one_off())).await.unwrap().unwrap_err();
        assert!(limit_reached(&e), "{e:?}");
        assert!(e.message().contains("--max-one-off-clients"), "{}", e.message());
        // One call withdrawn: its place is free again.
        waiting.pop().unwrap().abort();
        assert_eq!(wait_totals(&mut rpc, T, |(q, _)| q == 49).await.0, 49);
        let mut r = rpc.clone();
        let req = one_off();
        waiting.push(tokio::spawn(async move { r.alloc_request(req).await }));
        assert_eq!(wait_totals(&mut rpc, T, |(q, _)| q == 50).await.0, 50);
        for w in waiting {
            w.abort();
        }
        assert_eq!(wait_totals(&mut rpc, T, |(q, c)| q == 0 && c == 1).await, (0, 1));
    });
    let _ = holder.kill();
    let _ = holder.wait();
}

/// Issue 12 item 7: a session that never reads its events grew the daemon ~380 B a grant
/// without bound. Past 1,024 unread events it is ended: its leases are released, its stream
/// ends with LIMIT_REACHED after the events it left, and a session that reads is untouched.
#[test]
fn a_session_that_never_reads_its_events_is_ended_and_its_lease_released() {
    let d = Daemon::start(&["--gpus", "fake:1x80GiB"]);
    rt().block_on(async {
        let mut rpc = connect(&d).await;
        // Asks for a copy of every grant on its session and never reads one. Its connection has
        // a 64 KiB HTTP/2 window, so that only ~600 events wait in the client's buffers (with
        // the default 2 MiB, h2 itself gives up on ~20,000 small frames) before the assigner's
        // queue fills.
        let path = d.socket.to_str().unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("unix:{path}"))
            .unwrap()
            .initial_stream_window_size(65_535)
            .connect()
            .await
            .unwrap();
        let mut deaf_rpc = proto::assigner_client::AssignerClient::new(channel);
        let (hello_tx, hello_rx) = tokio::sync::mpsc::channel(1);
        let hello = proto::Hello { job: "deaf".into(), grants_on_session: true, ..Default::default() };
        let msg = proto::SessionRequest { msg: Some(proto::session_request::Msg::Hello(hello)) };
        hello_tx.send(msg).await.unwrap();
        let stream = tokio_stream::wrappers::ReceiverStream::new(hello_rx);
        let mut events = deaf_rpc.session(stream).await.unwrap().into_inner();
        let Some(proto::session_event::Event::Welcome(welcome)) = events.message().await.unwrap().unwrap().event else {
            panic!("no Welcome")
        };
        let token = welcome.client_token;
        let mut ended_after = None;
        for i in 0..20_000u32 {
            let req = proto::AllocateRequest { client_token: token.clone(), gpus: 1, ..Default::default() };
            match rpc.alloc_request(req).await {
                Ok(g) => {
                    // The last grant may be the one that ended the session; its release then
                    // finds the token gone.
                    let release =
                        proto::ReleaseRequest { client_token: token.clone(), lease_id: g.into_inner().lease_id };
                    let _ = rpc.release(release).await;
                }
                Err(e) => {
                    assert_eq!(acb_proto::reason_of(&e), Some(acb_proto::ErrorReason::UnknownToken), "{e:?}");
                    ended_after = Some(i);
                    break;
                }
            }
        }
        let ended_after = ended_after.expect("the session was never ended");
        assert!(ended_after > 1024, "ended after {ended_after} grants");
        let s = rpc.status(proto::StatusRequest::default()).await.unwrap().into_inner();
        assert!(s.clients.iter().all(|c| c.job != "deaf"), "{:?}", s.clients);
        assert!(s.gpus.iter().all(|g| g.holders.is_empty()), "{:?}", s.gpus);
        // What it left unread is still there, then the reason.
        let mut read = 0u32;
        let end = loop {
            match tokio::time::timeout(T, events.message()).await.unwrap() {
                Ok(Some(_)) => read += 1,
                Ok(None) => panic!("the stream ended without a reason after {read} events"),
                Err(e) => break e,
            }
            assert!(read <= ended_after, "more events than grants");
        };
        assert!(limit_reached(&end), "{end:?}");
        assert!(read >= 1024, "{read} events before the end");
        eprintln!("the deaf session was ended after {ended_after} grants; {read} events were still readable");
        // The GPU is free for others.
        let mut other = Session::open(rpc.clone(), "other").await.unwrap();
        let g = tokio::time::timeout(T, other.allocate(proto::AllocateRequest { gpus: 1, ..Default::default() }));
        let lease = g.await.unwrap().unwrap().lease_id;
        other.release(lease).await.unwrap();
    });
}

/// Issue 12 item 7: garbage swap reports made `acb_swap_in_bytes_total` read 2^64 - 2. A
/// report over 1 PiB is ignored (and logged); good ones still count.
#[test]
fn absurd_swap_reports_are_ignored_in_status_and_metrics() {
    let port = common::free_port();
    let d = Daemon::start(&["--gpus", "fake:1x80GiB", "--metrics", &format!("127.0.0.1:{port}")]);
    rt().block_on(async {
        let mut rpc = connect(&d).await;
        let s = Session::open(rpc.clone(), "swapper").await.unwrap();
        s.report_swap(u64::MAX, u64::MAX).await.unwrap();
        s.report_swap(u64::MAX, (1 << 50) + 1).await.unwrap();
        s.report_swap(1 << 30, 2 << 30).await.unwrap();
        // Reports are in order: once the good one counted, the others were seen.
        let deadline = Instant::now() + T;
        let client = loop {
            let st = rpc.status(proto::StatusRequest::default()).await.unwrap().into_inner();
            let c = st.clients.into_iter().find(|c| c.job == "swapper").unwrap();
            if c.swap_bytes_out != 0 || Instant::now() > deadline {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!((client.swap_bytes_in, client.swap_bytes_out), (1 << 30, 2 << 30));
        drop(s);
    });
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains(&format!("acb_swap_in_bytes_total {}\n", 1u64 << 30)), "{metrics}");
    assert!(metrics.contains(&format!("acb_swap_out_bytes_total {}\n", 2u64 << 30)), "{metrics}");
}

/// The body of an HTTP/1.1 GET on loopback.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A client may not pile up leases (queued requests and held leases count together, 64), and a
/// GPU shared by thousands of leases still gives a status within its limits: the holders share
/// the clients' budget, with a total per GPU. (Before, one session held 3,000 tiny leases under
/// gpu-sharing, and 20,000 holders made every status fail at gRPC's 4 MiB limit.)
#[test]
fn leases_per_client_are_capped_and_holders_are_summarised_in_status() {
    let d = Daemon::start(&["--gpus", "fake:1x80GiB", "--scheduler", "gpu-sharing"]);
    let (sessions, per) = (40, 50);
    rt().block_on(async {
        let mut held = Vec::new();
        for i in 0..sessions {
            let mut s = Session::open(connect(&d).await, &format!("sharer-{i}")).await.unwrap();
            for _ in 0..per {
                let req = proto::AllocateRequest { gpus: 1, memory_per_gpu: Some(1), ..Default::default() };
                s.allocate(req).await.unwrap();
            }
            held.push(s);
        }
        // The cap: 64 for one client, leases held and requests queued together.
        let s = &mut held[0];
        for _ in per..64 {
            s.allocate(proto::AllocateRequest { gpus: 1, memory_per_gpu: Some(1), ..Default::default() })
                .await
                .unwrap();
        }
        let e = s.allocate(proto::AllocateRequest { gpus: 1, memory_per_gpu: Some(1), ..Default::default() }).await;
        let e = e.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("64 requests queued and leases held"), "{e:?}");
        let total = (sessions - 1) * per + 64;
        let mut rpc = connect(&d).await;
        let st = rpc.status(proto::StatusRequest { queue_limit: 0, client_limit: 10 }).await.unwrap().into_inner();
        assert_eq!((st.gpus[0].holders.len(), st.gpus[0].holders_total as usize), (10, total));
        let st = rpc.status(proto::StatusRequest::default()).await.unwrap().into_inner();
        assert_eq!((st.gpus[0].holders.len(), st.gpus[0].holders_total as usize), (1_000, total));
        let table = d.cli(&["status", "--limit", "5"]);
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(text.contains(&format!("... and {} more holders", total - 5)), "{text:.2000}");
        assert_eq!(d.status_json()["gpus"][0]["holders_total"], total);
        drop(held);
    });
}

/// One-off clients that hold leases count against `--max-one-off-clients` too, not only those
/// waiting: under gpu-sharing, tiny one-off grants could otherwise make clients without bound
/// (each lives until its TTL). A released lease frees its client's place.
#[test]
fn one_off_clients_holding_leases_count_against_the_cap() {
    let d = Daemon::start(&["--gpus", "fake:1x80GiB", "--scheduler", "gpu-sharing", "--max-one-off-clients", "20"]);
    rt().block_on(async {
        let mut rpc = connect(&d).await;
        let tiny =
            || proto::AllocateRequest { job: "tiny".into(), gpus: 1, memory_per_gpu: Some(1), ..Default::default() };
        let mut grants = Vec::new();
        for _ in 0..20 {
            grants.push(rpc.alloc_request(tiny()).await.unwrap().into_inner());
        }
        let e = rpc.alloc_request(tiny()).await.unwrap_err();
        assert!(limit_reached(&e), "{e:?}");
        assert!(e.message().contains("20 one-off clients wait or hold leases"), "{}", e.message());
        let g = grants.pop().unwrap();
        rpc.release(proto::ReleaseRequest { client_token: g.client_token, lease_id: g.lease_id }).await.unwrap();
        rpc.alloc_request(tiny()).await.unwrap();
    });
}
