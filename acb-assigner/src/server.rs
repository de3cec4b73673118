//! Listeners, authentication, health and reflection, and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Request, Status};

use crate::Error;
use crate::config::{Address, RoleConfig, ServeConfig};
use crate::driver;
use crate::metrics::Metrics;
use crate::proto::assigner_server::AssignerServer;
use crate::proto::cluster_server::ClusterServer;
use crate::service::AssignerService;

pub use crate::unix_socket::{SOCKET_MODE, bind_unix};

/// Checks `authorization: Bearer TOKEN` on every call when a token is configured. A call with
/// the cluster token is an executor's: it passes, marked [`crate::peer::FromExecutor`].
#[derive(Clone, Debug)]
pub struct Auth {
    expected: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    /// Refuse calls with neither token even when no client token is set (a controller's TCP
    /// listener: daemons only).
    daemons_only: bool,
}

impl Auth {
    /// No token: every call passes.
    pub fn none() -> Self {
        Auth { expected: None, cluster: None, daemons_only: false }
    }

    /// Calls must carry `token`.
    pub fn token(token: &str) -> Self {
        Auth { expected: Some(format!("Bearer {token}").into()), cluster: None, daemons_only: false }
    }

    /// Calls with the cluster token `token` pass as an executor's.
    pub fn with_cluster(mut self, token: Option<&str>) -> Self {
        self.cluster = token.map(|t| format!("Bearer {t}").into());
        self
    }

    /// Calls must carry a token (the client token, or the cluster token) even where no client
    /// token is set.
    pub fn daemons_only(mut self, on: bool) -> Self {
        self.daemons_only = on && self.expected.is_none() && self.cluster.is_some();
        self
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let given = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or(&[]);
        if let Some(cluster) = &self.cluster
            && constant_time_eq(given, cluster.as_bytes())
        {
            request.extensions_mut().insert(crate::peer::FromExecutor);
            return Ok(request);
        }
        let expected = match &self.expected {
            Some(e) => e,
            None if self.daemons_only => {
                return Err(acb_proto::status_with_reason(
                    tonic::Code::Unauthenticated,
                    "this listener serves the cluster's daemons only: send the cluster token",
                    acb_proto::ErrorReason::Unauthenticated,
                ));
            }
            None => return Ok(request),
        };
        if constant_time_eq(given, expected.as_bytes()) {
            Ok(request)
        } else {
            Err(acb_proto::status_with_reason(
                tonic::Code::Unauthenticated,
                "missing or wrong auth token (send `authorization: Bearer TOKEN`)",
                acb_proto::ErrorReason::Unauthenticated,
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who answers the `acb.v1.Assigner` calls.
#[derive(Clone, Debug)]
enum Decider {
    /// This daemon's driver.
    Driver(AssignerService),
    /// The controller, through an executor.
    Proxy(crate::cluster::ProxyService),
}

/// Refuses a non-loopback TCP listener without a token, or without TLS unless `insecure`.
pub fn check_exposure(listen: &[Address], token: bool, tls: bool, insecure: bool) -> Result<(), Error> {
    for a in listen.iter().filter(|a| !a.is_local()) {
        if !token {
            return Err(Error::Insecure(a.clone()));
        }
        if !tls && !insecure {
            return Err(Error::Plaintext(a.clone()));
        }
    }
    Ok(())
}

/// Server HTTP/2 keepalive: a ping every 10 s, unanswered for 20 s ends the connection, so a
/// client whose host vanished loses its session (and so its leases) within about 30 s.
pub const HTTP2_KEEPALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(20));

/// Runs the assigner until `stop` resolves (SIGTERM/SIGINT in the binary), then stops
/// accepting, tells connected clients, drains and returns.
pub async fn serve(cfg: ServeConfig, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    serve_activated(cfg, Vec::new(), stop).await
}

/// A listener made ready before the servers start.
enum Bound {
    /// A Unix socket; `ours` when this daemon made it (and removes it at the end).
    Unix(tokio::net::UnixListener, bool),
    Tcp(TcpListener),
}

/// Takes the sockets systemd passed (socket activation) as listeners, with their addresses.
fn adopt(fds: Vec<std::os::fd::OwnedFd>) -> Result<Vec<(Address, Bound)>, Error> {
    let mut out = Vec::new();
    for fd in fds {
        let io = |e: std::io::Error| Error::Listen { what: "a socket systemd passed".into(), source: e };
        if crate::systemd::is_unix(&fd) {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true).map_err(io)?;
            let path =
                l.local_addr().map_err(io)?.as_pathname().map(std::path::Path::to_path_buf).ok_or_else(|| {
                    io(std::io::Error::other("an unnamed or abstract Unix socket; give ListenStream=/path"))
                })?;
            out.push((Address::Unix(path), Bound::Unix(tokio::net::UnixListener::from_std(l).map_err(io)?, false)));
        } else {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map_err(io)?;
            let addr = l.local_addr().map_err(io)?;
            out.push((Address::Tcp(addr), Bound::Tcp(TcpListener::from_std(l).map_err(io)?)));
        }
    }
    Ok(out)
}

/// [`serve`], also serving the listening sockets systemd passed (`activated`, from
/// [`crate::systemd::listen_fds`]); an address of `cfg.listen` that one of them already has
/// is not bound again. Tells the service manager when it is ready and when it stops.
pub async fn serve_activated(
    cfg: ServeConfig,
    activated: Vec<std::os::fd::OwnedFd>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let mut bound = adopt(activated)?;
    for (a, _) in &bound {
        tracing::info!("socket activation: serving {a}, which systemd passed");
    }
    let addresses: Vec<Address> = bound
        .iter()
        .map(|(a, _)| a.clone())
        .chain(cfg.listen.iter().filter(|a| !bound.iter().any(|(b, _)| b == *a)).cloned())
        .collect();
    let tokened = cfg.auth_token.is_some() || cfg.cluster_token.is_some();
    check_exposure(&addresses, tokened, cfg.tls.is_some(), cfg.insecure)?;
    if let Some(p) = &cfg.auth_token_file {
        crate::tls::warn_if_readable_by_others(p, "the auth token file");
    }
    if let Some(t) = &cfg.tls {
        crate::tls::warn_if_readable_by_others(&t.key, "the TLS key");
    }
    let tls = cfg.tls.as_ref().map(|t| t.server_config(cfg.handshake_timeout)).transpose()?;
    if tls.is_some() && addresses.iter().all(|a| matches!(a, Address::Unix(_))) {
        tracing::warn!("--tls-cert given but no TCP listener: Unix sockets do not use TLS");
    }
    let limits =
        crate::listener::Limits::new(cfg.max_connections, cfg.handshake_timeout, crate::listener::raise_fd_limit());
    let gpus = crate::discovery::discover(&cfg.gpus)?;
    let fake = gpus.iter().filter(|g| g.fake).count();
    tracing::info!(
        gpus = gpus.len(),
        simulated = fake,
        scheduler = cfg.scheduler.name(),
        "acb-assigner {} starting{}",
        env!("CARGO_PKG_VERSION"),
        if fake > 0 { " (SIMULATED GPUs)" } else { "" }
    );
    let metrics = Arc::new(Metrics::new(&gpus));
    let (stop_tx, stop_rx) = watch::channel(false);
    // The decider: this daemon's driver (standalone, controller), or the controller through
    // the link (executor).
    let (assigner, handle, driver_task, cluster_service) = match &cfg.role {
        RoleConfig::Executor { controller } => {
            if cfg.metrics.is_some() {
                return Err(Error::Setting {
                    what: "--metrics",
                    why: "an executor serves no metrics: the controller's cover every node".into(),
                });
            }
            let token = cfg.cluster_token.as_deref().unwrap_or_default();
            let up = Arc::new(crate::cluster::Upstream::new(controller, token, &cfg.node_name)?);
            let (state_tx, state_rx) = watch::channel(crate::cluster::LinkState::Down("starting".into()));
            tokio::spawn(crate::cluster::run_link(up.clone(), gpus, state_tx, stop_rx.clone()));
            tracing::info!(controller = %controller, node = %cfg.node_name, "executor: forwarding to the controller");
            (Decider::Proxy(crate::cluster::ProxyService::new(up, state_rx)), None, None, None)
        }
        role => {
            let persistence = persistence(&cfg)?;
            let role = match role {
                RoleConfig::Controller => driver::Role::Controller { heartbeat: cfg.heartbeat },
                _ => driver::Role::Standalone,
            };
            let (handle, driver_task) = driver::spawn(
                role,
                cfg.scheduler,
                cfg.quantum,
                cfg.node_name.clone(),
                gpus,
                metrics.clone(),
                persistence,
            );
            let cluster = matches!(role, driver::Role::Controller { .. })
                .then(|| crate::cluster::ClusterService::new(handle.clone(), cfg.heartbeat));
            if cluster.is_some() && !cfg.cluster_nodes.is_empty() {
                let _ = handle.send(driver::Command::ExpectNodes { nodes: cfg.cluster_nodes.clone() }).await;
            }
            (Decider::Driver(AssignerService::new(handle.clone())), Some(handle), Some(driver_task), cluster)
        }
    };
    let auth = cfg.auth_token.as_deref().map_or_else(Auth::none, Auth::token);
    let auth = match cfg.role {
        RoleConfig::Controller => auth.with_cluster(cfg.cluster_token.as_deref()),
        _ => auth,
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AssignerServer<AssignerService>>().await;
    // Reflection in both versions (grpcurl 1.8 and grpcio-reflection ask v1alpha), listing the
    // health service too.
    // Only the services this daemon serves: acb.v1.Cluster on a controller alone.
    let reflection_builder = |version: &str| {
        let b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("acb.v1.Assigner")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name(format!("grpc.reflection.{version}.ServerReflection"));
        if cluster_service.is_some() { b.with_service_name("acb.v1.Cluster") } else { b }
    };
    let reflection = reflection_builder("v1").build_v1().map_err(|e| Error::Reflection(e.to_string()))?;
    let reflection_alpha =
        reflection_builder("v1alpha").build_v1alpha().map_err(|e| Error::Reflection(e.to_string()))?;
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    for addr in &addresses[bound.len()..] {
        match addr {
            Address::Unix(path) => bound.push((addr.clone(), Bound::Unix(bind_unix(path)?, true))),
            Address::Tcp(sa) => {
                let l = TcpListener::bind(sa)
                    .await
                    .map_err(|source| Error::Listen { what: format!("cannot listen on {addr}"), source })?;
                bound.push((addr.clone(), Bound::Tcp(l)));
            }
        }
    }
    let mut servers = Vec::new();
    let mut sockets = Vec::new();
    for (addr, listener) in bound {
        let addr = &addr;
        let mut builder = Server::builder()
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE.0))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE.1));
        if cluster_service.is_some() && matches!(addr, Address::Tcp(_)) {
            // An executor brings all its node's calls on one connection, many of them waiting for
            // grants: past HTTP/2's usual 200 streams, a release would wait behind them.
            builder = builder.max_concurrent_streams(crate::cluster::STREAMS_PER_EXECUTOR);
            // Those waiting calls' small request messages sit in HTTP/2's buffers until the
            // service reads them; h2 counts them against a budget of half the connection's
            // window and ends the connection (ENHANCE_YOUR_CALM) past it: with the default
            // window that is about 160 calls. Room for all of them.
            builder = builder.initial_connection_window_size(crate::cluster::EXECUTOR_CONNECTION_WINDOW);
        }
        let mut builder = builder.layer(crate::deadline::DeadlineLayer);
        if let (Address::Tcp(_), Some(tls)) = (addr, &tls) {
            builder = builder
                .tls_config(tls.clone())
                .map_err(|e| Error::Tls(format!("TLS: {}", acb_client::connection::source_chain(&e))))?;
        }
        let auth = auth.clone().daemons_only(matches!(addr, Address::Tcp(_)));
        let router = match &assigner {
            Decider::Driver(s) => {
                builder.add_service(InterceptedService::new(AssignerServer::new(s.clone()), auth.clone()))
            }
            Decider::Proxy(s) => {
                builder.add_service(InterceptedService::new(AssignerServer::new(s.clone()), auth.clone()))
            }
        };
        let router = match &cluster_service {
            Some(c) => router.add_service(InterceptedService::new(ClusterServer::new(c.clone()), auth.clone())),
            None => router,
        };
        let router = router
            .add_service(InterceptedService::new(health.clone(), auth.clone()))
            .add_service(InterceptedService::new(reflection.clone(), auth.clone()))
            .add_service(InterceptedService::new(reflection_alpha.clone(), auth.clone()));
        let shutdown = stopped(stop_rx.clone());
        match (addr, listener) {
            (Address::Unix(path), Bound::Unix(listener, ours)) => {
                if ours {
                    sockets.push(path.clone());
                }
                let incoming = crate::listener::incoming(listener, limits.clone(), addr.to_string());
                servers.push(tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown)));
            }
            (_, Bound::Tcp(listener)) => {
                let incoming = crate::listener::incoming(listener, limits.clone(), addr.to_string());
                servers.push(tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown)));
            }
            (_, Bound::Unix(..)) => unreachable!("a Unix listener has a Unix address"),
        }
        tracing::info!("listening on {addr}");
    }
    let metrics_task = match cfg.metrics {
        Some(addr) => {
            let shutdown = stopped(stop_rx.clone());
            // Bind now so a bad address fails the start, not later.
            let probe = std::net::TcpListener::bind(addr)
                .map_err(|source| Error::Listen { what: format!("--metrics {addr}"), source })?;
            drop(probe);
            tracing::info!("metrics on http://{addr}/metrics");
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "--metrics {addr} is not a loopback address: anyone who can reach it reads the job names, \
                     clients and counters (no token, no TLS); put it behind a firewall or a proxy"
                );
            }
            Some(tokio::spawn(crate::metrics::serve(addr, metrics, shutdown)))
        }
        None => None,
    };
    // Ready: say so on stdout, which scripts and tests wait for.
    let on = addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
    println!("acb-assigner ready on {on}");
    crate::systemd::notify(&format!("READY=1\nSTATUS=serving on {on}"));

    stop.await;
    tracing::info!("stopping: no new connections; telling clients; draining");
    crate::systemd::notify("STOPPING=1\nSTATUS=draining");
    if let Some(handle) = &handle {
        let _ = handle.send(driver::Command::Shutdown).await;
    }
    let _ = stop_tx.send(true);
    let drain = async {
        if let Some(t) = driver_task {
            let _ = t.await;
        }
        for s in servers {
            let _ = s.await;
        }
        if let Some(m) = metrics_task {
            let _ = m.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
        tracing::warn!("some connections did not close within 10 s; exiting anyway");
    }
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Opens (and locks) the state directory and reads what the previous run saved.
fn persistence(cfg: &ServeConfig) -> Result<driver::Persistence, Error> {
    let store = cfg.state_dir.as_deref().map(driver::Store::open).transpose()?;
    let saved = store.as_ref().map(driver::Store::load).transpose()?.flatten();
    if let Some(s) = &store {
        tracing::info!("saving leases in {}", s.path().display());
    }
    Ok(driver::Persistence {
        store,
        saved,
        reclaim_grace: cfg.reclaim_grace,
        one_off_ttl: cfg.one_off_ttl,
        admin_uid: cfg.admin_uid,
        max_one_off_clients: cfg.max_one_off_clients,
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called (inside a
/// runtime), not when the future is first polled: a signal that comes right after the daemon
/// says it is ready must already be caught.
pub fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}
