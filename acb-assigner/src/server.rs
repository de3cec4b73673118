//! Listeners, authentication, health and reflection, and graceful shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Request, Status};

use crate::Error;
use crate::config::{Address, ServeConfig};
use crate::driver;
use crate::metrics::Metrics;
use crate::proto::assigner_server::AssignerServer;
use crate::service::AssignerService;

/// Mode of the Unix socket: owner and group may connect. Put the users of the GPUs in the
/// daemon's group.
pub const SOCKET_MODE: u32 = 0o660;

/// Checks `authorization: Bearer TOKEN` on every call when a token is configured.
#[derive(Clone, Debug)]
pub struct Auth {
    expected: Option<Arc<str>>,
}

impl Auth {
    /// No token: every call passes.
    pub fn none() -> Self {
        Auth { expected: None }
    }

    /// Calls must carry `token`.
    pub fn token(token: &str) -> Self {
        Auth { expected: Some(format!("Bearer {token}").into()) }
    }
}

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        let given = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or(&[]);
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

/// Binds a Unix socket at `path` with [`SOCKET_MODE`], replacing a stale socket file but
/// never a live socket or a file that is not a socket.
pub fn bind_unix(path: &Path) -> Result<UnixListener, Error> {
    let failed = |what: String| move |source| Error::Listen { what, source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed(format!("cannot create {}", dir.display())))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::SocketInUse(format!("{} exists and is not a socket; not touching it", path.display())));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::SocketInUse(format!("another process is listening on {}", path.display())));
        }
        std::fs::remove_file(path).map_err(failed(format!("cannot remove stale socket {}", path.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(failed(format!("cannot listen on {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(failed(format!("cannot set the mode of {}", path.display())))?;
    Ok(listener)
}

/// Runs the assigner until `stop` resolves (SIGTERM/SIGINT in the binary), then stops
/// accepting, tells connected clients, drains and returns.
pub async fn serve(cfg: ServeConfig, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    for a in &cfg.listen {
        if !a.is_local() && cfg.auth_token.is_none() {
            return Err(Error::Insecure(a.clone()));
        }
    }
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
    let metrics = Arc::new(Metrics::new());
    let (handle, driver_task) = driver::spawn(cfg.scheduler, cfg.quantum, cfg.node_name.clone(), gpus, metrics.clone());
    let auth = cfg.auth_token.as_deref().map_or_else(Auth::none, Auth::token);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AssignerServer<AssignerService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;
    let service = AssignerService::new(handle.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut servers = Vec::new();
    let mut sockets = Vec::new();
    for addr in &cfg.listen {
        let router = Server::builder()
            .add_service(InterceptedService::new(AssignerServer::new(service.clone()), auth.clone()))
            .add_service(InterceptedService::new(health.clone(), auth.clone()))
            .add_service(InterceptedService::new(reflection.clone(), auth.clone()));
        let shutdown = stopped(stop_rx.clone());
        match addr {
            Address::Unix(path) => {
                let listener = bind_unix(path)?;
                sockets.push(path.clone());
                let incoming = UnixListenerStream::new(listener);
                servers.push(tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown)));
            }
            Address::Tcp(sa) => {
                let listener = TcpListener::bind(sa)
                    .await
                    .map_err(|source| Error::Listen { what: format!("cannot listen on {addr}"), source })?;
                let incoming = TcpListenerStream::new(listener);
                servers.push(tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown)));
            }
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
            Some(tokio::spawn(crate::metrics::serve(addr, metrics, shutdown)))
        }
        None => None,
    };
    // Ready: say so on stdout, which scripts and tests wait for.
    println!("acb-assigner ready on {}", cfg.listen.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));

    stop.await;
    tracing::info!("stopping: no new connections; telling clients; draining");
    let _ = handle.send(driver::Command::Shutdown).await;
    let _ = stop_tx.send(true);
    let drain = async {
        let _ = driver_task.await;
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
