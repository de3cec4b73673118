//! `release`: an admin gives back any lease (a one-off client's that died holding it, say).
//! Sent with an empty client token: the assigner allows it only to its admin uid (`serve
//! --admin-uid`, default 0), over the Unix socket where it knows the caller's uid.

use super::{CliError, ReleaseArgs, connect};
use crate::proto;

pub(super) async fn run(ReleaseArgs { conn, lease, token }: ReleaseArgs) -> Result<(), CliError> {
    let mut rpc = connect(&conn).await?;
    let client_token = token.unwrap_or_default();
    rpc.release(proto::ReleaseRequest { client_token, lease_id: lease }).await?;
    println!("lease#{lease} released");
    Ok(())
}
