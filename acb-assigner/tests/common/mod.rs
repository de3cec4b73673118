//! Starts the real `acb-assigner` binary on a temporary socket, and real client processes.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cluster;
pub mod kubelet;
pub mod slurm;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_acb-assigner");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("acb-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The uid and gid the second local user gets (`nobody`).
pub const OTHER: u32 = 65534;

/// Whether the tests that play a second local user can run: root and `setpriv`. With
/// `ACB_REQUIRE_ROOT=1` (CI), not being able to is a failure, not a skip.
pub fn can_play_another_user(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    if root && setpriv {
        return true;
    }
    let why = if root { "setpriv (util-linux) is missing" } else { "not root" };
    if std::env::var("ACB_REQUIRE_ROOT").is_ok_and(|v| v == "1") {
        panic!("{test}: ACB_REQUIRE_ROOT=1 but {why}");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// `setpriv` with the second user's uid and gid and no groups; its program and arguments follow.
pub fn setpriv_other() -> Command {
    let mut c = Command::new("setpriv");
    c.args([format!("--reuid={OTHER}"), format!("--regid={OTHER}"), "--clear-groups".to_owned()]);
    c
}

/// The daemon binary as a path another local user (uid 65534, played with `setpriv`) may run.
/// `BIN` itself when every directory above it lets others through; otherwise (a checkout under
/// `/root`, mode 0700) a copy in a 0755 temporary directory, removed with the returned guard,
/// with a copy of this build's libacb.so beside it (where `demo-job` looks for it).
pub fn bin_for_others() -> (PathBuf, Option<TempDir>) {
    use std::os::unix::fs::PermissionsExt;
    let bin = PathBuf::from(BIN);
    let reachable =
        bin.ancestors().skip(1).all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable {
        return (bin, None);
    }
    let dir = TempDir::new("bin");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.0.join("acb-assigner");
    std::fs::copy(&bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let profile = bin.parent().unwrap();
    // deps/ first: where `cargo test` leaves this build's (the one beside BIN may be older).
    if let Some(lib) = [profile.join("deps/libacb.so"), profile.join("libacb.so")].into_iter().find(|p| p.is_file()) {
        let to = dir.0.join("libacb.so");
        std::fs::copy(lib, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (copy, Some(dir))
}

/// Lines a child prints, read on a thread so that waits can time out.
pub struct Lines(mpsc::Receiver<String>);

impl Lines {
    pub fn new(out: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The next line, if one comes within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.0.recv_timeout(timeout).ok()
    }

    /// Lines already printed, without waiting.
    pub fn ready(&self) -> Vec<String> {
        self.0.try_iter().collect()
    }

    /// The next line containing `needle`, within `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line containing {needle:?} within {timeout:?}"),
            }
        }
    }
}

/// A running assigner; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub lines: Lines,
    pub dir: TempDir,
}

impl Daemon {
    /// `acb-assigner serve` on a temporary socket with `extra` flags.
    pub fn start(extra: &[&str]) -> Daemon {
        let dir = TempDir::new("assigner");
        let socket = dir.0.join("assigner.sock");
        Daemon::start_at(socket, dir, extra)
    }

    /// [`Daemon::start`] on `socket`; `dir` is removed with the daemon.
    pub fn start_at(socket: PathBuf, dir: TempDir, extra: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(extra)
            .env("RUST_LOG", std::env::var("ACB_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Lines::new(child.stdout.take().unwrap());
        lines.wait_for("ready", Duration::from_secs(20));
        Daemon { child, socket, lines, dir }
    }

    pub fn addr(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Runs an `acb-assigner` client subcommand against this daemon; returns its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN).args(args).arg("--assigner").arg(self.addr()).output().unwrap()
    }

    /// Starts `acb-assigner alloc` as a separate process.
    pub fn alloc(&self, extra: &[&str]) -> (Child, Lines) {
        let mut child = Command::new(BIN)
            .arg("alloc")
            .arg("--assigner")
            .arg(self.addr())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Lines::new(child.stdout.take().unwrap());
        (child, lines)
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; reaps it. Whether it ended on the SIGTERM
/// (or had ended already).
pub fn terminate(child: &mut Child, grace: Duration) -> bool {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return true;
    }
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Waits for `child` to exit within `timeout`; returns its status.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The client library's settings for the tests' clients of the assigner at `socket`: lazy
/// release, host memory, 3 connection retries of 2 s; a test changes what it needs.
pub fn client_config(socket: &std::path::Path, job: &str) -> acb_client::Config {
    acb_client::Config {
        assigner: format!("unix:{}", socket.display()).parse().unwrap(),
        job: job.into(),
        connect_timeout: Duration::from_secs(2),
        connect_retries: 3,
        release: acb_client::ReleaseMode::Lazy,
        idle_timeout: None,
        auth_token: None,
        memory_backend: acb_client::MemoryBackend::Host,
        pin_gpus: false,
        required_gpus: Vec::new(),
        assigner_uid: None,
        group: None,
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA, and a server certificate for `names` signed by it, as PEM: (ca, cert, key).
pub fn server_pki(names: Vec<String>) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names).unwrap();
    params.extended_key_usages = vec![Eku::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
