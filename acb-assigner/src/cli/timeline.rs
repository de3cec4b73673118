//! `timeline`: the assigner's event record drawn as SVG, one row per GPU.

use std::time::Duration;

use acb_client::events::from_proto as event_from_proto;
use acb_core::Bytes;

use super::{CliError, TimelineArgs, connect};
use crate::proto;

pub(super) async fn run(TimelineArgs { conn, out }: TimelineArgs) -> Result<(), CliError> {
    let mut rpc = connect(&conn).await?;
    let status = rpc.status(proto::StatusRequest::default()).await?.into_inner();
    let mut stream = rpc.watch(proto::WatchRequest { replay: true }).await?.into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await? {
        if matches!(e.kind, Some(proto::event::Kind::HistoryEnd(_))) {
            break;
        }
        events.extend(event_from_proto(e));
    }
    let simulated = status.gpus.iter().any(|g| g.fake);
    let rows: Vec<acb_lab::timeline::GpuRow> = status
        .gpus
        .iter()
        .map(|g| acb_lab::timeline::GpuRow {
            id: g.id,
            label: format!("gpu{} ({}{})", g.id, if g.fake { "simulated, " } else { "" }, Bytes(g.memory)),
        })
        .collect();
    let title = format!(
        "acb-assigner timeline, scheduler {}{}",
        status.scheduler,
        if simulated { " (SIMULATED GPUs)" } else { "" }
    );
    let end = Duration::from_millis(status.uptime_ms);
    let svg = acb_lab::timeline::render_svg(&title, &rows, &events, Some(end));
    std::fs::write(&out, svg).map_err(|e| CliError::failed(format!("{}: {e}", out.display())))?;
    println!("wrote {} ({} events)", out.display(), events.len());
    Ok(())
}
