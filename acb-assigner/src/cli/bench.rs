//! `bench`: an in-process assigner on a temporary socket, with one simulated GPU per client (the
//! benchmark measures the broker, not queueing), measured by `acb_lab::bench`.

use std::path::PathBuf;
use std::time::Duration;

use super::{BenchArgs, CliError};
use crate::config::{Address, ServeConfig};

pub(super) async fn run(BenchArgs { clients, time, rounds, regrant_rounds }: BenchArgs) -> Result<(), CliError> {
    if clients.is_empty() || clients.iter().any(|c| *c == 0 || *c > 1024) || rounds == 0 {
        return Err(CliError::usage("--clients takes counts from 1 to 1024, --rounds at least 1"));
    }
    if regrant_rounds > 1000 {
        return Err(CliError::usage("--regrant-rounds takes 0 to 1000"));
    }
    print!("{}", bench(&clients, time, rounds, regrant_rounds).await?);
    Ok(())
}

/// An in-process assigner for the benchmark, stopped (and its directory removed) on `stop`.
struct Server {
    dir: PathBuf,
    addr: Address,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), crate::Error>>,
}

impl Server {
    /// `gpus` simulated GPUs on a socket in a directory of its own; saving its leases there
    /// when `saving`.
    fn start(tag: &str, gpus: usize, saving: bool) -> Server {
        let dir = std::env::temp_dir().join(format!("acb-bench-{}-{tag}", std::process::id()));
        let socket = dir.join("assigner.sock");
        let mut cfg =
            ServeConfig::simulated(socket.clone(), u32::try_from(gpus).unwrap_or(u32::MAX), acb_core::Policy::Simple);
        if saving {
            cfg.state_dir = Some(dir.join("state"));
        }
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::server::serve(cfg, async {
            let _ = stop_rx.await;
        }));
        Server { dir, addr: Address::Unix(socket), stop: Some(stop), task }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn bench(clients: &[usize], time: Duration, rounds: usize, regrant_rounds: usize) -> Result<String, CliError> {
    let max = clients.iter().copied().max().unwrap_or(1).max(1);
    let plain = Server::start("plain", max, false);
    let saving = Server::start("saving", max, true);
    let mut result = acb_lab::bench::run(&plain.addr, Some(&saving.addr), clients, time, rounds).await;
    plain.stop().await;
    saving.stop().await;
    if regrant_rounds > 0 && result.is_ok() {
        let one = Server::start("regrant", 1, false);
        let exe = std::env::current_exe().map_err(|e| CliError::failed(format!("finding this program: {e}")))?;
        let regrant = acb_lab::bench::regrant(&one.addr, &exe, regrant_rounds).await;
        one.stop().await;
        result = result.and_then(|table| Ok(table + &regrant?));
    }
    Ok(result?)
}
