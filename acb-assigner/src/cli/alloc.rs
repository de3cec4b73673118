//! `alloc`: ask for GPUs, print the lease, hold it, give it back; status 3 when the assigner
//! takes it back first.

use super::{AllocArgs, CliError, connect};
use crate::proto;
use acb_client::connection;

pub(super) async fn run(
    AllocArgs { conn, gpus, memory, priority, job, hold, group, group_size }: AllocArgs,
) -> Result<(), CliError> {
    let rpc = connect(&conn).await?;
    let mut session = connection::Session::open(rpc, &job).await?;
    let group_size = match (&group, group_size) {
        (Some(_), None) => 1,
        (_, s) => s.unwrap_or(0),
    };
    let req = proto::AllocateRequest {
        gpus,
        memory_per_gpu: memory,
        priority,
        group: group.unwrap_or_default(),
        group_size,
        ..Default::default()
    };
    let grant = session.allocate(req).await?;
    let ids: Vec<String> = grant.gpus.iter().map(|g| format!("{}:{}", g.node, g.index)).collect();
    println!("granted lease {} on {} after {:.3} s", grant.lease_id, ids.join(","), grant.waited_us as f64 / 1e6);
    let held = async {
        match hold {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    // Hold until the time is up, the assigner asks for the lease back (a time slice), or the
    // assigner goes away.
    let ended = tokio::select! {
        () = held => None,
        ended = session_ended(&mut session.events, grant.lease_id) => Some(ended),
    };
    match ended {
        None | Some(SessionEnd::Yield) => {
            session.release(grant.lease_id).await?;
            println!("released lease {}", grant.lease_id);
            Ok(())
        }
        Some(SessionEnd::Gone(why)) => Err(CliError::LeaseEnded { lease: grant.lease_id, why }),
    }
}

enum SessionEnd {
    Yield,
    Gone(String),
}

/// Waits for what ends a held lease: a yield request for it, its revocation, or the session's
/// end.
async fn session_ended(events: &mut tonic::Streaming<proto::SessionEvent>, lease: u64) -> SessionEnd {
    use proto::session_event::Event as E;
    loop {
        match events.message().await {
            Ok(Some(proto::SessionEvent { event: Some(E::YieldRequest(y)) })) if y.lease_id == lease => {
                println!("asked to yield lease {lease}");
                return SessionEnd::Yield;
            }
            Ok(Some(proto::SessionEvent { event: Some(E::Revoked(r)) })) if r.lease_id == lease => {
                return SessionEnd::Gone(r.reason);
            }
            Ok(Some(proto::SessionEvent { event: Some(E::ShuttingDown(s)) })) => return SessionEnd::Gone(s.reason),
            Ok(Some(_)) => {}
            Ok(None) => return SessionEnd::Gone("the assigner closed the session".into()),
            Err(e) => return SessionEnd::Gone(e.message().to_string()),
        }
    }
}
