//! One model as the router brokers it: an acb job whose lease is held while the model is awake.
//!
//! Requests are admitted by [`ModelHandle::admit`]: at once while the model is awake and not
//! draining, else they queue (bounded in size and time) and the model's task wakes it. The task
//! ([`run`]) takes a lease from the assigner, wakes the server on the granted GPUs, and holds
//! the lease while it is awake, telling the assigner when the model is idle (no request in
//! flight) so that a model waiting for the GPU gets it at once. Asked to yield, idle past its
//! TTL, or at shutdown, the model drains: no new request is admitted, the ones in flight finish,
//! then the server sleeps and the lease goes back. A model never sleeps with a request in flight.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use acb_client::connection::{Rpc, Session};
use acb_proto::v1 as proto;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::config::{Engine, Model};
use crate::engine::{Backend, HttpClient, Woke};
use crate::metrics::{Metrics, StateLabels};

/// Where a model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No lease, the server asleep (or stopped).
    Asleep,
    /// Asking for a lease, or waking the server.
    Waking,
    /// Holding a lease, serving.
    Awake,
    /// Holding a lease, finishing in-flight requests before it sleeps.
    Draining,
    /// Its server died more times in a row than `max_restarts`; requests get 502.
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Asleep => "asleep",
            State::Waking => "waking",
            State::Awake => "awake",
            State::Draining => "draining",
            State::Failed => "failed",
        }
    }

    const ALL: [State; 5] = [State::Asleep, State::Waking, State::Awake, State::Draining, State::Failed];
}

/// What a model holds while awake.
#[derive(Clone, Debug)]
pub struct Held {
    pub lease: u64,
    /// `node:index` of each granted GPU.
    pub gpus: Vec<String>,
    pub memory_per_gpu: u64,
}

#[derive(Debug)]
struct Inner {
    state: State,
    in_flight: usize,
    waiting: usize,
    last_used: Instant,
    held: Option<Held>,
    /// The last wake failure, and how many there were: a queued request that sees the count
    /// move gets the failure as its answer.
    failure: Option<String>,
    failures: u64,
}

/// Why a request was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// The queue is full (503, Retry-After).
    QueueFull,
    /// It waited its queue timeout (503, Retry-After).
    QueueTimeout,
    /// The model could not be woken, or has failed (502).
    WakeFailed(String),
    /// The router is shutting down (503).
    ShuttingDown,
}

/// A model's shared state: the handlers and its task both hold it.
#[derive(Debug)]
pub struct ModelHandle {
    pub model: Arc<Model>,
    inner: Mutex<Inner>,
    /// Bumped at every change a queued request may care about.
    version: watch::Sender<u64>,
    /// Wakes the model's task: a request queued, a request ended.
    poke: Notify,
    metrics: Arc<Metrics>,
    /// The server's pid, for `/running`.
    pid: Mutex<Option<u32>>,
    /// How long shutdown lets in-flight requests run before the server is stopped anyway.
    drain: Duration,
    /// The router is shutting down: no request is admitted or queued.
    closing: std::sync::atomic::AtomicBool,
}

/// A request being answered: the model stays awake until it is dropped.
#[derive(Debug)]
pub struct Ticket {
    handle: Arc<ModelHandle>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let h = &self.handle;
        let idle = {
            let mut i = h.lock();
            i.in_flight = i.in_flight.saturating_sub(1);
            i.last_used = Instant::now();
            i.in_flight == 0
        };
        h.metrics.in_flight.get_or_create(&Metrics::model(&h.model.name)).dec();
        if idle {
            h.poke.notify_one();
        }
    }
}

/// A place in the queue; given up when dropped (a client that hangs up while waiting).
struct Queued<'a> {
    handle: &'a ModelHandle,
    active: bool,
}

impl Queued<'_> {
    fn leave(&mut self, i: &mut Inner) {
        if self.active {
            self.active = false;
            i.waiting = i.waiting.saturating_sub(1);
            self.handle.metrics.queued.get_or_create(&Metrics::model(&self.handle.model.name)).dec();
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.active {
            let h = self.handle;
            let mut i = h.lock();
            self.leave(&mut i);
        }
    }
}

impl ModelHandle {
    pub fn new(model: Arc<Model>, metrics: Arc<Metrics>, drain: Duration) -> Arc<ModelHandle> {
        let h = Arc::new(ModelHandle {
            model,
            inner: Mutex::new(Inner {
                state: State::Asleep,
                in_flight: 0,
                waiting: 0,
                last_used: Instant::now(),
                held: None,
                failure: None,
                failures: 0,
            }),
            version: watch::channel(0).0,
            poke: Notify::new(),
            metrics,
            pid: Mutex::new(None),
            drain,
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        h.show_state(State::Asleep);
        h
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn show_state(&self, state: State) {
        for s in State::ALL {
            let labels = StateLabels { model: self.model.name.clone(), state: s.name().into() };
            self.metrics.state.get_or_create(&labels).set(i64::from(s == state));
        }
    }

    fn set_state(&self, i: &mut Inner, state: State) {
        if i.state != state {
            tracing::info!(model = %self.model.name, from = i.state.name(), to = state.name(), "model state");
            i.state = state;
            self.show_state(state);
        }
    }

    /// Admits a request: at once while the model is awake, else after it wakes (bounded by
    /// the model's queue size and queue timeout). The model stays awake while the ticket lives.
    pub async fn admit(self: &Arc<Self>) -> Result<Ticket, Refusal> {
        let started = Instant::now();
        let deadline = started + self.model.queue_timeout;
        let mut rx = self.version.subscribe();
        let mut queued = Queued { handle: self, active: false };
        let mut failures_seen = 0;
        loop {
            {
                let mut i = self.lock();
                rx.borrow_and_update();
                if self.closing.load(std::sync::atomic::Ordering::Acquire) {
                    return Err(Refusal::ShuttingDown);
                }
                if i.state == State::Awake {
                    queued.leave(&mut i);
                    i.in_flight += 1;
                    i.last_used = Instant::now();
                    let first = i.in_flight == 1;
                    drop(i);
                    let label = Metrics::model(&self.model.name);
                    self.metrics.in_flight.get_or_create(&label).inc();
                    self.metrics.queue_wait.get_or_create(&label).observe(started.elapsed().as_secs_f64());
                    if first {
                        self.poke.notify_one(); // busy again: tell the assigner
                    }
                    return Ok(Ticket { handle: Arc::clone(self) });
                }
                if i.state == State::Failed {
                    return Err(Refusal::WakeFailed(i.failure.clone().unwrap_or_default()));
                }
                if !queued.active {
                    if i.waiting >= self.model.queue_size {
                        return Err(Refusal::QueueFull);
                    }
                    i.waiting += 1;
                    queued.active = true;
                    failures_seen = i.failures;
                    self.metrics.queued.get_or_create(&Metrics::model(&self.model.name)).inc();
                    self.poke.notify_one();
                } else if i.failures != failures_seen {
                    return Err(Refusal::WakeFailed(i.failure.clone().unwrap_or_default()));
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Refusal::ShuttingDown),
                Err(_) => return Err(Refusal::QueueTimeout),
            }
        }
    }

    /// Refuses every request from now on (the router is shutting down); queued ones get 503.
    pub fn close(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::Release);
        self.changed();
    }

    /// A snapshot for `/running`.
    pub fn running(&self) -> serde_json::Value {
        let i = self.lock();
        let pid = *self.pid.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::json!({
            "model": self.model.name,
            "aliases": self.model.aliases,
            "engine": self.model.engine.name(),
            "state": i.state.name(),
            "url": self.model.url,
            "pid": pid,
            "lease": i.held.as_ref().map(|h| h.lease),
            "gpus": i.held.as_ref().map(|h| h.gpus.clone()).unwrap_or_default(),
            "memory_per_gpu": i.held.as_ref().map(|h| h.memory_per_gpu),
            "in_flight": i.in_flight,
            "queued": i.waiting,
            "idle_seconds": if i.in_flight == 0 { Some(i.last_used.elapsed().as_secs_f64()) } else { None },
            "last_error": i.failure,
        })
    }

    fn set_pid(&self, pid: Option<u32>) {
        *self.pid.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = pid;
    }

    /// Records a failed wake: the requests queued now get `why` (502).
    fn fail(&self, why: String) {
        tracing::warn!(model = %self.model.name, error = %why, "wake failed");
        self.metrics.wake_failures.get_or_create(&Metrics::model(&self.model.name)).inc();
        let mut i = self.lock();
        i.failure = Some(why);
        i.failures += 1;
        i.held = None;
        self.set_state(&mut i, State::Asleep);
        drop(i);
        self.changed();
    }
}

/// How the model's task reaches the assigner.
#[derive(Clone, Debug)]
pub struct AssignerLink {
    pub address: acb_proto::Address,
    pub token: Option<String>,
}

impl AssignerLink {
    async fn open(&self, job: &str) -> Result<Session, String> {
        let rpc: Rpc = acb_client::connection::connect(&self.address, self.token.as_deref(), Duration::from_secs(5))
            .await
            .map_err(|e| format!("cannot reach the assigner: {e}"))?;
        Session::open(rpc, job).await.map_err(|s| format!("the assigner refused a session: {}", s.message()))
    }
}

/// What ended an awake period.
enum Ended {
    /// Drained and put to sleep.
    Slept,
    /// The server died; the lease was given back.
    Died(String),
    /// Shutdown: drained (or the drain timed out) and stopped.
    Shutdown,
}

/// The model's task: wakes it when requests queue, holds its lease while it is awake, drains
/// and sleeps it. Ends at `shutdown`, stopping the server it started.
pub async fn run(handle: Arc<ModelHandle>, link: AssignerLink, http: HttpClient, mut shutdown: watch::Receiver<bool>) {
    let model = Arc::clone(&handle.model);
    let label = Metrics::model(&model.name);
    let mut backend = Backend::new(Arc::clone(&model), http);
    let mut session: Option<Session> = None;
    // After the first grant a vLLM server the router started lives on its GPUs: later wakes ask
    // for the same ones.
    let mut pinned: Vec<u32> = model.required_gpus.clone();
    let mut deaths_in_row = 0u32;
    if let Err(e) = backend.sleep_external().await {
        handle.fail(format!("at start: {e}"));
    }
    loop {
        if *shutdown.borrow() {
            break;
        }
        let want = handle.lock().waiting > 0;
        if !want {
            tokio::select! {
                () = handle.poke.notified() => {}
                _ = shutdown.changed(), if !*shutdown.borrow() => {}
                why = backend.died() => {
                    tracing::warn!(model = %model.name, error = %why, "the server died while asleep");
                    handle.set_pid(None);
                }
            }
            continue;
        }
        {
            let mut i = handle.lock();
            handle.set_state(&mut i, State::Waking);
        }
        let wake_started = Instant::now();
        let woke = tokio::select! {
            r = wake(&handle, &link, &mut session, &mut backend, &pinned) => r,
            _ = shutdown.changed(), if !*shutdown.borrow() => Err("the router is shutting down".into()),
        };
        let (lease, grant_ids) = match woke {
            Ok((lease, grant_ids, how)) => {
                handle.metrics.wake.get_or_create(&label).observe(wake_started.elapsed().as_secs_f64());
                if how == Woke::Cold {
                    handle.metrics.cold_starts.get_or_create(&label).inc();
                }
                handle.set_pid(backend.pid());
                (lease, grant_ids)
            }
            Err(why) => {
                release(&mut session, &handle, None).await;
                handle.fail(why);
                // A server that keeps failing is not woken again at once for each request.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if model.engine == Engine::Vllm && model.command.is_some() && pinned.is_empty() {
            pinned = grant_ids;
        }
        {
            let mut i = handle.lock();
            i.held.clone_from(&lease);
            // Its idle time counts from now, not from its last request before it slept.
            i.last_used = Instant::now();
            handle.set_state(&mut i, State::Awake);
        }
        handle.changed();
        let ended = awake(&handle, &mut session, &mut backend, lease.as_ref().map(|h| h.lease), &mut shutdown).await;
        handle.set_pid(backend.pid());
        let lease_id = lease.as_ref().map(|h| h.lease);
        match ended {
            Ended::Slept => {
                deaths_in_row = 0;
                handle.metrics.sleeps.get_or_create(&label).inc();
                release(&mut session, &handle, lease_id).await;
                let mut i = handle.lock();
                i.held = None;
                handle.set_state(&mut i, State::Asleep);
            }
            Ended::Died(why) => {
                deaths_in_row += 1;
                handle.metrics.restarts.get_or_create(&label).inc();
                release(&mut session, &handle, lease_id).await;
                let failed = deaths_in_row > model.max_restarts;
                let why = if failed {
                    format!(
                        "{why}; it died {deaths_in_row} {} in a row, more than max_restarts = {}: the model is \
                         marked failed",
                        if deaths_in_row == 1 { "time" } else { "times" },
                        model.max_restarts
                    )
                } else {
                    format!("{why}; restarting it ({deaths_in_row} of at most {})", model.max_restarts)
                };
                tracing::warn!(model = %model.name, error = %why, "the server died while awake");
                let mut i = handle.lock();
                i.held = None;
                i.failure = Some(why);
                handle.set_state(&mut i, if failed { State::Failed } else { State::Asleep });
                if failed {
                    i.failures += 1;
                }
                drop(i);
                if failed {
                    handle.changed();
                    break;
                }
            }
            Ended::Shutdown => {
                release(&mut session, &handle, lease_id).await;
                let mut i = handle.lock();
                i.held = None;
                handle.set_state(&mut i, State::Asleep);
                drop(i);
                break;
            }
        }
        handle.changed();
    }
    backend.stop().await;
    handle.set_pid(None);
    let failed = handle.lock().state == State::Failed;
    if failed {
        // Requests still get the failure until the router stops.
        let _ = shutdown.changed().await;
    }
    drop(session);
}

/// Takes a lease (not for the auto engine, whose server's libacb takes its own) and wakes the
/// server on it.
async fn wake(
    handle: &ModelHandle,
    link: &AssignerLink,
    session: &mut Option<Session>,
    backend: &mut Backend,
    pinned: &[u32],
) -> Result<(Option<Held>, Vec<u32>, Woke), String> {
    let model = &handle.model;
    let deadline = Instant::now() + model.wake_timeout;
    if model.engine == Engine::Auto {
        let how = backend.wake(&[], deadline).await?;
        return Ok((None, Vec::new(), how));
    }
    let request = proto::AllocateRequest {
        gpus: model.gpus,
        memory_per_gpu: model.memory,
        priority: model.priority,
        required_gpus: pinned.to_vec(),
        ..Default::default()
    };
    let mut tries = 0;
    let grant = loop {
        tries += 1;
        if session.is_none() {
            *session = Some(tokio::time::timeout_at(deadline, link.open(&model.job())).await.map_err(|_| {
                format!("no session with the assigner within the wake timeout ({} s)", model.wake_timeout.as_secs_f64())
            })??);
        }
        let Some(s) = session.as_mut() else { continue };
        match tokio::time::timeout_at(deadline, s.allocate(request.clone())).await {
            Err(_) => {
                return Err(format!(
                    "no GPU granted within the wake timeout ({} s); the request was withdrawn",
                    model.wake_timeout.as_secs_f64()
                ));
            }
            Ok(Ok(g)) => break g,
            // A session the assigner forgot (it restarted): one more try on a new session.
            Ok(Err(status))
                if tries == 1
                    && matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unauthenticated | tonic::Code::NotFound
                    ) =>
            {
                tracing::info!(model = %model.name, error = %status.message(), "opening a new session with the assigner");
                *session = None;
            }
            Ok(Err(status)) => return Err(format!("the assigner refused the lease: {}", status.message())),
        }
    };
    let held = Held {
        lease: grant.lease_id,
        gpus: grant.gpus.iter().map(|g| format!("{}:{}", g.node, g.index)).collect(),
        memory_per_gpu: grant.memory_per_gpu,
    };
    let indexes: Vec<u32> = grant.gpus.iter().map(|g| g.index).collect();
    let ids: Vec<u32> = grant.gpus.iter().map(|g| g.id).collect();
    tracing::info!(model = %model.name, lease = held.lease, gpus = ?held.gpus, "lease granted");
    {
        let mut i = handle.lock();
        i.held = Some(held.clone());
    }
    match backend.wake(&indexes, deadline).await {
        Ok(how) => Ok((Some(held), ids, how)),
        Err(e) => {
            // The lease goes back (release() in the caller, which clears `held`).
            Err(format!("the server did not wake: {e}"))
        }
    }
}

/// Gives the lease back (the one held, or the one a failed wake was granted).
async fn release(session: &mut Option<Session>, handle: &ModelHandle, lease: Option<u64>) {
    let lease = lease.or_else(|| handle.lock().held.as_ref().map(|h| h.lease));
    let (Some(s), Some(id)) = (session.as_mut(), lease) else { return };
    match tokio::time::timeout(Duration::from_secs(10), s.release(id)).await {
        Ok(Ok(())) => tracing::info!(model = %handle.model.name, lease = id, "lease released"),
        Ok(Err(status)) => {
            tracing::warn!(model = %handle.model.name, lease = id, error = %status.message(), "release failed; dropping the session");
            *session = None;
        }
        Err(_) => {
            tracing::warn!(model = %handle.model.name, lease = id, "release timed out; dropping the session");
            *session = None;
        }
    }
}

/// Serves while awake; returns once drained and asleep, the server died, or at shutdown.
async fn awake(
    handle: &ModelHandle,
    session: &mut Option<Session>,
    backend: &mut Backend,
    lease: Option<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let model = &handle.model;
    let label = Metrics::model(&model.name);
    let mut reported_idle: Option<bool> = None;
    let mut draining: Option<&'static str> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut session_lost = false;
    loop {
        let (in_flight, waiting, last_used) = {
            let i = handle.lock();
            (i.in_flight, i.waiting, i.last_used)
        };
        if let (Some(s), Some(id)) = (session.as_ref(), lease)
            && !session_lost
            && reported_idle != Some(in_flight == 0)
        {
            if s.report_phase(id, in_flight == 0).await.is_err() {
                session_lost = true;
            }
            reported_idle = Some(in_flight == 0);
        }
        if let Some(why) = draining {
            // No new admission: the state says draining until the server sleeps.
            let drained = {
                let mut i = handle.lock();
                if i.state == State::Awake {
                    handle.set_state(&mut i, State::Draining);
                    tracing::info!(model = %model.name, reason = why, in_flight = i.in_flight, "draining");
                }
                i.in_flight == 0 || drain_deadline.is_some_and(|d| Instant::now() >= d)
            };
            if drained {
                if *shutdown.borrow() {
                    if backend.pid().is_none()
                        && let Err(e) = backend.sleep().await
                    {
                        // A server the router did not start is left as it found it: asleep.
                        tracing::warn!(model = %model.name, error = %e, "sleep failed at shutdown");
                    }
                    backend.stop().await;
                    return Ended::Shutdown;
                }
                if let Err(e) = backend.sleep().await {
                    if backend.pid().is_some() {
                        // A server that cannot sleep cannot keep its GPU memory either: stop it
                        // so the lease goes back with the GPU free.
                        tracing::warn!(model = %model.name, error = %e, "sleep failed; stopping the server");
                        backend.stop().await;
                    } else {
                        tracing::error!(
                            model = %model.name, error = %e,
                            "sleep failed, and the router did not start this server so cannot stop it: the lease \
                             goes back, but its GPU memory may still be in use"
                        );
                    }
                }
                return Ended::Slept;
            }
        }
        // Idle: nothing in flight and nothing queued (a request still on its way in from the
        // queue counts as queued).
        let idle_at =
            (in_flight == 0 && waiting == 0 && model.engine != Engine::Auto).then(|| last_used + model.idle_ttl);
        let events = async {
            match session.as_mut() {
                Some(s) if !session_lost => s.events.message().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events => match ev {
                Ok(Some(proto::SessionEvent { event: Some(e) })) => {
                    use proto::session_event::Event as E;
                    match e {
                        E::YieldRequest(y) if Some(y.lease_id) == lease => {
                            handle.metrics.yields.get_or_create(&label).inc();
                            draining.get_or_insert("the assigner asked for the GPU");
                        }
                        E::Revoked(r) if Some(r.lease_id) == lease => {
                            tracing::warn!(model = %model.name, lease = r.lease_id, reason = %r.reason, "lease revoked");
                            draining.get_or_insert("the lease was revoked");
                        }
                        E::ShuttingDown(_) => {
                            draining.get_or_insert("the assigner is shutting down");
                        }
                        _ => {}
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    // The session is gone (the assigner restarted or went away): the lease is
                    // no longer ours to trust. Drain, sleep, and open a new session next time.
                    tracing::warn!(model = %model.name, "the assigner session ended; draining");
                    session_lost = true;
                    draining.get_or_insert("the assigner session ended");
                }
            },
            () = handle.poke.notified() => {}
            () = sleep_until_opt(idle_at) => {
                draining.get_or_insert("idle past its TTL");
            }
            why = backend.died() => {
                let mut i = handle.lock();
                handle.set_state(&mut i, State::Asleep);
                drop(i);
                handle.changed();
                return Ended::Died(why);
            }
            _ = shutdown.changed(), if !*shutdown.borrow() => {
                draining.get_or_insert("the router is shutting down");
                drain_deadline.get_or_insert(Instant::now() + handle.drain);
            }
        }
        if draining.is_some() {
            handle.changed();
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
