//! `device-plugin`: the Kubernetes device plugin for a node's assigner (see [`crate::k8s`]).
//! Runs until SIGTERM or SIGINT, then removes its socket and exits 0.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::config::Address;
use crate::k8s;

// The flags of `device-plugin` (no doc comment: clap would take it for the subcommand's about).
#[derive(Debug, Args)]
pub(super) struct DevicePluginArgs {
    /// The node's assigner (its executor, or a standalone daemon): unix:/path or tcp:IP:PORT.
    /// Containers get its socket's directory mounted at --socket-dir-in-container.
    #[arg(long, value_parser = str::parse::<Address>, default_value = "unix:/run/acb/assigner.sock")]
    assigner: Address,
    /// A file whose first line is the auth token the assigner requires.
    #[arg(long, env = "ACB_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// The extended resource pods ask for.
    #[arg(long, default_value = "acb.io/gpu")]
    resource: String,
    /// Devices advertised per GPU: how many pods' requests one GPU takes (1 to 1024).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    shares_per_gpu: u32,
    /// The kubelet's device-plugin directory: kubelet.sock, and this plugin's socket.
    #[arg(long, default_value = acb_proto::deviceplugin::DEVICE_PLUGIN_PATH)]
    kubelet_dir: PathBuf,
    /// This plugin's socket's name in --kubelet-dir.
    #[arg(long, default_value = "acb.sock")]
    socket_name: String,
    /// Where containers find the assigner's socket directory.
    #[arg(long, default_value = "/run/acb")]
    socket_dir_in_container: PathBuf,
    /// This node's name in the cluster: a controller's or an executor's status lists every
    /// node's GPUs, and only this node's are advertised. Default: the host name, as the
    /// assigner's own default.
    #[arg(long, env = "ACB_NODE_NAME")]
    node_name: Option<String>,
    /// Where the GPUs' device nodes are (nvidiaN, nvidiactl, nvidia-uvm): the host's /dev as
    /// this process sees it.
    #[arg(long, default_value = "/dev")]
    dev_dir: PathBuf,
}

pub(super) async fn run(args: DevicePluginArgs) -> Result<(), CliError> {
    init_logs();
    let name = &args.socket_name;
    if name.is_empty()
        || name.contains('/')
        || name == "."
        || name == ".."
        || name == acb_proto::deviceplugin::KUBELET_SOCKET
    {
        return Err(CliError::usage(format!("--socket-name {name:?}: a file name in --kubelet-dir, not kubelet.sock")));
    }
    if let Err(why) = k8s::check_resource_name(&args.resource) {
        return Err(CliError::usage(format!("--resource {:?}: {why}", args.resource)));
    }
    if !args.socket_dir_in_container.is_absolute() {
        return Err(CliError::usage(format!(
            "--socket-dir-in-container {}: give an absolute path in the container",
            args.socket_dir_in_container.display()
        )));
    }
    if !args.kubelet_dir.is_dir() {
        return Err(CliError::failed(format!("--kubelet-dir {}: not a directory", args.kubelet_dir.display())));
    }
    let token = args
        .auth_token_file
        .as_deref()
        .map(|p| acb_client::read_token(p).map_err(|e| CliError::failed(format!("--auth-token-file: {e}"))))
        .transpose()?;
    let settings = k8s::Settings {
        assigner: args.assigner,
        token,
        resource: args.resource,
        shares_per_gpu: args.shares_per_gpu,
        kubelet_dir: args.kubelet_dir,
        socket_name: args.socket_name,
        socket_dir_in_container: args.socket_dir_in_container,
        node_name: args.node_name.unwrap_or_else(crate::config::host_name),
        dev_dir: args.dev_dir,
    };
    tracing::info!(
        assigner = %settings.assigner,
        resource = %settings.resource,
        shares_per_gpu = settings.shares_per_gpu,
        node = %settings.node_name,
        "acb device plugin starting"
    );
    let (tx, rx) = tokio::sync::watch::channel(k8s::Inventory::default());
    let follower = tokio::spawn(k8s::follow_assigner(settings.clone(), tx));
    let result = k8s::run(settings, rx, stop_signal()).await;
    follower.abort();
    tracing::info!("acb device plugin stopped");
    result.map_err(CliError::failed)
}

/// SIGTERM or SIGINT. Should a handler fail to install, the other still stops the plugin.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        Some(_) = async { match term.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {}
        Some(_) = async { match int.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {}
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}
