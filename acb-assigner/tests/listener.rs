//! The daemon's listeners against a hostile local user, running out of file descriptors, and
//! TLS: the real binary, a second user played with `setpriv`, limits set with `prlimit`,
//! certificates made by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Daemon, Lines, OTHER, TempDir, can_play_another_user, setpriv_other, wait_exit};

/// Runs `args` as the second user.
fn as_other(args: &[&str]) {
    let out = setpriv_other().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?} as uid {OTHER}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A directory everyone may create entries in, like /tmp (sticky, 1777).
fn shared_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// `serve` on `socket`, which must refuse to start: returns its exit status and stderr.
fn serve_refused(socket: &Path) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--gpus", "fake:1x8GiB", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut err, &mut text).unwrap();
    (status.code().unwrap_or(-1), text)
}

#[test]
fn a_socket_directory_another_user_made_first_with_mode_0777_is_refused() {
    if !can_play_another_user("mode 0777 squat") {
        return;
    }
    let base = shared_dir("squat");
    let squat = base.0.join("acb");
    as_other(&["mkdir", "-m", "0777", squat.to_str().unwrap()]);
    let (status, err) = serve_refused(&squat.join("assigner.sock"));
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("refusing the socket directory") && err.contains(&format!("owned by uid {OTHER}")), "{err}");
    assert!(!squat.join("assigner.sock").exists(), "the daemon bound inside the squatted directory");

    // Our own directory that group or others can write is refused too.
    let loose = base.0.join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (status, err) = serve_refused(&loose.join("assigner.sock"));
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("group or others can write it (mode 0777)"), "{err}");
}

#[test]
fn a_socket_directory_that_is_a_symlink_to_another_users_directory_is_refused() {
    if !can_play_another_user("symlink squat") {
        return;
    }
    let base = shared_dir("symlink");
    let theirs = base.0.join("theirs");
    let link = base.0.join("acb");
    as_other(&["mkdir", "-m", "0755", theirs.to_str().unwrap()]);
    as_other(&["ln", "-s", theirs.to_str().unwrap(), link.to_str().unwrap()]);
    let (status, err) = serve_refused(&link.join("assigner.sock"));
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("refusing the socket directory") && err.contains("it is a symlink"), "{err}");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0, "the daemon wrote into the other user's directory");
}

#[test]
fn a_socket_directory_below_one_another_user_owns_is_refused() {
    if !can_play_another_user("grandparent squat") {
        return;
    }
    // The other user owns a directory above the socket's: they could rename the daemon's
    // directory away and put their own in its place.
    let base = shared_dir("above");
    let theirs = base.0.join("gp");
    as_other(&["mkdir", "-m", "0755", theirs.to_str().unwrap()]);
    as_other(&["mkdir", "-m", "0755", theirs.join("sub").to_str().unwrap()]);
    std::fs::create_dir(theirs.join("sub").join("acb")).ok();
    let (status, err) = serve_refused(&theirs.join("sub").join("acb").join("assigner.sock"));
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("above it is owned by uid 65534"), "{err}");
    // A symlink of theirs on the way is refused too, even to a directory of ours.
    let ours = base.0.join("ours");
    std::fs::create_dir(&ours).unwrap();
    let link = base.0.join("link");
    as_other(&["ln", "-s", ours.to_str().unwrap(), link.to_str().unwrap()]);
    let (status, err) = serve_refused(&link.join("acb").join("assigner.sock"));
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("is a symlink of uid 65534"), "{err}");
}

#[test]
fn a_missing_socket_directory_is_created_owned_and_closed_and_the_socket_has_its_mode() {
    let base = TempDir::new("fresh");
    let dir = base.0.join("run").join("acb");
    let socket = dir.join("assigner.sock");
    let mut child = Command::new(BIN)
        .args(["serve", "--gpus", "fake:1x8GiB", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(child.stdout.take().unwrap());
    lines.wait_for("ready", Duration::from_secs(20));
    let d = std::fs::symlink_metadata(&dir).unwrap();
    let s = std::fs::symlink_metadata(&socket).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // SAFETY: geteuid(2) has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert!(d.is_dir() && d.uid() == me, "{d:?}");
    assert_eq!(d.mode() & 0o7777, 0o755);
    assert_eq!(s.mode() & 0o777, 0o660);
    // No private bind directory left behind.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(".acb-bind")), "{left:?}");
}

/// Raises this test process's own descriptor limit so it can hold `n` connections.
fn allow_fds(n: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on our own process with a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            let want = libc::rlimit { rlim_cur: n.max(lim.rlim_cur), rlim_max: lim.rlim_max.max(n) };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &want), 0, "cannot allow {n} descriptors");
        }
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / hz
}

/// Starts `serve` under `prlimit --nofile=SOFT:HARD` on a socket in a fresh directory.
fn serve_limited(soft: u64, hard: &str, extra: &[&str]) -> (std::process::Child, TempDir, std::path::PathBuf) {
    let dir = TempDir::new("fds");
    let socket = dir.0.join("assigner.sock");
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(BIN)
        .args(["serve", "--gpus", "fake:1x8GiB", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(child.stdout.take().unwrap());
    lines.wait_for("ready", Duration::from_secs(20));
    (child, dir, socket)
}

/// Opens `n` connections that never say anything.
fn idle_connections(socket: &Path, n: usize) -> Vec<std::os::unix::net::UnixStream> {
    (0..n).map(|_| std::os::unix::net::UnixStream::connect(socket).unwrap()).collect()
}

/// How many of `conns` the daemon still holds open: reading what it sent (its HTTP/2 settings)
/// ends in "would block", not in end-of-file or an error.
fn still_open(conns: &[std::os::unix::net::UnixStream]) -> usize {
    conns
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 4096];
            for _ in 0..64 {
                match std::io::Read::read(&mut &**c, &mut buf) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
                }
            }
            false
        })
        .count()
}

fn status_ok(socket: &Path) -> bool {
    let out =
        Command::new(BIN).args(["status", "--assigner"]).arg(format!("unix:{}", socket.display())).output().unwrap();
    if !out.status.success() {
        eprintln!("status: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

#[test]
fn under_a_soft_limit_of_1024_the_daemon_raises_it_and_holds_1100_idle_connections_and_serves_a_new_client() {
    if !can_play_another_user("soft fd limit") {
        return; // Raising our own hard limit (for the test's 1,100 descriptors) needs root.
    }
    allow_fds(4096);
    let (mut child, _dir, socket) = serve_limited(1024, "4096", &[]);
    let conns = idle_connections(&socket, 1100);
    let cpu = cpu_seconds(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let busy = cpu_seconds(child.id()) - cpu;
    let served = status_ok(&socket);
    let held = still_open(&conns);
    let _ = child.kill();
    let _ = child.wait();
    println!("soft limit 1024 (hard 4096): {held} of 1100 idle connections held; daemon CPU over 1 s: {busy:.2} s");
    assert!(served, "a new client was not served with 1,100 idle connections open");
    assert_eq!(held, 1100, "the daemon dropped idle connections it had room for");
}

#[test]
fn under_a_hard_limit_of_1024_idle_connections_are_capped_then_closed_and_a_new_client_is_served() {
    if !can_play_another_user("hard fd limit") {
        return;
    }
    allow_fds(4096);
    let (mut child, _dir, socket) = serve_limited(1024, "1024", &["--handshake-timeout", "1s"]);
    let conns = idle_connections(&socket, 1100);
    let cpu = cpu_seconds(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let busy = cpu_seconds(child.id()) - cpu;
    // The idle ones are closed once the handshake timeout passes; the new client then gets in.
    let served = (0..10).any(|_| status_ok(&socket) || (std::thread::sleep(Duration::from_millis(500)), false).1);
    // Every idle one is closed soon after its timeout (polled for at most 10 s).
    let mut held = still_open(&conns);
    for _ in 0..50 {
        if held == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        held = still_open(&conns);
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("limit 1024:1024: daemon CPU over 1 s with 1,100 idle connections: {busy:.2} s; {held} still open after");
    assert!(served, "a new client was not served under a 1024 descriptor limit");
    assert_eq!(held, 0, "idle connections outlived the handshake timeout");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
struct Pki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage: Eku| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], Eku::ServerAuth);
    let (client_cert, client_key) = leaf(vec!["client.acb.test".into()], Eku::ClientAuth);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

/// `status` against `tcp` with `env` set; its success and stderr.
fn status_over_tcp(tcp: &str, env: &[(&str, &Path)]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["status", "--assigner", tcp]);
    for v in ["ACB_TLS_CA", "ACB_TLS_CERT", "ACB_TLS_KEY", "ACB_TLS_SERVER_NAME"] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn over_mutual_tls_a_client_with_its_certificate_is_served_and_plaintext_or_no_certificate_is_refused() {
    let dir = TempDir::new("tls");
    let p = pki(&dir.0);
    let port = common::free_port();
    let tcp = format!("tcp:127.0.0.1:{port}");
    // The client CA comes from the settings file, the rest from flags: both paths are used.
    let settings = dir.0.join("acb.toml");
    std::fs::write(&settings, format!("tls_client_ca = {:?}\n", p.ca.display().to_string())).unwrap();
    let _d = Daemon::start(&[
        "--gpus",
        "fake:1x8GiB",
        "--listen",
        &tcp,
        "--tls-cert",
        p.server_cert.to_str().unwrap(),
        "--tls-key",
        p.server_key.to_str().unwrap(),
        "--config",
        settings.to_str().unwrap(),
    ]);
    let full = [("ACB_TLS_CA", p.ca.as_path()), ("ACB_TLS_CERT", &p.client_cert), ("ACB_TLS_KEY", &p.client_key)];
    let (ok, err) = status_over_tcp(&tcp, &full);
    assert!(ok, "status over mutual TLS: {err}");
    let (ok, err) = status_over_tcp(&tcp, &[]);
    assert!(!ok, "a plaintext client was served by a TLS listener");
    eprintln!("plaintext: {err}");
    let (ok, err) = status_over_tcp(&tcp, &full[..1]);
    assert!(!ok, "a client without a certificate was served under mutual TLS");
    eprintln!("no client certificate: {err}");

    // The Rust client, in this process, with the settings given rather than from the environment.
    let tls = acb_client::tls::TlsEnv {
        ca: p.ca.clone(),
        identity: Some((p.client_cert.clone(), p.client_key.clone())),
        server_name: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr: acb_proto::Address = tcp.parse().unwrap();
    let reply = rt.block_on(async {
        let channel = acb_client::connection::channel_with(&addr, Duration::from_secs(10), Some(&tls)).await.unwrap();
        let mut rpc = acb_proto::v1::assigner_client::AssignerClient::new(channel);
        rpc.status(acb_proto::v1::StatusRequest::default()).await
    });
    assert!(reply.is_ok(), "the Rust client over mutual TLS: {reply:?}");
}

#[test]
fn a_non_loopback_listener_needs_tls_or_insecure_and_a_readable_token_file_is_warned_about() {
    let dir = TempDir::new("exposure");
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--gpus", "none", "--listen", "tcp:0.0.0.0:0", "--auth-token-file"])
        .arg(&token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("in plaintext") && err.contains("--tls-cert") && err.contains("--insecure"), "{err}");

    // The settings file has the same keys: a certificate without its key is a usage error.
    let settings = dir.0.join("acb.toml");
    std::fs::write(
        &settings,
        format!(
            "listen = [\"tcp:0.0.0.0:0\"]\nauth_token_file = {:?}\ntls_cert = {:?}\nhandshake_timeout = \"5s\"\n",
            token.display().to_string(),
            dir.0.join("server.pem").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(BIN).args(["serve", "--gpus", "none", "--config"]).arg(&settings).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--tls-cert and --tls-key go together"), "{err}");

    // A token file others can read: the daemon starts, and says so.
    let socket = dir.0.join("assigner.sock");
    let mut child = Command::new(BIN)
        .args(["serve", "--gpus", "fake:1x8GiB", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--auth-token-file")
        .arg(&token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(child.stdout.take().unwrap());
    lines.wait_for("ready", Duration::from_secs(20));
    let _ = child.kill();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let _ = child.wait();
    assert!(err.contains("can be read by group or others (mode 0644)"), "{err}");
}

#[test]
fn a_tcp_client_that_stops_answering_loses_its_lease_through_http2_keepalive() {
    // A client whose host vanished: its process is stopped (SIGSTOP), so its connection stays
    // up (the kernel still acknowledges) but it answers no HTTP/2 ping. Before, it held its GPU
    // for as long as it stayed stopped.
    let port = common::free_port();
    let tcp = format!("tcp:127.0.0.1:{port}");
    let d = Daemon::start(&["--gpus", "fake:1x8GiB", "--listen", &tcp]);
    let mut holder = Command::new(BIN)
        .args(["alloc", "--assigner", &tcp, "--job", "frozen"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::new(holder.stdout.take().unwrap());
    out.wait_for("granted lease", Duration::from_secs(20));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(holder.id() as i32, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let holders = |d: &Daemon| d.status_json()["gpus"][0]["holders"].as_array().map_or(0, Vec::len);
    let mut freed = false;
    // At most 90 s: the keepalive ends it after about 30 s (a ping every 10 s, 20 s to answer).
    for _ in 0..180 {
        if holders(&d) == 0 {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = holder.kill();
    let _ = holder.wait();
    println!("a stopped TCP client's lease was freed after {:.1} s", started.elapsed().as_secs_f64());
    assert!(freed, "a client that answers no ping still holds its GPU after 90 s");
}
