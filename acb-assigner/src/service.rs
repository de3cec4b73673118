//! The gRPC service: validate -> ask the driver -> convert. Nothing is decided here.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{event_to_proto, grant_to_proto, status_to_proto, to_client_to_proto, to_status};
use crate::driver::{AllocSpec, Command, DomainError, Handle};
use crate::proto::{self, session_request::Msg};

/// The `acb.v1.Assigner` service.
#[derive(Clone, Debug)]
pub struct AssignerService {
    handle: Handle,
    next_key: Arc<AtomicU64>,
}

impl AssignerService {
    /// A service that asks `handle`'s driver.
    pub fn new(handle: Handle) -> Self {
        AssignerService { handle, next_key: Arc::new(AtomicU64::new(1)) }
    }
}

pub use crate::validate::MAX_SWAP_REPORT;
use crate::validate::check_swap;

fn flatten<T>(r: Result<Result<T, DomainError>, DomainError>) -> Result<T, Status> {
    r.and_then(|x| x).map_err(to_status)
}

type GrantReply = tokio::sync::oneshot::Receiver<Result<crate::driver::GrantInfo, DomainError>>;

/// Withdraws an allocation request if its caller goes away before the grant; and if the grant
/// was made in that very moment (it sits in the reply channel, undelivered), gives it back.
struct AbandonGuard {
    handle: Handle,
    key: u64,
    reply: Option<GrantReply>,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        let Some(mut rx) = self.reply.take() else { return };
        match rx.try_recv() {
            Ok(Ok(grant)) => {
                let (tx, _) = tokio::sync::oneshot::channel();
                let (token, lease) = (grant.token, grant.lease);
                self.handle.send_later(Command::Release { token, lease, uid: None, node: None, reply: tx });
            }
            Ok(Err(_)) => {}
            Err(_) => self.handle.send_later(Command::Abandon { key: self.key }),
        }
    }
}

/// A server stream of a service's replies.
pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl proto::assigner_server::Assigner for AssignerService {
    type SessionStream = BoxStream<proto::SessionEvent>;
    type WatchStream = BoxStream<proto::Event>;

    async fn session(
        &self,
        request: Request<Streaming<proto::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (creds, node) = crate::peer::with_node(&request, 0);
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| crate::convert::invalid("a session starts with Hello"))?;
        let hello = crate::validate::hello(first)?;
        let peer = crate::peer::or_claimed(creds, hello.pid);
        let (tx, rx) = crate::driver::session_channel();
        let welcomed = flatten(
            self.handle
                .ask(|reply| Command::Connect {
                    job: hello.job.clone(),
                    grants: hello.grants_on_session,
                    to_client: tx,
                    peer,
                    resume_token: hello.resume_token.clone(),
                    held: hello.held_leases.clone(),
                    node: node.clone(),
                    reply,
                })
                .await,
        )?;
        let client = welcomed.client;
        tracing::info!(client, job = %hello.job, pid = peer.pid, uid = ?peer.uid, node = ?node, resumed = welcomed.resumed, "session opened");
        let handle = self.handle.clone();
        tokio::spawn(async move {
            // The session lives as long as the client's half of the stream.
            loop {
                match inbound.message().await {
                    Ok(Some(proto::SessionRequest { msg: Some(Msg::Phase(p)) })) => {
                        let _ = handle.send(Command::Phase { client, lease: p.lease_id, idle: p.idle }).await;
                    }
                    Ok(Some(proto::SessionRequest { msg: Some(Msg::Swap(s)) })) => match check_swap(&s) {
                        Ok((bytes_in, bytes_out)) => {
                            let _ = handle.send(Command::Swap { client, bytes_in, bytes_out }).await;
                        }
                        Err(why) => tracing::warn!(client, "swap report ignored: {why}"),
                    },
                    Ok(Some(_)) => tracing::debug!(client, "ignored a second Hello or an empty message"),
                    Ok(None) | Err(_) => break,
                }
            }
            tracing::info!(client, "session ended");
            let _ = handle.send(Command::Disconnect { client }).await;
        });
        let welcome = proto::SessionEvent {
            event: Some(proto::session_event::Event::Welcome(proto::Welcome {
                client_id: client,
                client_token: welcomed.token,
                resumed: welcomed.resumed,
                kept_leases: welcomed.kept,
            })),
        };
        // The stream ends with an error status after ToClient::Ended (a session too far behind).
        let rest = ReceiverStream::new(rx).map(to_client_to_proto);
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(welcome)).chain(rest))))
    }

    async fn alloc_request(
        &self,
        request: Request<proto::AllocateRequest>,
    ) -> Result<Response<proto::AllocateResponse>, Status> {
        let (peer, node) = crate::peer::with_node(&request, 0);
        let r = request.into_inner();
        crate::validate::validate_alloc(&r)?;
        let group = crate::validate::group_of(&r)?;
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let spec = AllocSpec {
            token: r.client_token,
            job: r.job,
            gpus: r.gpus,
            memory_per_gpu: r.memory_per_gpu,
            priority: r.priority,
            peer,
            required: r.required_gpus,
            preferred: r.preferred_gpus,
            tag: r.request_tag,
            group,
            node,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.handle.send(Command::Allocate { key, spec, reply: tx }).await.map_err(to_status)?;
        let mut guard = AbandonGuard { handle: self.handle.clone(), key, reply: Some(rx) };
        let result = match guard.reply.as_mut() {
            Some(rx) => rx.await.map_err(|_| DomainError::ShuttingDown),
            None => Err(DomainError::ShuttingDown),
        };
        guard.reply = None; // delivered (or failed): nothing to withdraw
        Ok(Response::new(grant_to_proto(flatten(result)?)))
    }

    async fn release(
        &self,
        request: Request<proto::ReleaseRequest>,
    ) -> Result<Response<proto::ReleaseResponse>, Status> {
        let (peer, node) = crate::peer::with_node(&request, 0);
        let (uid, r) = (peer.uid, request.into_inner());
        let token = r.client_token;
        flatten(self.handle.ask(|reply| Command::Release { token, lease: r.lease_id, uid, node, reply }).await)?;
        Ok(Response::new(proto::ReleaseResponse {}))
    }

    async fn renew(&self, request: Request<proto::RenewRequest>) -> Result<Response<proto::RenewResponse>, Status> {
        let (peer, node) = crate::peer::with_node(&request, 0);
        let (uid, r) = (peer.uid, request.into_inner());
        if r.client_token.is_empty() || r.client_token.len() > 128 {
            return Err(to_status(DomainError::UnknownToken));
        }
        let token = r.client_token;
        let left =
            flatten(self.handle.ask(|reply| Command::Renew { token, lease: r.lease_id, uid, node, reply }).await)?;
        let expires_in_ms = left.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        Ok(Response::new(proto::RenewResponse { expires_in_ms }))
    }

    async fn status(&self, request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        let limits = request.into_inner();
        let snapshot = self.handle.ask(|reply| Command::Status { reply }).await.map_err(to_status)?;
        Ok(Response::new(status_to_proto(snapshot, &limits)))
    }

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let replay = request.into_inner().replay;
        let (history, live) = self.handle.ask(|reply| Command::Watch { replay, reply }).await.map_err(to_status)?;
        let end = replay.then(|| {
            Ok(proto::Event { seq: 0, at_us: 0, kind: Some(proto::event::Kind::HistoryEnd(proto::HistoryEnd {})) })
        });
        let history = tokio_stream::iter(history.into_iter().map(|e| Ok(event_to_proto(e))).chain(end));
        let live = BroadcastStream::new(live).filter_map(|e| match e {
            Ok(e) => Some(Ok(event_to_proto(e))),
            // A watcher too slow to keep up misses events rather than slowing the assigner.
            Err(_) => None,
        });
        Ok(Response::new(Box::pin(history.chain(live))))
    }
}
