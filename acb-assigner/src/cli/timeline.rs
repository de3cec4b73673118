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
    let rows = gpu_rows(&status);
    let title = format!(
        "acb-assigner timeline, {}scheduler {}{}",
        if status.role == "controller" {
            format!("controller of {} nodes, ", status.nodes.len())
        } else {
            String::new()
        },
        status.scheduler,
        if simulated { " (SIMULATED GPUs)" } else { "" }
    );
    let end = Duration::from_millis(status.uptime_ms);
    let svg = acb_lab::timeline::render_svg(&title, &rows, &events, Some(end));
    std::fs::write(&out, svg).map_err(|e| CliError::failed(format!("{}: {e}", out.display())))?;
    println!("wrote {} ({} events)", out.display(), events.len());
    Ok(())
}

/// One row per GPU; on a controller the rows are grouped by node (in the order the nodes
/// joined, GPUs by index) and labelled `NODE:INDEX`.
fn gpu_rows(status: &proto::StatusResponse) -> Vec<acb_lab::timeline::GpuRow> {
    let mut gpus: Vec<&proto::GpuStatus> = status.gpus.iter().collect();
    let cluster = status.role == "controller";
    if cluster {
        let rank = |node: &str| status.nodes.iter().position(|n| n.name == node).unwrap_or(usize::MAX);
        gpus.sort_by_key(|g| (rank(&g.node), g.index, g.id));
    }
    gpus.into_iter()
        .map(|g| {
            let kind = format!("{}{}", if g.fake { "simulated, " } else { "" }, Bytes(g.memory));
            let label = if cluster {
                format!("{}:{} (gpu{}, {kind})", g.node, g.index, g.id)
            } else {
                format!("gpu{} ({kind})", g.id)
            };
            acb_lab::timeline::GpuRow { id: g.id, label }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controllers_rows_are_grouped_by_node() {
        let gpu = |id: u32, node: &str, index: u32| proto::GpuStatus {
            id,
            node: node.into(),
            index,
            memory: 1 << 30,
            ..Default::default()
        };
        let node = |name: &str| proto::NodeStatus { name: name.into(), up: true, ..Default::default() };
        let mut status = proto::StatusResponse {
            role: "controller".into(),
            nodes: vec![node("b"), node("a")],
            gpus: vec![gpu(0, "a", 0), gpu(1, "b", 1), gpu(2, "a", 1), gpu(3, "b", 0)],
            ..Default::default()
        };
        let labels: Vec<String> = gpu_rows(&status).into_iter().map(|r| r.label).collect();
        assert_eq!(labels, ["b:0 (gpu3, 1 GiB)", "b:1 (gpu1, 1 GiB)", "a:0 (gpu0, 1 GiB)", "a:1 (gpu2, 1 GiB)"]);
        status.role = "standalone".into();
        let ids: Vec<u32> = gpu_rows(&status).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
    }
}
