//! The assigner's status as JSON: what `acb-assigner status --json` prints and
//! `acb_client_status_json` returns (one function, so the two never differ).

use acb_proto::v1 as proto;

/// The status as JSON.
pub fn status_json(s: &proto::StatusResponse) -> String {
    let gpus: Vec<serde_json::Value> = s
        .gpus
        .iter()
        .map(|g| {
            serde_json::json!({
                "id": g.id, "node": g.node, "index": g.index, "uuid": g.uuid, "name": g.name,
                "memory": g.memory, "healthy": g.healthy, "simulated": g.fake, "granted": g.granted,
                "reserved": g.reserved, "holders_total": g.holders_total, "memory_used": g.memory_used,
                "holders": g.holders.iter().map(|h| serde_json::json!({
                    "client": h.client_id, "job": h.job, "lease": h.lease_id, "idle": h.idle,
                    "held_ms": h.held_ms, "memory": h.memory, "uid": h.uid, "pid": h.pid,
                    "expires_in_ms": (h.expires_in_ms > 0).then_some(h.expires_in_ms),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let queue: Vec<serde_json::Value> = s
        .queue
        .iter()
        .map(|q| {
            serde_json::json!({
                "request": q.request_id, "client": q.client_id, "job": q.job, "gpus": q.gpus,
                "memory_per_gpu": q.memory_per_gpu, "priority": q.priority, "waiting_ms": q.waiting_ms,
                "group": (!q.group.is_empty()).then_some(&q.group), "node": q.node,
            })
        })
        .collect();
    let clients: Vec<serde_json::Value> = s
        .clients
        .iter()
        .map(|c| {
            serde_json::json!({
                "client": c.client_id, "job": c.job, "pid": c.pid, "leases": c.leases, "queued": c.queued,
                "swap_bytes_in": c.swap_bytes_in, "swap_bytes_out": c.swap_bytes_out, "one_off": c.one_off,
                "uid": c.uid, "orphan": c.orphan, "node": c.node,
            })
        })
        .collect();
    let nodes: Vec<serde_json::Value> = s
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name, "up": n.up, "last_seen_ms": n.last_seen_ms, "gpus": n.gpus,
                "reason": (!n.reason.is_empty()).then_some(&n.reason),
            })
        })
        .collect();
    // `queue` and `clients` list the first of them (the assigner summarises its reply);
    // the totals count them all.
    serde_json::json!({
        "version": s.version, "scheduler": s.scheduler, "uptime_ms": s.uptime_ms,
        "role": if s.role.is_empty() { "standalone" } else { s.role.as_str() }, "nodes": nodes,
        "gpus": gpus, "queue": queue, "clients": clients,
        "queue_total": s.queue_total, "clients_total": s.clients_total,
    })
    .to_string()
}
