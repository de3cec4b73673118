//! `watch`: print the assigner's events as they happen, the record first with `--replay`.

use acb_client::events::from_proto as event_from_proto;

use super::{CliError, WatchArgs, connect};
use crate::proto;

pub(super) async fn run(WatchArgs { conn, replay, no_follow, json }: WatchArgs) -> Result<(), CliError> {
    let mut rpc = connect(&conn).await?;
    let mut stream = rpc.watch(proto::WatchRequest { replay }).await?.into_inner();
    while let Some(e) = stream.message().await? {
        // The end of the replayed record: what follows happens now.
        if matches!(e.kind, Some(proto::event::Kind::HistoryEnd(_))) {
            if no_follow {
                return Ok(());
            }
            if json {
                println!("{{\"event\":\"history-end\"}}");
            } else {
                println!("--- end of the record; live from here ---");
            }
            continue;
        }
        if let Some(event) = event_from_proto(e) {
            if json {
                println!("{}", acb_client::events::to_json(&event));
            } else {
                println!("{event}");
            }
        }
    }
    Ok(())
}
