//! Docker and compose (`deploy/docker/`): the images build from the binaries under test, the
//! example compose project runs two job containers that share the assigner's one (simulated) GPU
//! through the socket volume, brokered, and the daemon's container is healthy, runs as uid
//! 10001, and drains on SIGTERM.
//!
//! The test runs a dockerd of its own (its own data root, exec root, socket and pid file in a
//! temporary directory; no iptables rules, no bridge: every container has `network_mode: none`)
//! and stops it by pid at the end. The client image's base is a Debian 12 root file system with
//! Python made by `deploy/docker/debian-rootfs.sh` (debootstrap, about 40 s and 60 MB from the
//! Debian mirror), kept as `target/acb-docker/bookworm-python3.tar` for the next run.
//!
//! It needs root, dockerd, docker, docker-compose (1.29), and debootstrap or the cached root file
//! system; without them it skips, saying why, unless `ACB_REQUIRE_DOCKER=1` (CI), which makes
//! that a failure. Run alone: `cargo test -p acb-assigner --test docker -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, terminate};

const PROJECT_UID: &str = "10001";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether the test can run; if not, why (a skip, or a failure under ACB_REQUIRE_DOCKER=1).
fn missing() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (dockerd needs it)".into());
    }
    for tool in ["dockerd", "docker", "docker-compose", "timeout"] {
        if !Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Some(format!("{tool} is not installed (apt-get install docker.io docker-compose)"));
        }
    }
    if !rootfs_cache().is_file() && Command::new("debootstrap").arg("--version").output().is_err() {
        return Some(format!(
            "neither debootstrap nor a cached root file system ({}) is here",
            rootfs_cache().display()
        ));
    }
    if libacb().is_none() {
        let dir = Path::new(BIN).parent().unwrap();
        return Some(format!("no libacb.so in {} or its deps/ (cargo build -p acb-ffi)", dir.display()));
    }
    None
}

/// The libacb.so of this build: deps/ first, where `cargo test` leaves it (the one beside the
/// binary is `cargo build`'s, possibly older).
fn libacb() -> Option<PathBuf> {
    let dir = Path::new(BIN).parent().unwrap();
    [dir.join("deps/libacb.so"), dir.join("libacb.so")].into_iter().find(|p| p.is_file())
}

/// A folder with the binaries under test as build.sh wants them (`acb-assigner` and
/// `libacb.so` side by side), hard links where it can.
fn bin_dir(under: &Path) -> PathBuf {
    let dir = under.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    for (from, name) in [(PathBuf::from(BIN), "acb-assigner"), (libacb().unwrap(), "libacb.so")] {
        let to = dir.join(name);
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    dir
}

/// `target/acb-docker/bookworm-python3.tar`, beside the binaries' profile folder.
fn rootfs_cache() -> PathBuf {
    Path::new(BIN).parent().unwrap().parent().unwrap().join("acb-docker").join("bookworm-python3.tar")
}

/// The test's own dockerd and everything it made; all of it is removed on drop.
struct Docker {
    dir: PathBuf,
    daemon: Child,
    project: String,
    compose_up: bool,
}

impl Docker {
    /// Starts dockerd and waits (at most 30 s) until it answers.
    fn start() -> Docker {
        // Short: containerd's sockets live under the exec root (108-byte limit on their paths).
        let dir = PathBuf::from(format!("/tmp/acb-dk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("config")).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let daemon = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Docker { dir, daemon, project: format!("acbtest{}", std::process::id()), compose_up: false };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if d.cmd("docker", 10)
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                break;
            }
            assert!(Instant::now() < deadline, "dockerd did not answer in 30 s:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `tool` talking to this dockerd, killed after `secs` (coreutils `timeout`).
    fn cmd(&self, tool: &str, secs: u32) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-k", "5", &secs.to_string(), tool])
            .env("DOCKER_HOST", format!("unix://{}", self.dir.join("docker.sock").display()))
            .env("DOCKER_CONFIG", self.dir.join("config"))
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .stdin(Stdio::null());
        c
    }

    fn compose(&self, secs: u32) -> Command {
        let mut c = self.cmd("docker-compose", secs);
        c.arg("-f").arg(repo().join("deploy/docker/compose.yaml")).arg("--no-ansi");
        c
    }

    /// Runs `c`, asserting it succeeds; returns its stdout.
    fn ok(&self, mut c: Command, what: &str) -> String {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{what}: {}\n{}", show(&out), self.log());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn docker(&self, args: &[&str]) -> String {
        let mut c = self.cmd("docker", 60);
        c.args(args);
        self.ok(c, &format!("docker {}", args.join(" ")))
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if self.compose_up {
            let _ = self.compose(60).args(["down", "-v", "--timeout", "15"]).output();
        }
        // dockerd stops its containers and its containerd on SIGTERM.
        let t = Instant::now();
        let graceful = terminate(&mut self.daemon, Duration::from_secs(30));
        if t.elapsed() > Duration::from_secs(5) {
            eprintln!("dockerd took {:.1} s to stop; its log ends:\n{}", t.elapsed().as_secs_f64(), self.log());
        }
        if !graceful {
            // Its containerd, which SIGKILL left behind.
            if let Some(pid) = std::fs::read_to_string(self.dir.join("x/containerd/containerd.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2); the pid is the containerd our dockerd started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Mounts a killed daemon left under the directory (overlays, the exec root's netns).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let mut under: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&prefix)).collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The cached root file system, made (bounded: 10 minutes) if missing.
fn rootfs() -> PathBuf {
    let tar = rootfs_cache();
    if !tar.is_file() {
        let t = Instant::now();
        let out = Command::new("timeout")
            .args(["-k", "5", "600"])
            .arg(repo().join("deploy/docker/debian-rootfs.sh"))
            .arg(&tar)
            .output()
            .unwrap();
        assert!(out.status.success(), "debian-rootfs.sh: {}", show(&out));
        eprintln!("made {} in {:.1} s", tar.display(), t.elapsed().as_secs_f64());
    }
    tar
}

/// The uid of a process on this host, from /proc.
fn uid_of(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_owned()
}

#[test]
fn compose_example_shares_one_gpu_between_two_job_containers() {
    if let Some(why) = missing() {
        assert!(
            std::env::var("ACB_REQUIRE_DOCKER").map_or(true, |v| v != "1"),
            "ACB_REQUIRE_DOCKER=1 but the Docker test cannot run: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let start = Instant::now();
    let tar = rootfs();
    let mut d = Docker::start();
    let lap = |what: &str| eprintln!("{:6.1} s  {what}", start.elapsed().as_secs_f64());
    lap("dockerd up");

    let mut import = d.cmd("docker", 120);
    import.arg("import").arg(&tar).arg("acb-base:test");
    d.ok(import, "docker import");
    lap("base imported");
    // The images, from the binaries under test (target/debug here; build.sh defaults to release).
    let mut build = d.cmd("bash", 300);
    build.arg(repo().join("deploy/docker/build.sh")).arg("--bin-dir").arg(bin_dir(&d.dir)).args([
        "--tag",
        "test",
        "--base",
        "acb-base:test",
    ]);
    d.ok(build, "deploy/docker/build.sh");
    lap("images built");

    // The image's own CMD asks NVML for GPUs: with no driver it says so and exits 1.
    let mut bare = d.cmd("docker", 30);
    bare.args(["run", "--rm", "--network", "none", "acb-assigner:test"]);
    let out = bare.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--gpus fake:"), "{}", show(&out));

    // A daemon alone, as the README runs it: checked for its image's HEALTHCHECK (10 s interval)
    // while the compose project runs, then stopped with SIGTERM.
    let alone = format!("{}-alone", d.project);
    d.docker(&["volume", "create", &alone]);
    d.docker(&[
        "run",
        "-d",
        "--name",
        &alone,
        "--init",
        "--network",
        "none",
        "-v",
        &format!("{alone}:/run/acb"),
        "acb-assigner:test",
        "serve",
        "--listen",
        "unix:/run/acb/assigner.sock",
        "--gpus",
        "fake:2x8GiB",
    ]);

    // The example: the assigner (one SIMULATED GPU), then, once it is healthy, the two jobs.
    d.compose_up = true;
    let mut up = d.compose(180);
    up.args(["up", "-d"]).env("ACB_TAG", "test").env("ACB_ITEMS", "4").env("ACB_CPU", "300ms").env("ACB_GPU", "300ms");
    d.ok(up, "docker-compose up -d");
    lap("compose up (assigner healthy, jobs started)");
    let id = |service: &str| {
        let mut c = d.compose(30);
        c.args(["ps", "-q", service]);
        let id = d.ok(c, "docker-compose ps").trim().to_owned();
        assert!(!id.is_empty(), "no container for {service}");
        id
    };
    let (assigner, job_a, job_b) = (id("assigner"), id("job-a"), id("job-b"));
    let deadline = Instant::now() + Duration::from_secs(120);
    for (name, job) in [("job-a", &job_a), ("job-b", &job_b)] {
        loop {
            let state = d.docker(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", job]);
            let state = state.trim();
            if state.starts_with("exited") || state.starts_with("dead") {
                let logs = d.docker(&["logs", "--tail", "20", job]);
                assert_eq!(state, "exited 0", "{name} failed; its last lines:\n{logs}");
                break;
            }
            assert!(Instant::now() < deadline, "{name} still {state} after 120 s");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    lap("both jobs exited 0");

    // The record, through the socket volume, as the daemon's own user.
    let record = d.docker(&["exec", &assigner, "acb-assigner", "watch", "--replay", "--no-follow", "--json"]);
    let events: Vec<serde_json::Value> = record.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut holder: BTreeMap<u64, u64> = BTreeMap::new(); // GPU -> lease
    let mut lease_gpus: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut grants: Vec<String> = Vec::new(); // the job of each grant, in order
    for e in &events {
        match e["event"].as_str().unwrap() {
            "granted" => {
                let lease = e["lease"].as_u64().unwrap();
                let gpus: Vec<u64> = e["gpus"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap()).collect();
                for g in &gpus {
                    assert!(holder.insert(*g, lease).is_none(), "GPU {g} granted while held: {e}\n{record}");
                }
                lease_gpus.insert(lease, gpus);
                grants.push(e["job"].as_str().unwrap().to_owned());
            }
            "released" | "taken-back" => {
                for g in lease_gpus.remove(&e["lease"].as_u64().unwrap()).unwrap_or_default() {
                    holder.remove(&g);
                }
            }
            _ => {}
        }
    }
    let jobs: BTreeSet<&str> = grants.iter().map(String::as_str).collect();
    assert_eq!(jobs, BTreeSet::from(["job-a", "job-b"]), "grants: {grants:?}\n{record}");
    // Took turns: 4 GPU phases each, the GPU handed from one to the other again and again.
    assert!(grants.len() >= 8, "grants: {grants:?}");
    let turns = grants.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(turns >= 3, "the jobs did not take turns: {grants:?}");
    assert!(holder.is_empty(), "still held at the end: {holder:?}");
    eprintln!("{} grants, {turns} hand-overs between the containers: {grants:?}", grants.len());

    // Healthy by the image's check; PID 1 (tini) and the daemon run as uid 10001, not root; the
    // jobs as uid 1000.
    assert_eq!(d.docker(&["inspect", "-f", "{{.State.Health.Status}}", &assigner]).trim(), "healthy");
    let init = d.docker(&["inspect", "-f", "{{.State.Pid}}", &assigner]).trim().to_owned();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    let daemon = children.split_whitespace().next().expect("tini has no child").to_owned();
    assert!(std::fs::read_to_string(format!("/proc/{daemon}/comm")).unwrap().starts_with("acb-assigner"));
    assert_eq!((uid_of(&init), uid_of(&daemon)), (PROJECT_UID.to_owned(), PROJECT_UID.to_owned()));
    assert_eq!(d.docker(&["inspect", "-f", "{{.Config.User}}", &job_a]).trim(), "1000");

    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let health = d.docker(&["inspect", "-f", "{{.State.Health.Status}}", &alone]);
        if health.trim() == "healthy" {
            break;
        }
        assert!(health.trim() == "starting", "the image's HEALTHCHECK says {health}");
        assert!(Instant::now() < deadline, "the image's HEALTHCHECK: still {health} after 40 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    lap("the image's HEALTHCHECK: healthy");
    // SIGTERM drains: exit 0, well within docker stop's 15 s, the socket removed.
    let t = Instant::now();
    d.docker(&["stop", "-t", "15", &alone]);
    let stopped = t.elapsed();
    assert_eq!(d.docker(&["inspect", "-f", "{{.State.ExitCode}}", &alone]).trim(), "0");
    assert!(stopped < Duration::from_secs(10), "docker stop took {stopped:?}");
    // The daemon logs to stderr, which `docker logs` replays on its own stderr.
    let mut c = d.cmd("docker", 30);
    c.args(["logs", &alone]);
    let logs = show(&c.output().unwrap());
    assert!(logs.contains("draining"), "no drain in the daemon's log:\n{logs}");
    let mut c = d.cmd("docker", 30);
    c.args([
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{alone}:/run/acb"),
        "acb-client:test",
        "ls",
        "-A",
        "/run/acb",
    ]);
    assert_eq!(d.ok(c, "ls the socket volume").trim(), "", "the socket was left behind");
    lap("SIGTERM drained");

    let mut down = d.compose(60);
    down.args(["down", "-v", "--timeout", "15"]);
    d.ok(down, "docker-compose down");
    d.compose_up = false;
    d.docker(&["rm", "-f", &alone]);
    d.docker(&["volume", "rm", &alone]);
    lap("down");
    drop(d);
    lap("dockerd stopped, its directory removed");
}
