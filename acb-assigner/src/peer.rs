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
