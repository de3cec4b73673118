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

/// Runs the command line; the exit code says how it went.
pub fn main() -> ExitCode {
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
    let shared = Arc::new(Shared { config, models: models.clone(), names, http: http.clone(), metrics });
    let (stop_tx, stop_rx) = watch::channel(false);
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
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down: draining");
            for h in &models {
                h.close();
            }
            let _ = stop_tx.send(true);
        }
    };
    // No Nagle delay: a streamed token goes out when the server sends it.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(closing);
    let mut stop_seen = stop_rx.clone();
    let server = tokio::spawn(async move { server.await });
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
    Ok(())
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
