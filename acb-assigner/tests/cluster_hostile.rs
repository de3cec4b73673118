//! A controller and executors as real processes on loopback, attacked from outside: rogue
//! executors (callers with the cluster token that send what a buggy executor would), clients of
//! an executor that send bad requests, crash or reach for another node's GPUs, callers straight
//! at the controller's listeners, a controller stopped under load, and a client acb did not
//! write (Python grpcio). Every case must end in a clear gRPC error or a handled event, never a
//! panic or a hang, and the controller must serve on afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use acb_assigner::proto;
use common::cluster::{
    CLUSTER_TOKEN, Cluster, gpus_of, idle, node, node_up, nothing_held, record, wait_status, wait_status_with,
};
use common::{Daemon, wait_exit};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A client of `executor` is granted one of its node's GPUs and gives it back.
fn assert_serves(executor: &Daemon, node_name: &str) {
    let out = executor.cli(&["alloc", "--job", "still-served", "--hold", "0s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!(" on {node_name}:")), "{stdout}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// `fut`, or a panic naming `what` if it takes more than `secs`: nothing here may hang.
async fn bounded<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {secs} s (a hang)"),
    }
}

fn gpu(index: u32, uuid: &str) -> proto::NodeGpu {
    proto::NodeGpu {
        index,
        uuid: uuid.into(),
        name: "Rogue GPU".into(),
        memory: 16 << 30,
        healthy: true,
        fake: true,
        memory_used: None,
    }
}

fn register(node: &str, gpus: Vec<proto::NodeGpu>) -> proto::ExecutorReport {
    proto::ExecutorReport {
        msg: Some(proto::executor_report::Msg::Register(proto::Register {
            node: node.into(),
            gpus,
            version: "rogue".into(),
        })),
    }
}

fn heartbeat(gpus: Vec<proto::NodeGpu>) -> proto::ExecutorReport {
    proto::ExecutorReport { msg: Some(proto::executor_report::Msg::Heartbeat(proto::Heartbeat { gpus })) }
}

/// A rogue executor's link: what it sends, and the controller's replies.
struct Link {
    tx: mpsc::Sender<proto::ExecutorReport>,
    replies: tonic::Streaming<proto::ControllerReply>,
}

impl Link {
    /// Opens `Cluster/Join` with the cluster token, sending `first` at once.
    async fn open(c: &Cluster, first: Vec<proto::ExecutorReport>) -> Result<Link, tonic::Status> {
        let channel = bounded(5, "connecting", c.tcp().connect()).await.unwrap();
        let (tx, rx) = mpsc::channel(64);
        for m in first {
            tx.send(m).await.unwrap();
        }
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut().insert("authorization", format!("Bearer {CLUSTER_TOKEN}").parse().unwrap());
        let mut client = proto::cluster_client::ClusterClient::new(channel);
        let replies = bounded(10, "Join", client.join(req)).await?.into_inner();
        Ok(Link { tx, replies })
    }

    /// Registers `node` with `gpus`: the pool ids the controller answered.
    async fn registered(c: &Cluster, node: &str, gpus: Vec<proto::NodeGpu>) -> (Link, Vec<u32>) {
        let mut link = Link::open(c, vec![register(node, gpus)]).await.unwrap();
        match bounded(5, "Registered", link.replies.message()).await {
            Ok(Some(proto::ControllerReply { msg: Some(proto::controller_reply::Msg::Registered(r)) })) => {
                (link, r.gpu_ids)
            }
            other => panic!("{node}: expected Registered, got {other:?}"),
        }
    }

    /// Sends a heartbeat and waits for its answer: `true` for an ack, `false` when the link
    /// ended (or failed) instead.
    async fn beat(&mut self, gpus: Vec<proto::NodeGpu>) -> bool {
        if self.tx.send(heartbeat(gpus)).await.is_err() {
            return false;
        }
        match bounded(5, "heartbeat answer", self.replies.message()).await {
            Ok(Some(proto::ControllerReply { msg: Some(proto::controller_reply::Msg::Ack(_)) })) => true,
            Ok(Some(other)) => panic!("a heartbeat answered with {other:?}"),
            Ok(None) | Err(_) => false,
        }
    }
}

#[test]
fn rogue_registrations_get_clear_errors_and_the_controller_serves_on() {
    let c = Cluster::new("hostile-register");
    let ctl = c.controller(&[]);
    let n1 = c.executor("n1");
    wait_status(&ctl, "n1", |s| node_up(s, "n1"));
    let many = |n: u32| (0..n).map(|i| gpu(i, &format!("evil-{i}"))).collect::<Vec<_>>();
    let bad = |g: proto::NodeGpu| vec![gpu(0, "evil-ok"), g];
    let cases: Vec<(&str, Vec<proto::ExecutorReport>)> = vec![
        ("1025 GPUs", vec![register("big", many(1025))]),
        ("100,000 GPUs", vec![register("huge", many(100_000))]),
        ("a uuid twice", vec![register("dup", vec![gpu(0, "evil-same"), gpu(1, "evil-same")])]),
        ("an empty uuid", vec![register("u1", bad(gpu(1, "")))]),
        ("a 300-byte uuid", vec![register("u2", bad(gpu(1, &"e".repeat(300))))]),
        ("a uuid with a newline", vec![register("u3", bad(gpu(1, "evil\nuuid")))]),
        (
            "a name with an escape",
            vec![register("u4", bad(proto::NodeGpu { name: "x\u{1b}[2J".into(), ..gpu(1, "evil-n") }))],
        ),
        ("0 bytes of memory", vec![register("u5", bad(proto::NodeGpu { memory: 0, ..gpu(1, "evil-m") }))]),
        ("the controller's own name", vec![register("ctl", many(1))]),
        ("a 10 KB name", vec![register(&"n".repeat(10_240), many(1))]),
        ("a name with a control character", vec![register("n\u{1}x", many(1))]),
        ("a heartbeat before Register", vec![heartbeat(many(1))]),
        ("an empty report", vec![proto::ExecutorReport { msg: None }]),
    ];
    let rt = runtime();
    rt.block_on(async {
        for (what, msgs) in cases {
            match Link::open(&c, msgs).await {
                Ok(mut link) => {
                    let next = bounded(5, what, link.replies.message()).await;
                    panic!("{what}: the controller accepted the link: {next:?}");
                }
                Err(s) => {
                    assert!(
                        matches!(s.code(), Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange),
                        "{what}: {s:?}"
                    );
                    assert!(!s.message().is_empty(), "{what}: an error without a word of why");
                }
            }
        }
        // A link that sends nothing at all is refused after a short wait, not held open.
        let t = Instant::now();
        let err = Link::open(&c, vec![]).await.map(|_| ()).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    });
    let s = ctl.status_json();
    assert!(s["gpus"].as_array().unwrap().iter().all(|g| !g["uuid"].as_str().unwrap().starts_with("evil")), "{s}");
    for name in ["big", "huge", "dup", "u1", "u2", "u3", "u4", "u5"] {
        assert!(node(&s, name).is_none(), "{name} is in the pool: {s}");
    }
    assert_eq!(s["nodes"].as_array().unwrap().len(), 2, "{s}"); // ctl and n1
    assert!(node_up(&s, "n1"));
    assert_serves(&n1, "n1");
}

#[test]
fn a_register_with_an_empty_node_name_is_refused() {
    let c = Cluster::new("hostile-empty-name");
    let ctl = c.controller(&[]);
    let rt = runtime();
    let accepted = rt.block_on(async {
        match Link::open(&c, vec![register("", vec![gpu(0, "nameless-0")])]).await {
            Ok(mut link) => Some(bounded(5, "empty name", link.replies.message()).await),
            Err(s) => {
                assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
                None
            }
        }
    });
    let s = ctl.status_json();
    // A node named "" can never be used: an executor's calls name their node in `acb-node`,
    // and the controller ignores an empty one (peer.rs `forwarded`).
    assert!(accepted.is_none(), "a node named \"\" was registered: {accepted:?}; status: {s}");
    assert!(node(&s, "").is_none(), "{s}");
}

#[test]
fn a_register_naming_one_gpu_index_twice_is_refused() {
    // Two GPUs both at index 0: heartbeats (matched by index) reach only the first, and a
    // client granted either is told "node:0" (CUDA_VISIBLE_DEVICES=0) for both.
    let c = Cluster::new("hostile-dup-index");
    let ctl = c.controller(&[]);
    let rt = runtime();
    let r = rt.block_on(async {
        Link::open(&c, vec![register("twins", vec![gpu(0, "dup-index-a"), gpu(0, "dup-index-b")])]).await.map(|_| ())
    });
    let s = ctl.status_json();
    assert_eq!(
        r.as_ref().map_err(tonic::Status::code),
        Err(Code::InvalidArgument),
        "two GPUs at index 0 were registered: {r:?}; status: {s}"
    );
}

#[test]
fn gpus_of_absurd_memory_and_clients_asking_for_it_do_not_break_the_controller() {
    let c = Cluster::new("hostile-memory");
    let mut ctl = c.controller(&[]);
    let rt = runtime();
    rt.block_on(async {
        let huge = |i: u32| proto::NodeGpu { memory: u64::MAX, ..gpu(i, &format!("bigmem-{i}")) };
        let (mut link, ids) = Link::registered(&c, "bigmem", vec![huge(0), huge(1)]).await;
        assert_eq!(ids.len(), 2);
        let beats = tokio::spawn(async move {
            for _ in 0..100 {
                let used = |i: u32| proto::NodeGpu { memory_used: Some(u64::MAX), ..huge(i) };
                if !link.beat(vec![used(0), used(1)]).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
        });
        // Calls as this rogue executor's clients (the cluster token and acb-node).
        let tcp = bounded(5, "connect", c.tcp().connect()).await.unwrap();
        let mut rpc = proto::assigner_client::AssignerClient::new(tcp);
        let call = |mem: Option<u64>, gpus: u32, job: &str| {
            let mut req = tonic::Request::new(proto::AllocateRequest {
                job: job.into(),
                gpus,
                memory_per_gpu: mem,
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(2));
            let md = req.metadata_mut();
            md.insert("authorization", format!("Bearer {CLUSTER_TOKEN}").parse().unwrap());
            md.insert("acb-node", "bigmem".parse().unwrap());
            md.insert("acb-peer-uid", "99999999999".parse().unwrap());
            md.insert("acb-peer-pid", "-1".parse().unwrap());
            req
        };
        // One at a time, each released at once: a request is granted or refused promptly,
        // never left waiting for GPUs that are free.
        for (mem, gpus, job) in
            [(Some(u64::MAX), 2, "all"), (Some(u64::MAX - 1), 1, "almost"), (Some(1), 2, "tiny"), (None, 3, "three")]
        {
            match bounded(5, job, rpc.alloc_request(call(mem, gpus, job))).await {
                Ok(g) => {
                    let g = g.into_inner();
                    let mut req = tonic::Request::new(proto::ReleaseRequest {
                        client_token: g.client_token,
                        lease_id: g.lease_id,
                    });
                    req.metadata_mut().insert("authorization", format!("Bearer {CLUSTER_TOKEN}").parse().unwrap());
                    req.metadata_mut().insert("acb-node", "bigmem".parse().unwrap());
                    bounded(5, "release", rpc.release(req)).await.unwrap();
                }
                Err(e) => assert!(
                    matches!(
                        e.code(),
                        Code::InvalidArgument | Code::ResourceExhausted | Code::FailedPrecondition | Code::OutOfRange
                    ),
                    "{job}: {e:?}"
                ),
            }
        }
        beats.abort();
    });
    // The controller is alive and answers, its metrics and status sane.
    assert!(ctl.child.try_wait().is_ok_and(|s| s.is_none()), "the controller died");
    let s = wait_status(&ctl, "idle", idle);
    assert_eq!(gpus_of(&s, "bigmem").len(), 2, "{s}");
}

#[test]
fn a_link_that_registers_twice_or_lies_in_heartbeats_is_handled() {
    let c = Cluster::new("hostile-link");
    let ctl = c.controller(&[]);
    let n1 = c.executor("n1");
    wait_status(&ctl, "n1", |s| node_up(s, "n1"));
    let rt = runtime();
    rt.block_on(async {
        // Register, then Register again on the same link: the link ends (a handled event).
        let (mut twice, ids) = Link::registered(&c, "twice", vec![gpu(0, "twice-0")]).await;
        assert_eq!(ids.len(), 1);
        twice.tx.send(register("twice", vec![gpu(0, "twice-0")])).await.unwrap();
        let end = bounded(5, "a second Register", twice.replies.message()).await;
        assert!(!matches!(end, Ok(Some(_))), "a second Register was answered: {end:?}");

        // Heartbeats naming indexes the node never registered: acked, nothing changes.
        let (mut liar, ids) = Link::registered(&c, "liar", vec![gpu(0, "liar-0"), gpu(1, "liar-1")]).await;
        assert_eq!(ids.len(), 2);
        let unknown = vec![
            proto::NodeGpu { healthy: false, ..gpu(7, "x") },
            proto::NodeGpu { healthy: false, ..gpu(u32::MAX, "") },
        ];
        assert!(liar.beat(unknown).await, "a heartbeat with unknown indexes ended the link");
        // 100,000 entries (fits in a message): acked; the first 1024 are read.
        let flood: Vec<proto::NodeGpu> =
            (0..100_000).map(|i| proto::NodeGpu { index: i + 2, healthy: false, ..Default::default() }).collect();
        assert!(liar.beat(flood).await, "a heartbeat of 100,000 entries ended the link");
        // A real change is taken: index 1 unhealthy.
        assert!(liar.beat(vec![gpu(0, "liar-0"), proto::NodeGpu { healthy: false, ..gpu(1, "liar-1") }]).await);
        // 1,000,000 entries (over the 4 MiB message limit): the link fails, handled.
        let flood: Vec<proto::NodeGpu> =
            (0..1_000_000).map(|i| proto::NodeGpu { index: i, healthy: true, ..Default::default() }).collect();
        let _ = liar.tx.send(heartbeat(flood)).await;
        // Whatever the answer (the link's end, most likely), it comes: no hang.
        let _ = bounded(10, "a 1e6-entry heartbeat", liar.replies.message()).await;
    });
    let s = wait_status(&ctl, "twice down", |s| !node_up(s, "twice"));
    assert_eq!(gpus_of(&s, "liar").len(), 2, "{s}");
    assert!(gpus_of(&s, "twice").iter().all(|(_, h)| !h), "{s}");
    // The liar's GPU 1 was reported unhealthy; its unknown indexes changed nothing else.
    let liar = gpus_of(&s, "liar");
    assert!(!liar[1].1, "{s}");
    assert!(s["gpus"].as_array().unwrap().iter().filter(|g| g["node"] == "n1").all(|g| g["healthy"] == true), "{s}");
    assert!(node_up(&s, "n1"));
    assert_serves(&n1, "n1");
}

#[test]
fn a_link_flapping_200_times_leaves_one_node_and_a_serving_controller() {
    let c = Cluster::new("hostile-flap");
    let ctl = c.controller(&[]);
    let n1 = c.executor("n1");
    wait_status(&ctl, "n1", |s| node_up(s, "n1"));
    let rt = runtime();
    let started = Instant::now();
    rt.block_on(async {
        let mut first_ids = None;
        for i in 0..200 {
            let (link, ids) = Link::registered(&c, "flap", vec![gpu(0, "flap-0"), gpu(1, "flap-1")]).await;
            // The same uuids: the same ids every time.
            assert_eq!(*first_ids.get_or_insert_with(|| ids.clone()), ids, "round {i}");
            if i % 2 == 0 {
                // A clean end of the request stream...
                drop(link.tx);
                let _ = bounded(5, "the link's end", async {
                    let mut r = link.replies;
                    r.message().await
                })
                .await;
            } else {
                // ... or the whole connection dropped.
                drop(link);
            }
            assert!(started.elapsed() < Duration::from_secs(30), "200 links took too long (round {i})");
        }
    });
    let s = wait_status(&ctl, "flap down", |s| !node_up(s, "flap") && node_up(s, "n1"));
    assert_eq!(gpus_of(&s, "flap").len(), 2, "{s}");
    assert_eq!(s["gpus"].as_array().unwrap().len(), 4, "{s}");
    assert_serves(&n1, "n1");
}

#[test]
fn a_node_registering_fresh_uuids_again_and_again_stays_within_the_per_node_limit() {
    // A buggy executor whose GPUs get new uuids at each registration (a fake backend that
    // randomizes them, MIG devices re-created). GPUs a node no longer reports stay in the pool,
    // lost (ids are stable), so a registration that would take the node past the limit
    // `MAX_NODE_GPUS` is refused, saying why.
    let c = Cluster::new("hostile-morph");
    let ctl = c.controller(&[]);
    let rt = runtime();
    rt.block_on(async {
        for round in 0..3 {
            let gpus: Vec<proto::NodeGpu> = (0..1024).map(|i| gpu(i, &format!("morph-{round}-{i}"))).collect();
            if round == 0 {
                let (link, ids) = Link::registered(&c, "morph", gpus).await;
                assert_eq!(ids.len(), 1024);
                drop(link);
                continue;
            }
            let refused = match Link::open(&c, vec![register("morph", gpus)]).await {
                Err(status) => status,
                Ok(mut link) => match bounded(5, "Registered", link.replies.message()).await {
                    Err(status) => status,
                    other => panic!("round {round}: a registration past the limit got {other:?}"),
                },
            };
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
            assert!(refused.message().contains("at most 1024"), "{refused:?}");
        }
    });
    let s = wait_status(&ctl, "morph down", |s| !node_up(s, "morph"));
    let pool = gpus_of(&s, "morph").len();
    let listed = node(&s, "morph").unwrap()["gpus"].as_u64().unwrap();
    assert!(
        pool <= 1024 && listed <= 1024,
        "node morph has {pool} GPUs in the pool (status node says {listed}); one node may register at most 1024"
    );
}

#[test]
fn two_links_registering_one_node_the_newer_wins_and_the_older_end_changes_nothing() {
    let c = Cluster::new("hostile-twin");
    let ctl = c.controller(&[]);
    let rt = runtime();
    rt.block_on(async {
        let twin = || vec![gpu(0, "twin-0")];
        let (mut old, ids_old) = Link::registered(&c, "twin", twin()).await;
        let (mut new, ids_new) = Link::registered(&c, "twin", twin()).await;
        assert_eq!(ids_old, ids_new);
        // The older link is told at its next heartbeat: it must register again.
        assert!(!old.beat(twin()).await, "the replaced link's heartbeat was acked");
        drop(old);
        // The newer keeps the node up past three heartbeat intervals.
        for _ in 0..8 {
            assert!(new.beat(twin()).await, "the newer link was dropped");
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        let s: Value = serde_json::from_slice(&ctl.cli(&["status", "--json"]).stdout).unwrap();
        assert!(node_up(&s, "twin"), "{s}");
        assert!(gpus_of(&s, "twin").iter().all(|(_, h)| *h), "{s}");

        // Two at once: exactly one of them goes on.
        let (a, b) = tokio::join!(Link::registered(&c, "twin", twin()), Link::registered(&c, "twin", twin()));
        drop(new);
        let (mut a, mut b) = (a.0, b.0);
        let (ok_a, ok_b) = (a.beat(twin()).await, b.beat(twin()).await);
        assert!(ok_a ^ ok_b, "both or neither of two links of one node heartbeat: {ok_a} {ok_b}");
        let mut winner = if ok_a { a } else { b };
        for _ in 0..6 {
            assert!(winner.beat(twin()).await);
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        let s: Value = serde_json::from_slice(&ctl.cli(&["status", "--json"]).stdout).unwrap();
        assert!(node_up(&s, "twin"), "{s}");
        // The winner goes silent: the node is lost within about three intervals.
        drop(winner.tx);
    });
    let s = wait_status(&ctl, "twin down", |s| !node_up(s, "twin"));
    assert_eq!(gpus_of(&s, "twin").len(), 1, "{s}");
    let events = record(&ctl);
    let downs = events.iter().filter(|e| e["event"] == "node-down" && e["node"] == "twin").count();
    assert_eq!(downs, 1, "the replaced links' ends took the node down: {events:?}");
}

/// `AllocRequest` through `executor` as a one-off client.
async fn alloc_via(executor: &Daemon, req: proto::AllocateRequest) -> Result<proto::AllocateResponse, tonic::Status> {
    let channel =
        acb_client::connection::channel(&executor.addr().parse().unwrap(), Duration::from_secs(5)).await.unwrap();
    let mut rpc = proto::assigner_client::AssignerClient::new(channel);
    let mut r = tonic::Request::new(req);
    r.set_timeout(Duration::from_secs(5));
    bounded(8, "AllocRequest", rpc.alloc_request(r)).await.map(tonic::Response::into_inner)
}

/// A lease held by an `alloc` process on `executor`: (process, lease id, GPU ids line).
fn held_lease(executor: &Daemon, job: &str) -> (std::process::Child, u64, String) {
    let (child, lines) = executor.alloc(&["--job", job, "--hold", "30s"]);
    let line = lines.wait_for("granted", Duration::from_secs(10));
    let lease = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    (child, lease, line)
}

#[test]
fn clients_of_an_executor_cannot_misuse_groups_or_reach_another_nodes_gpus() {
    let c = Cluster::new("hostile-client");
    let ctl = c.controller(&[]);
    let (n1, n2) = (c.executor("n1"), c.executor("n2"));
    let s = wait_status(&ctl, "both", |s| node_up(s, "n1") && node_up(s, "n2"));
    let n2_ids: Vec<u32> = gpus_of(&s, "n2").iter().map(|(id, _)| *id as u32).collect();
    let (mut holder, lease, _) = held_lease(&n2, "holder");
    let rt = runtime();
    rt.block_on(async {
        let base = proto::AllocateRequest { job: "hostile".into(), gpus: 1, ..Default::default() };
        let refused = [
            ("group \"\" of 5", proto::AllocateRequest { group_size: 5, ..base.clone() }),
            ("group_size 0", proto::AllocateRequest { group: "g".into(), group_size: 0, ..base.clone() }),
            ("group_size 5000", proto::AllocateRequest { group: "g".into(), group_size: 5000, ..base.clone() }),
            (
                "a group with control chars",
                proto::AllocateRequest { group: "g\u{7}\n".into(), group_size: 2, ..base.clone() },
            ),
            ("a 300-byte group", proto::AllocateRequest { group: "g".repeat(300), group_size: 2, ..base.clone() }),
            ("n2's GPUs from n1", proto::AllocateRequest { required_gpus: n2_ids.clone(), ..base.clone() }),
            (
                "one of n2's GPUs among others",
                proto::AllocateRequest { required_gpus: vec![0, 1, 2, 3], ..base.clone() },
            ),
            ("a GPU id nobody has", proto::AllocateRequest { required_gpus: vec![999_999], ..base.clone() }),
        ];
        for (what, req) in refused {
            let err = alloc_via(&n1, req).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        }
        // Preferring n2's GPUs is no way in either: granted one of n1's.
        let got =
            alloc_via(&n1, proto::AllocateRequest { preferred_gpus: n2_ids.clone(), ..base.clone() }).await.unwrap();
        assert!(got.gpus.iter().all(|g| g.node == "n1"), "{got:?}");
        let channel =
            acb_client::connection::channel(&n1.addr().parse().unwrap(), Duration::from_secs(5)).await.unwrap();
        let mut rpc = proto::assigner_client::AssignerClient::new(channel);
        rpc.release(proto::ReleaseRequest { client_token: got.client_token.clone(), lease_id: got.lease_id })
            .await
            .unwrap();
        // n2's lease from n1 with made-up tokens: refused, renewals too.
        for token in ["made-up-token", &"t".repeat(129), &got.client_token] {
            let err = rpc
                .release(proto::ReleaseRequest { client_token: token.to_string(), lease_id: lease })
                .await
                .unwrap_err();
            assert!(matches!(err.code(), Code::PermissionDenied | Code::NotFound | Code::InvalidArgument), "{err:?}");
            let err =
                rpc.renew(proto::RenewRequest { client_token: token.to_string(), lease_id: lease }).await.unwrap_err();
            assert!(matches!(err.code(), Code::PermissionDenied | Code::NotFound | Code::InvalidArgument), "{err:?}");
        }

        // A session that sends nonsense after Hello: ignored or ended, never a panic.
        let (tx, rx) = mpsc::channel(16);
        tx.send(proto::SessionRequest {
            msg: Some(proto::session_request::Msg::Hello(proto::Hello { job: "noisy".into(), ..Default::default() })),
        })
        .await
        .unwrap();
        let mut events = bounded(5, "session", rpc.session(ReceiverStream::new(rx))).await.unwrap().into_inner();
        let welcome = bounded(5, "welcome", events.message()).await.unwrap().unwrap();
        assert!(matches!(welcome.event, Some(proto::session_event::Event::Welcome(_))), "{welcome:?}");
        use proto::session_request::Msg;
        for m in [
            None,
            Some(Msg::Hello(proto::Hello {
                job: "again\u{0}".into(),
                held_leases: vec![lease; 1000],
                ..Default::default()
            })),
            Some(Msg::Phase(proto::PhaseReport { lease_id: lease, idle: true })),
            Some(Msg::Phase(proto::PhaseReport { lease_id: u64::MAX, idle: false })),
            Some(Msg::Swap(proto::SwapReport { bytes_in: u64::MAX, bytes_out: u64::MAX })),
        ] {
            tx.send(proto::SessionRequest { msg: m }).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(tx);
        let _ = bounded(5, "the session's end", async { while let Ok(Some(_)) = events.message().await {} }).await;
    });
    // n2's lease is untouched (its holder said idle for it? no: that was n1's noisy client).
    let s = wait_status(&ctl, "only the holder left", |s| s["clients_total"] == 1);
    let holders: Vec<u64> = s["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["holders"].as_array().unwrap().iter().map(|h| h["lease"].as_u64().unwrap()))
        .collect();
    assert_eq!(holders, vec![lease], "{s}");
    assert!(holder.try_wait().unwrap().is_none(), "the holder on n2 lost its lease");
    let _ = holder.kill();
    let _ = holder.wait();
    wait_status(&ctl, "all gone", idle);
    assert_serves(&n1, "n1");
    assert_serves(&n2, "n2");
}

#[test]
fn the_admin_of_one_node_cannot_take_back_another_nodes_lease() {
    // The controller's admin is this test's uid, as `--admin-uid`: a client on executor n1
    // with the same uid (on another host it would be that host's root) releases a lease of
    // n2's client with an empty token.
    // SAFETY: geteuid(2) has no preconditions.
    let me = unsafe { libc::geteuid() }.to_string();
    let c = Cluster::new("hostile-admin");
    let ctl = c.controller(&["--admin-uid", &me]);
    let (n1, n2) = (c.executor("n1"), c.executor("n2"));
    wait_status(&ctl, "both", |s| node_up(s, "n1") && node_up(s, "n2"));
    let (mut holder, lease, _) = held_lease(&n2, "victim");
    let out = n1.cli(&["release", "--lease", &lease.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let s = ctl.status_json();
    let still_held = !nothing_held(&s);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        !out.status.success() && still_held,
        "a client on n1 (uid {me}) took back lease {lease} of a client on n2 with an empty token: \
         release exit {:?}, stderr {stderr:?}; the uid an executor forwards is its host's, not the controller's",
        out.status.code()
    );
}

#[test]
fn a_client_killed_while_its_gang_is_half_assembled_leaves_nothing_behind() {
    let c = Cluster::new("hostile-half");
    let ctl = c.controller(&[]);
    let (n1, n2) = (c.executor("n1"), c.executor("n2"));
    wait_status(&ctl, "both", |s| node_up(s, "n1") && node_up(s, "n2"));
    let (mut r0, _l0) = n1.alloc(&["--job", "rank0", "--group", "half", "--group-size", "2", "--hold", "1s"]);
    wait_status(&ctl, "rank0 waiting", |s| {
        s["clients"].as_array().unwrap().iter().any(|c| c["job"] == "rank0" && c["queued"] == 1)
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(r0.id() as i32, libc::SIGKILL) };
    let _ = wait_exit(&mut r0, Duration::from_secs(5));
    wait_status(&ctl, "nothing left of rank0", idle);
    // The group's name is free again, with another size.
    let (mut a, la) = n1.alloc(&["--job", "a", "--group", "half", "--group-size", "3", "--hold", "0s"]);
    let (mut b, lb) = n2.alloc(&["--job", "b", "--group", "half", "--group-size", "3", "--hold", "0s"]);
    let (mut d, ld) = n2.alloc(&["--job", "d", "--group", "half", "--group-size", "3", "--hold", "0s"]);
    for l in [&la, &lb, &ld] {
        l.wait_for("granted", Duration::from_secs(10));
    }
    for p in [&mut a, &mut b, &mut d] {
        assert!(wait_exit(p, Duration::from_secs(10)).success());
    }
    wait_status(&ctl, "all released", idle);
}

#[test]
fn a_gang_member_dying_after_the_grant_ends_the_other_nodes_member() {
    let c = Cluster::new("hostile-gang-death");
    let ctl = c.controller(&[]);
    let (n1, n2) = (c.executor("n1"), c.executor("n2"));
    wait_status(&ctl, "both", |s| node_up(s, "n1") && node_up(s, "n2"));
    let (mut r0, l0) = n1.alloc(&["--job", "rank0", "--group", "g", "--group-size", "2", "--hold", "30s"]);
    let (mut r1, l1) = n2.alloc(&["--job", "rank1", "--group", "g", "--group-size", "2", "--hold", "30s"]);
    let g0 = l0.wait_for("granted", Duration::from_secs(10));
    let g1 = l1.wait_for("granted", Duration::from_secs(10));
    assert!(g0.contains(" on n1:") && g1.contains(" on n2:"), "{g0} / {g1}");
    let lease1: u64 = g1.split_whitespace().nth(2).unwrap().parse().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(r0.id() as i32, libc::SIGKILL) };
    let _ = wait_exit(&mut r0, Duration::from_secs(5));
    // The member on n2 is told: its alloc ends with status 3 (its lease taken back).
    let st = wait_exit(&mut r1, Duration::from_secs(10));
    assert_eq!(st.code(), Some(3), "rank1 on n2 was not told its gang broke");
    let s = wait_status(&ctl, "all released", idle);
    assert!(nothing_held(&s));
    let events = record(&ctl);
    assert!(events.iter().any(|e| e["event"] == "released" && e["lease"] == lease1), "{events:?}");
}

#[test]
fn a_huge_gang_left_incomplete_by_vanishing_clients_leaves_nothing_behind() {
    // Heartbeats at the default second: on this 2-core machine, 4,095 calls at once starve
    // the daemons for longer than 3 heartbeats of 100 ms (not a fault: the node's link must
    // simply not break).
    let mut c = Cluster::new("hostile-huge-gang");
    c.heartbeat = "1s";
    let ctl = c.controller(&["--max-one-off-clients", "5000"]);
    let n1 = c.executor("n1");
    wait_status(&ctl, "n1", |s| node_up(s, "n1"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        // 32 connections, 4095 members of a gang of 4096: one short.
        for conn in 0..32 {
            let channel =
                acb_client::connection::channel(&n1.addr().parse().unwrap(), Duration::from_secs(5)).await.unwrap();
            for i in 0..128 {
                if conn * 128 + i == 4095 {
                    break;
                }
                let mut rpc = proto::assigner_client::AssignerClient::new(channel.clone());
                tasks.push(tokio::spawn(async move {
                    let req = proto::AllocateRequest {
                        job: format!("rank{i}"),
                        gpus: 1,
                        group: "huge".into(),
                        group_size: 4096,
                        ..Default::default()
                    };
                    rpc.alloc_request(req).await
                }));
            }
        }
        // Wait until a good part of them wait at the controller.
        // A bound, not a goal: on 2 busy cores 4,095 calls can take a while.
        let deadline = Instant::now() + Duration::from_secs(60);
        let start = Instant::now();
        let mut seen = 0;
        while Instant::now() < deadline {
            let out = ctl.cli(&["status", "--json"]);
            if out.status.success() {
                let s: Value = serde_json::from_slice(&out.stdout).unwrap();
                seen = s["clients_total"].as_u64().unwrap();
                // The node's own link must not suffer from its clients' calls.
                assert!(
                    node_up(&s, "n1"),
                    "n1 went down while {seen} of its clients' gang members waited (its executor's link to the \
                     controller broke): {}",
                    s["nodes"]
                );
                if seen >= 4095 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if seen < 4095 {
            // Why: the members' calls that already ended.
            for t in tasks.iter_mut().filter(|t| t.is_finished()).take(2) {
                eprintln!("a member's call ended early: {:?}", t.await);
            }
        }
        assert!(seen >= 4095, "only {seen} of 4095 members reached the controller");
        eprintln!("{seen} members of the huge gang waited at the controller after {:?}", start.elapsed());
        // A finished task would be a member answered early: none may be.
        assert!(tasks.iter().all(|t| !t.is_finished()), "a member of an incomplete gang was answered");
        for t in &tasks {
            t.abort();
        }
    });
    drop(rt); // the connections close
    let s = wait_status(&ctl, "every member gone", idle);
    assert_eq!(s["clients_total"], 0);
    assert_serves(&n1, "n1");
    // A complete gang the node can never hold (3 members, 2 GPUs): every member told at once.
    let rt = runtime();
    rt.block_on(async {
        let member = |job: &'static str| {
            let n1 = &n1;
            async move {
                alloc_via(
                    n1,
                    proto::AllocateRequest {
                        job: job.into(),
                        gpus: 1,
                        group: "toobig".into(),
                        group_size: 3,
                        ..Default::default()
                    },
                )
                .await
            }
        };
        let (a, b, d) = tokio::join!(member("a"), member("b"), member("d"));
        for r in [a, b, d] {
            let err = r.unwrap_err();
            assert!(!matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
        }
    });
    // The name is free: a gang of 1 named "huge" is granted.
    let out = n1.cli(&["alloc", "--job", "solo", "--group", "huge", "--group-size", "1", "--hold", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_controllers_listeners_refuse_clients_without_a_token_and_never_believe_their_headers() {
    let c = Cluster::new("hostile-listen");
    let client_token = c.dir.0.join("client.token");
    std::fs::write(&client_token, "client-secret-abcdefghijk\n").unwrap();
    let unix = c.dir.0.join("ctl.sock");
    let ctl_plain = c.controller(&["--listen", &format!("unix:{}", unix.display())]);
    let n1 = c.executor("n1");
    let s = wait_status(&ctl_plain, "n1", |s| node_up(s, "n1"));
    let n1_ids: Vec<u32> = gpus_of(&s, "n1").iter().map(|(id, _)| *id as u32).collect();
    let rt = runtime();
    rt.block_on(async {
        let status = |channel: tonic::transport::Channel, auth: Option<String>, extra: Vec<(&'static str, String)>| async move {
            let mut rpc = proto::assigner_client::AssignerClient::new(channel);
            let mut req = tonic::Request::new(proto::StatusRequest::default());
            if let Some(a) = auth {
                req.metadata_mut().insert("authorization", a.parse().unwrap());
            }
            for (k, v) in extra {
                req.metadata_mut().insert(k, v.parse().unwrap());
            }
            bounded(5, "Status", rpc.status(req)).await.map(|_| ()).map_err(|e| e.code())
        };
        let tcp = bounded(5, "connect", c.tcp().connect()).await.unwrap();
        let bearer = |t: &str| Some(format!("Bearer {t}"));
        // Over TCP, without the cluster token: refused, whatever else it says.
        for auth in [
            None,
            bearer("wrong-token-0123456789"),
            bearer(&format!("{CLUSTER_TOKEN}x")),
            bearer(&CLUSTER_TOKEN[..CLUSTER_TOKEN.len() - 1]),
            Some(format!("bearer {CLUSTER_TOKEN}")),
            Some(CLUSTER_TOKEN.to_string()),
            Some(format!("Bearer  {CLUSTER_TOKEN}")),
            bearer(""),
        ] {
            let r = status(tcp.clone(), auth.clone(), vec![("acb-node", "n1".into())]).await;
            assert_eq!(r, Err(Code::Unauthenticated), "{auth:?}");
        }
        // Health and reflection too: daemons only.
        let mut health = tonic_health::pb::health_client::HealthClient::new(tcp.clone());
        let err = bounded(5, "health", health.check(tonic_health::pb::HealthCheckRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // With it, served.
        assert_eq!(status(tcp.clone(), bearer(CLUSTER_TOKEN), vec![]).await, Ok(()));

        // On the controller's Unix socket: a client's acb-node, uid and pid headers are not
        // believed, with or without a wrong token.
        let unix_ch = acb_client::connection::channel(&format!("unix:{}", unix.display()).parse().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        let mut rpc = proto::assigner_client::AssignerClient::new(unix_ch.clone());
        for auth in [None, bearer("wrong-token-0123456789")] {
            let mut req = tonic::Request::new(proto::AllocateRequest {
                gpus: 1,
                job: "liar".into(),
                required_gpus: n1_ids.clone(),
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(3));
            let md = req.metadata_mut();
            md.insert("acb-node", "n1".parse().unwrap());
            md.insert("acb-peer-uid", "4242".parse().unwrap());
            md.insert("acb-peer-pid", "1".parse().unwrap());
            if let Some(a) = &auth {
                md.insert("authorization", a.parse().unwrap());
            }
            let err = bounded(5, "liar's alloc", rpc.alloc_request(req)).await.unwrap_err();
            assert_eq!(err.code(), Code::Unavailable, "{auth:?}: {err:?}");
            assert!(err.message().contains("\"ctl\""), "{}", err.message());
        }
    });
    let s = ctl_plain.status_json();
    assert!(nothing_held(&s), "{s}");
    drop(n1);
    drop(ctl_plain);

    // A controller with a client token: a client with it may call over TCP, but as a client
    // of the controller's own node, never as n1's, and it cannot join.
    let ctl = c.controller(&["--auth-token-file", client_token.to_str().unwrap()]);
    let _n1 = c.executor("n1");
    let with_token = ["--auth-token-file", client_token.to_str().unwrap()];
    wait_status_with(&ctl, &with_token, "n1 again", |s| node_up(s, "n1"));
    rt.block_on(async {
        let tcp = bounded(5, "connect", c.tcp().connect()).await.unwrap();
        let mut rpc = proto::assigner_client::AssignerClient::new(tcp.clone());
        let mut req =
            tonic::Request::new(proto::AllocateRequest { gpus: 1, job: "tcp-liar".into(), ..Default::default() });
        req.set_timeout(Duration::from_secs(3));
        let md = req.metadata_mut();
        md.insert("authorization", "Bearer client-secret-abcdefghijk".parse().unwrap());
        md.insert("acb-node", "n1".parse().unwrap());
        md.insert("acb-peer-uid", "0".parse().unwrap());
        let err = bounded(5, "tcp liar", rpc.alloc_request(req)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("\"ctl\""), "{}", err.message());
        // An empty-token release claiming uid 0: no credentials over TCP, refused.
        let mut req = tonic::Request::new(proto::ReleaseRequest { client_token: String::new(), lease_id: 1 });
        let md = req.metadata_mut();
        md.insert("authorization", "Bearer client-secret-abcdefghijk".parse().unwrap());
        md.insert("acb-peer-uid", "0".parse().unwrap());
        let err = bounded(5, "tcp admin", rpc.release(req)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        // Joining with the client token: refused.
        let mut cl = proto::cluster_client::ClusterClient::new(tcp);
        let mut req = tonic::Request::new(tokio_stream::iter(vec![register("n7", vec![gpu(0, "evil-7")])]));
        req.metadata_mut().insert("authorization", "Bearer client-secret-abcdefghijk".parse().unwrap());
        let err = bounded(5, "join", cl.join(req)).await.map(|_| ()).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    });
    let out = ctl.cli(&["status", "--json", "--auth-token-file", client_token.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(node(&s, "n7").is_none(), "{s}");
    assert!(nothing_held(&s), "{s}");
}

#[test]
fn a_controller_stopped_under_load_ends_cleanly_and_its_executors_retry() {
    let c = Cluster::new("hostile-sigterm");
    let ctl = c.controller(&[]);
    let (n1, n2) = (c.executor("n1"), c.executor("n2"));
    wait_status(&ctl, "both", |s| node_up(s, "n1") && node_up(s, "n2"));
    let (mut held, _lease, _) = held_lease(&n1, "held");
    // One waiting: a gang member whose partner never comes.
    let (mut waiting, _lw) = n2.alloc(&["--job", "waiting", "--group", "never", "--group-size", "2"]);
    let mut watcher = std::process::Command::new(env!("CARGO_BIN_EXE_acb-assigner"))
        .args(["watch", "--json", "--assigner", &n1.addr()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_status(&ctl, "waiting queued", |s| s["clients_total"] == 2);
    let mut ctl = ctl;
    ctl.signal(libc::SIGTERM);
    let st = wait_exit(&mut ctl.child, Duration::from_secs(15));
    assert!(st.success(), "the controller exited with {st:?} on SIGTERM");
    // Its clients are told, through the executors.
    assert!(!wait_exit(&mut held, Duration::from_secs(10)).success());
    assert!(!wait_exit(&mut waiting, Duration::from_secs(10)).success());
    let _ = wait_exit(&mut watcher, Duration::from_secs(10));
    // The executors stay, and say the controller is away.
    std::thread::sleep(Duration::from_millis(500));
    let (mut n1, mut n2) = (n1, n2);
    assert!(n1.child.try_wait().unwrap().is_none() && n2.child.try_wait().unwrap().is_none(), "an executor exited");
    let out = n1.cli(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("controller"), "{}", String::from_utf8_lossy(&out.stderr));
    // Back on the same port: both register again by themselves (they kept retrying).
    let ctl = c.controller(&[]);
    wait_status(&ctl, "both back", |s| node_up(s, "n1") && node_up(s, "n2"));
    assert_serves(&n1, "n1");
    assert_serves(&n2, "n2");
}

#[test]
fn python_grpcio_through_an_executor_allocates_releases_and_survives_garbage() {
    let has_grpc = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpc {
        assert!(std::env::var_os("ACB_REQUIRE_PYTHON_GRPC").is_none(), "python3 cannot import grpc");
        eprintln!("skipped: python3 has no grpcio/grpcio-tools");
        return;
    }
    let c = Cluster::new("hostile-python");
    let ctl = c.controller(&[]);
    let n1 = c.executor("n1");
    wait_status(&ctl, "n1", |s| node_up(s, "n1"));
    let script = c.dir.0.join("client.py");
    std::fs::write(&script, PYTHON_CLIENT).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .arg(&n1.socket)
        .arg(root.join("../acb-proto/proto"))
        .arg(c.dir.0.join("stubs"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_exit(&mut child, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(st.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok: granted on n1"), "{stdout}");
    assert!(stdout.contains("ok: garbage ended the session"), "{stdout}");
    wait_status(&ctl, "nothing left", idle);
    assert_serves(&n1, "n1");
}

const PYTHON_CLIENT: &str = r#"
import importlib, os, sys
import grpc
from grpc_tools import protoc

sock, proto_root, out = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out, exist_ok=True)
if protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
                os.path.join(proto_root, "acb", "v1", "assigner.proto")]) != 0:
    sys.exit("protoc failed")
sys.path.insert(0, out)
pb = importlib.import_module("acb.v1.assigner_pb2")
rpc = importlib.import_module("acb.v1.assigner_pb2_grpc")
ch = grpc.insecure_channel(f"unix:{sock}")
stub = rpc.AssignerStub(ch)

g = stub.AllocRequest(pb.AllocateRequest(job="py", gpus=1), timeout=10)
assert len(g.gpus) == 1 and g.gpus[0].node == "n1", g
print("ok: granted on n1", g.lease_id)
stub.Release(pb.ReleaseRequest(client_token=g.client_token, lease_id=g.lease_id), timeout=5)
try:
    stub.Release(pb.ReleaseRequest(client_token=g.client_token, lease_id=g.lease_id), timeout=5)
    sys.exit("a second release was accepted")
except grpc.RpcError as e:
    print("ok: second release refused", e.code())
try:
    stub.AllocRequest(pb.AllocateRequest(job="py", gpus=1, group="", group_size=5), timeout=5)
    sys.exit("group_size without a group was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    print("ok: bad group refused")

# A session as raw bytes: a valid Hello, then bytes that are no SessionRequest.
raw = ch.stream_stream("/acb.v1.Assigner/Session", request_serializer=lambda b: b,
                       response_deserializer=lambda b: b)
hello = pb.SessionRequest(hello=pb.Hello(job="garbage")).SerializeToString()
def messages():
    yield hello
    import time
    time.sleep(0.3)
    yield b"\xff\xff\xff\xff\x0f\x0a\x99"
    time.sleep(5)
import time
t0 = time.monotonic()
call = raw(messages(), timeout=8)
got = []
try:
    for m in call:
        got.append(m)
except grpc.RpcError as e:
    print("session ended with", e.code())
took = time.monotonic() - t0
assert took < 4, f"the session went on {took:.1f} s after garbage (ended by its deadline?)"
assert got, "no Welcome"
ev = pb.SessionEvent.FromString(got[0])
assert ev.HasField("welcome"), ev
print("ok: garbage ended the session", len(got))
"#;
