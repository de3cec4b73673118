//! Who called: over a Unix socket, the caller's uid and pid from the kernel (SO_PEERCRED, which
//! tonic puts in the request's extensions as `UdsConnectInfo`), never what the client says.
//! Over TCP there are no credentials: no uid, and the pid is what the client said (for people
//! only); the client token is the only identity there.

use tonic::transport::server::UdsConnectInfo;

use crate::driver::Peer;

/// The caller of `request`; `claimed_pid`: what the client said its pid is (Hello), used only
/// when the connection carries no credentials.
pub fn of<T>(request: &tonic::Request<T>, claimed_pid: u32) -> Peer {
    match request.extensions().get::<UdsConnectInfo>().and_then(|i| i.peer_cred) {
        Some(cred) => {
            Peer { uid: Some(cred.uid()), pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(claimed_pid) }
        }
        None => Peer { uid: None, pid: claimed_pid },
    }
}

/// `peer`, with the pid the client said when the connection gave none.
pub fn or_claimed(peer: Peer, claimed_pid: u32) -> Peer {
    if peer.pid == 0 { Peer { pid: claimed_pid, ..peer } } else { peer }
}

/// Set on a call by the authentication layer when it carries the cluster token: the caller is
/// an executor (its forwarded identity headers are trusted).
#[derive(Clone, Copy, Debug)]
pub struct FromExecutor;

/// The header an executor names its node in, on the calls it forwards.
pub const NODE_HEADER: &str = "acb-node";
/// The header an executor puts the client's uid in (SO_PEERCRED on its socket).
pub const UID_HEADER: &str = "acb-peer-uid";
/// The header an executor puts the client's pid in.
pub const PID_HEADER: &str = "acb-peer-pid";

/// Whether `name` can name a node: 1 to 253 printable ASCII characters without spaces (it
/// travels in a header, as host names do).
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{:?} cannot name a node: 1 to 253 printable ASCII characters, no spaces",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// A call an executor forwarded: its client's node, uid and pid. `None` for any call that did
/// not come with the cluster token (a client's headers are never believed).
pub fn forwarded<T>(request: &tonic::Request<T>) -> Option<(String, Peer)> {
    request.extensions().get::<FromExecutor>()?;
    let md = request.metadata();
    let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
    let node = text(NODE_HEADER)?.to_string();
    check_node_name(&node).ok()?;
    let uid = text(UID_HEADER).and_then(|v| v.parse().ok());
    let pid = text(PID_HEADER).and_then(|v| v.parse().ok()).unwrap_or(0);
    Some((node, Peer { uid, pid }))
}

/// The caller of `request` and its node: an executor's forwarded client, or this daemon's own.
pub fn with_node<T>(request: &tonic::Request<T>, claimed_pid: u32) -> (Peer, Option<String>) {
    match forwarded(request) {
        Some((node, peer)) => (or_claimed(peer, claimed_pid), Some(node)),
        None => (of(request, claimed_pid), None),
    }
}
