//! Nothing a client sends can crash or wedge the daemon; and a client this project did not
//! write (Python grpcio) works against it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use acb_assigner::config::Address;
use acb_assigner::proto;
use acb_client::connection::{self as client, Session};
use common::Daemon;

const T: Duration = Duration::from_secs(20);

/// A small deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn random_bytes_on_the_socket_do_not_hurt_the_daemon() {
    let mut d = Daemon::start(&["--gpus", "fake:1x80GiB"]);
    let mut rng = Rng(0x5eed_acb0_1234_5678);
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for i in 0..300 {
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let len = (rng.next() % 4096) as usize;
        // Half the connections look like HTTP/2 for a moment, then turn to garbage.
        if i % 2 == 0 {
            let _ = s.write_all(PREFACE);
        }
        let _ = s.write_all(&rng.bytes(len));
        drop(s);
    }
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
    let status = d.status_json();
    assert_eq!(status["gpus"].as_array().unwrap().len(), 1);
}

#[test]
fn absurd_but_valid_messages_get_errors_and_the_daemon_keeps_serving() {
    let mut d = Daemon::start(&["--gpus", "fake:2x80GiB", "--scheduler", "gpu-affinity"]);
    let addr: Address = d.addr().parse().unwrap();
    rt().block_on(async {
        let rpc = client::connect(&addr, None, T).await.unwrap();
        let mut raw = rpc.clone();
        let mut rng = Rng(42);
        let absurd = [
            proto::AllocateRequest { gpus: u32::MAX, ..Default::default() },
            proto::AllocateRequest { gpus: 1, memory_per_gpu: Some(0), ..Default::default() },
            proto::AllocateRequest { gpus: 1, memory_per_gpu: Some(u64::MAX), ..Default::default() },
            proto::AllocateRequest { gpus: 2, required_gpus: vec![u32::MAX, 7], ..Default::default() },
            proto::AllocateRequest { gpus: 1, required_gpus: (0..5000).collect(), ..Default::default() },
            proto::AllocateRequest { gpus: 1, job: "x".repeat(100_000), ..Default::default() },
            proto::AllocateRequest { gpus: 1, job: "bell\u{7}".into(), ..Default::default() },
            proto::AllocateRequest { gpus: 1, client_token: "t".repeat(1 << 20), ..Default::default() },
            proto::AllocateRequest { gpus: 1, client_token: "not-a-token".into(), ..Default::default() },
        ];
        for req in absurd {
            let e = tokio::time::timeout(T, raw.alloc_request(req)).await.unwrap().unwrap_err();
            assert!(
                matches!(e.code(), tonic::Code::InvalidArgument | tonic::Code::PermissionDenied),
                "{:?}: {}",
                e.code(),
                e.message()
            );
        }
        for _ in 0..50 {
            let lease = rng.next();
            let token = format!("{:x}", rng.next());
            let e = raw.release(proto::ReleaseRequest { client_token: token, lease_id: lease }).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
        }
        // Sessions that say odd things: phase reports for leases that are not theirs, huge swap
        // counters, a second Hello; then they vanish.
        let mut sessions = Vec::new();
        for i in 0..40 {
            let s = Session::open(rpc.clone(), &format!("odd-{i}")).await.unwrap();
            s.report_phase(rng.next(), i % 2 == 0).await.unwrap();
            s.report_phase(u64::MAX, true).await.unwrap();
            sessions.push(s);
        }
        drop(sessions);
        // Priorities at the extremes are fine; the daemon still grants and releases.
        let mut s = Session::open(rpc.clone(), "extreme").await.unwrap();
        let g = s.allocate(proto::AllocateRequest { gpus: 2, priority: i32::MIN, ..Default::default() }).await.unwrap();
        s.release(g.lease_id).await.unwrap();
        let g = s.allocate(proto::AllocateRequest { gpus: 1, priority: i32::MAX, ..Default::default() }).await.unwrap();
        s.release(g.lease_id).await.unwrap();
        drop(s);
        // Everyone who left is gone: no leaked clients or leases.
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let st = raw.status(proto::StatusRequest::default()).await.unwrap().into_inner();
            if st.clients.is_empty() {
                assert!(st.gpus.iter().all(|g| g.holders.is_empty()));
                assert!(st.queue.is_empty());
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "clients leaked: {:?}", st.clients);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
}

#[test]
fn python_grpcio_with_generated_stubs_allocates_and_releases() {
    let has_grpc = Command::new("python3").args(["-c", "import grpc, grpc_tools"]).status().is_ok_and(|s| s.success());
    if !has_grpc {
        // CI installs grpcio and sets ACB_REQUIRE_PYTHON_GRPC=1, so there this cannot skip.
        assert!(
            std::env::var_os("ACB_REQUIRE_PYTHON_GRPC").is_none(),
            "ACB_REQUIRE_PYTHON_GRPC is set but python3 cannot import grpc and grpc_tools"
        );
        eprintln!("skipped: python3 has no grpcio/grpcio-tools (pip install grpcio grpcio-tools)");
        return;
    }
    let d = Daemon::start(&["--gpus", "fake:1x80GiB"]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("../tests/python/grpc_client.py"))
        .arg(&d.socket)
        .arg(root.join("../acb-proto/proto"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("9 passed, 0 failed"), "{stdout}");
}
