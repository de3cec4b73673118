//! `status`: the assigner's GPUs with their holders, the queue and the clients, as a table or
//! as JSON.

use acb_core::Bytes;

use super::{CliError, StatusArgs, connect};
use crate::proto;

pub(super) async fn run(StatusArgs { conn, json, limit }: StatusArgs) -> Result<(), CliError> {
    let mut rpc = connect(&conn).await?;
    let limit = limit.unwrap_or(0);
    let s = rpc.status(proto::StatusRequest { queue_limit: limit, client_limit: limit }).await?.into_inner();
    if json {
        println!("{}", acb_client::status_json(&s));
    } else {
        print!("{}", status_table(&s));
    }
    Ok(())
}

fn status_table(s: &proto::StatusResponse) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let simulated = s.gpus.iter().any(|g| g.fake);
    let _ = writeln!(
        o,
        "acb-assigner {}, {}, scheduler {}, up {:.1} s{}",
        s.version,
        if s.role.is_empty() { "standalone" } else { s.role.as_str() },
        s.scheduler,
        s.uptime_ms as f64 / 1000.0,
        if simulated { ", SIMULATED GPUs" } else { "" }
    );
    if s.role == "controller" {
        let _ = writeln!(o, "\nNODES ({})", s.nodes.len());
        for n in &s.nodes {
            let state = if n.up { "up".to_string() } else { format!("DOWN: {}", n.reason) };
            let seen = if n.last_seen_ms > 0 {
                format!(", heard from {:.1} s ago", n.last_seen_ms as f64 / 1e3)
            } else {
                String::new()
            };
            let _ = writeln!(o, "  {:<20} {} GPU(s), {state}{seen}", n.name, n.gpus);
        }
    }
    let _ = writeln!(o, "\nGPU  NODE:IDX        NAME                    MEMORY     GRANTED    STATE      HOLDERS");
    for g in &s.gpus {
        // An assigner older than the totals sends none: then the list is all there is.
        let held_by = (g.holders_total as usize).max(g.holders.len());
        let state = if !g.healthy {
            "LOST"
        } else if held_by == 0 {
            "free"
        } else if g.holders.iter().all(|h| h.idle) {
            "idle-held"
        } else {
            "busy"
        };
        let mut holders: Vec<String> = g
            .holders
            .iter()
            .map(|h| {
                let uid = h.uid.map(|u| format!(", uid {u}")).unwrap_or_default();
                let ttl = if h.expires_in_ms > 0 {
                    format!(", ends in {:.0} s unless renewed", h.expires_in_ms as f64 / 1e3)
                } else {
                    String::new()
                };
                format!(
                    "{} (client#{}, lease#{}, {:.1} s{uid}, pid {}{ttl})",
                    h.job,
                    h.client_id,
                    h.lease_id,
                    h.held_ms as f64 / 1e3,
                    h.pid
                )
            })
            .collect();
        if held_by > g.holders.len() {
            holders.push(format!("... and {} more holders (--limit)", held_by - g.holders.len()));
        }
        let name = if g.fake { format!("{} (fake)", g.name) } else { g.name.clone() };
        let _ = writeln!(
            o,
            "{:<4} {:<15} {:<23} {:<10} {:<10} {:<10} {}{}",
            g.id,
            format!("{}:{}", g.node, g.index),
            name,
            Bytes(g.memory).to_string(),
            Bytes(g.granted).to_string(),
            state,
            holders.join("; "),
            if g.reserved { "  [reserved for the head of the queue]" } else { "" }
        );
    }
    // An assigner older than the totals sends none: then the list is all there is.
    let _ = writeln!(o, "\nQUEUE ({} waiting)", s.queue_total.max(s.queue.len() as u32));
    for q in &s.queue {
        let mem = q.memory_per_gpu.map(|m| format!(" memory={}", Bytes(m))).unwrap_or_default();
        let _ = writeln!(
            o,
            "  request#{} client#{} {} gpus={}{} priority={} waiting {:.1} s{}{}",
            q.request_id,
            q.client_id,
            q.job,
            q.gpus,
            mem,
            q.priority,
            q.waiting_ms as f64 / 1e3,
            if q.group.is_empty() { String::new() } else { format!(" group={}", q.group) },
            if s.role == "controller" { format!(" node={}", q.node) } else { String::new() },
        );
    }
    more(&mut o, s.queue_total, s.queue.len(), "queued requests");
    let _ = writeln!(o, "\nCLIENTS ({})", s.clients_total.max(s.clients.len() as u32));
    for c in &s.clients {
        // Over TCP there are no credentials: no uid, and the pid is what the client said.
        let uid = c.uid.map_or_else(|| "uid ? (TCP)".to_string(), |u| format!("uid {u}"));
        let _ = writeln!(
            o,
            "  client#{} {}{} {uid} pid {} leases {} queued {}{}{}",
            c.client_id,
            c.job,
            if s.role == "controller" { format!(" node={}", c.node) } else { String::new() },
            c.pid,
            c.leases,
            c.queued,
            if c.one_off { " (one-off)" } else { "" },
            if c.orphan { " (restored after a restart; waiting for its client to resume)" } else { "" }
        );
    }
    more(&mut o, s.clients_total, s.clients.len(), "clients");
    o
}

/// The line saying how many of a list the assigner left out (its reply is summarised).
fn more(o: &mut String, total: u32, listed: usize, what: &str) {
    use std::fmt::Write;
    let left = (total as usize).saturating_sub(listed);
    if left > 0 {
        let max = crate::convert::STATUS_MAX_LIMIT;
        let _ = writeln!(o, "  ... and {left} more {what} (--limit N lists up to {max})");
    }
}
