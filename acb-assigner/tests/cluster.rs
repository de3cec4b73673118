//! A cluster on three hosts of one machine (network namespaces, `common/lab.rs`): a controller
//! on host 1 (TCP on 10.200.0.2), executors `n1` and `n2` with two fake GPUs each on hosts 2
//! and 3, and real client processes (`acb-assigner alloc`, the client library) on both nodes,
//! through their executor's socket. Each test reads the controller's event record
//! (`watch --replay --json`) and status: gangs across nodes, an executor killed, an executor cut
//! off and healed, the controller killed and restarted, and executors started before it.
//! Needs root (skips otherwise; fails instead under `ACB_REQUIRE_ROOT=1`). Tests run one at a
//! time (each makes its own lab). `ACB_TEST_ASSIGNER_BIN` runs another build of the daemon;
//! `ACB_SHOW_RECORD=1` prints the records of the executor tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/lab.rs"]
mod lab;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use acb_client::{Client, Config, ReleaseMode};
use lab::{Lab, Proc};
use serde_json::Value;

/// The daemon binary: this build's, or `ACB_TEST_ASSIGNER_BIN` (to try another build).
fn bin() -> PathBuf {
    std::env::var_os("ACB_TEST_ASSIGNER_BIN").map_or_else(|| PathBuf::from(common::BIN), PathBuf::from)
}

/// The controller's TCP port on host 1.
const PORT: u16 = 7700;
/// The heartbeat the controller asks for: a node is lost after 3 missed (0.6 s).
const HEARTBEAT: &str = "200ms";
/// The controller is also given a clients' auth token (and status and watch send it): without
/// one, `serve` refuses its non-loopback TCP listener even with the cluster token and
/// `--insecure` (the check when the listeners are bound counts only `--auth-token-file`).
const AUTH_WORKAROUND: bool = false;
/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A controller and two executors on a lab of three hosts. Node `n` (1 or 2) is host `n + 1`.
struct Cluster {
    controller: Option<Proc>,
    executors: Vec<Option<Proc>>,
    token: PathBuf,
    /// The clients' auth token the controller requires (see [`AUTH_WORKAROUND`]).
    auth: PathBuf,
    /// Last: its drop kills what still runs and removes the namespaces.
    lab: Lab,
}

impl Cluster {
    /// The lab and the cluster token; nothing started yet. `None`: skipped.
    fn new(test: &str) -> Option<Cluster> {
        let lab = Lab::new(test, 3)?;
        let token = lab.dir.0.join("cluster.token");
        std::fs::write(&token, "lab-cluster-token-0123456789\n").unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let auth = lab.dir.0.join("auth.token");
        std::fs::write(&auth, "lab-client-token-0123456789\n").unwrap();
        std::fs::set_permissions(&auth, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        Some(Cluster { controller: None, executors: vec![None, None], token, auth, lab })
    }

    /// The whole cluster, controller first, every node up.
    fn up(test: &str) -> Option<Cluster> {
        let mut c = Cluster::new(test)?;
        c.start_controller();
        c.start_executor(1);
        c.start_executor(2);
        c.wait_nodes_up(&["n1", "n2"]);
        Some(c)
    }

    fn ctl_socket(&self) -> PathBuf {
        self.lab.dir.0.join("ctl.sock")
    }

    fn socket(&self, node: usize) -> PathBuf {
        self.lab.dir.0.join(format!("n{node}.sock"))
    }

    fn start_controller(&mut self) {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--role", "controller", "--listen", &format!("tcp:{}:{PORT}", Lab::addr(1))])
            .arg("--listen")
            .arg(format!("unix:{}", self.ctl_socket().display()))
            .args(["--gpus", "none", "--node-name", "ctl", "--heartbeat", HEARTBEAT, "--scheduler", "gpu-affinity"])
            .args(["--insecure", "--reclaim-grace", "10s", "--cluster-token-file"])
            .arg(&self.token)
            .arg("--state-dir")
            .arg(self.lab.dir.0.join("state"))
            .env("RUST_LOG", "info");
        if AUTH_WORKAROUND {
            cmd.arg("--auth-token-file").arg(&self.auth);
        }
        let name = if self.controller.is_some() { "controller-restarted" } else { "controller" };
        let p = self.lab.spawn(1, name, cmd);
        p.lines.wait_for("ready", WAIT);
        self.controller = Some(p);
    }

    fn start_executor(&mut self, node: usize) {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--role", "executor", "--controller", &format!("tcp:{}:{PORT}", Lab::addr(1))])
            .arg("--listen")
            .arg(format!("unix:{}", self.socket(node).display()))
            .args(["--gpus", "fake:2x16GiB", "--node-name", &format!("n{node}"), "--cluster-token-file"])
            .arg(&self.token)
            .env("RUST_LOG", "info");
        let p = self.lab.spawn(node + 1, &format!("executor-n{node}"), cmd);
        p.lines.wait_for("ready", WAIT);
        self.executors[node - 1] = Some(p);
    }

    /// `acb-assigner alloc --job JOB ARGS` on node `node` (its host, its executor's socket).
    fn alloc(&self, node: usize, job: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.arg("alloc").arg("--assigner").arg(format!("unix:{}", self.socket(node).display()));
        cmd.args(["--job", job]).args(args);
        self.lab.spawn(node + 1, job, cmd)
    }

    /// The controller's status.
    fn status(&self) -> Value {
        let mut cmd = Command::new(bin());
        cmd.args(["status", "--json", "--assigner"]).arg(format!("unix:{}", self.ctl_socket().display()));
        if AUTH_WORKAROUND {
            cmd.arg("--auth-token-file").arg(&self.auth);
        }
        let mut p = self.lab.spawn(0, "status", cmd);
        let line = p.lines.next(WAIT).unwrap_or_else(|| panic!("status said nothing: {}", p.log_tail(5)));
        p.wait(WAIT);
        serde_json::from_str(&line).unwrap()
    }

    /// The controller's event record so far (`watch --replay --json` up to the history's end).
    fn record(&self) -> Vec<Value> {
        let mut cmd = Command::new(bin());
        cmd.args(["watch", "--replay", "--json", "--assigner"]).arg(format!("unix:{}", self.ctl_socket().display()));
        if AUTH_WORKAROUND {
            cmd.arg("--auth-token-file").arg(&self.auth);
        }
        let p = self.lab.spawn(0, "watch", cmd);
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = p.lines.next(left).unwrap_or_else(|| panic!("the record did not end: {}", p.log_tail(5)));
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["event"] == "history-end" {
                return out;
            }
            out.push(v);
        }
    }

    /// Polls `f` on the status until it says yes (then returns when), for at most `limit`.
    fn wait_status<T>(&self, what: &str, limit: Duration, mut f: impl FnMut(&Value) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status();
            if let Some(t) = f(&s) {
                return t;
            }
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}; status: {s:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `f` on the record until it says yes, for at most `limit`.
    fn wait_record<T>(&self, what: &str, limit: Duration, mut f: impl FnMut(&[Value]) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.record();
            if let Some(t) = f(&r) {
                return t;
            }
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}; record:\n{}", show(&r));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_nodes_up(&self, nodes: &[&str]) {
        self.wait_status(&format!("nodes {nodes:?} up with their GPUs healthy"), WAIT, |s| {
            nodes
                .iter()
                .all(|n| node_up(s, n) == Some(true) && gpus_of(s, n).iter().all(|g| g["healthy"] == true))
                .then_some(())
        });
    }
}

fn show(r: &[Value]) -> String {
    r.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}

fn node_up(s: &Value, node: &str) -> Option<bool> {
    s["nodes"].as_array().unwrap().iter().find(|n| n["name"] == node).and_then(|n| n["up"].as_bool())
}

fn gpus_of<'a>(s: &'a Value, node: &str) -> Vec<&'a Value> {
    s["gpus"].as_array().unwrap().iter().filter(|g| g["node"] == node).collect()
}

/// Every client the controller lists is on the node of the executor it used.
fn check_client_nodes(s: &Value) {
    for c in s["clients"].as_array().unwrap() {
        assert_eq!(c["node"].as_str(), Some(node_of_job(c["job"].as_str().unwrap())), "client on the wrong node: {c}");
    }
}

/// The node a job runs on: every job here is named after it (`n1-...`).
fn node_of_job(job: &str) -> &str {
    job.split('-').next().unwrap()
}

/// Events of `kind` (and, with `job`, of that job).
fn of<'a>(r: &'a [Value], kind: &str, job: Option<&str>) -> Vec<&'a Value> {
    r.iter().filter(|e| e["event"] == kind && job.is_none_or(|j| e["job"] == j)).collect()
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

/// Each GPU's node, from the node-up events of a record (checked against `status`).
fn gpu_nodes(r: &[Value], status: &Value) -> BTreeMap<u64, String> {
    let mut m = BTreeMap::new();
    for e in of(r, "node-up", None) {
        for g in ids(&e["gpus"]) {
            let node = e["node"].as_str().unwrap().to_string();
            let prev = m.insert(g, node.clone());
            assert!(prev.is_none_or(|p| p == node), "gpu#{g} registered by two nodes:\n{}", show(r));
        }
    }
    for g in status["gpus"].as_array().unwrap() {
        let id = g["id"].as_u64().unwrap();
        assert_eq!(m.get(&id).map(String::as_str), g["node"].as_str(), "gpu#{id}: record and status disagree");
    }
    m
}

/// The lease ended in the record (released, or taken back).
fn ended(r: &[Value], lease: u64) -> bool {
    r.iter().any(|e| (e["event"] == "released" || e["event"] == "taken-back") && e["lease"] == lease)
}

/// Nothing granted to a client on a node other than its own.
fn check_same_node(r: &[Value], nodes: &BTreeMap<u64, String>) {
    for e in of(r, "granted", None) {
        let job = e["job"].as_str().unwrap();
        for g in ids(&e["gpus"]) {
            assert_eq!(nodes.get(&g).map(String::as_str), Some(node_of_job(job)), "granted across nodes: {e}");
        }
    }
}

/// No exclusive GPU ever has two holders, over the records of successive controller runs: a
/// later run's restored lease (a grant of request 0 with the same id) continues a held one.
fn check_one_holder(runs: &[&[Value]]) {
    let mut holders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut gpus: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (run, r) in runs.iter().enumerate() {
        for e in r.iter() {
            match e["event"].as_str().unwrap() {
                "granted" => {
                    let lease = e["lease"].as_u64().unwrap();
                    for g in ids(&e["gpus"]) {
                        let h = holders.entry(g).or_default();
                        let continued = run > 0 && e["request"] == 0 && h.contains(&lease);
                        assert!(h.is_empty() || continued, "gpu#{g} granted while held by leases {h:?}: {e}");
                        h.insert(lease);
                    }
                    gpus.insert(lease, ids(&e["gpus"]));
                }
                "released" | "taken-back" => {
                    let lease = e["lease"].as_u64().unwrap();
                    for g in gpus.get(&lease).into_iter().flatten() {
                        holders.entry(*g).or_default().remove(&lease);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The lease id and `NODE:IDX` list of `alloc`'s "granted lease L on NODE:IDX,.. after S s".
fn granted(p: &Proc) -> (u64, Vec<String>) {
    let line = p.lines.wait_for("granted lease", WAIT);
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[2].parse().unwrap(), words[4].split(',').map(str::to_string).collect())
}

fn assert_on(node: &str, gpus: &[String]) {
    assert!(gpus.iter().all(|g| g.starts_with(&format!("{node}:"))), "expected GPUs of {node}, got {gpus:?}");
}

/// A real client (the client library) of node `node`, through its executor's socket; it
/// resumes its session when it loses it, and retries opening one `retries` times.
fn client(c: &Cluster, node: usize, job: &str, retries: u32) -> Client {
    let config =
        Config { connect_retries: retries, release: ReleaseMode::Eager, ..common::client_config(&c.socket(node), job) };
    Client::new(config).unwrap()
}

fn phase() -> acb_client::Request {
    acb_client::Request { timeout: Some(WAIT), ..acb_client::Request::default() }
}

#[test]
fn a_gang_across_two_nodes_is_granted_in_one_decision_and_no_grant_crosses_nodes() {
    let Some(c) = Cluster::up("gang") else { return };
    let gang = ["--gpus", "1", "--group", "g", "--group-size", "2", "--hold", "2s"];
    let mut a = c.alloc(1, "n1-gang", &gang);
    // The first member waits for the second.
    c.wait_record("n1-gang requested", WAIT, |r| (!of(r, "requested", Some("n1-gang")).is_empty()).then_some(()));
    std::thread::sleep(Duration::from_millis(300));
    let r = c.record();
    assert!(of(&r, "granted", Some("n1-gang")).is_empty(), "one member of a 2-gang was granted alone:\n{}", show(&r));
    let mut b = c.alloc(2, "n2-gang", &gang);
    let (lease_a, gpus_a) = granted(&a);
    let (lease_b, gpus_b) = granted(&b);
    assert_on("n1", &gpus_a);
    assert_on("n2", &gpus_b);
    let s = c.status();
    assert_eq!(s["clients"].as_array().unwrap().len(), 2, "{s:#}");
    check_client_nodes(&s);
    // While the gang holds one GPU of each node: a request for both of n1's waits (one of n2's
    // is free, and must not make up the pair), and one for n2's free GPU is granted there.
    let mut pair = c.alloc(1, "n1-pair", &["--gpus", "2", "--hold", "500ms"]);
    let mut solo = c.alloc(2, "n2-solo", &["--gpus", "1", "--hold", "500ms"]);
    assert_on("n2", &granted(&solo).1);
    assert_on("n1", &granted(&pair).1);
    for p in [&mut a, &mut b, &mut pair, &mut solo] {
        let s = p.wait(WAIT);
        assert!(s.success(), "{}: {s}", p.name);
    }

    let r = c.record();
    let s = c.status();
    let nodes = gpu_nodes(&r, &s);
    let ga = of(&r, "granted", Some("n1-gang"));
    let gb = of(&r, "granted", Some("n2-gang"));
    assert_eq!((ga.len(), gb.len()), (1, 1), "{}", show(&r));
    assert_eq!((ga[0]["lease"].as_u64(), gb[0]["lease"].as_u64()), (Some(lease_a), Some(lease_b)));
    assert_eq!(seq(ga[0]).abs_diff(seq(gb[0])), 1, "the gang's grants are not one decision:\n{}", show(&r));
    let asked_b = seq(of(&r, "requested", Some("n2-gang"))[0]);
    assert!(seq(ga[0]) > asked_b, "n1-gang was granted before its partner asked:\n{}", show(&r));
    // The pair got n1's GPUs only once the gang's member there gave its GPU back.
    let released_a = of(&r, "released", None).into_iter().find(|e| e["lease"] == lease_a).map(seq).unwrap();
    let pair_granted = seq(of(&r, "granted", Some("n1-pair"))[0]);
    assert!(pair_granted > released_a, "n1-pair was granted while n1-gang held:\n{}", show(&r));
    check_same_node(&r, &nodes);
    check_one_holder(&[&r]);
    // Every client is on the node of the executor it used.
    assert_eq!(of(&r, "granted", None).len(), 4, "{}", show(&r));
    println!(
        "gang: granted as events {} and {}; {} grants, none across nodes, no GPU with two holders",
        seq(ga[0]),
        seq(gb[0]),
        of(&r, "granted", None).len()
    );
}

#[test]
fn an_executor_killed_mid_lease_ends_its_clients_leases_and_the_other_node_goes_on() {
    let Some(mut c) = Cluster::up("executor-killed") else { return };
    let mut a1 = c.alloc(1, "n1-a", &["--gpus", "1"]);
    let mut a2 = c.alloc(1, "n1-b", &["--gpus", "1"]);
    let mut b = c.alloc(2, "n2-a", &["--gpus", "1"]);
    let (l1, _) = granted(&a1);
    let (l2, _) = granted(&a2);
    granted(&b);
    let s = c.status();
    check_client_nodes(&s);
    let n1_gpus: Vec<u64> = gpus_of(&s, "n1").iter().map(|g| g["id"].as_u64().unwrap()).collect();
    assert_eq!(n1_gpus.len(), 2);

    let killed = Instant::now();
    let e = c.executors[0].as_mut().unwrap();
    e.signal(libc::SIGKILL);
    e.wait(WAIT);
    // Its clients are told.
    for p in [&mut a1, &mut a2] {
        let s = p.wait(WAIT);
        assert_eq!(s.code(), Some(3), "{} was not told that its lease ended when its executor died", p.name);
        println!("{} ended with {s} {:.0} ms after the kill", p.name, killed.elapsed().as_secs_f64() * 1e3);
    }
    // The controller takes the node's GPUs out and the leases back.
    let r = c.wait_record("n1 down, its GPUs unhealthy, its leases ended", WAIT, |r| {
        let down = r.iter().any(|e| e["event"] == "node-down" && e["node"] == "n1");
        let unhealthy = n1_gpus
            .iter()
            .all(|g| r.iter().any(|e| e["event"] == "gpu-health" && e["gpu"] == *g && e["healthy"] == false));
        (down && unhealthy && ended(r, l1) && ended(r, l2)).then(|| r.to_vec())
    });
    println!("n1 down in the record {:.0} ms after the kill", killed.elapsed().as_secs_f64() * 1e3);
    if std::env::var_os("ACB_SHOW_RECORD").is_some() {
        println!("{}", show(&r));
    }
    let s = c.status();
    assert_eq!(node_up(&s, "n1"), Some(false), "{s:#}");
    for g in gpus_of(&s, "n1") {
        assert!(g["healthy"] == false && g["holders"].as_array().unwrap().is_empty(), "{g}");
    }
    // The other node goes on: its client still holds, and a new one is granted there.
    assert!(b.exited().is_none(), "n2's client ended when n1's executor died");
    assert_eq!(node_up(&s, "n2"), Some(true));
    let mut more = c.alloc(2, "n2-b", &["--gpus", "1", "--hold", "200ms"]);
    assert_on("n2", &granted(&more).1);
    assert!(more.wait(WAIT).success());
    let r2 = c.record();
    assert!(r2.len() > r.len());
    check_same_node(&r2, &gpu_nodes(&r2, &c.status()));
    check_one_holder(&[&r2]);
}

#[test]
fn an_executor_cut_off_is_lost_within_a_few_heartbeats_and_comes_back_when_healed() {
    let Some(c) = Cluster::up("partition") else { return };
    let mut a = c.alloc(1, "n1-a", &["--gpus", "1"]);
    let mut b = c.alloc(2, "n2-a", &["--gpus", "1"]);
    let (la, _) = granted(&a);
    granted(&b);
    let n1_gpus: Vec<u64> = gpus_of(&c.status(), "n1").iter().map(|g| g["id"].as_u64().unwrap()).collect();

    // n1 is host 2.
    let cut = Instant::now();
    c.lab.link(2, false);
    c.wait_status("n1 lost", Duration::from_secs(5), |s| (node_up(s, "n1") == Some(false)).then_some(()));
    let lost_after = cut.elapsed();
    let r = c.wait_record("n1 down, its GPUs unhealthy, its lease ended", WAIT, |r| {
        let down = of(r, "node-down", None).iter().any(|e| e["node"] == "n1");
        let unhealthy = n1_gpus
            .iter()
            .all(|g| r.iter().any(|e| e["event"] == "gpu-health" && e["gpu"] == *g && e["healthy"] == false));
        (down && unhealthy && ended(r, la)).then(|| r.to_vec())
    });
    let down_seq = seq(of(&r, "node-down", None).into_iter().find(|e| e["node"] == "n1").unwrap());
    // The other node goes on.
    let mut more = c.alloc(2, "n2-b", &["--gpus", "1", "--hold", "200ms"]);
    assert_on("n2", &granted(&more).1);
    assert!(more.wait(WAIT).success());
    assert!(b.exited().is_none(), "n2's client ended when n1 was cut off");

    // (Its executor cannot reach the controller to tell it: it learns when the link heals.)
    let told_while_cut = a.exited();
    // Healed: n1 registers again, its GPUs healthy.
    let healed = Instant::now();
    c.lab.link(2, true);
    c.wait_nodes_up(&["n1"]);
    let back_after = healed.elapsed();
    c.wait_record("n1 up again in the record", WAIT, |r| {
        let up = r.iter().any(|e| e["event"] == "node-up" && e["node"] == "n1" && seq(e) > down_seq);
        let healthy = n1_gpus.iter().all(|g| {
            r.iter().any(|e| e["event"] == "gpu-health" && e["gpu"] == *g && e["healthy"] == true && seq(e) > down_seq)
        });
        (up && healthy).then_some(())
    });
    // The client cut off with its node learns that its lease is gone.
    let told = a.wait(WAIT);
    assert_eq!(told.code(), Some(3), "n1's cut-off client was not told that its lease ended");
    let mut again = c.alloc(1, "n1-b", &["--gpus", "2", "--hold", "200ms"]);
    assert_on("n1", &granted(&again).1);
    assert!(again.wait(WAIT).success());
    let r = c.record();
    check_same_node(&r, &gpu_nodes(&r, &c.status()));
    check_one_holder(&[&r]);
    if std::env::var_os("ACB_SHOW_RECORD").is_some() {
        println!("{}", show(&r));
    }
    println!(
        "partition: n1 lost {:.0} ms after the cut, back {:.0} ms after the heal; its client ended with {told} \
         ({})",
        lost_after.as_secs_f64() * 1e3,
        back_after.as_secs_f64() * 1e3,
        if told_while_cut.is_some() { "told during the cut" } else { "told only after the heal" }
    );
}

#[test]
fn a_restarted_controller_keeps_a_lease_held_through_the_restart_and_grants_again() {
    let Some(mut c) = Cluster::up("controller-restart") else { return };
    // A real client mid-phase on n1 across the restart.
    let a = client(&c, 1, "n1-mid-phase", 3);
    let lease = a.begin(&phase()).unwrap();
    let r1 = c.record();
    let held: Vec<u64> = of(&r1, "granted", Some("n1-mid-phase"))
        .first()
        .map(|e| ids(&e["gpus"]))
        .unwrap_or_else(|| panic!("no grant for n1-mid-phase:\n{}", show(&r1)));
    assert_eq!(of(&r1, "granted", None)[0]["lease"].as_u64(), Some(lease.id));

    let ctl = c.controller.as_mut().unwrap();
    ctl.signal(libc::SIGKILL);
    ctl.wait(WAIT);
    c.start_controller();
    let restarted = Instant::now();
    c.wait_nodes_up(&["n1", "n2"]);
    let nodes_back = restarted.elapsed();
    // Another client of n1 asks for both of n1's GPUs meanwhile.
    let mut waiter = None;
    let deadline = Instant::now() + WAIT;
    while waiter.is_none() {
        let mut w = c.alloc(1, "n1-waiter", &["--gpus", "2", "--hold", "200ms"]);
        std::thread::sleep(Duration::from_millis(300));
        match w.exited() {
            // The executor may not reach the new controller yet: ask again.
            Some(s) => assert!(Instant::now() < deadline, "n1-waiter cannot ask: {s}: {}", w.log_tail(5)),
            None => waiter = Some(w),
        }
    }
    let mut waiter = waiter.unwrap();
    c.wait_status("the mid-phase client resumed its session", WAIT, |s| {
        s["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["job"] == "n1-mid-phase" && x["orphan"] == false)
            .then_some(())
    });
    let resumed_after = restarted.elapsed();
    c.wait_record("n1-waiter queued", WAIT, |r| (!of(r, "requested", Some("n1-waiter")).is_empty()).then_some(()));
    std::thread::sleep(Duration::from_millis(300));
    let s = c.status();
    let holders: Vec<&Value> = s["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| held.contains(&g["id"].as_u64().unwrap()))
        .flat_map(|g| g["holders"].as_array().unwrap())
        .collect();
    assert!(
        !holders.is_empty() && holders.iter().all(|h| h["lease"] == lease.id && h["job"] == "n1-mid-phase"),
        "the held GPU is not the mid-phase client's after the restart: {s:#}"
    );
    assert!(waiter.lines.ready().iter().all(|l| !l.contains("granted")), "n1-waiter was granted a held GPU");
    // The phase ends; then the waiter is granted.
    let ended_at = c.record().len();
    a.end().unwrap();
    assert_on("n1", &granted(&waiter).1);
    assert!(waiter.wait(WAIT).success());
    // New requests are granted again, on both nodes.
    let mut n2 = c.alloc(2, "n2-new", &["--gpus", "1", "--hold", "200ms"]);
    assert_on("n2", &granted(&n2).1);
    assert!(n2.wait(WAIT).success());

    let r2 = c.record();
    let restored = of(&r2, "granted", Some("n1-mid-phase"));
    assert!(
        restored.first().is_some_and(|e| e["request"] == 0 && e["lease"] == lease.id),
        "the lease was not restored as it was:\n{}",
        show(&r2)
    );
    let released = of(&r2, "released", None).into_iter().find(|e| e["lease"] == lease.id).map(seq);
    let waiter_granted = seq(of(&r2, "granted", Some("n1-waiter"))[0]);
    assert!(released.is_some_and(|s| s < waiter_granted), "n1-waiter granted before the lease ended:\n{}", show(&r2));
    assert!(r2.len() > ended_at);
    check_same_node(&r2, &gpu_nodes(&r2, &c.status()));
    check_one_holder(&[&r1, &r2]);
    println!(
        "controller restart: nodes back {:.0} ms, the client resumed {:.0} ms after the new controller was ready",
        nodes_back.as_secs_f64() * 1e3,
        resumed_after.as_secs_f64() * 1e3
    );
}

#[test]
fn executors_and_a_client_started_before_the_controller_come_up_once_it_starts() {
    let Some(mut c) = Cluster::new("reverse-order") else { return };
    c.start_executor(1);
    c.start_executor(2);
    // A client of n2 that asks before there is a controller (its library retries opening a
    // session for up to ~20 s, and waits 10 s for the grant).
    let a = client(&c, 2, "n2-early", 60);
    let (tx, rx) = std::sync::mpsc::channel();
    let asking = std::thread::spawn(move || {
        let r = a.begin(&acb_client::Request { timeout: Some(Duration::from_secs(10)), ..Default::default() });
        let _ = tx.send(r.as_ref().map(|l| l.id).map_err(ToString::to_string));
        if r.is_ok() {
            a.end().unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    assert!(rx.try_recv().is_err(), "the client was answered with no controller");
    c.start_controller();
    let started = Instant::now();
    c.wait_nodes_up(&["n1", "n2"]);
    let up_after = started.elapsed();
    let lease = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(Ok(lease)) => lease,
        other => panic!("the early client: {other:?}; status {:#}\nrecord:\n{}", c.status(), show(&c.record())),
    };
    let granted_after = started.elapsed();
    asking.join().unwrap();
    let r = c.record();
    let g = of(&r, "granted", Some("n2-early"));
    assert!(g.first().is_some_and(|e| e["lease"] == lease), "{}", show(&r));
    check_same_node(&r, &gpu_nodes(&r, &c.status()));
    println!(
        "reverse order: nodes up {:.0} ms and the early client granted {:.0} ms after the controller started",
        up_after.as_secs_f64() * 1e3,
        granted_after.as_secs_f64() * 1e3
    );
}
