//! The connection to an assigner: connect over Unix or TCP (with the bearer token; over TLS when
//! `ACB_TLS_CA` is set, see [`crate::tls`]), and the
//! session (`Session`: hello, allocate, release, phase and swap reports, events). The driver
//! uses it; so do the assigner's CLI, bench and demo.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use acb_proto::Address;
use acb_proto::v1 as proto;

use crate::error::Error;

/// Adds `authorization: Bearer TOKEN` to every call when a token is set.
#[derive(Clone, Debug, Default)]
pub struct AuthHeader(Option<MetadataValue<Ascii>>);

impl Interceptor for AuthHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The generated client with authentication.
pub type Rpc = proto::assigner_client::AssignerClient<InterceptedService<Channel, AuthHeader>>;

/// Connects to the assigner at `addr`, waiting at most `timeout`.
pub async fn connect(addr: &Address, token: Option<&str>, timeout: Duration) -> Result<Rpc, Error> {
    let auth =
        match token {
            Some(t) => AuthHeader(Some(format!("Bearer {t}").parse().map_err(|_| {
                Error::InvalidArgument("the auth token has characters not allowed in a header".into())
            })?)),
            None => AuthHeader(None),
        };
    let channel = channel(addr, timeout).await?;
    Ok(proto::assigner_client::AssignerClient::with_interceptor(channel, auth))
}

/// HTTP/2 keepalive: a dead assigner host (a half-open TCP connection) ends the session within
/// about 30 s instead of leaving calls waiting forever.
fn keepalive(e: Endpoint) -> Endpoint {
    e.http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
}

/// A gRPC channel to `addr` (tonic's own `unix:` endpoints for Unix sockets; TLS to a TCP
/// address when the environment says so, see [`crate::tls`]), connected within `timeout`. A
/// Unix socket's owner is checked first ([`crate::socket_owner::check`]).
pub async fn channel(addr: &Address, timeout: Duration) -> Result<Channel, Error> {
    let tls = match addr {
        Address::Tcp(_) => crate::tls::TlsEnv::from_env()?,
        Address::Unix(_) => None,
    };
    channel_with(addr, timeout, tls.as_ref()).await
}

/// A gRPC channel to the TCP address `addr` that connects on first use and again after every
/// failure (a daemon's link to another daemon, which must outlive restarts of its peer); TLS
/// when the environment says so, as [`channel`]. Each connection attempt is bounded by
/// `timeout`.
pub fn channel_lazy(addr: &Address, timeout: Duration) -> Result<Channel, Error> {
    let Address::Tcp(sa) = addr else {
        return Err(Error::InvalidArgument(format!("{addr}: a daemon's peer is a tcp:IP:PORT address")));
    };
    channel_lazy_to(&sa.ip().to_string(), sa.port(), timeout)
}

/// [`channel_lazy`] to `host:port`, where `host` is an IP or a DNS name (resolved again at every
/// connection attempt, so that a peer whose address changes, such as a Kubernetes Service's, is
/// found); with TLS the certificate must name `host` (or `ACB_TLS_SERVER_NAME`).
pub fn channel_lazy_to(host: &str, port: u16, timeout: Duration) -> Result<Channel, Error> {
    let tls = crate::tls::TlsEnv::from_env()?;
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let uri = if tls.is_some() { format!("https://{authority}") } else { format!("http://{authority}") };
    let mut endpoint = keepalive(Endpoint::from_shared(uri).map_err(|e| Error::InvalidArgument(e.to_string()))?)
        .connect_timeout(timeout);
    if let Some(tls) = &tls {
        endpoint = with_tls(endpoint, tls, host)?;
    }
    Ok(endpoint.connect_lazy())
}

/// [`channel`] with TLS settings given rather than read from the environment (`None`:
/// plaintext; ignored for Unix sockets).
pub async fn channel_with(
    addr: &Address,
    timeout: Duration,
    tls: Option<&crate::tls::TlsEnv>,
) -> Result<Channel, Error> {
    let tls = if matches!(addr, Address::Tcp(_)) { tls } else { None };
    if let Address::Unix(path) = addr {
        crate::socket_owner::check(path)?;
    }
    let uri = match addr {
        Address::Unix(path) => format!(
            "unix:{}",
            path.to_str()
                .ok_or_else(|| Error::InvalidArgument(format!("{}: a socket path must be UTF-8", path.display())))?
        ),
        Address::Tcp(sa) if tls.is_some() => format!("https://{sa}"),
        Address::Tcp(sa) => format!("http://{sa}"),
    };
    let mut endpoint = keepalive(Endpoint::from_shared(uri).map_err(|e| Error::InvalidArgument(e.to_string()))?)
        .connect_timeout(timeout);
    if let (Some(tls), Address::Tcp(sa)) = (tls, addr) {
        endpoint = with_tls(endpoint, tls, &sa.ip().to_string())?;
    }
    // tonic bounds a TCP connect by `connect_timeout`, not a Unix one: bound the whole attempt.
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(Error::Unavailable(format!("cannot reach the assigner at {addr}: {}", source_chain(&e)))),
        Err(_) => Err(Error::Unavailable(format!(
            "cannot reach the assigner at {addr}: no connection within {} ms",
            timeout.as_millis()
        ))),
    }
}

#[cfg(feature = "tls")]
fn with_tls(endpoint: Endpoint, tls: &crate::tls::TlsEnv, host: &str) -> Result<Endpoint, Error> {
    endpoint
        .tls_config(tls.client_config(host)?)
        .map_err(|e| Error::InvalidArgument(format!("TLS settings ({}): {}", crate::tls::CA_VAR, source_chain(&e))))
}

#[cfg(not(feature = "tls"))]
fn with_tls(_: Endpoint, _: &crate::tls::TlsEnv, _: &str) -> Result<Endpoint, Error> {
    Err(Error::InvalidArgument(format!(
        "{} is set but this client was built without TLS (acb-client's feature `tls`)",
        crate::tls::CA_VAR
    )))
}

/// The error and its sources, each said once (layers of tonic and hyper often repeat the message
/// of the error they wrap).
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unreachable_socket_is_said_once() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let addr = acb_proto::Address::Unix("/nonexistent/acb/assigner.sock".into());
        let e = rt
            .block_on(super::channel(&addr, std::time::Duration::from_secs(2)))
            .expect_err("nothing listens there")
            .to_string();
        assert!(e.starts_with("cannot reach the assigner at unix:/nonexistent/acb/assigner.sock"), "{e}");
        assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    }
}

/// An open client session.
#[derive(Debug)]
pub struct Session {
    /// The assigner's id for this client.
    pub client_id: u64,
    /// The secret that proves this client's identity.
    pub token: String,
    /// What the assigner says: yield requests, revocations, shutdown.
    pub events: Streaming<proto::SessionEvent>,
    /// This session resumed a lost one (see [`Session::resume`]).
    pub resumed: bool,
    /// The leases of the resumed session the assigner kept for this client.
    pub kept_leases: Vec<u64>,
    rpc: Rpc,
    tx: mpsc::Sender<proto::SessionRequest>,
}

impl Session {
    /// Opens a session for `job`. Its events are yields, revocations and shutdown.
    pub async fn open(rpc: Rpc, job: &str) -> Result<Session, Status> {
        Self::open_with(rpc, job, false).await
    }

    /// Opens a session for `job`; with `grants`, its events also carry a copy of each grant
    /// (`LeaseGranted`). Ask only if you read the events: unread ones pile up in the assigner.
    pub async fn open_with(rpc: Rpc, job: &str, grants: bool) -> Result<Session, Status> {
        Self::resume(rpc, job, grants, "", &[]).await
    }

    /// Opens a session for `job` that resumes the lost session whose token was `resume_token`
    /// (after a restart of the assigner, or a dropped connection), claiming the leases in `held`
    /// (those of GPU phases still running). The assigner resumes it only if it still holds that
    /// session's leases (a restarted assigner does, for its grace period); `resumed` and
    /// `kept_leases` say what it did. Otherwise this is a new session, as with
    /// [`Session::open_with`].
    pub async fn resume(
        mut rpc: Rpc,
        job: &str,
        grants: bool,
        resume_token: &str,
        held: &[u64],
    ) -> Result<Session, Status> {
        let (tx, rx) = mpsc::channel(64);
        let hello = proto::SessionRequest {
            msg: Some(proto::session_request::Msg::Hello(proto::Hello {
                job: job.into(),
                pid: std::process::id(),
                grants_on_session: grants,
                resume_token: resume_token.into(),
                held_leases: held.to_vec(),
            })),
        };
        tx.send(hello).await.map_err(|_| Status::internal("session channel closed"))?;
        let mut events = rpc.session(ReceiverStream::new(rx)).await?.into_inner();
        let first = events.message().await?.ok_or_else(|| Status::unavailable("the assigner closed the session"))?;
        let Some(proto::session_event::Event::Welcome(w)) = first.event else {
            return Err(Status::internal("the assigner did not answer Welcome"));
        };
        Ok(Session {
            client_id: w.client_id,
            token: w.client_token,
            events,
            resumed: w.resumed,
            kept_leases: w.kept_leases,
            rpc,
            tx,
        })
    }

    /// Asks for GPUs and waits for the grant.
    pub async fn allocate(&mut self, mut request: proto::AllocateRequest) -> Result<proto::AllocateResponse, Status> {
        request.client_token.clone_from(&self.token);
        Ok(self.rpc.alloc_request(request).await?.into_inner())
    }

    /// Gives a lease back.
    pub async fn release(&mut self, lease_id: u64) -> Result<(), Status> {
        self.rpc.release(proto::ReleaseRequest { client_token: self.token.clone(), lease_id }).await?;
        Ok(())
    }

    /// Reports a kept lease idle (GPU phase over) or busy again.
    pub async fn report_phase(&self, lease_id: u64, idle: bool) -> Result<(), Status> {
        let msg = proto::SessionRequest {
            msg: Some(proto::session_request::Msg::Phase(proto::PhaseReport { lease_id, idle })),
        };
        self.tx.send(msg).await.map_err(|_| Status::unavailable("the session is closed"))
    }

    /// Reports bytes swapped in and out since the last report (for the assigner's metrics).
    pub async fn report_swap(&self, bytes_in: u64, bytes_out: u64) -> Result<(), Status> {
        let msg = proto::SessionRequest {
            msg: Some(proto::session_request::Msg::Swap(proto::SwapReport { bytes_in, bytes_out })),
        };
        self.tx.send(msg).await.map_err(|_| Status::unavailable("the session is closed"))
    }

    /// The RPC client the session uses.
    pub fn rpc(&self) -> Rpc {
        self.rpc.clone()
    }
}
