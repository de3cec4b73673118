//! The controller's side of an executor's link (`acb.v1.Cluster/Join`): registration, then
//! heartbeats, until the stream ends or goes silent; then the node is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{invalid, to_status};
use crate::discovery::FoundGpu;
use crate::driver::{Command, Handle, MISSED_HEARTBEATS, ReportedGpu};
use crate::proto::{self, executor_report::Msg};

/// The most GPUs one node may register.
pub const MAX_NODE_GPUS: usize = 1024;

/// The `acb.v1.Cluster` service, on a controller.
#[derive(Clone, Debug)]
pub struct ClusterService {
    handle: Handle,
    heartbeat: Duration,
    next_link: Arc<AtomicU64>,
}

impl ClusterService {
    /// A service that registers nodes with `handle`'s driver; executors heartbeat every
    /// `heartbeat`.
    pub fn new(handle: Handle, heartbeat: Duration) -> Self {
        ClusterService { handle, heartbeat, next_link: Arc::new(AtomicU64::new(1)) }
    }
}

/// A reported GPU, checked.
fn gpu_of(g: proto::NodeGpu) -> Result<ReportedGpu, Status> {
    let text_ok = |s: &str| s.len() <= 256 && !s.chars().any(char::is_control);
    if g.uuid.is_empty() || !text_ok(&g.uuid) || !text_ok(&g.name) {
        return Err(invalid("a GPU's uuid must be 1 to 256 printable characters, its name at most 256"));
    }
    if g.memory == 0 {
        return Err(invalid(format!("GPU {} reports 0 bytes of memory", g.uuid)));
    }
    Ok(ReportedGpu {
        gpu: FoundGpu { index: g.index, uuid: g.uuid, name: g.name, memory: g.memory, fake: g.fake },
        healthy: g.healthy,
    })
}

use crate::service::BoxStream;

#[tonic::async_trait]
impl proto::cluster_server::Cluster for ClusterService {
    type JoinStream = BoxStream<proto::ControllerReply>;

    async fn join(
        &self,
        request: Request<Streaming<proto::ExecutorReport>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        if request.extensions().get::<crate::peer::FromExecutor>().is_none() {
            return Err(acb_proto::status_with_reason(
                tonic::Code::PermissionDenied,
                "only an executor may join the cluster: send the cluster token (`--cluster-token-file`)",
                acb_proto::ErrorReason::PermissionDenied,
            ));
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.heartbeat * MISSED_HEARTBEATS, inbound.message())
            .await
            .map_err(|_| invalid("an executor's link starts with Register"))??;
        let Some(proto::ExecutorReport { msg: Some(Msg::Register(reg)) }) = first else {
            return Err(invalid("an executor's link starts with Register"));
        };
        if reg.gpus.len() > MAX_NODE_GPUS {
            return Err(invalid(format!("at most {MAX_NODE_GPUS} GPUs per node")));
        }
        let gpus = reg.gpus.into_iter().map(gpu_of).collect::<Result<Vec<_>, _>>()?;
        let node = reg.node;
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let ids = self
            .handle
            .ask(|reply| Command::Register { node: node.clone(), gpus, link, reply })
            .await
            .and_then(|r| r)
            .map_err(to_status)?;
        tracing::info!(node, link, gpus = ?ids, version = %reg.version, "executor registered");
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let heartbeat_ms = u32::try_from(self.heartbeat.as_millis()).unwrap_or(u32::MAX);
        let registered = proto::ControllerReply {
            msg: Some(proto::controller_reply::Msg::Registered(proto::Registered { gpu_ids: ids, heartbeat_ms })),
        };
        let _ = tx.send(Ok(registered)).await;
        let handle = self.handle.clone();
        let silence = self.heartbeat * MISSED_HEARTBEATS;
        tokio::spawn(async move {
            let reason = loop {
                match tokio::time::timeout(silence, inbound.message()).await {
                    Ok(Ok(Some(proto::ExecutorReport { msg: Some(Msg::Heartbeat(hb)) }))) => {
                        let health: Vec<(u32, bool, Option<u64>)> =
                            hb.gpus.iter().take(MAX_NODE_GPUS).map(|g| (g.index, g.healthy, g.memory_used)).collect();
                        let node = node.clone();
                        match handle.ask(|reply| Command::Heartbeat { node, link, health, reply }).await {
                            Ok(true) => {}
                            Ok(false) => break "the node was lost meanwhile; register again".to_string(),
                            Err(_) => break "the controller is stopping".to_string(),
                        }
                        let ack = proto::ControllerReply {
                            msg: Some(proto::controller_reply::Msg::Ack(proto::HeartbeatAck {})),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            break "the link closed".to_string();
                        }
                    }
                    Ok(Ok(Some(_))) => break "a second Register on one link".to_string(),
                    Ok(Ok(None)) => break "the executor closed its link".to_string(),
                    Ok(Err(e)) => break format!("the link failed: {}", e.message()),
                    Err(_) => break format!("no heartbeat for {:.1} s", silence.as_secs_f64()),
                }
            };
            tracing::warn!(node, link, "executor link ended: {reason}");
            let _ = handle.send(Command::LinkLost { node, link, reason }).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
