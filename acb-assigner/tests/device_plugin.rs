//! `acb-assigner device-plugin` as a real process between a real assigner and a TEST KUBELET:
//! a tonic server of the kubelet's `Registration` service (deviceplugin v1beta1) on
//! `kubelet.sock` in a temporary device-plugin directory, which, like the kubelet, connects back
//! to the plugin's endpoint after it registers. No real kubelet and no real GPU: the assigner's
//! GPUs are simulated, so Allocate names no device node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use acb_assigner::proto;
use acb_proto::deviceplugin as dp;
use common::cluster::{CLUSTER_TOKEN, Cluster};
use common::kubelet::{TestKubelet, bounded};
use common::{BIN, Daemon, TempDir, wait_exit};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

/// The plugin as a real process; killed on drop.
struct PluginProcess(Child);

impl PluginProcess {
    fn start(assigner: &str, kubelet_dir: &Path, extra: &[&str]) -> PluginProcess {
        let child = Command::new(BIN)
            .args(["device-plugin", "--assigner", assigner, "--kubelet-dir"])
            .arg(kubelet_dir)
            .args(extra)
            .env("RUST_LOG", std::env::var("ACB_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        PluginProcess(child)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Devices = tonic::Streaming<dp::ListAndWatchResponse>;

async fn list_and_watch(k: &TestKubelet, endpoint: &str) -> Devices {
    let mut plugin = k.plugin(endpoint).await;
    bounded(5, "ListAndWatch", plugin.list_and_watch(dp::Empty {})).await.unwrap().into_inner()
}

/// (id, health) of each device.
fn health(r: &dp::ListAndWatchResponse) -> Vec<(String, String)> {
    r.devices.iter().map(|d| (d.id.clone(), d.health.clone())).collect()
}

/// Reads lists from `stream` until one satisfies `ok` (within `secs`); returns it.
async fn wait_list(
    stream: &mut Devices,
    secs: u64,
    what: &str,
    ok: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(r))) => {
                last = health(&r);
                if ok(&last) {
                    return last;
                }
            }
            Ok(other) => panic!("{what}: the stream ended ({other:?}); last list {last:?}"),
            Err(_) => panic!("{what}: not within {secs} s; last list {last:?}"),
        }
    }
}

fn all(list: &[(String, String)], n: usize, state: &str) -> bool {
    list.len() == n && list.iter().all(|(_, h)| h == state)
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// A standalone assigner with two simulated GPUs on `socket`, `--state-dir none`.
fn assigner_at(socket: &Path, dir: TempDir) -> Daemon {
    Daemon::start_at(socket.to_owned(), dir, &["--gpus", "fake:2x16GiB", "--state-dir", "none"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_lists_allocates_follows_kubelet_restarts_and_stops_cleanly() {
    let kdir = TempDir::new("kubelet");
    let adir = TempDir::new("assigner");
    let socket = adir.0.join("assigner.sock");
    let daemon = tokio::task::block_in_place(|| assigner_at(&socket, adir));
    let mut kubelet = TestKubelet::start(&kdir.0);
    let mut plugin = PluginProcess::start(&daemon.addr(), &kdir.0, &["--shares-per-gpu", "3"]);

    // Registration: the version, our endpoint in the kubelet's directory, the resource, options.
    let reg = kubelet.registration(20).await;
    assert_eq!(reg.version, "v1beta1");
    assert_eq!(reg.endpoint, "acb.sock");
    assert_eq!(reg.resource_name, "acb.io/gpu");
    let opts = reg.options.unwrap();
    assert!(!opts.pre_start_required && opts.get_preferred_allocation_available, "{opts:?}");

    // The kubelet connects back: options, then 2 GPUs x 3 shares, all healthy.
    let mut client = kubelet.plugin(&reg.endpoint).await;
    let o = client.get_device_plugin_options(dp::Empty {}).await.unwrap().into_inner();
    assert!(!o.pre_start_required && o.get_preferred_allocation_available);
    let mut devices = list_and_watch(&kubelet, &reg.endpoint).await;
    let list = wait_list(&mut devices, 20, "6 healthy devices", |l| all(l, 6, "Healthy")).await;
    let names: Vec<&str> = list.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(names, ["gpu0-0", "gpu0-1", "gpu0-2", "gpu1-0", "gpu1-1", "gpu1-2"]);

    // Allocate: the assigner's socket directory, read-only, where --socket-dir-in-container
    // says; the address and the shares in the environment; no device node for simulated GPUs.
    let r = client
        .allocate(dp::AllocateRequest {
            container_requests: vec![
                dp::ContainerAllocateRequest { devices_ids: ids(&["gpu0-0", "gpu1-2"]) },
                dp::ContainerAllocateRequest { devices_ids: ids(&["gpu1-0"]) },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.container_responses.len(), 2);
    let c = &r.container_responses[0];
    assert_eq!(c.mounts.len(), 1, "{c:?}");
    assert_eq!(Path::new(&c.mounts[0].host_path), daemon.dir.0.as_path());
    assert_eq!(c.mounts[0].container_path, "/run/acb");
    assert!(c.mounts[0].read_only);
    assert_eq!(c.envs["ACB_ASSIGNER"], "unix:/run/acb/assigner.sock");
    assert_eq!(c.envs["ACB_GPU_SHARES"], "gpu0-0,gpu1-2");
    assert!(c.devices.is_empty(), "device nodes for simulated GPUs: {:?}", c.devices);
    assert_eq!(r.container_responses[1].envs["ACB_GPU_SHARES"], "gpu1-0");

    // An id that is not one of ours: INVALID_ARGUMENT naming it.
    for bad in ["gpu7-0", "gpu0-3", "nvidia0"] {
        let e = client
            .allocate(dp::AllocateRequest {
                container_requests: vec![dp::ContainerAllocateRequest { devices_ids: ids(&["gpu0-1", bad]) }],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains(bad), "{bad}: {}", e.message());
    }

    // Preferred: a pod's two shares on one GPU; a pod's one share on the least taken GPU.
    let p = client
        .get_preferred_allocation(dp::PreferredAllocationRequest {
            container_requests: vec![
                dp::ContainerPreferredAllocationRequest {
                    available_device_ids: ids(&["gpu0-1", "gpu0-2", "gpu1-0", "gpu1-1", "gpu1-2"]),
                    must_include_device_ids: vec![],
                    allocation_size: 2,
                },
                dp::ContainerPreferredAllocationRequest {
                    available_device_ids: ids(&["gpu0-2", "gpu1-1", "gpu1-2"]),
                    must_include_device_ids: vec![],
                    allocation_size: 1,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.container_responses[0].device_ids, ids(&["gpu1-0", "gpu1-1"]));
    assert_eq!(p.container_responses[1].device_ids, ids(&["gpu1-1"]));
    let pre = client.pre_start_container(dp::PreStartContainerRequest { devices_ids: ids(&["gpu0-0"]) }).await;
    assert!(pre.is_ok(), "{pre:?}");

    // The kubelet restarts as the real one does (kubelet.sock replaced, the plugins' sockets
    // removed): the plugin serves a new socket and registers again.
    kubelet.restart(true).await;
    let reg = kubelet.registration(15).await;
    assert_eq!((reg.endpoint.as_str(), reg.resource_name.as_str()), ("acb.sock", "acb.io/gpu"));
    let mut devices = list_and_watch(&kubelet, &reg.endpoint).await;
    wait_list(&mut devices, 10, "6 healthy devices after a kubelet restart", |l| all(l, 6, "Healthy")).await;

    // Only kubelet.sock replaced (the plugin's socket left): registered again all the same.
    kubelet.restart(false).await;
    let reg = kubelet.registration(15).await;
    assert_eq!(reg.endpoint, "acb.sock");
    let mut devices = list_and_watch(&kubelet, &reg.endpoint).await;
    wait_list(&mut devices, 10, "6 healthy devices after a second restart", |l| all(l, 6, "Healthy")).await;

    // The assigner goes away: every device unhealthy (the GPUs last seen are kept).
    drop(daemon);
    wait_list(&mut devices, 15, "every device unhealthy without the assigner", |l| all(l, 6, "Unhealthy")).await;

    // SIGTERM: exit 0, the socket removed, open ListAndWatch streams ended.
    plugin.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| wait_exit(&mut plugin.0, Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    assert!(!kdir.0.join("acb.sock").exists(), "the plugin's socket was left behind");
    let end = bounded(5, "the stream's end", devices.message()).await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    assert!(kubelet.socket().exists(), "the plugin removed the kubelet's socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_assigner_is_waited_for_and_a_missing_kubelet_too() {
    let kdir = TempDir::new("kubelet");
    let adir = TempDir::new("assigner");
    let socket = adir.0.join("assigner.sock");
    // Neither the kubelet nor the assigner yet.
    let plugin = PluginProcess::start(&format!("unix:{}", socket.display()), &kdir.0, &["--shares-per-gpu", "2"]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut kubelet = TestKubelet::start(&kdir.0);
    let reg = kubelet.registration(15).await;
    let mut devices = list_and_watch(&kubelet, &reg.endpoint).await;
    // Nothing known of the node yet: an empty list.
    let first = bounded(5, "the first list", devices.message()).await.unwrap().unwrap();
    assert!(first.devices.is_empty(), "{:?}", health(&first));
    let daemon = tokio::task::block_in_place(|| assigner_at(&socket, adir));
    wait_list(&mut devices, 20, "4 healthy devices once the assigner is up", |l| all(l, 4, "Healthy")).await;
    drop(daemon);
    drop(plugin);
}

fn node_gpu(index: u32, healthy: bool) -> proto::NodeGpu {
    proto::NodeGpu {
        index,
        uuid: format!("GPU-k8s-test-{index}"),
        name: "Test GPU".into(),
        memory: 16 << 30,
        healthy,
        fake: true,
        memory_used: None,
    }
}

/// Opens `Cluster/Join` as an executor of `node` would and registers `gpus`.
async fn join(
    c: &Cluster,
    node: &str,
    gpus: Vec<proto::NodeGpu>,
) -> (mpsc::Sender<proto::ExecutorReport>, tonic::Streaming<proto::ControllerReply>) {
    let channel = bounded(5, "connecting", c.tcp().connect()).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let register = proto::Register { node: node.into(), gpus, version: "test".into() };
    tx.send(proto::ExecutorReport { msg: Some(proto::executor_report::Msg::Register(register)) }).await.unwrap();
    let mut req = Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", format!("Bearer {CLUSTER_TOKEN}").parse().unwrap());
    let mut replies =
        bounded(10, "Join", proto::cluster_client::ClusterClient::new(channel).join(req)).await.unwrap().into_inner();
    match bounded(5, "Registered", replies.message()).await {
        Ok(Some(proto::ControllerReply { msg: Some(proto::controller_reply::Msg::Registered(_)) })) => {}
        other => panic!("{node}: expected Registered, got {other:?}"),
    }
    (tx, replies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_going_unhealthy_on_this_node_is_reflected() {
    // A controller with no GPUs; node k8s-node joins with two (as an executor would, over the
    // cluster protocol), and a node other with one, which the plugin must not advertise.
    let mut c = Cluster::new("k8s-health");
    c.heartbeat = "1s";
    let controller = tokio::task::block_in_place(|| c.controller(&[]));
    let (tx, mut replies) = join(&c, "k8s-node", vec![node_gpu(0, true), node_gpu(1, true)]).await;
    let (_other_tx, _other_replies) = join(&c, "other", vec![node_gpu(0, true)]).await;
    // Heartbeats every 300 ms with GPU 1's health from `gpu1`.
    let (gpu1, mut gpu1_rx) = tokio::sync::watch::channel(true);
    let beats = tokio::spawn(async move {
        loop {
            let healthy = *gpu1_rx.borrow_and_update();
            let hb = proto::Heartbeat { gpus: vec![node_gpu(0, true), node_gpu(1, healthy)] };
            if tx.send(proto::ExecutorReport { msg: Some(proto::executor_report::Msg::Heartbeat(hb)) }).await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(5), replies.message()).await {
                Ok(Ok(Some(_))) => {}
                other => panic!("heartbeat answered with {other:?}"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = gpu1_rx.changed() => {}
            }
        }
    });
    let kdir = TempDir::new("kubelet");
    let mut kubelet = TestKubelet::start(&kdir.0);
    let plugin =
        PluginProcess::start(&controller.addr(), &kdir.0, &["--shares-per-gpu", "2", "--node-name", "k8s-node"]);
    let reg = kubelet.registration(20).await;
    let mut devices = list_and_watch(&kubelet, &reg.endpoint).await;
    wait_list(&mut devices, 20, "this node's 4 devices healthy", |l| all(l, 4, "Healthy")).await;

    gpu1.send(false).unwrap();
    let list =
        wait_list(&mut devices, 10, "GPU 1's shares unhealthy", |l| l.iter().any(|(_, h)| h == "Unhealthy")).await;
    let want: Vec<(String, String)> =
        [("gpu0-0", "Healthy"), ("gpu0-1", "Healthy"), ("gpu1-0", "Unhealthy"), ("gpu1-1", "Unhealthy")]
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
    assert_eq!(list, want);

    gpu1.send(true).unwrap();
    wait_list(&mut devices, 10, "GPU 1 healthy again", |l| all(l, 4, "Healthy")).await;
    beats.abort();
    drop(plugin);
    drop(controller);
}

#[test]
fn a_pod_is_granted_only_the_gpus_behind_its_shares() {
    // What Allocate's ACB_REQUIRED_GPUS does in libacb: with GPU 0 free, a client confined to
    // GPU 1 is granted GPU 1, and waits for it rather than take GPU 0.
    let d = Daemon::start(&["--gpus", "fake:2x16GiB"]);
    let confined = |job: &str| {
        let mut cfg = common::client_config(&d.socket, job);
        cfg.required_gpus = vec![1];
        acb_client::Client::new(cfg).unwrap()
    };
    let req = acb_client::Request { gpus: 1, memory_per_gpu: None, priority: 0, timeout: Some(Duration::from_secs(5)) };
    let a = confined("pod-a");
    let lease = a.begin(&req).unwrap();
    assert_eq!(lease.devices.iter().map(|g| g.index).collect::<Vec<_>>(), [1], "GPU 1, though GPU 0 is free");
    let b = confined("pod-b");
    let waiting = acb_client::Request { timeout: Some(Duration::from_millis(500)), ..req.clone() };
    let e = b.begin(&waiting).unwrap_err();
    assert!(matches!(e, acb_client::Error::Timeout(_)), "GPU 0 is free but not pod-b's: {e}");
    a.end().unwrap();
    assert_eq!(b.begin(&req).unwrap().devices[0].index, 1);
}
