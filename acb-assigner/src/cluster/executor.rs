//! An executor: it serves its node's clients on the local socket, exactly the `acb.v1.Assigner`
//! API a standalone assigner serves, and forwards every call to the controller, which decides.
//! It adds what the controller must know and a client must not be able to claim: the node
//! (this executor's), and the caller's uid and pid from SO_PEERCRED, under the cluster token.
//! Beside it, the link registers the node's GPUs and heartbeats.
//!
//! While the controller is away, calls fail with UNAVAILABLE and sessions end: clients keep
//! computing on the leases they hold and resume their sessions when it is back (a controller
//! with a state directory restores their leases, so no GPU is granted twice).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::discovery::FoundGpu;
use crate::peer::{NODE_HEADER, PID_HEADER, UID_HEADER};
use crate::proto::{self, assigner_client::AssignerClient, cluster_client::ClusterClient};

/// What an executor needs to reach its controller.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The clients' forwarded calls.
    channel: Channel,
    /// The node's link (registration, heartbeats): a connection of its own, so that no load of
    /// the clients' calls can starve or break it.
    link: Channel,
    /// `Bearer CLUSTER_TOKEN`.
    auth: AsciiMetadataValue,
    /// This node's name, as a header value.
    node: AsciiMetadataValue,
    node_name: String,
}

impl Upstream {
    /// The controller at `addr` (connected lazily, again after every failure).
    pub fn new(addr: &crate::config::ControllerAddr, token: &str, node: &str) -> Result<Upstream, crate::Error> {
        let setting = |why: String| crate::Error::Setting { what: "--controller", why };
        let lazy = || {
            acb_client::connection::channel_lazy_to(&addr.host, addr.port, Duration::from_secs(3))
                .map_err(|e| setting(e.to_string()))
        };
        let (channel, link) = (lazy()?, lazy()?);
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| setting("the cluster token has characters not allowed in a header".into()))?;
        let node_value = node
            .parse()
            .map_err(|_| setting(format!("the node name {node:?} has characters not allowed in a header")))?;
        Ok(Upstream { channel, link, auth, node: node_value, node_name: node.to_string() })
    }

    /// `from` as a call to the controller on behalf of its caller: the cluster token, this
    /// node, the caller's uid and pid, and its deadline.
    fn forward<T>(&self, from: Request<T>) -> Request<T> {
        let peer = crate::peer::of(&from, 0);
        let timeout = from.metadata().get("grpc-timeout").and_then(|v| crate::deadline::parse_timeout(v.as_bytes()));
        let mut r = Request::new(from.into_inner());
        if let Some(t) = timeout {
            r.set_timeout(t);
        }
        self.stamp(r.metadata_mut());
        if let Some(uid) = peer.uid
            && let Ok(v) = uid.to_string().parse()
        {
            r.metadata_mut().insert(UID_HEADER, v);
        }
        if peer.pid != 0
            && let Ok(v) = peer.pid.to_string().parse()
        {
            r.metadata_mut().insert(PID_HEADER, v);
        }
        r
    }

    fn stamp(&self, md: &mut MetadataMap) {
        md.insert("authorization", self.auth.clone());
        md.insert(NODE_HEADER, self.node.clone());
    }

    fn assigner(&self) -> AssignerClient<Channel> {
        AssignerClient::new(self.channel.clone())
    }
}

/// The `acb.v1.Assigner` service of an executor: every call forwarded to the controller, once
/// the node is registered (a call that comes before waits, within its deadline); sessions end
/// when the link to the controller is lost, so that clients learn of it at once.
#[derive(Clone, Debug)]
pub struct ProxyService {
    up: Arc<Upstream>,
    link: watch::Receiver<LinkState>,
    /// The calls that may wait long (sessions, requests for GPUs, watches) in flight at once.
    waiting: Arc<tokio::sync::Semaphore>,
}

/// Calls that may wait long (sessions, AllocRequest, Watch) an executor forwards at once; past
/// it a call fails with RESOURCE_EXHAUSTED, reason LIMIT_REACHED. Releases, renewals and status
/// are never held back by them.
pub const MAX_WAITING_CALLS: usize = 16_384;

/// How long a call waits for the node to be registered when it has no deadline of its own.
pub const REGISTER_WAIT: Duration = Duration::from_secs(30);

impl ProxyService {
    /// A proxy to `up`, forwarding while `link` says the node is registered.
    pub fn new(up: Arc<Upstream>, link: watch::Receiver<LinkState>) -> Self {
        ProxyService { up, link, waiting: Arc::new(tokio::sync::Semaphore::new(MAX_WAITING_CALLS)) }
    }

    /// A place for one more long-waiting call, or LIMIT_REACHED.
    fn waiting_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.waiting.clone().try_acquire_owned().map_err(|_| {
            acb_proto::status_with_reason(
                tonic::Code::ResourceExhausted,
                format!("{MAX_WAITING_CALLS} sessions, requests and watches of this node wait at once (the executor's limit); retry later"),
                acb_proto::ErrorReason::LimitReached,
            )
        })
    }

    /// Waits until the node is registered, within `request`'s deadline (or [`REGISTER_WAIT`]).
    async fn registered<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let wait = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| crate::deadline::parse_timeout(v.as_bytes()))
            .unwrap_or(REGISTER_WAIT);
        let mut link = self.link.clone();
        let ready = async move { link.wait_for(|s| matches!(s, LinkState::Registered(_))).await.is_ok() };
        match tokio::time::timeout(wait, ready).await {
            Ok(true) => Ok(()),
            _ => {
                let why = match &*self.link.borrow() {
                    LinkState::Down(why) => why.clone(),
                    LinkState::Registered(_) => String::new(),
                };
                Err(acb_proto::status_with_reason(
                    tonic::Code::Unavailable,
                    format!("this executor is not registered with its controller (yet): {why}; retry later"),
                    acb_proto::ErrorReason::NodeUnavailable,
                ))
            }
        }
    }
}

use crate::service::BoxStream;

/// A controller's answer, with a word on where it failed when the controller could not be
/// reached.
fn upstream<T>(r: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    r.map_err(|s| match s.code() {
        // The controller's own errors carry an ErrorInfo; these are the transport's (a refused
        // connection, a failed TLS handshake, a broken HTTP/2 connection).
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal if s.details().is_empty() => {
            Status::unavailable(format!("this executor cannot reach its controller ({}); retry later", s.message()))
        }
        _ => s,
    })
}

#[tonic::async_trait]
impl proto::assigner_server::Assigner for ProxyService {
    type SessionStream = BoxStream<proto::SessionEvent>;
    type WatchStream = BoxStream<proto::Event>;

    async fn session(
        &self,
        request: Request<Streaming<proto::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let slot = self.waiting_slot()?;
        self.registered(&request).await?;
        let (metadata, extensions, inbound) = self.up.forward(request).into_parts();
        // The client's half, message for message, until it ends or fails: its end is the
        // session's end at the controller.
        let messages = inbound.take_while(Result::is_ok).filter_map(Result::ok);
        let call = Request::from_parts(metadata, extensions, messages);
        let mut events = upstream(self.up.assigner().session(call).await)?.into_inner();
        // The controller's events, until the link is lost: then the session ends here at once
        // (over a cut link the controller's own stream would take a keepalive timeout to fail).
        let (tx, rx) = tokio::sync::mpsc::channel(crate::driver::SESSION_EVENTS);
        let mut link = self.link.clone();
        tokio::spawn(async move {
            let _slot = slot; // held while the session lasts
            loop {
                tokio::select! {
                    e = events.message() => match e {
                        Ok(Some(ev)) => {
                            if tx.send(Ok(ev)).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(s) => {
                            let _ = tx.send(Err(s)).await;
                            break;
                        }
                    },
                    () = async { let _ = link.wait_for(|s| !matches!(s, LinkState::Registered(_))).await; } => {
                        let _ = tx
                            .send(Err(acb_proto::status_with_reason(
                                tonic::Code::Unavailable,
                                "this executor lost its link to the controller; resume the session later",
                                acb_proto::ErrorReason::NodeUnavailable,
                            )))
                            .await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn alloc_request(
        &self,
        request: Request<proto::AllocateRequest>,
    ) -> Result<Response<proto::AllocateResponse>, Status> {
        let _slot = self.waiting_slot()?;
        self.registered(&request).await?;
        let call = self.up.forward(request);
        upstream(self.up.assigner().alloc_request(call).await)
    }

    async fn release(
        &self,
        request: Request<proto::ReleaseRequest>,
    ) -> Result<Response<proto::ReleaseResponse>, Status> {
        self.registered(&request).await?;
        let call = self.up.forward(request);
        upstream(self.up.assigner().release(call).await)
    }

    async fn renew(&self, request: Request<proto::RenewRequest>) -> Result<Response<proto::RenewResponse>, Status> {
        self.registered(&request).await?;
        let call = self.up.forward(request);
        upstream(self.up.assigner().renew(call).await)
    }

    async fn status(&self, request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        let call = self.up.forward(request);
        upstream(self.up.assigner().status(call).await)
    }

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let slot = self.waiting_slot()?;
        let call = self.up.forward(request);
        let events = upstream(self.up.assigner().watch(call).await)?.into_inner();
        // The slot goes with the stream.
        Ok(Response::new(Box::pin(events.map(move |e| {
            let _held = &slot;
            e
        }))))
    }
}

/// The link's state, for logs and readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not registered (yet, or any more).
    Down(String),
    /// Registered: the pool ids of the node's GPUs.
    Registered(Vec<u32>),
}

/// The first wait before registering again after a failure; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts to register.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Keeps the node registered with the controller: registers, heartbeats every interval the
/// controller asks for, and registers again (with backoff) whenever the link fails, until
/// `stop`. Start order never matters: a controller that is not up yet is simply retried.
pub async fn run_link(
    up: Arc<Upstream>,
    gpus: Vec<FoundGpu>,
    state: watch::Sender<LinkState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_FIRST;
    // NVML is opened once, not again on every reconnect.
    let probe = crate::discovery::Probe::new(&gpus);
    loop {
        let attempt = link_once(&up, &gpus, &probe, &state);
        let why = tokio::select! {
            r = attempt => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let was_up = matches!(*state.borrow(), LinkState::Registered(_));
        if was_up {
            tracing::warn!("link to the controller lost: {why}; registering again");
            backoff = BACKOFF_FIRST;
        } else {
            tracing::debug!("cannot register with the controller yet: {why}");
        }
        let _ = state.send(LinkState::Down(why));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One link: registers and heartbeats until it fails; returns why.
async fn link_once(
    up: &Upstream,
    gpus: &[FoundGpu],
    probe: &crate::discovery::Probe,
    state: &watch::Sender<LinkState>,
) -> String {
    let report = |g: &FoundGpu| {
        let (healthy, memory_used) = probe.read(g);
        proto::NodeGpu {
            index: g.index,
            uuid: g.uuid.clone(),
            name: g.name.clone(),
            memory: g.memory,
            healthy,
            fake: g.fake,
            memory_used,
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let register = proto::ExecutorReport {
        msg: Some(proto::executor_report::Msg::Register(proto::Register {
            node: up.node_name.clone(),
            gpus: gpus.iter().map(report).collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        })),
    };
    if tx.send(register).await.is_err() {
        return "internal: the link's queue closed".into();
    }
    let mut call = Request::new(ReceiverStream::new(rx));
    up.stamp(call.metadata_mut());
    let mut replies = match ClusterClient::new(up.link.clone()).join(call).await {
        Ok(r) => r.into_inner(),
        Err(s) => return format!("{:?}: {}", s.code(), s.message()),
    };
    let heartbeat = match tokio::time::timeout(Duration::from_secs(10), replies.message()).await {
        Ok(Ok(Some(proto::ControllerReply { msg: Some(proto::controller_reply::Msg::Registered(r)) }))) => {
            tracing::info!(node = %up.node_name, gpus = ?r.gpu_ids, "registered with the controller");
            let _ = state.send(LinkState::Registered(r.gpu_ids));
            Duration::from_millis(u64::from(r.heartbeat_ms.clamp(50, 60_000)))
        }
        Ok(Ok(_)) => return "the controller did not answer Register with Registered".into(),
        Ok(Err(s)) => return format!("{:?}: {}", s.code(), s.message()),
        Err(_) => return "the controller did not answer Register within 10 s".into(),
    };
    let silence = heartbeat * crate::driver::MISSED_HEARTBEATS;
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ack = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if last_ack.elapsed() > silence {
                    return format!("no answer from the controller for {:.1} s", silence.as_secs_f64());
                }
                let hb = proto::ExecutorReport {
                    msg: Some(proto::executor_report::Msg::Heartbeat(proto::Heartbeat {
                        gpus: gpus.iter().map(report).collect(),
                    })),
                };
                if tx.send(hb).await.is_err() {
                    return "the link closed".into();
                }
            }
            msg = replies.message() => match msg {
                Ok(Some(_)) => last_ack = tokio::time::Instant::now(),
                Ok(None) => return "the controller ended the link".into(),
                Err(s) => return format!("{:?}: {}", s.code(), s.message()),
            },
        }
    }
}
