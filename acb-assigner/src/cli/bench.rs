//! `bench`: an in-process assigner on a temporary socket, with one simulated GPU per client (the
//! benchmark measures the broker, not queueing), measured by `acb_lab::bench`.

use std::time::Duration;

use super::{BenchArgs, CliError};
use crate::config::{Address, ServeConfig};

pub(super) async fn run(BenchArgs { clients, time, rounds }: BenchArgs) -> Result<(), CliError> {
    if clients.is_empty() || clients.iter().any(|c| *c == 0 || *c > 1024) || rounds == 0 {
        return Err(CliError::usage("--clients takes counts from 1 to 1024, --rounds at least 1"));
    }
    print!("{}", bench(&clients, time, rounds).await?);
    Ok(())
}

async fn bench(clients: &[usize], time: Duration, rounds: usize) -> Result<String, CliError> {
    let max = clients.iter().copied().max().unwrap_or(1).max(1);
    let dir = std::env::temp_dir().join(format!("acb-bench-{}", std::process::id()));
    let socket = dir.join("assigner.sock");
    let cfg = ServeConfig::simulated(socket.clone(), u32::try_from(max).unwrap_or(u32::MAX), acb_core::Policy::Simple);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::serve(cfg, async {
        let _ = stop_rx.await;
    }));
    let result = acb_lab::bench::run(&Address::Unix(socket), clients, time, rounds).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result?)
}
