//! `acb-assigner device-plugin` against a hostile or buggy kubelet, a careless operator, and a
//! failing assigner. Real processes (the assigner with simulated GPUs, the plugin), a test
//! kubelet (a tonic `Registration` server on `kubelet.sock` in a temporary directory) and raw
//! clients of the plugin's socket. Every wait is bounded.
//!
//! `cargo test -p acb-assigner --test k8s_hostile` (about 30 s). It found seven faults, all
//! fixed: a live socket of another process taken over (two plugins on one socket name deleted
//! each other's without end), stalled ListAndWatch streams holding full device lists without a
//! cap (1,000 took 2 GB), SIGTERM waiting out a hung Register, a huge unknown id breaking the
//! error reply, Allocate taking no ids or an id twice, resource names and a relative
//! `--socket-dir-in-container` that Kubernetes or the runtime would refuse only later.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use acb_proto::deviceplugin as dp;
use common::kubelet::{PluginClient, TestKubelet as Kubelet, bounded, connect};
use common::{BIN, Daemon, TempDir, wait_exit};
use tonic::{Code, Response, Status};

type Devices = tonic::Streaming<dp::ListAndWatchResponse>;

/// The plugin as a real process; killed on drop.
struct Plugin(Child);

impl Plugin {
    fn start(assigner: &str, kubelet_dir: &Path, extra: &[&str]) -> Plugin {
        Plugin(
            Command::new(BIN)
                .args(["device-plugin", "--assigner", assigner, "--kubelet-dir"])
                .arg(kubelet_dir)
                .args(extra)
                .env("RUST_LOG", std::env::var("ACB_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap().count()
    }

    /// VmRSS in KiB.
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the plugin with `args` for at most `secs`: (exit code, or None if still running then
/// (then killed), stderr).
fn plugin_exit(args: &[&str], secs: u64) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("device-plugin")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, err)
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

async fn wait_list(stream: &mut Devices, secs: u64, what: &str, ok: impl Fn(&dp::ListAndWatchResponse) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(r))) if ok(&r) => return,
            Ok(Ok(Some(_))) => {}
            Ok(other) => panic!("{what}: the stream ended ({other:?})"),
            Err(_) => panic!("{what}: not within {secs} s"),
        }
    }
}

fn all_healthy(n: usize) -> impl Fn(&dp::ListAndWatchResponse) -> bool {
    move |r| r.devices.len() == n && r.devices.iter().all(|d| d.health == dp::HEALTHY)
}

fn all_unhealthy(n: usize) -> impl Fn(&dp::ListAndWatchResponse) -> bool {
    move |r| r.devices.len() == n && r.devices.iter().all(|d| d.health == dp::UNHEALTHY)
}

fn assigner_at(socket: &Path, gpus: &str) -> Daemon {
    let dir = TempDir::new("k8sh-assigner");
    let _ = std::fs::remove_file(socket);
    // The daemon's TempDir is its own; the socket may be elsewhere.
    Daemon::start_at(socket.to_owned(), dir, &["--gpus", gpus, "--state-dir", "none"])
}

/// An assigner (2 simulated GPUs), a kubelet, and the plugin registered with `shares` per GPU.
async fn setup(shares: &str) -> (TempDir, TempDir, Daemon, Kubelet, Plugin, PluginClient) {
    let kdir = TempDir::new("k8sh-kubelet");
    let adir = TempDir::new("k8sh-sock");
    let daemon = tokio::task::block_in_place(|| assigner_at(&adir.0.join("assigner.sock"), "fake:2x16GiB"));
    let mut kubelet = Kubelet::start(&kdir.0);
    let plugin = Plugin::start(&daemon.addr(), &kdir.0, &["--shares-per-gpu", shares]);
    let reg = kubelet.registration(20).await;
    let client = connect(&kdir.0, &reg.endpoint).await;
    (kdir, adir, daemon, kubelet, plugin, client)
}

async fn allocate(c: &mut PluginClient, devs: Vec<String>) -> Result<dp::AllocateResponse, Status> {
    bounded(
        30,
        "Allocate",
        c.allocate(dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest { devices_ids: devs }],
        }),
    )
    .await
    .map(Response::into_inner)
}

async fn preferred(c: &mut PluginClient, avail: Vec<String>, must: Vec<String>, size: i32) -> Vec<String> {
    let r = bounded(
        30,
        "GetPreferredAllocation",
        c.get_preferred_allocation(dp::PreferredAllocationRequest {
            container_requests: vec![dp::ContainerPreferredAllocationRequest {
                available_device_ids: avail,
                must_include_device_ids: must,
                allocation_size: size,
            }],
        }),
    )
    .await
    .unwrap()
    .into_inner();
    r.container_responses[0].device_ids.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_allocate_requests_get_invalid_argument_and_the_plugin_keeps_serving() {
    let (_k, _a, _d, _kubelet, plugin, mut c) = setup("4").await;
    let mut devices = c.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    wait_list(&mut devices, 20, "8 healthy devices", all_healthy(8)).await;

    // Ids of another resource, odd characters, other spellings: refused, naming the id.
    for bad in
        ["nvidia0", "GPU-0b1c", "gpu0-0\n", "gpu0-0\0", "gpu\u{ff10}-0", "gpu0-0 ", " gpu0-0", "gpu-0-0", "gpu00-0"]
    {
        let e = allocate(&mut c, ids(&["gpu0-1", bad])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    // 100,000 ids, all unknown: refused promptly.
    let t = Instant::now();
    let many: Vec<String> = (0..100_000).map(|i| format!("gpu{}-{}", i + 2, i % 4)).collect();
    let e = allocate(&mut c, many).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // 100,000 valid ids, repeated: refused (each device once), promptly.
    let t = Instant::now();
    let valid: Vec<String> = (0..100_000).map(|i| format!("gpu{}-{}", i % 2, i % 4)).collect();
    let e = allocate(&mut c, valid).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("twice"), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // Still serving, still healthy.
    let o = bounded(5, "options", c.get_device_plugin_options(dp::Empty {})).await.unwrap().into_inner();
    assert!(o.get_preferred_allocation_available);
    assert!(plugin.0.id() > 0);
    let mut fresh = c.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    wait_list(&mut fresh, 10, "8 healthy devices after the abuse", all_healthy(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_unknown_id_gets_a_clean_invalid_argument() {
    let (_k, _a, _d, _kubelet, _plugin, mut c) = setup("4").await;
    // A 256 KiB id: a clean INVALID_ARGUMENT, not a broken connection.
    let huge = format!("gpu0-{}", "9".repeat(256 << 10));
    let e = allocate(&mut c, vec![huge]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "a huge id: {:?} {}",
        e.code(),
        &e.message()[..e.message().len().min(200)]
    );
    let o = bounded(5, "options", c.get_device_plugin_options(dp::Empty {})).await.unwrap().into_inner();
    assert!(o.get_preferred_allocation_available);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_refuses_no_ids_and_duplicate_ids() {
    let (_k, _a, _d, _kubelet, _plugin, mut c) = setup("4").await;
    let mut devices = c.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    wait_list(&mut devices, 20, "8 healthy devices", all_healthy(8)).await;
    let empty = allocate(&mut c, vec![]).await;
    assert!(
        matches!(&empty, Err(e) if e.code() == Code::InvalidArgument),
        "0 ids: {:?}",
        empty.map(|r| r.container_responses[0].envs.clone())
    );
    let dup = allocate(&mut c, ids(&["gpu0-0", "gpu0-0"])).await;
    assert!(
        matches!(&dup, Err(e) if e.code() == Code::InvalidArgument),
        "duplicates: {:?}",
        dup.map(|r| r.container_responses[0].envs.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_preferred_allocation_requests_are_answered_sanely() {
    let (_k, _a, _d, _kubelet, _plugin, mut c) = setup("4").await;
    let avail = ids(&["gpu0-0", "gpu0-1", "gpu1-0"]);
    // Size 0, negative: nothing beyond what must be included.
    assert!(preferred(&mut c, avail.clone(), vec![], 0).await.is_empty());
    assert!(preferred(&mut c, avail.clone(), vec![], -5).await.is_empty());
    // More than available: what there is, no id invented.
    let p = preferred(&mut c, avail.clone(), vec![], 1000).await;
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p.iter().all(|id| avail.contains(id)), "{p:?}");
    // i32::MAX: answered at once.
    assert_eq!(preferred(&mut c, avail.clone(), vec![], i32::MAX).await.len(), 3);
    // Duplicates in available are not handed out twice.
    let p = preferred(&mut c, ids(&["gpu0-0", "gpu0-0", "gpu0-0"]), vec![], 3).await;
    assert_eq!(p, ids(&["gpu0-0"]));
    // must_include outside available: the plugin does not drop it (the kubelet's contract), and
    // every other id comes from available.
    let p = preferred(&mut c, avail.clone(), ids(&["gpu1-3"]), 2).await;
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0], "gpu1-3");
    assert!(avail.contains(&p[1]), "{p:?}");
    // 100,000 available (most garbage), size 50,000: answered within bounds.
    let t = Instant::now();
    let many: Vec<String> =
        (0..100_000).map(|i| if i % 3 == 0 { format!("x{i}") } else { format!("gpu{}-{}", i % 500, i) }).collect();
    let p = preferred(&mut c, many, vec![], 50_000).await;
    assert_eq!(p.len(), 50_000);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_that_never_read_neither_block_others_nor_grow_memory_without_bound() {
    mute_streams(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_streams_cost_little_memory() {
    mute_streams(true).await;
}

/// 1,000 ListAndWatch streams that never read while the list changes 12 times. Always: the
/// kubelet's own stream keeps getting every change, memory stops growing once each stream's
/// queue is full, and the fds come back when the clients go. `strict`: the whole cost of the
/// 1,000 streams stays under 200 MB.
async fn mute_streams(strict: bool) {
    // 2 GPUs x 1024 shares: a device list of 2048 entries (~70 KB per message).
    let (kdir, _a, daemon, _kubelet, plugin, mut c) = setup("1024").await;
    let mut kubelet_stream = c.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    wait_list(&mut kubelet_stream, 20, "2048 healthy devices", all_healthy(2048)).await;
    let rss0 = plugin.rss_kib();
    let fds0 = plugin.fds();
    // 1,000 ListAndWatch streams on 20 connections, never read.
    let mut channels = Vec::new();
    for _ in 0..20 {
        channels.push(connect(&kdir.0, "acb.sock").await);
    }
    let mut mute = Vec::new();
    let mut refused = 0;
    for i in 0..1000 {
        let mut ch = channels[i % 20].clone();
        match bounded(10, "a mute ListAndWatch", ch.list_and_watch(dp::Empty {})).await {
            Ok(s) => mute.push(s.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                refused += 1;
            }
        }
    }
    // The kubelet's stream and the mute ones together: at most MAX_STREAMS (16).
    assert!(mute.len() < 16 && refused == 1000 - mute.len(), "{} open, {refused} refused", mute.len());
    // Make the list change many times: the assigner goes and comes back.
    let socket = daemon.socket.clone();
    drop(daemon);
    wait_list(&mut kubelet_stream, 20, "unhealthy without the assigner", all_unhealthy(2048)).await;
    let daemon = tokio::task::block_in_place(|| assigner_at(&socket, "fake:2x16GiB"));
    wait_list(&mut kubelet_stream, 20, "healthy again", all_healthy(2048)).await;
    let mut daemon = Some(daemon);
    let flap = async |daemon: &mut Option<Daemon>, stream: &mut Devices| {
        drop(daemon.take());
        wait_list(stream, 20, "unhealthy (flap)", all_unhealthy(2048)).await;
        *daemon = Some(tokio::task::block_in_place(|| assigner_at(&socket, "fake:2x16GiB")));
        wait_list(stream, 20, "healthy (flap)", all_healthy(2048)).await;
    };
    for _ in 0..5 {
        flap(&mut daemon, &mut kubelet_stream).await;
    }
    let rss_mid = plugin.rss_kib();
    for _ in 0..5 {
        flap(&mut daemon, &mut kubelet_stream).await;
    }
    let rss1 = plugin.rss_kib();
    eprintln!(
        "plugin RSS: {rss0} KiB before, {rss_mid} KiB after 12 list changes, {rss1} KiB after 22 with 1000 mute streams"
    );
    // Bounded: a few messages per stream at most (the per-stream queue), not one per change.
    assert!(rss1 < rss_mid + 300_000, "RSS grew from {rss_mid} KiB (12 changes) to {rss1} KiB (22 changes)");
    if strict {
        assert!(rss1 < rss0 + 200_000, "RSS grew from {rss0} KiB to {rss1} KiB");
    }
    // The mute clients go: the plugin's fds come back down.
    drop(mute);
    drop(channels);
    let deadline = Instant::now() + Duration::from_secs(10);
    while plugin.fds() > fds0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(plugin.fds() <= fds0, "fds: {fds0} before, {} after the mute clients left", plugin.fds());
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigner_flapping_20_times_leaks_no_fds_and_health_follows() {
    let (_k, _a, daemon, _kubelet, plugin, mut c) = setup("2").await;
    let mut devices = c.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    wait_list(&mut devices, 20, "4 healthy", all_healthy(4)).await;
    // Settle, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds0 = plugin.fds();
    let socket = daemon.socket.clone();
    let mut daemon = Some(daemon);
    for i in 0..20 {
        drop(daemon.take());
        wait_list(&mut devices, 20, &format!("flap {i}: unhealthy"), all_unhealthy(4)).await;
        daemon = Some(tokio::task::block_in_place(|| assigner_at(&socket, "fake:2x16GiB")));
        wait_list(&mut devices, 20, &format!("flap {i}: healthy"), all_healthy(4)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds1 = plugin.fds();
    assert!(fds1 <= fds0 + 2, "the plugin's fds: {fds0} before 20 flaps, {fds1} after");
    // A GPU count change across a restart is followed too.
    drop(daemon.take());
    let _d = tokio::task::block_in_place(|| assigner_at(&socket, "fake:3x16GiB"));
    wait_list(&mut devices, 30, "6 healthy after the assigner came back with 3 GPUs", all_healthy(6)).await;
}

/// A listening Unix socket of another process (a Python one-liner), for `secs`.
fn foreign_listener(path: &Path, secs: u32) -> Child {
    let child = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.bind({:?})\ns.listen(16)\ntime.sleep({secs})",
            path.display().to_string()
        ))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(Instant::now() < deadline, "python3 did not bind {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn a_live_socket_of_another_process_is_not_stolen() {
    let kdir = TempDir::new("k8sh-steal");
    let own = kdir.0.join("acb.sock");
    let mut other = foreign_listener(&own, 20);
    let ino = std::fs::symlink_metadata(&own).unwrap().ino_of();
    let (code, err) =
        plugin_exit(&["--assigner", "unix:/nonexistent/a.sock", "--kubelet-dir", kdir.0.to_str().unwrap()], 3);
    let still = std::fs::symlink_metadata(&own).map(|m| m.ino_of()).ok();
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(still, Some(ino), "the other process's socket was replaced or removed (plugin exit {code:?}: {err})");
    assert_eq!(code, Some(1), "the plugin should refuse a socket in use: {err}");
}

trait Ino {
    fn ino_of(&self) -> u64;
}

impl Ino for std::fs::Metadata {
    fn ino_of(&self) -> u64 {
        std::os::unix::fs::MetadataExt::ino(self)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_plugin_on_the_same_socket_does_not_start_a_war() {
    let kdir = TempDir::new("k8sh-war");
    let mut kubelet = Kubelet::start(&kdir.0);
    let _a = Plugin::start("unix:/nonexistent/a.sock", &kdir.0, &[]);
    kubelet.registration(20).await;
    let _b = Plugin::start("unix:/nonexistent/a.sock", &kdir.0, &[]);
    // Let them run 5 s: a healthy setup registers at most once more (the second refusing).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut n = 0;
    while kubelet.registrations.try_recv().is_ok() {
        n += 1;
    }
    assert!(n <= 1, "{n} registrations in 5 s: the two plugins keep replacing each other's socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_hung_registration_exits_within_2_s() {
    let kdir = TempDir::new("k8sh-mute-kubelet");
    // A "kubelet" that accepts connections and never answers.
    let listener = std::os::unix::net::UnixListener::bind(kdir.0.join(dp::KUBELET_SOCKET)).unwrap();
    let _held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(25);
        while Instant::now() < end {
            if let Ok((c, _)) = listener.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let mut plugin = Plugin::start("unix:/nonexistent/a.sock", &kdir.0, &[]);
    // The registration is under way (first try after 0.5 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    plugin.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| wait_exit(&mut plugin.0, Duration::from_secs(15)));
    assert!(status.success(), "{status:?}");
    assert!(!kdir.0.join("acb.sock").exists(), "the socket was left behind");
    assert!(t.elapsed() < Duration::from_secs(2), "exit took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_list_and_watch_client_exits_within_2_s() {
    let (kdir, _a, daemon, _kubelet, mut plugin, mut c) = setup("1024").await;
    let mut s = c.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    wait_list(&mut s, 20, "2048 healthy", all_healthy(2048)).await;
    // A client that opens a stream and never reads, while the list changes.
    let mut mute = connect(&kdir.0, "acb.sock").await;
    let _stalled = mute.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
    let socket = daemon.socket.clone();
    let mut daemon = Some(daemon);
    for _ in 0..4 {
        drop(daemon.take());
        wait_list(&mut s, 20, "unhealthy", all_unhealthy(2048)).await;
        daemon = Some(tokio::task::block_in_place(|| assigner_at(&socket, "fake:2x16GiB")));
        wait_list(&mut s, 20, "healthy", all_healthy(2048)).await;
    }
    let t = Instant::now();
    plugin.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| wait_exit(&mut plugin.0, Duration::from_secs(15)));
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "exit took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_sock_that_is_a_file_or_directory_is_waited_out() {
    for kind in ["file", "dir"] {
        let kdir = TempDir::new("k8sh-badsock");
        let ks = kdir.0.join(dp::KUBELET_SOCKET);
        if kind == "file" {
            std::fs::write(&ks, "not a socket").unwrap();
        } else {
            std::fs::create_dir(&ks).unwrap();
        }
        let mut plugin = Plugin::start("unix:/nonexistent/a.sock", &kdir.0, &[]);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(plugin.0.try_wait().unwrap().is_none(), "{kind}: the plugin exited");
        assert!(ks.exists(), "{kind}: the plugin removed the kubelet's path");
        // The real kubelet comes: registered.
        if kind == "file" {
            std::fs::remove_file(&ks).unwrap();
        } else {
            std::fs::remove_dir(&ks).unwrap();
        }
        let mut kubelet = Kubelet::start(&kdir.0);
        let reg = kubelet.registration(20).await;
        assert_eq!(reg.endpoint, "acb.sock", "{kind}");
        plugin.signal(libc::SIGTERM);
        let st = tokio::task::block_in_place(|| wait_exit(&mut plugin.0, Duration::from_secs(10)));
        assert!(st.success(), "{kind}: {st:?}");
    }
}

#[test]
fn operator_mistakes_on_the_command_line_fail_clearly() {
    let kdir = TempDir::new("k8sh-cli");
    let k = kdir.0.to_str().unwrap();
    for shares in ["0", "1025", "99999999999999", "-1", "four"] {
        let (code, err) = plugin_exit(&["--kubelet-dir", k, &format!("--shares-per-gpu={shares}")], 5);
        assert_eq!(code, Some(2), "--shares-per-gpu {shares}: {err}");
        assert!(err.contains("--shares-per-gpu"), "{err}");
    }
    for (dir, why) in [("/nonexistent/kubelet", "not a directory"), ("/etc/hostname", "not a directory")] {
        let (code, err) = plugin_exit(&["--kubelet-dir", dir], 5);
        assert_eq!(code, Some(1), "{dir}: {err}");
        assert!(err.contains(why), "{dir}: {err}");
    }
    for name in ["", "a/b", "..", "kubelet.sock"] {
        let (code, err) = plugin_exit(&["--kubelet-dir", k, "--socket-name", name], 5);
        assert_eq!(code, Some(2), "--socket-name {name:?}: {err}");
    }
    for r in ["", "gpu"] {
        let (code, err) = plugin_exit(&["--kubelet-dir", k, "--resource", r], 5);
        assert_eq!(code, Some(2), "--resource {r:?}: {err}");
    }
    // An existing non-socket at the plugin's socket path is left alone, and said.
    std::fs::write(kdir.0.join("acb.sock"), "keep me").unwrap();
    let (code, err) = plugin_exit(&["--kubelet-dir", k, "--assigner", "unix:/nonexistent/a.sock"], 5);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(kdir.0.join("acb.sock")).unwrap(), "keep me");
}

#[test]
fn an_unwritable_kubelet_dir_fails_clearly() {
    if !common::can_play_another_user("an_unwritable_kubelet_dir_fails_clearly") {
        return;
    }
    let kdir = TempDir::new("k8sh-ro");
    let (bin, _keep) = common::bin_for_others();
    std::fs::set_permissions(&kdir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = common::setpriv_other()
        .arg(&bin)
        .args(["device-plugin", "--assigner", "unix:/nonexistent/a.sock", "--kubelet-dir"])
        .arg(&kdir.0)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn resource_names_kubernetes_refuses_are_refused_at_start() {
    let kdir = TempDir::new("k8sh-res");
    let k = kdir.0.to_str().unwrap();
    for r in ["/", "a/", "/gpu", "acb.io/g/pu", "acb.io/g pu", "acb.io/GPU!", "kubernetes.io/gpu", "-acb.io/gpu"] {
        let (code, err) =
            plugin_exit(&["--kubelet-dir", k, "--assigner", "unix:/nonexistent/a.sock", "--resource", r], 3);
        assert_eq!(code, Some(2), "--resource {r:?} was accepted: {err}");
    }
}

#[test]
fn a_relative_socket_dir_in_container_is_refused_at_start() {
    let kdir = TempDir::new("k8sh-rel");
    let k = kdir.0.to_str().unwrap();
    for d in ["run/acb", "", "./x"] {
        let (code, err) = plugin_exit(
            &["--kubelet-dir", k, "--assigner", "unix:/nonexistent/a.sock", "--socket-dir-in-container", d],
            3,
        );
        assert_eq!(code, Some(2), "--socket-dir-in-container {d:?} was accepted: {err}");
    }
}
