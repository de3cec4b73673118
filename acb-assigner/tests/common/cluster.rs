//! A controller and executors as real processes on loopback, for the cluster tests
//! (`cluster_local.rs`, `cluster_hostile.rs`): start them, poll the controller's status, read
//! its event record.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Daemon, TempDir, free_port};

/// The cluster token the tests' daemons share.
pub const CLUSTER_TOKEN: &str = "cluster-secret-0123456789";

/// A cluster's settings: a temporary directory, the controller's port, the token file.
pub struct Cluster {
    pub dir: TempDir,
    pub port: u16,
    pub token: std::path::PathBuf,
    /// The controller's `--heartbeat`.
    pub heartbeat: &'static str,
}

impl Cluster {
    pub fn new(tag: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let token = dir.0.join("cluster.token");
        std::fs::write(&token, format!("{CLUSTER_TOKEN}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        Cluster { dir, port: free_port(), token, heartbeat: "100ms" }
    }

    /// The controller: TCP on loopback and the Daemon's Unix socket, no GPUs of its own,
    /// gpu-affinity; `extra` flags after these.
    pub fn controller(&self, extra: &[&str]) -> Daemon {
        let tcp = format!("tcp:127.0.0.1:{}", self.port);
        let token = self.token.to_str().unwrap();
        let mut args = vec![
            "--role",
            "controller",
            "--listen",
            &tcp,
            "--gpus",
            "none",
            "--cluster-token-file",
            token,
            "--node-name",
            "ctl",
            "--heartbeat",
            self.heartbeat,
            "--scheduler",
            "gpu-affinity",
        ];
        args.extend_from_slice(extra);
        Daemon::start(&args)
    }

    /// An executor named `node` with two simulated 16 GiB GPUs.
    pub fn executor(&self, node: &str) -> Daemon {
        self.executor_via(node, "127.0.0.1")
    }

    /// [`Cluster::executor`], finding the controller at `host` (an IP or a name).
    pub fn executor_via(&self, node: &str, host: &str) -> Daemon {
        let controller = format!("tcp:{host}:{}", self.port);
        let token = self.token.to_str().unwrap();
        Daemon::start(&[
            "--role",
            "executor",
            "--controller",
            &controller,
            "--gpus",
            "fake:2x16GiB",
            "--cluster-token-file",
            token,
            "--node-name",
            node,
        ])
    }

    /// The controller's TCP endpoint.
    pub fn tcp(&self) -> tonic::transport::Endpoint {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect_timeout(Duration::from_secs(3))
    }
}

/// Polls `daemon`'s status until `ok` holds (10 s at most).
pub fn wait_status(daemon: &Daemon, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_status_with(daemon, &[], what, ok)
}

/// [`wait_status`], with `extra` arguments to `status` (a token file).
pub fn wait_status_with(daemon: &Daemon, extra: &[&str], what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(extra);
        let out = daemon.cli(&args);
        let mut last = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            let s: Value = serde_json::from_slice(&out.stdout).unwrap();
            if ok(&s) {
                return s;
            }
            last = s.to_string();
            last.truncate(4000);
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last status: {last}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn node<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name)
}

pub fn node_up(s: &Value, name: &str) -> bool {
    node(s, name).is_some_and(|n| n["up"] == true)
}

/// The (id, healthy) of `name`'s GPUs.
pub fn gpus_of(s: &Value, name: &str) -> Vec<(u64, bool)> {
    s["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["node"] == name)
        .map(|g| (g["id"].as_u64().unwrap(), g["healthy"].as_bool().unwrap()))
        .collect()
}

pub fn nothing_held(s: &Value) -> bool {
    s["gpus"].as_array().unwrap().iter().all(|g| g["holders"].as_array().unwrap().is_empty())
}

pub fn idle(s: &Value) -> bool {
    s["clients_total"] == 0 && s["queue_total"] == 0 && nothing_held(s)
}

/// The controller's event record, as JSON objects.
pub fn record(daemon: &Daemon) -> Vec<Value> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_acb-assigner"))
        .args(["watch", "--replay", "--json", "--assigner", &daemon.addr()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = super::Lines::new(child.stdout.take().unwrap());
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The history comes at once; a pause of 300 ms means it is all there.
    while let Some(l) = lines.next(Duration::from_millis(300)) {
        out.push(serde_json::from_str(&l).unwrap());
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}
