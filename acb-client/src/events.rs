//! The assigner's event record from the wire (`Watch`), and as JSON (`watch --json`).

use std::time::Duration;

use acb_core::record::{Event, EventKind, YieldReason};
use acb_proto::v1 as proto;

/// An event from the wire (for `watch` and `timeline`); `None` for the history-end marker and
/// for kinds this version does not know.
pub fn from_proto(e: proto::Event) -> Option<Event> {
    use proto::event::Kind as K;
    let reason = |r: i32| match proto::YieldReason::try_from(r) {
        Ok(proto::YieldReason::QuantumExpired) => YieldReason::QuantumExpired,
        _ => YieldReason::Contended,
    };
    let kind = match e.kind? {
        K::Connected(c) => EventKind::Connected { client: c.client_id, job: c.job },
        K::Requested(r) => EventKind::Requested {
            client: r.client_id,
            job: r.job,
            request: r.request_id,
            gpus: r.gpus,
            memory_per_gpu: r.memory_per_gpu,
            priority: r.priority,
            group: (!r.group.is_empty()).then_some(r.group),
        },
        K::Granted(g) => EventKind::Granted {
            client: g.client_id,
            job: g.job,
            request: g.request_id,
            lease: g.lease_id,
            gpus: g.gpu_ids,
            memory_per_gpu: g.memory_per_gpu,
            waited: Duration::from_micros(g.waited_us),
        },
        K::YieldAsked(y) => EventKind::YieldAsked { client: y.client_id, lease: y.lease_id, reason: reason(y.reason) },
        K::Released(r) => {
            EventKind::Released { client: r.client_id, lease: r.lease_id, by_disconnect: r.by_disconnect }
        }
        K::Cancelled(c) => EventKind::Cancelled { client: c.client_id, request: c.request_id },
        K::TakenBack(t) => EventKind::TakenBack { client: t.client_id, lease: t.lease_id, reason: t.reason },
        K::Rejected(r) => EventKind::Rejected { client: r.client_id, request: r.request_id, reason: r.reason },
        K::ClientGone(c) => EventKind::ClientGone { client: c.client_id },
        K::GpuHealth(g) => EventKind::GpuHealth { gpu: g.gpu_id, healthy: g.healthy },
        K::NodeUp(n) => EventKind::NodeUp { node: n.node, gpus: n.gpu_ids },
        K::NodeDown(n) => EventKind::NodeDown { node: n.node, reason: n.reason },
        K::HistoryEnd(_) => return None,
    };
    Some(Event { seq: e.seq, at: Duration::from_micros(e.at_us), kind })
}

/// An event as one JSON object: `{"seq", "at_us", "event": KIND, ...fields}`, durations in
/// microseconds, names in kebab-case.
pub fn to_json(e: &Event) -> serde_json::Value {
    use serde_json::json;
    let us = |d: &Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let (kind, mut fields) = match &e.kind {
        EventKind::Connected { client, job } => ("connected", json!({"client": client, "job": job})),
        EventKind::Requested { client, job, request, gpus, memory_per_gpu, priority, group } => (
            "requested",
            json!({"client": client, "job": job, "request": request, "gpus": gpus,
                   "memory_per_gpu": memory_per_gpu, "priority": priority, "group": group}),
        ),
        EventKind::Granted { client, job, request, lease, gpus, memory_per_gpu, waited } => (
            "granted",
            json!({"client": client, "job": job, "request": request, "lease": lease, "gpus": gpus,
                   "memory_per_gpu": memory_per_gpu, "waited": us(waited)}),
        ),
        EventKind::YieldAsked { client, lease, reason } => (
            "yield-asked",
            json!({"client": client, "lease": lease, "reason": match reason {
                YieldReason::Contended => "contended",
                YieldReason::QuantumExpired => "quantum-expired",
            }}),
        ),
        EventKind::Released { client, lease, by_disconnect } => {
            ("released", json!({"client": client, "lease": lease, "by_disconnect": by_disconnect}))
        }
        EventKind::Cancelled { client, request } => ("cancelled", json!({"client": client, "request": request})),
        EventKind::TakenBack { client, lease, reason } => {
            ("taken-back", json!({"client": client, "lease": lease, "reason": reason}))
        }
        EventKind::Rejected { client, request, reason } => {
            ("rejected", json!({"client": client, "request": request, "reason": reason}))
        }
        EventKind::ClientGone { client } => ("client-gone", json!({"client": client})),
        EventKind::GpuHealth { gpu, healthy } => ("gpu-health", json!({"gpu": gpu, "healthy": healthy})),
        EventKind::NodeUp { node, gpus } => ("node-up", json!({"node": node, "gpus": gpus})),
        EventKind::NodeDown { node, reason } => ("node-down", json!({"node": node, "reason": reason})),
    };
    if let Some(map) = fields.as_object_mut() {
        map.insert("seq".into(), e.seq.into());
        map.insert("at_us".into(), us(&e.at).into());
        map.insert("event".into(), kind.into());
    }
    fields
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_names_the_kind_in_kebab_case_with_times_in_microseconds() {
        let e = Event {
            seq: 7,
            at: Duration::from_millis(1500),
            kind: EventKind::YieldAsked { client: 2, lease: 9, reason: YieldReason::QuantumExpired },
        };
        let v = to_json(&e);
        assert_eq!(v["event"], "yield-asked");
        assert_eq!(v["reason"], "quantum-expired");
        assert_eq!((v["seq"].as_u64(), v["at_us"].as_u64(), v["lease"].as_u64()), (Some(7), Some(1_500_000), Some(9)));
        let g = Event {
            seq: 1,
            at: Duration::ZERO,
            kind: EventKind::Requested {
                client: 1,
                job: "j".into(),
                request: 3,
                gpus: 2,
                memory_per_gpu: None,
                priority: 0,
                group: None,
            },
        };
        assert!(to_json(&g)["memory_per_gpu"].is_null());
    }
}
