//! The Kubernetes device plugin (`acb-assigner device-plugin`): the kubelet's device-plugin API
//! v1beta1 (`acb_proto::deviceplugin`) in front of a node's assigner.
//!
//! The plugin is an acb client. It reads the node's GPUs from the assigner's `Status`, follows
//! its `Watch` (re-reading the status on a health or node event, and every
//! [`POLL_EVERY`] in any case) and advertises `shares_per_gpu` devices per GPU, `gpu<INDEX>-<K>`,
//! healthy while the GPU is and the assigner answers. It serves `DevicePlugin` on its own socket
//! in the kubelet's directory, registers there with the kubelet, and registers again (on a new
//! socket) when the kubelet restarts: when `kubelet.sock` is replaced, or its own socket removed.
//!
//! A share is a place in Kubernetes' count, not a slice of memory or compute: the scheduler
//! counts shares, acb decides who computes when. `Allocate` gives a container the assigner's
//! socket (its directory, bound read-only), `ACB_ASSIGNER` and `ACB_GPU_SHARES`, and the device
//! nodes of the real GPUs behind its shares.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use acb_proto::Address;
use acb_proto::deviceplugin as dp;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How often the status is read again without any event (a backstop for a missed one).
pub const POLL_EVERY: Duration = Duration::from_secs(10);
/// How often the kubelet's socket and the plugin's own are looked at.
const KUBELET_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Longest wait between two tries to reach the assigner, or to register.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The plugin's settings (the subcommand's flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The node's assigner (an executor, or a standalone daemon).
    pub assigner: Address,
    /// The token the assigner requires, if any.
    pub token: Option<String>,
    /// The extended resource, e.g. `acb.io/gpu`.
    pub resource: String,
    /// Devices advertised per GPU.
    pub shares_per_gpu: u32,
    /// The kubelet's device-plugin directory (`kubelet.sock` and the plugin's own socket).
    pub kubelet_dir: PathBuf,
    /// The plugin's socket's name in `kubelet_dir`.
    pub socket_name: String,
    /// Where `Allocate` mounts the assigner's socket directory in a container.
    pub socket_dir_in_container: PathBuf,
    /// This node's name: a controller's or executor's status lists every node's GPUs, and only
    /// this node's are advertised.
    pub node_name: String,
    /// Where the device nodes are looked for (`/dev`).
    pub dev_dir: PathBuf,
}

/// One GPU of the node, as the assigner's status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// Its index on the node (`/dev/nvidia<index>`).
    pub index: u32,
    /// Its id in the assigner's pool.
    pub id: u32,
    /// Its UUID.
    pub uuid: String,
    /// Healthy (not lost).
    pub healthy: bool,
    /// Simulated: no device node.
    pub fake: bool,
}

/// What the plugin knows of the node: the GPUs last seen, and whether the assigner answers now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Ordered by index.
    pub gpus: Vec<Gpu>,
    /// The assigner answered its last call; while not, every device is unhealthy.
    pub reachable: bool,
}

impl Inventory {
    /// The node's GPUs in `status`: all of a standalone assigner's; a controller's or an
    /// executor's on the node named `node` only.
    pub fn from_status(status: &acb_proto::v1::StatusResponse, node: &str) -> Inventory {
        let clustered = status.role == "controller" || status.role == "executor";
        let mut gpus: Vec<Gpu> = status
            .gpus
            .iter()
            .filter(|g| !clustered || g.node == node)
            .map(|g| Gpu { index: g.index, id: g.id, uuid: g.uuid.clone(), healthy: g.healthy, fake: g.fake })
            .collect();
        gpus.sort_by_key(|g| g.index);
        gpus.dedup_by_key(|g| g.index);
        Inventory { gpus, reachable: true }
    }

    /// Each GPU's index and whether its devices are healthy: all [`Inventory::devices`] shows.
    pub fn shown(&self) -> Vec<(u32, bool)> {
        self.gpus.iter().map(|g| (g.index, self.reachable && g.healthy)).collect()
    }

    /// The devices to advertise: `shares` per GPU.
    pub fn devices(&self, shares: u32) -> Vec<dp::Device> {
        let mut out = Vec::with_capacity(self.gpus.len() * shares as usize);
        for (index, healthy) in self.shown() {
            let health = if healthy { dp::HEALTHY } else { dp::UNHEALTHY };
            for k in 0..shares {
                out.push(dp::Device {
                    id: ShareId { gpu: index, share: k }.to_string(),
                    health: health.into(),
                    topology: None,
                });
            }
        }
        out
    }

    fn gpu(&self, index: u32) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.index == index)
    }
}

/// A device: share `share` of the GPU at index `gpu` on the node, `gpu<gpu>-<share>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShareId {
    /// The GPU's index on the node.
    pub gpu: u32,
    /// Which of its shares, from 0.
    pub share: u32,
}

impl std::fmt::Display for ShareId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gpu{}-{}", self.gpu, self.share)
    }
}

impl std::str::FromStr for ShareId {
    type Err = ();

    /// `gpu<INDEX>-<K>`, decimal without sign or leading zeros (one spelling per device).
    fn from_str(s: &str) -> Result<ShareId, ()> {
        let rest = s.strip_prefix("gpu").ok_or(())?;
        let (gpu, share) = rest.split_once('-').ok_or(())?;
        let number = |t: &str| -> Result<u32, ()> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || (t.len() > 1 && t.starts_with('0')) {
                return Err(());
            }
            t.parse::<u32>().map_err(|_| ())
        };
        Ok(ShareId { gpu: number(gpu)?, share: number(share)? })
    }
}

/// The preferred `size` devices out of `available`, with every one of `must` in: the shares of
/// as few GPUs as can hold them. GPUs `must` already touches are filled first, then those with
/// the most shares available; within a GPU, its lowest shares. So one pod's shares are packed
/// (one GPU's device node for it, as a time-shared job expects), while pods of one share each
/// land on the least taken GPU (fewer pods contend for each). IDs that are not shares are left
/// out; fewer than `size` come back when fewer are available.
pub fn preferred(available: &[String], must: &[String], size: usize) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::new();
    let mut taken = BTreeSet::new();
    for id in must {
        if taken.insert(id.clone()) {
            chosen.push(id.clone());
        }
    }
    let touched: BTreeSet<u32> = must.iter().filter_map(|id| id.parse::<ShareId>().ok()).map(|s| s.gpu).collect();
    let mut by_gpu: BTreeMap<u32, Vec<ShareId>> = BTreeMap::new();
    for id in available {
        if let Ok(s) = id.parse::<ShareId>()
            && !taken.contains(id)
        {
            by_gpu.entry(s.gpu).or_default().push(s);
        }
    }
    let mut gpus: Vec<(u32, Vec<ShareId>)> = by_gpu.into_iter().collect();
    for (_, shares) in &mut gpus {
        shares.sort();
        shares.dedup();
    }
    // Touched first; then more available first; then the lower index.
    gpus.sort_by_key(|(gpu, shares)| (!touched.contains(gpu), std::cmp::Reverse(shares.len()), *gpu));
    for (_, shares) in gpus {
        for s in shares {
            if chosen.len() >= size {
                return chosen;
            }
            chosen.push(s.to_string());
        }
    }
    chosen
}

/// Whether `name` is an extended resource name Kubernetes accepts from a device plugin:
/// `DOMAIN/NAME`, the domain a DNS subdomain (lower case, at most 253 characters) outside
/// `kubernetes.io` and `k8s.io`, the name a qualified name's part (at most 63 characters,
/// alphanumerics with `-`, `_`, `.` inside). Why not, if not.
pub fn check_resource_name(name: &str) -> Result<(), String> {
    let Some((domain, rest)) = name.split_once('/') else {
        return Err("an extended resource is DOMAIN/NAME, e.g. acb.io/gpu".into());
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(format!("{domain:?} is not a DNS subdomain (lower case, e.g. acb.io)"));
    }
    if domain == "kubernetes.io"
        || domain.ends_with(".kubernetes.io")
        || domain == "k8s.io"
        || domain.ends_with(".k8s.io")
    {
        return Err(format!("{domain:?} is Kubernetes' own domain; use one of yours, e.g. acb.io"));
    }
    let name_ok = !rest.is_empty()
        && rest.len() <= 63
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && rest.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && rest.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !name_ok {
        return Err(format!("{rest:?} is not a resource name (alphanumerics, with - _ . inside; 63 at most)"));
    }
    Ok(())
}

/// `id` as an error or a log line shows it: at most 64 characters (a kubelet's id is short; a
/// huge one must not make a reply too large to send).
fn shorten(id: &str) -> String {
    match id.char_indices().nth(64) {
        Some((cut, _)) => format!("{}... ({} bytes)", &id[..cut], id.len()),
        None => id.to_owned(),
    }
}

/// What a container whose devices are `ids` needs: the assigner's socket directory and address,
/// the share ids, and the device nodes of the real GPUs behind them. An id that is not one of
/// the plugin's devices is `INVALID_ARGUMENT`, naming it.
pub fn allocate_container(
    ids: &[String],
    inventory: &Inventory,
    settings: &Settings,
) -> Result<dp::ContainerAllocateResponse, Status> {
    if ids.is_empty() {
        return Err(Status::invalid_argument("a container asks for no device"));
    }
    let mut seen = BTreeSet::new();
    let mut gpus = BTreeSet::new();
    for id in ids {
        if !seen.insert(id.as_str()) {
            return Err(Status::invalid_argument(format!("device {:?} is asked for twice", shorten(id))));
        }
        let known =
            id.parse::<ShareId>().ok().filter(|s| s.share < settings.shares_per_gpu).and_then(|s| inventory.gpu(s.gpu));
        match known {
            Some(g) => {
                gpus.insert(g.index);
            }
            None => {
                return Err(Status::invalid_argument(format!(
                    "unknown device {:?}: not one of this node's {} devices (gpu<INDEX>-<K>, K below {})",
                    shorten(id),
                    settings.resource,
                    settings.shares_per_gpu
                )));
            }
        }
    }
    let mut r = dp::ContainerAllocateResponse::default();
    match &settings.assigner {
        Address::Unix(path) => {
            let host_dir = path.parent().unwrap_or(Path::new("/"));
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let in_container = settings.socket_dir_in_container.join(&file);
            r.mounts.push(dp::Mount {
                container_path: settings.socket_dir_in_container.to_string_lossy().into_owned(),
                host_path: host_dir.to_string_lossy().into_owned(),
                // Connecting to a Unix socket needs no write access to its mount.
                read_only: true,
            });
            r.envs.insert("ACB_ASSIGNER".into(), format!("unix:{}", in_container.display()));
        }
        Address::Tcp(_) => {
            r.envs.insert("ACB_ASSIGNER".into(), settings.assigner.to_string());
        }
    }
    r.envs.insert("ACB_GPU_SHARES".into(), ids.join(","));
    // libacb asks only for these GPUs (the assigner's ids): those whose device nodes the
    // container gets, not any GPU of the node.
    let required: Vec<String> = gpus.iter().filter_map(|i| inventory.gpu(*i)).map(|g| g.id.to_string()).collect();
    r.envs.insert("ACB_REQUIRED_GPUS".into(), required.join(","));
    let real: Vec<&Gpu> = gpus.iter().filter_map(|i| inventory.gpu(*i)).filter(|g| !g.fake).collect();
    if !real.is_empty() {
        let mut nodes: Vec<PathBuf> =
            real.iter().map(|g| settings.dev_dir.join(format!("nvidia{}", g.index))).collect();
        for shared in ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] {
            let p = settings.dev_dir.join(shared);
            if p.exists() {
                nodes.push(p);
            }
        }
        for p in nodes {
            // The path in the container is the usual /dev one, whatever --dev-dir says.
            let name = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            r.devices.push(dp::DeviceSpec {
                container_path: format!("/dev/{name}"),
                host_path: p.to_string_lossy().into_owned(),
                permissions: "rw".into(),
            });
        }
    }
    Ok(r)
}

/// The `DevicePlugin` service: answers from the latest [`Inventory`].
#[derive(Clone, Debug)]
pub struct Plugin {
    settings: Settings,
    inventory: watch::Receiver<Inventory>,
    /// Becomes true when the plugin stops: open ListAndWatch streams end.
    stopping: watch::Receiver<bool>,
    /// ListAndWatch streams open now.
    streams: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The most ListAndWatch streams open at once: the kubelet keeps one; past this a caller gets
/// RESOURCE_EXHAUSTED (each stream may hold a device list its reader has not taken).
pub const MAX_STREAMS: usize = 16;

/// A stream's place among [`MAX_STREAMS`], given back when its task ends.
struct StreamSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Plugin {
    /// A plugin answering from `inventory` until `stopping` turns true.
    pub fn new(settings: Settings, inventory: watch::Receiver<Inventory>, stopping: watch::Receiver<bool>) -> Plugin {
        Plugin { settings, inventory, stopping, streams: Default::default() }
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<dp::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl dp::device_plugin_server::DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<dp::DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(&self, _: Request<dp::Empty>) -> Result<Response<Self::ListAndWatchStream>, Status> {
        // One slot: a stream its reader does not drain holds at most one list (and the one
        // waiting to go), not a queue of them; a reader that catches up gets the latest.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        use std::sync::atomic::Ordering;
        if self.streams.fetch_add(1, Ordering::AcqRel) >= MAX_STREAMS {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "at most {MAX_STREAMS} ListAndWatch streams at once (the kubelet keeps one)"
            )));
        }
        let slot = StreamSlot(self.streams.clone());
        let mut inventory = self.inventory.clone();
        let mut stopping = self.stopping.clone();
        let shares = self.settings.shares_per_gpu;
        tokio::spawn(async move {
            let _slot = slot;
            // What was sent last, as what decides the list (each GPU's index and health): a
            // stalled stream holds no second copy of a list.
            let mut last: Option<Vec<(u32, bool)>> = None;
            loop {
                // Wait for room first, then build the list from the inventory as it is now.
                let permit = tokio::select! {
                    p = tx.reserve() => match p { Ok(p) => p, Err(_) => return },
                    _ = stopping.wait_for(|s| *s) => return,
                };
                let (devices, shown) = {
                    let inv = inventory.borrow_and_update();
                    (inv.devices(shares), inv.shown())
                };
                if last.as_ref() != Some(&shown) {
                    let healthy = devices.iter().filter(|d| d.health == dp::HEALTHY).count();
                    tracing::info!(devices = devices.len(), healthy, "ListAndWatch: sending the device list");
                    permit.send(Ok(dp::ListAndWatchResponse { devices }));
                    last = Some(shown);
                } else {
                    drop(permit);
                }
                tokio::select! {
                    changed = inventory.changed() => if changed.is_err() { return },
                    _ = stopping.wait_for(|s| *s) => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<dp::PreferredAllocationRequest>,
    ) -> Result<Response<dp::PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| dp::ContainerPreferredAllocationResponse {
                device_ids: preferred(
                    &c.available_device_ids,
                    &c.must_include_device_ids,
                    usize::try_from(c.allocation_size).unwrap_or(0),
                ),
            })
            .collect();
        Ok(Response::new(dp::PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(&self, request: Request<dp::AllocateRequest>) -> Result<Response<dp::AllocateResponse>, Status> {
        let inventory = self.inventory.borrow().clone();
        let mut container_responses = Vec::new();
        for c in &request.get_ref().container_requests {
            let r = allocate_container(&c.devices_ids, &inventory, &self.settings)
                .inspect_err(|e| tracing::warn!(devices = c.devices_ids.len(), "Allocate refused: {}", e.message()))?;
            let shown: Vec<String> = c.devices_ids.iter().take(16).map(|i| shorten(i)).collect();
            tracing::info!(devices = c.devices_ids.len(), first = ?shown, device_nodes = r.devices.len(), "Allocate");
            container_responses.push(r);
        }
        Ok(Response::new(dp::AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _: Request<dp::PreStartContainerRequest>,
    ) -> Result<Response<dp::PreStartContainerResponse>, Status> {
        Ok(Response::new(dp::PreStartContainerResponse {}))
    }
}

/// The options the plugin registers with: no PreStartContainer, GetPreferredAllocation served.
pub fn options() -> dp::DevicePluginOptions {
    dp::DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true }
}

/// Follows the assigner forever: its status into `inventory` on every health or node event and
/// every [`POLL_EVERY`]; while it cannot be reached, the GPUs last seen are kept, unhealthy, and
/// it is tried again with backoff (200 ms doubling to 10 s).
pub async fn follow_assigner(settings: Settings, inventory: watch::Sender<Inventory>) {
    let mut backoff = Duration::from_millis(200);
    let mut failures = 0u64;
    loop {
        match follow_once(&settings, &inventory, &mut backoff).await {
            Ok(()) => tracing::warn!(assigner = %settings.assigner, "the assigner's event stream ended"),
            Err(e) => {
                failures += 1;
                // Every failure while few, then one in ten: an absent assigner does not flood the log.
                if failures <= 5 || failures.is_multiple_of(10) {
                    tracing::warn!(assigner = %settings.assigner, failures, "the assigner cannot be reached: {e}; devices unhealthy, retrying in {backoff:?}");
                }
            }
        }
        inventory.send_if_modified(|inv| std::mem::replace(&mut inv.reachable, false));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow_once(
    settings: &Settings,
    inventory: &watch::Sender<Inventory>,
    backoff: &mut Duration,
) -> Result<(), String> {
    use acb_proto::v1::event::Kind;
    let mut rpc =
        acb_client::connection::connect(&settings.assigner, settings.token.as_deref(), Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
    // The watch first: a change between the two calls is then not missed.
    let mut events = bounded(rpc.watch(acb_proto::v1::WatchRequest { replay: false }))
        .await?
        .map_err(|e| e.message().to_owned())?
        .into_inner();
    let read = async |rpc: &mut acb_client::connection::Rpc| -> Result<(), String> {
        let status = bounded(rpc.status(acb_proto::v1::StatusRequest { queue_limit: 1, client_limit: 1 }))
            .await?
            .map_err(|e| e.message().to_owned())?
            .into_inner();
        let fresh = Inventory::from_status(&status, &settings.node_name);
        if fresh.gpus.is_empty() {
            tracing::warn!(node = %settings.node_name, role = %status.role, "the assigner shows no GPU of this node");
        }
        inventory.send_if_modified(|inv| {
            let changed = *inv != fresh;
            if changed {
                tracing::info!(
                    gpus = fresh.gpus.len(),
                    healthy = fresh.gpus.iter().filter(|g| g.healthy).count(),
                    "the node's GPUs"
                );
                *inv = fresh;
            }
            changed
        });
        Ok(())
    };
    read(&mut rpc).await?;
    *backoff = Duration::from_millis(200);
    loop {
        match tokio::time::timeout(POLL_EVERY, events.message()).await {
            Err(_) => read(&mut rpc).await?,
            Ok(Ok(Some(e))) => {
                if matches!(e.kind, Some(Kind::GpuHealth(_) | Kind::NodeUp(_) | Kind::NodeDown(_))) {
                    read(&mut rpc).await?;
                }
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e.message().to_owned()),
        }
    }
}

/// A call to the assigner, bounded.
async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs(10), fut).await.map_err(|_| "no answer within 10 s".to_owned())
}

/// The identity of a file (device, inode, change time), to tell a replaced socket from the same
/// one: a socket made again may get the inode number of the one removed, not its change time.
fn identity(p: &Path) -> Option<(u64, u64, i64, i64)> {
    std::fs::symlink_metadata(p).ok().map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Serves the plugin and keeps it registered until `stop` resolves; removes its socket then.
/// Each round binds the plugin's socket afresh, serves it, registers with the kubelet (retrying
/// with backoff while it refuses or is absent), and watches: a `kubelet.sock` replaced (the
/// kubelet restarted; it also removes the plugins' sockets) or the plugin's own socket gone
/// starts the next round.
pub async fn run(
    settings: Settings,
    inventory: watch::Receiver<Inventory>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let kubelet_sock = settings.kubelet_dir.join(dp::KUBELET_SOCKET);
    let own = settings.kubelet_dir.join(&settings.socket_name);
    tokio::pin!(stop);
    loop {
        // Bind: a stale socket of an earlier run is replaced, but never one a process still
        // listens on (another plugin with the same --socket-name, say).
        match std::fs::symlink_metadata(&own) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                if std::os::unix::net::UnixStream::connect(&own).is_ok() {
                    break Err(format!(
                        "{}: another process listens on it (another device plugin with this --socket-name?)",
                        own.display()
                    ));
                }
                let _ = std::fs::remove_file(&own);
            }
            Ok(_) => break Err(format!("{}: exists and is not a socket", own.display())),
            Err(_) => {}
        }
        let listener = match tokio::net::UnixListener::bind(&own) {
            Ok(l) => l,
            Err(e) => break Err(format!("cannot listen on {}: {e}", own.display())),
        };
        let own_id = identity(&own);
        // The round's end: its ListAndWatch streams end, and then its server.
        let (round_tx, round_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopping_tx, stopping) = watch::channel(false);
        let plugin = Plugin::new(settings.clone(), inventory.clone(), stopping);
        let mut server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(dp::device_plugin_server::DevicePluginServer::new(plugin))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async {
                    let _ = round_rx.await;
                }),
        );
        tracing::info!(socket = %own.display(), "serving the device plugin");
        // Register, and then watch for the kubelet's restart.
        let mut registered_with = None;
        let mut backoff = Duration::from_millis(200);
        let mut next_try = tokio::time::Instant::now();
        let mut stopped = false;
        loop {
            let tick = tokio::time::sleep(KUBELET_CHECK_EVERY);
            tokio::select! {
                () = &mut stop => { stopped = true; break; }
                () = tick => {}
            }
            if identity(&own) != own_id {
                tracing::warn!(socket = %own.display(), "the plugin's socket was removed (a kubelet restart?): serving a new one");
                break;
            }
            let now_id = identity(&kubelet_sock);
            match (registered_with, now_id) {
                (Some(was), Some(now)) if was == now => continue,
                (Some(_), _) => {
                    tracing::warn!(kubelet = %kubelet_sock.display(), "kubelet.sock replaced or gone (a kubelet restart): registering again");
                    break;
                }
                (None, None) => continue,
                (None, Some(now)) => {
                    if tokio::time::Instant::now() < next_try {
                        continue;
                    }
                    let attempt = tokio::select! {
                        () = &mut stop => { stopped = true; break; }
                        r = register(&kubelet_sock, &settings) => r,
                    };
                    match attempt {
                        Ok(()) => {
                            tracing::info!(resource = %settings.resource, endpoint = %settings.socket_name, "registered with the kubelet");
                            registered_with = Some(now);
                        }
                        Err(e) => {
                            tracing::warn!(kubelet = %kubelet_sock.display(), "registration failed: {e}; again in {backoff:?}");
                            next_try = tokio::time::Instant::now() + backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
        }
        let _ = stopping_tx.send(true);
        let _ = round_tx.send(());
        if tokio::time::timeout(Duration::from_secs(5), &mut server).await.is_err() {
            tracing::warn!("the plugin's server did not stop within 5 s: stopped");
            server.abort();
        }
        // Only the socket this round made: a later one is another's.
        if identity(&own) == own_id {
            let _ = std::fs::remove_file(&own);
        }
        if stopped {
            break Ok(());
        }
    }
}

/// One `Register` call on the kubelet's socket, bounded by 10 s.
async fn register(kubelet_sock: &Path, settings: &Settings) -> Result<(), String> {
    let uri = format!("unix:{}", kubelet_sock.to_str().ok_or("the kubelet's socket path is not UTF-8")?);
    let endpoint = tonic::transport::Endpoint::from_shared(uri).map_err(|e| e.to_string())?;
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {}", acb_client::connection::source_chain(&e)))?;
        dp::registration_client::RegistrationClient::new(channel)
            .register(dp::RegisterRequest {
                version: dp::VERSION.into(),
                endpoint: settings.socket_name.clone(),
                resource_name: settings.resource.clone(),
                options: Some(options()),
            })
            .await
            .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?;
        Ok::<(), String>(())
    };
    tokio::time::timeout(Duration::from_secs(10), call).await.map_err(|_| "no answer within 10 s".to_owned())?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn resource_names_are_checked_as_kubernetes_does() {
        for ok in ["acb.io/gpu", "example.com/gpu-share", "a.b/x_y.z"] {
            assert_eq!(check_resource_name(ok), Ok(()), "{ok}");
        }
        for bad in
            ["gpu", "/", "a/", "/gpu", "acb.io/g/pu", "acb.io/g pu", "kubernetes.io/gpu", "-acb.io/gpu", "ACB.io/gpu"]
        {
            assert!(check_resource_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_container_asks_for_devices_each_once_and_long_ids_are_cut() {
        let dev = std::env::temp_dir();
        let s = settings("unix:/run/acb/assigner.sock", &dev);
        let e = allocate_container(&[], &inv(true), &s).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = allocate_container(&ids(&["gpu0-0", "gpu0-0"]), &inv(true), &s).unwrap_err();
        assert!(e.message().contains("twice"), "{}", e.message());
        let huge = "x".repeat(300_000);
        let e = allocate_container(&[huge], &inv(true), &s).unwrap_err();
        assert!(e.message().len() < 400 && e.message().contains("(300000 bytes)"), "{}", e.message());
    }

    #[test]
    fn share_ids_parse_and_print_one_way() {
        assert_eq!("gpu0-0".parse::<ShareId>(), Ok(ShareId { gpu: 0, share: 0 }));
        assert_eq!("gpu12-3".parse::<ShareId>(), Ok(ShareId { gpu: 12, share: 3 }));
        assert_eq!(ShareId { gpu: 7, share: 1 }.to_string(), "gpu7-1");
        for bad in [
            "",
            "gpu",
            "gpu-1",
            "gpu1-",
            "gpu01-1",
            "gpu1-01",
            "gpu1-+1",
            "GPU1-1",
            "gpu1_1",
            "gpu1-1-1",
            "x1-1",
            "gpu99999999999-0",
        ] {
            assert!(bad.parse::<ShareId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_pods_shares_are_packed_and_single_shares_go_to_the_least_taken_gpu() {
        // gpu0 has 2 free shares, gpu1 has 4.
        let avail = ids(&["gpu0-2", "gpu0-3", "gpu1-0", "gpu1-1", "gpu1-2", "gpu1-3"]);
        assert_eq!(preferred(&avail, &[], 1), ids(&["gpu1-0"]));
        assert_eq!(preferred(&avail, &[], 3), ids(&["gpu1-0", "gpu1-1", "gpu1-2"]));
        // More than one GPU holds: the fullest first, then the next.
        assert_eq!(preferred(&avail, &[], 5), ids(&["gpu1-0", "gpu1-1", "gpu1-2", "gpu1-3", "gpu0-2"]));
        // A must-include share pulls the rest onto its GPU.
        assert_eq!(preferred(&avail, &ids(&["gpu0-2"]), 2), ids(&["gpu0-2", "gpu0-3"]));
        // Fewer available than asked: what there is; garbage is ignored.
        assert_eq!(preferred(&ids(&["gpu0-1", "junk"]), &[], 3), ids(&["gpu0-1"]));
        // Ties go to the lower index.
        assert_eq!(preferred(&ids(&["gpu1-0", "gpu0-0"]), &[], 1), ids(&["gpu0-0"]));
    }

    fn settings(assigner: &str, dev: &Path) -> Settings {
        Settings {
            assigner: assigner.parse().unwrap(),
            token: None,
            resource: "acb.io/gpu".into(),
            shares_per_gpu: 4,
            kubelet_dir: "/tmp/unused".into(),
            socket_name: "acb.sock".into(),
            socket_dir_in_container: "/run/acb".into(),
            node_name: "n".into(),
            dev_dir: dev.to_owned(),
        }
    }

    fn inv(fake: bool) -> Inventory {
        let g = |index| Gpu { index, id: index + 10, uuid: format!("GPU-{index}"), healthy: true, fake };
        Inventory { gpus: vec![g(0), g(1)], reachable: true }
    }

    #[test]
    fn allocate_mounts_the_socket_and_names_real_device_nodes_only() {
        let dev = std::env::temp_dir().join(format!("acb-k8s-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("nvidiactl"), "").unwrap();
        let s = settings("unix:/var/run/acb/assigner.sock", &dev);
        let r = allocate_container(&ids(&["gpu1-0", "gpu1-3"]), &inv(false), &s).unwrap();
        assert_eq!(r.mounts.len(), 1);
        assert_eq!(r.mounts[0].host_path, "/var/run/acb");
        assert_eq!(r.mounts[0].container_path, "/run/acb");
        assert_eq!(r.envs["ACB_ASSIGNER"], "unix:/run/acb/assigner.sock");
        assert_eq!(r.envs["ACB_GPU_SHARES"], "gpu1-0,gpu1-3");
        assert_eq!(r.envs["ACB_REQUIRED_GPUS"], "11", "the assigner's id of GPU 1, for libacb");
        let paths: Vec<_> = r.devices.iter().map(|d| (d.host_path.clone(), d.container_path.clone())).collect();
        assert_eq!(
            paths,
            vec![
                (dev.join("nvidia1").display().to_string(), "/dev/nvidia1".to_owned()),
                (dev.join("nvidiactl").display().to_string(), "/dev/nvidiactl".to_owned()),
            ]
        );
        let fake = allocate_container(&ids(&["gpu0-0"]), &inv(true), &s).unwrap();
        assert!(fake.devices.is_empty());
        for bad in ["gpu2-0", "gpu0-4", "nope"] {
            let e = allocate_container(&ids(&["gpu0-0", bad]), &inv(false), &s).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(bad), "{}", e.message());
        }
        let tcp = allocate_container(&ids(&["gpu0-0"]), &inv(true), &settings("tcp:127.0.0.1:7700", &dev)).unwrap();
        assert!(tcp.mounts.is_empty());
        assert_eq!(tcp.envs["ACB_ASSIGNER"], "tcp:127.0.0.1:7700");
        let _ = std::fs::remove_dir_all(&dev);
    }

    #[test]
    fn devices_are_unhealthy_while_the_assigner_is_unreachable() {
        let mut i = inv(true);
        i.gpus[1].healthy = false;
        let d = i.devices(2);
        let h: Vec<_> = d.iter().map(|d| (d.id.as_str(), d.health.as_str())).collect();
        assert_eq!(
            h,
            vec![("gpu0-0", "Healthy"), ("gpu0-1", "Healthy"), ("gpu1-0", "Unhealthy"), ("gpu1-1", "Unhealthy")]
        );
        i.reachable = false;
        assert!(i.devices(2).iter().all(|d| d.health == "Unhealthy"));
    }
}
