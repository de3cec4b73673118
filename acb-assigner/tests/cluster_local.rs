//! A controller and two executors as real processes on loopback (no namespaces, no root: the
//! lab test in `cluster.rs` runs them on three hosts): registration, clients granted only their
//! node's GPUs, gangs across nodes, an executor lost and back, start order, and what a client
//! cannot do (join as an executor, claim a node).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::cluster::{Cluster, gpus_of, node_up, record, wait_status};
use common::{Daemon, wait_exit};
use serde_json::Value;

#[test]
fn executors_register_and_clients_get_only_their_own_nodes_gpus() {
    let c = Cluster::new("cluster-nodes");
    let ctl = c.controller(&[]);
    let (n1, n2) = (c.executor("n1"), c.executor("n2"));
    let s = wait_status(&ctl, "both nodes", |s| node_up(s, "n1") && node_up(s, "n2"));
    assert_eq!(s["role"], "controller");
    assert_eq!(gpus_of(&s, "n1").len(), 2);
    assert_eq!(gpus_of(&s, "n2").len(), 2);
    // Status through an executor is the controller's.
    assert_eq!(n1.status_json()["role"], "controller");

    // Two clients on n1 and one asking for two GPUs on n2: each on its own node only.
    let (mut a, la) = n1.alloc(&["--job", "a", "--hold", "3s"]);
    let (mut b, lb) = n1.alloc(&["--job", "b", "--hold", "3s"]);
    let (mut d, ld) = n2.alloc(&["--job", "d", "--gpus", "2", "--hold", "3s"]);
    for (l, node) in [(&la, "n1"), (&lb, "n1"), (&ld, "n2")] {
        let line = l.wait_for("granted", Duration::from_secs(10));
        let on = line.split(" on ").nth(1).unwrap().split(' ').next().unwrap();
        assert!(on.split(',').all(|g| g.starts_with(&format!("{node}:"))), "{line}");
    }
    // A third client on n1 waits although n2... is full too; but it never gets another node's.
    let (mut e, le) = n1.alloc(&["--job", "e", "--hold", "1s"]);
    let line = le.wait_for("granted", Duration::from_secs(10));
    assert!(line.contains(" on n1:"), "{line}");
    let s = ctl.status_json();
    let clients: Vec<(String, String)> = s["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["job"].as_str().unwrap().to_string(), c["node"].as_str().unwrap().to_string()))
        .collect();
    assert!(clients.iter().all(|(job, node)| node == if job == "d" { "n2" } else { "n1" }), "{clients:?}");
    for p in [&mut a, &mut b, &mut d, &mut e] {
        assert!(wait_exit(p, Duration::from_secs(15)).success());
    }
    // The record: every grant on the grantee's node; no GPU with two holders at once.
    let events = record(&ctl);
    let node_of_gpu: std::collections::HashMap<u64, String> = s["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["id"].as_u64().unwrap(), g["node"].as_str().unwrap().to_string()))
        .collect();
    let mut holder: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut lease_gpus: std::collections::HashMap<u64, Vec<u64>> = std::collections::HashMap::new();
    let mut grants = 0;
    for e in &events {
        match e["event"].as_str().unwrap() {
            "granted" => {
                grants += 1;
                let job = e["job"].as_str().unwrap();
                let gpus: Vec<u64> = e["gpus"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap()).collect();
                for g in &gpus {
                    assert_eq!(node_of_gpu[g], if job == "d" { "n2" } else { "n1" }, "{e}");
                    assert!(holder.insert(*g, e["lease"].as_u64().unwrap()).is_none(), "two holders: {e}");
                }
                lease_gpus.insert(e["lease"].as_u64().unwrap(), gpus);
            }
            "released" => {
                for g in lease_gpus.remove(&e["lease"].as_u64().unwrap()).unwrap_or_default() {
                    holder.remove(&g);
                }
            }
            _ => {}
        }
    }
    assert_eq!(grants, 4, "{events:?}");
}

#[test]
fn a_gang_across_two_nodes_is_granted_in_one_decision() {
    let c = Cluster::new("cluster-gang");
    let ctl = c.controller(&[]);
    let (n1, n2) = (c.executor("n1"), c.executor("n2"));
    wait_status(&ctl, "both nodes", |s| node_up(s, "n1") && node_up(s, "n2"));
    let (mut r0, l0) = n1.alloc(&["--job", "rank0", "--group", "run-7", "--group-size", "2", "--hold", "1s"]);
    // Alone, the first member waits: nothing is granted until the group is complete.
    let s = wait_status(&ctl, "the first member waiting", |s| {
        s["clients"].as_array().unwrap().iter().any(|c| c["job"] == "rank0" && c["queued"] == 1)
    });
    assert!(s["gpus"].as_array().unwrap().iter().all(|g| g["holders"].as_array().unwrap().is_empty()), "{s}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(r0.try_wait().unwrap().is_none());
    let (mut r1, l1) = n2.alloc(&["--job", "rank1", "--group", "run-7", "--group-size", "2", "--hold", "1s"]);
    let g0 = l0.wait_for("granted", Duration::from_secs(10));
    let g1 = l1.wait_for("granted", Duration::from_secs(10));
    assert!(g0.contains(" on n1:"), "{g0}");
    assert!(g1.contains(" on n2:"), "{g1}");
    assert!(wait_exit(&mut r0, Duration::from_secs(10)).success());
    assert!(wait_exit(&mut r1, Duration::from_secs(10)).success());
    let events = record(&ctl);
    let granted: Vec<&Value> = events.iter().filter(|e| e["event"] == "granted").collect();
    assert_eq!(granted.len(), 2, "{events:?}");
    // One decision: the two grants are consecutive events.
    assert_eq!(granted[1]["seq"].as_u64().unwrap(), granted[0]["seq"].as_u64().unwrap() + 1, "{events:?}");
}

#[test]
fn an_executor_killed_loses_its_gpus_and_gets_them_back_when_it_returns() {
    let c = Cluster::new("cluster-kill");
    let ctl = c.controller(&[]);
    let n1 = c.executor("n1");
    let n2 = c.executor("n2");
    let s = wait_status(&ctl, "both nodes", |s| node_up(s, "n1") && node_up(s, "n2"));
    let ids_before = gpus_of(&s, "n1");
    let (mut held, l) = n1.alloc(&["--job", "victim"]);
    l.wait_for("granted", Duration::from_secs(10));
    n1.signal(libc::SIGKILL);
    // Its client is told: the session ends, alloc exits non-zero.
    assert!(!wait_exit(&mut held, Duration::from_secs(10)).success());
    let s = wait_status(&ctl, "n1 down", |s| !node_up(s, "n1") && gpus_of(s, "n1").iter().all(|(_, healthy)| !healthy));
    assert!(node_up(&s, "n2"));
    // The other node goes on.
    let out = n2.cli(&["alloc", "--job", "other", "--hold", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(n1);
    // Back, under the same name: the same GPU ids, healthy again.
    let _n1 = c.executor("n1");
    let s = wait_status(&ctl, "n1 back", |s| node_up(s, "n1") && gpus_of(s, "n1").iter().all(|(_, h)| *h));
    assert_eq!(gpus_of(&s, "n1"), ids_before);
    let kinds: Vec<String> = record(&ctl).iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    let downs = kinds.iter().filter(|k| *k == "node-down").count();
    let ups = kinds.iter().filter(|k| *k == "node-up").count();
    assert_eq!((downs, ups), (1, 3), "{kinds:?}");
}

#[test]
fn start_order_does_not_matter() {
    let c = Cluster::new("cluster-order");
    let n1 = c.executor("n1");
    // A client before the controller: told the controller is unreachable, not hung.
    let out = n1.cli(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("controller"), "{}", String::from_utf8_lossy(&out.stderr));
    // A client that asks before the controller is up waits at its executor until the node is
    // registered, then is granted.
    let (mut early, l) = n1.alloc(&["--job", "early", "--hold", "0s"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(early.try_wait().unwrap().is_none(), "the early client gave up");
    let ctl = c.controller(&[]);
    let line = l.wait_for("granted", Duration::from_secs(10));
    assert!(line.contains(" on n1:"), "{line}");
    assert!(wait_exit(&mut early, Duration::from_secs(10)).success());
    wait_status(&ctl, "n1 registered", |s| node_up(s, "n1"));
    let out = n1.cli(&["alloc", "--job", "later", "--hold", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_client_cannot_join_as_an_executor_or_claim_a_node() {
    use acb_assigner::proto;
    let c = Cluster::new("cluster-trust");
    let ctl = c.controller(&["--listen", &format!("unix:{}", c.dir.0.join("ctl.sock").display())]);
    let _n1 = c.executor("n1");
    wait_status(&ctl, "n1 registered", |s| node_up(s, "n1"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let join = |channel: tonic::transport::Channel, token: Option<&'static str>| async move {
            let mut client = proto::cluster_client::ClusterClient::new(channel);
            let register = proto::ExecutorReport {
                msg: Some(proto::executor_report::Msg::Register(proto::Register {
                    node: "n1".into(),
                    gpus: vec![proto::NodeGpu {
                        index: 0,
                        uuid: "evil".into(),
                        memory: 1 << 30,
                        healthy: true,
                        ..Default::default()
                    }],
                    version: "x".into(),
                })),
            };
            let mut req = tonic::Request::new(tokio_stream::iter(vec![register]));
            if let Some(t) = token {
                req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            client.join(req).await.map(|_| ()).unwrap_err().code()
        };
        let tcp = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", c.port)).unwrap();
        // Over TCP: daemons only.
        assert_eq!(join(tcp.connect().await.unwrap(), None).await, tonic::Code::Unauthenticated);
        assert_eq!(
            join(tcp.connect().await.unwrap(), Some("wrong-token-0123456789")).await,
            tonic::Code::Unauthenticated
        );
        // Over the controller's Unix socket (a local client, no token needed to ask for GPUs):
        // joining needs the cluster token.
        let unix = acb_client::connection::channel(
            &format!("unix:{}", c.dir.0.join("ctl.sock").display()).parse().unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(join(unix.clone(), None).await, tonic::Code::PermissionDenied);
        // A local client claiming to be on n1 is not believed: the controller's own node has
        // no GPUs, so it is told so (and never granted n1's).
        let mut rpc = proto::assigner_client::AssignerClient::new(unix);
        let mut req = tonic::Request::new(proto::AllocateRequest { gpus: 1, job: "liar".into(), ..Default::default() });
        req.metadata_mut().insert("acb-node", "n1".parse().unwrap());
        let err = rpc.alloc_request(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(err.message().contains("\"ctl\""), "{}", err.message());
    });
    // Nothing registered under the liar's name, nothing granted.
    let s = ctl.status_json();
    assert!(s["gpus"].as_array().unwrap().iter().all(|g| g["uuid"] != "evil"), "{s}");
    assert!(s["gpus"].as_array().unwrap().iter().all(|g| g["holders"].as_array().unwrap().is_empty()), "{s}");
}

#[test]
fn bad_cluster_settings_are_refused_clearly() {
    let bin = env!("CARGO_BIN_EXE_acb-assigner");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).arg("serve").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&["--role", "executor", "--listen", "unix:/tmp/x.sock", "--gpus", "none"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--controller"), "{err}");
    let (code, err) = run(&["--role", "boss", "--gpus", "none"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("standalone, controller or executor"), "{err}");
    let (code, err) = run(&["--role", "controller", "--listen", "tcp:127.0.0.1:1", "--gpus", "none"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cluster token"), "{err}");
    let (code, err) = run(&["--role", "executor", "--controller", "unix:/tmp/c.sock", "--gpus", "none"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("tcp:HOST:PORT"), "{err}");
    let (code, err) = run(&["--role", "executor", "--controller", "tcp:bad_name:1", "--gpus", "none"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("tcp:HOST:PORT"), "{err}");
}

#[test]
fn an_executor_finds_its_controller_by_name() {
    // A Kubernetes Service's DNS name, say: resolved at every connection attempt. `localhost`
    // may resolve to ::1 first, where nothing listens; the next address is tried.
    let c = Cluster::new("cluster-by-name");
    let ctl = c.controller(&[]);
    let n1 = c.executor_via("n1", "localhost");
    wait_status(&ctl, "n1 registered through the name localhost", |s| node_up(s, "n1"));
    let out = n1.cli(&["alloc", "--job", "named", "--hold", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_cluster_file_names_the_controller_and_the_nodes() {
    let c = Cluster::new("cluster-file");
    let file = c.dir.0.join("cluster.toml");
    std::fs::write(
        &file,
        format!(
            "controller = \"tcp:127.0.0.1:{}\"\ncluster_token_file = \"{}\"\nheartbeat = \"100ms\"\n\
             [[nodes]]\nname = \"n1\"\naddress = \"10.0.0.11\"\n[[nodes]]\nname = \"n9\"\n",
            c.port,
            c.token.display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let tcp = format!("tcp:127.0.0.1:{}", c.port);
    let ctl = Daemon::start(&[
        "--role",
        "controller",
        "--listen",
        &tcp,
        "--gpus",
        "none",
        "--node-name",
        "ctl",
        "--cluster-file",
        file,
    ]);
    // The executor finds its controller and token in the same file.
    let _n1 =
        Daemon::start(&["--role", "executor", "--gpus", "fake:1x8GiB", "--node-name", "n1", "--cluster-file", file]);
    let s = wait_status(&ctl, "n1 registered", |s| node_up(s, "n1"));
    let n9 = s["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "n9").expect("n9 listed");
    assert_eq!(n9["up"], false, "{s}");
    assert!(n9["reason"].as_str().unwrap().contains("never registered"), "{s}");
    // A node listed twice is refused.
    std::fs::write(c.dir.0.join("twice.toml"), "[[nodes]]\nname = \"a\"\n[[nodes]]\nname = \"a\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_acb-assigner"))
        .args(["serve", "--gpus", "none", "--cluster-file", c.dir.0.join("twice.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listed once"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let (ca, cert, key) = common::server_pki(vec!["127.0.0.1".to_string()]);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    (write("ca.pem", &ca), write("server.pem", &cert), write("server.key", &key))
}

/// An executor started with `env`, killed on drop.
struct Executor(std::process::Child, std::path::PathBuf);

impl Executor {
    fn start(c: &Cluster, node: &str, env: &[(&str, &std::path::Path)]) -> Executor {
        let socket = c.dir.0.join(format!("{node}.sock"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_acb-assigner"));
        cmd.args(["serve", "--role", "executor", "--gpus", "fake:1x8GiB", "--node-name", node])
            .arg("--controller")
            .arg(format!("tcp:127.0.0.1:{}", c.port))
            .arg("--cluster-token-file")
            .arg(&c.token)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        common::Lines::new(child.stdout.take().unwrap()).wait_for("ready", Duration::from_secs(20));
        Executor(child, socket)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_executor_links_to_a_tls_controller_with_the_ca_and_not_without() {
    let c = Cluster::new("cluster-tls");
    let (ca, cert, key) = pki(&c.dir.0);
    let ctl = c.controller(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    // Without the CA the executor cannot link (it does not fall back to plaintext): its node
    // never registers, and its clients are told so.
    let plain = Executor::start(&c, "plain", &[]);
    // With it, the link is up.
    let _tls = Executor::start(&c, "tls", &[("ACB_TLS_CA", &ca)]);
    let s = wait_status(&ctl, "the TLS executor registered", |s| node_up(s, "tls"));
    assert!(s["nodes"].as_array().unwrap().iter().all(|n| n["name"] != "plain"), "{s}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_acb-assigner"))
        .args(["status", "--assigner", &format!("unix:{}", plain.1.display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach its controller"), "{err}");
}

/// A library client (it resumes its session) of the executor at `socket`, member of `group`.
fn member(socket: &std::path::Path, job: &str, group: &str) -> acb_client::Client {
    let group = Some(acb_client::Group { name: group.into(), size: 2 });
    acb_client::Client::new(acb_client::Config { group, ..common::client_config(socket, job) }).unwrap()
}

#[test]
fn a_gang_restored_after_a_controller_restart_still_gives_its_gpus_back_together() {
    let c = Cluster::new("cluster-gang-restart");
    let state = c.dir.0.join("state");
    let state = state.to_str().unwrap();
    let mut ctl = c.controller(&["--state-dir", state, "--reclaim-grace", "20s"]);
    let (n1, n2) = (c.executor("n1"), c.executor("n2"));
    wait_status(&ctl, "both nodes", |s| node_up(s, "n1") && node_up(s, "n2"));
    let request = acb_client::Request { timeout: Some(Duration::from_secs(10)), ..Default::default() };
    let a = member(&n1.socket, "rank0", "ddp-7");
    let b = member(&n2.socket, "rank1", "ddp-7");
    let (la, lb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.begin(&request));
        let tb = s.spawn(|| b.begin(&request));
        (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap())
    });
    // The controller dies mid-phase and comes back with its saved state.
    ctl.signal(libc::SIGKILL);
    let _ = wait_exit(&mut ctl.child, Duration::from_secs(10));
    let ctl = c.controller(&["--state-dir", state, "--reclaim-grace", "20s"]);
    wait_status(&ctl, "both members resumed", |s| {
        let resumed =
            |job: &str| s["clients"].as_array().unwrap().iter().any(|x| x["job"] == job && x["orphan"] == false);
        node_up(s, "n1") && node_up(s, "n2") && resumed("rank0") && resumed("rank1")
    });
    let held = |s: &serde_json::Value, lease: u64| {
        s["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["holders"].as_array().unwrap().iter().any(|h| h["lease"] == lease))
    };
    let s = ctl.status_json();
    assert!(held(&s, la.id) && held(&s, lb.id), "the gang's leases were not restored: {s}");
    // One member gives its lease back (its client closes): the other is asked to yield, as
    // before the restart (nobody waits for its GPU: only the restored link asks).
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = record(&ctl);
        if events.iter().any(|e| e["event"] == "yield-asked" && e["lease"] == lb.id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rank1 was not asked to yield: {events:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = la;
    drop(b);
}
