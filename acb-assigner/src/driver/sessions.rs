//! Who is connected and who waits for a grant: the driver's bookkeeping beside the scheduler
//! (client ids and tokens, where each session hears from the assigner, the calls waiting for a
//! grant). Nothing here asks the scheduler: the driver does, then records the outcome here.

use std::collections::HashMap;

use acb_core::{ClientId, RequestId};

use super::api::{DomainError, GrantInfo, Reply, SESSION_EVENTS, SessionSender, ToClient};

/// A client the assigner knows: a session's, or a one-off caller's that lives as long as its
/// lease or its request.
#[derive(Debug)]
pub(super) struct ClientInfo {
    pub(super) job: String,
    pub(super) pid: u32,
    pub(super) token: String,
    pub(super) one_off: bool,
    to_client: Option<SessionSender>,
    /// The session asked for a copy of each grant.
    grants_on_session: bool,
    pub(super) swap_in: u64,
    pub(super) swap_out: u64,
    /// The uid of the process that connected (SO_PEERCRED), when it came over a Unix socket.
    pub(super) uid: Option<u32>,
    /// A session of the previous run, restored after a restart and not resumed yet.
    pub(super) orphan: bool,
    /// The node it runs on (its executor's, or the daemon's own).
    pub(super) node: String,
}

/// A call waiting for its grant.
pub(super) struct Pending {
    /// The caller's key, to withdraw the request if the caller goes away.
    key: u64,
    /// The client's tag, echoed in the session's copy of the grant.
    pub(super) tag: u64,
    pub(super) reply: Reply<Result<GrantInfo, DomainError>>,
}

/// The clients and the waiting calls.
pub(super) struct Sessions {
    clients: HashMap<ClientId, ClientInfo>,
    tokens: HashMap<String, ClientId>,
    pending: HashMap<RequestId, Pending>,
    by_key: HashMap<u64, (ClientId, RequestId)>,
    next_client: u64,
    /// One-off clients now (waiting or holding).
    one_offs: usize,
    /// Sessions that left [`SESSION_EVENTS`] events unread, for the driver to end.
    behind: Vec<ClientId>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("clients", &self.clients.len()).field("pending", &self.pending.len()).finish()
    }
}

impl Sessions {
    pub(super) fn new() -> Sessions {
        Sessions {
            clients: HashMap::new(),
            tokens: HashMap::new(),
            pending: HashMap::new(),
            by_key: HashMap::new(),
            one_offs: 0,
            next_client: 1,
            behind: Vec::new(),
        }
    }

    /// A fresh client id, used up even if the scheduler then refuses the client.
    pub(super) fn next_id(&mut self) -> ClientId {
        let client = ClientId(self.next_client);
        self.next_client += 1;
        client
    }

    /// Adds a client the scheduler accepted and returns its new token. `session`: where to send
    /// what the assigner says, and whether the session asked for a copy of each grant (none
    /// for a one-off client).
    pub(super) fn add(
        &mut self,
        client: ClientId,
        job: String,
        pid: u32,
        one_off: bool,
        session: Option<(SessionSender, bool)>,
    ) -> String {
        let token = new_token();
        self.tokens.insert(token.clone(), client);
        self.one_offs += usize::from(one_off);
        let (to_client, grants_on_session) = session.map_or((None, false), |(tx, grants)| (Some(tx), grants));
        let info = ClientInfo {
            job,
            pid,
            token: token.clone(),
            one_off,
            to_client,
            grants_on_session,
            swap_in: 0,
            swap_out: 0,
            uid: None,
            orphan: false,
            node: String::new(),
        };
        self.clients.insert(client, info);
        token
    }

    /// Records who connected: the uid and pid from SO_PEERCRED (Unix socket), or no uid and the
    /// pid the client said (TCP).
    pub(super) fn set_peer(&mut self, client: ClientId, uid: Option<u32>, pid: u32) {
        if let Some(info) = self.clients.get_mut(&client) {
            info.uid = uid;
            info.pid = pid;
        }
    }

    /// Records the node the client runs on.
    pub(super) fn set_node(&mut self, client: ClientId, node: String) {
        if let Some(info) = self.clients.get_mut(&client) {
            info.node = node;
        }
    }

    /// The node a client runs on (empty for an unknown client).
    pub(super) fn node(&self, client: ClientId) -> String {
        self.clients.get(&client).map(|c| c.node.clone()).unwrap_or_default()
    }

    /// Puts back a client of the previous run with its id and token: a session's as an orphan
    /// (no session until one resumes it), a one-off client's as it was.
    pub(super) fn restore(&mut self, client: ClientId, saved: &super::state::SavedClient) {
        self.tokens.insert(saved.token.clone(), client);
        let info = ClientInfo {
            job: saved.job.clone(),
            pid: saved.pid,
            token: saved.token.clone(),
            one_off: saved.one_off,
            to_client: None,
            grants_on_session: false,
            swap_in: 0,
            swap_out: 0,
            uid: saved.uid,
            orphan: !saved.one_off,
            node: saved.node.clone().unwrap_or_default(),
        };
        if let Some(old) = self.clients.insert(client, info) {
            self.one_offs -= usize::from(old.one_off);
        }
        self.one_offs += usize::from(saved.one_off);
        self.next_client = self.next_client.max(client.0.saturating_add(1));
    }

    /// Client ids from now on are at least `next`.
    pub(super) fn skip_ids_to(&mut self, next: u64) {
        self.next_client = self.next_client.max(next);
    }

    /// The id the next client gets.
    pub(super) fn peek_next_id(&self) -> u64 {
        self.next_client
    }

    /// The orphan whose token is `token`, if the caller (`uid`, when known on both sides) may
    /// resume it.
    pub(super) fn orphan_by_token(&self, token: &str, uid: Option<u32>) -> Option<ClientId> {
        let client = self.by_token(token)?;
        let info = self.clients.get(&client)?;
        let same_user = match (info.uid, uid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        (info.orphan && same_user).then_some(client)
    }

    /// A session resumes the orphan `client`: it is a session's client again.
    pub(super) fn attach(&mut self, client: ClientId, session: (SessionSender, bool), uid: Option<u32>, pid: u32) {
        if let Some(info) = self.clients.get_mut(&client) {
            info.orphan = false;
            info.to_client = Some(session.0);
            info.grants_on_session = session.1;
            info.uid = uid.or(info.uid);
            info.pid = pid;
        }
    }

    /// The orphans (sessions of the previous run not resumed).
    pub(super) fn orphans(&self) -> Vec<ClientId> {
        self.clients.iter().filter(|(_, i)| i.orphan).map(|(c, _)| *c).collect()
    }

    /// A client's bookkeeping.
    pub(super) fn info(&self, client: ClientId) -> Option<&ClientInfo> {
        self.clients.get(&client)
    }

    /// Forgets a client and its token (its waiting calls are the driver's to end first).
    pub(super) fn remove(&mut self, client: ClientId) {
        if let Some(info) = self.clients.remove(&client) {
            self.tokens.remove(&info.token);
            self.one_offs -= usize::from(info.one_off);
        }
    }

    /// One-off clients now (waiting for a grant or holding a lease).
    pub(super) fn one_offs(&self) -> usize {
        self.one_offs
    }

    /// The client a token belongs to.
    pub(super) fn by_token(&self, token: &str) -> Option<ClientId> {
        self.tokens.get(token).copied()
    }

    /// The clients, in no order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&ClientId, &ClientInfo)> {
        self.clients.iter()
    }

    /// A client's job name (empty for an unknown client).
    pub(super) fn job(&self, client: ClientId) -> String {
        self.clients.get(&client).map(|c| c.job.clone()).unwrap_or_default()
    }

    /// A client's token (empty for an unknown client).
    pub(super) fn token(&self, client: ClientId) -> String {
        self.clients.get(&client).map(|c| c.token.clone()).unwrap_or_default()
    }

    pub(super) fn is_one_off(&self, client: ClientId) -> bool {
        self.clients.get(&client).is_some_and(|c| c.one_off)
    }

    /// Tells a client's session, if it has one. A session that left [`SESSION_EVENTS`] events
    /// unread gets, instead, the last one it will get ([`ToClient::Ended`], in the slot kept for
    /// it), hears nothing more, and waits in [`Sessions::take_behind`] for the driver to end it.
    pub(super) fn tell(&mut self, client: ClientId, message: ToClient) {
        let Some(info) = self.clients.get_mut(&client) else { return };
        let Some(tx) = info.to_client.as_ref() else { return };
        if tx.is_closed() {
            return; // the session is ending; its Disconnect is on its way
        }
        if tx.capacity() > 1 {
            let _ = tx.try_send(message);
            return;
        }
        let reason = format!("the session left {SESSION_EVENTS} events unread; the assigner ended it");
        let _ = tx.try_send(ToClient::Ended { reason });
        info.to_client = None;
        self.behind.push(client);
    }

    /// The sessions that fell too far behind since the last call.
    pub(super) fn take_behind(&mut self) -> Vec<ClientId> {
        std::mem::take(&mut self.behind)
    }

    /// Whether the client's session asked for a copy of each grant.
    pub(super) fn wants_grant_copies(&self, client: ClientId) -> bool {
        self.clients.get(&client).is_some_and(|c| c.grants_on_session && c.to_client.is_some())
    }

    /// Adds swapped bytes to a client's count; false for an unknown client.
    pub(super) fn add_swap(&mut self, client: ClientId, bytes_in: u64, bytes_out: u64) -> bool {
        let Some(info) = self.clients.get_mut(&client) else { return false };
        info.swap_in = info.swap_in.saturating_add(bytes_in);
        info.swap_out = info.swap_out.saturating_add(bytes_out);
        true
    }

    /// A call now waits for `request`'s grant; `key` can withdraw it.
    pub(super) fn wait(
        &mut self,
        key: u64,
        client: ClientId,
        request: RequestId,
        tag: u64,
        reply: Reply<Result<GrantInfo, DomainError>>,
    ) {
        self.pending.insert(request, Pending { key, tag, reply });
        self.by_key.insert(key, (client, request));
    }

    /// The call waiting for `request`, no longer waiting.
    pub(super) fn take_waiting(&mut self, request: RequestId) -> Option<Pending> {
        let p = self.pending.remove(&request)?;
        self.by_key.remove(&p.key);
        Some(p)
    }

    /// The call with `key` went away: its client and request, no longer waiting.
    pub(super) fn abandon(&mut self, key: u64) -> Option<(ClientId, RequestId)> {
        let (client, request) = self.by_key.remove(&key)?;
        self.pending.remove(&request);
        Some((client, request))
    }

    /// Tells every session the assigner stops, and every waiting call.
    pub(super) fn shut_down(&mut self) {
        for info in self.clients.values_mut() {
            if let Some(tx) = info.to_client.take() {
                let _ = tx.try_send(ToClient::ShuttingDown);
            }
        }
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(DomainError::ShuttingDown));
        }
    }
}

/// A fresh client token: 128 random bits, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source at all is not something to run a daemon on, but never panic:
        // fall back to the clock mixed with the address of a stack value.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let a = &bytes as *const _ as usize as u128;
        bytes = (t ^ a.rotate_left(64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
