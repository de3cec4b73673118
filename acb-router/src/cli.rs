//! The `acb-router` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{AssignerLink, ModelHandle};
use crate::proxy::Shared;

/// acb-router: an OpenAI-compatible router that brokers LLM servers on shared GPUs through the
/// acb assigner (wake on request, sleep on idle).
#[derive(Debug, Parser)]
#[command(name = "acb-router", version)]
pub struct Args {
    /// The configuration file (TOML; see the README's "Model router" section).
    #[arg(long, short = 'c', env = "ACB_ROUTER_CONFIG")]
    pub config: PathBuf,
    /// Listen here instead of the file's `listen` (IP:PORT; port 0 picks a free one).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Check the configuration and exit.
    #[arg(long)]
    pub check: bool,
    /// Log format: text or json (structured, one object a line).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// The hidden first argument that makes this program a server's guardian (see [`guard`]).
pub const GUARD_FLAG: &str = "--guard-process-group";

/// Runs the command line; the exit code says how it went.
pub fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == GUARD_FLAG) {
        let command = argv.get(3..).unwrap_or_default();
        return guard(command);
    }
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let mut config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("acb-router: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if args.check {
        println!("{}: {} models, listening on {}", args.config.display(), config.models.len(), config.listen);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("acb-router: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acb-router: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT, then drains: no new request, in-flight ones finish (up to
/// `drain_timeout`), servers sleep or stop, leases go back.
pub async fn serve(config: Config) -> Result<(), String> {
    let address = match &config.assigner {
        Some(a) => a.parse().map_err(|e| format!("assigner = {a:?}: {e}"))?,
        None => acb_proto::Address::from_env().map_err(|e| e.to_string())?,
    };
    let token = match &config.auth_token_file {
        Some(p) => Some(acb_client::read_token(std::path::Path::new(p)).map_err(|e| e.to_string())?),
        None => match std::env::var_os("ACB_AUTH_TOKEN_FILE") {
            Some(p) => Some(acb_client::read_token(std::path::Path::new(&p)).map_err(|e| e.to_string())?),
            None => None,
        },
    };
    let link = AssignerLink { address, token };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::new());
    let http = crate::engine::http_client();
    let models: Vec<Arc<ModelHandle>> = config
        .models
        .iter()
        .map(|m| ModelHandle::new(Arc::new(m.clone()), Arc::clone(&metrics), config.drain_timeout))
        .collect();
    let names = config.lookup();
    let drain = config.drain_timeout;
    let header_timeout = config.header_timeout;
    let shared = Arc::new(Shared { config, models: models.clone(), names, http: http.clone(), metrics });
    // Kept alive to the end: a dropped sender would wake every receiver at once, forever.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let mut tasks = tokio::task::JoinSet::new();
    for h in &models {
        tasks.spawn(crate::model::run(Arc::clone(h), link.clone(), http.clone(), stop_rx.clone()));
    }
    let app = crate::proxy::app(Arc::clone(&shared));
    println!("acb-router listening on http://{local} ({} models)", models.len());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    tracing::info!(%local, models = models.len(), "ready");
    let closing = {
        let models = models.clone();
        let stop_tx = Arc::clone(&stop_tx);
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down: draining");
            for h in &models {
                h.close();
            }
            let _ = stop_tx.send(true);
        }
    };
    tokio::spawn(closing);
    let server = tokio::spawn(accept_loop(listener, app, header_timeout, stop_rx.clone()));
    let mut stop_seen = stop_rx.clone();
    // The server ends once its connections have; the model tasks once drained. Both within the
    // drain timeout (and a margin for stopping servers), else the router exits anyway.
    let _ = stop_seen.wait_for(|s| *s).await;
    let limit = drain + Duration::from_secs(15);
    let finished = tokio::time::timeout(limit, async {
        while tasks.join_next().await.is_some() {}
        let _ = server.await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!("shutdown did not finish within {} s; exiting", limit.as_secs());
    }
    drop(stop_tx);
    Ok(())
}

/// The most client connections open at once; past it new ones are closed at once.
const MAX_CONNECTIONS: usize = 4096;

/// Serves HTTP/1.1 on `listener` until `stop`, then lets open connections finish the requests
/// they are answering and close.
/// A client has `header_timeout` to send a request's headers: slow clients do not hold
/// connections.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait for connections to close.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!("{MAX_CONNECTIONS} connections open: closing a new one");
                    continue;
                };
                // No Nagle delay: a streamed token goes out when the server sends it.
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(slot);
                });
            }
            () = &mut stopped => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

static GUARD_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn guard_signal(_: libc::c_int) {
    GUARD_STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A server's guardian: the router starts every server through it (this program again, with
/// [`GUARD_FLAG`]), as the leader of a process group of its own, with `PR_SET_PDEATHSIG`. It
/// runs `command` in that group and exits as it does; on SIGTERM, SIGINT or SIGHUP (the router
/// stopping the server, or dying) it stops the whole group: SIGTERM, then SIGKILL after 10 s.
/// So a server behind a wrapper script (`sh -c`, a virtual environment's activation) dies with
/// the router too, which `PR_SET_PDEATHSIG` on the script alone would not do.
fn guard(command: &[std::ffi::OsString]) -> ExitCode {
    use std::sync::atomic::Ordering::SeqCst;
    let Some((program, args)) = command.split_first() else {
        eprintln!("acb-router {GUARD_FLAG}: no command");
        return ExitCode::from(2);
    };
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic (async-signal-safe).
        unsafe { libc::signal(sig, guard_signal as *const () as libc::sighandler_t) };
    }
    // SAFETY: getppid(2) has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        return ExitCode::from(1); // the router died before the handler was in place
    }
    let mut command = std::process::Command::new(program);
    command.args(args);
    // SAFETY: prctl(2) in the child before exec, async-signal-safe: the server gets SIGTERM if
    // the guardian itself is killed (SIGKILL gives it no chance to stop the group).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("acb-router: cannot start {}: {e}", program.to_string_lossy());
            return ExitCode::from(127);
        }
    };
    let code = |s: std::process::ExitStatus| {
        use std::os::unix::process::ExitStatusExt as _;
        let n = s.code().or_else(|| s.signal().map(|n| 128 + n)).unwrap_or(1);
        ExitCode::from(u8::try_from(n).unwrap_or(1))
    };
    // SAFETY: getpgrp(2) has no preconditions.
    let group = unsafe { libc::getpgrp() };
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            // Whatever the server left behind in its group goes with it (the guardian's own
            // handler takes this SIGTERM).
            // SAFETY: kill(2) on this process's own group (the router made the guardian its
            // leader), which holds the server and whatever it started.
            unsafe { libc::kill(-group, libc::SIGTERM) };
            return code(s);
        }
        if GUARD_STOP.load(SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return code(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above; this ends the guardian too.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    ExitCode::from(137)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot watch for signals; stop the router with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
