//! Automatic mode at the driver: the gate that `libacb_preload.so` (the CUDA interposer) calls
//! around every gated driver call (kernel launches, copies, memsets, graph launches, stream
//! waits, allocations), for any CUDA program, with no Python.
//!
//! While the process holds its GPU phase a gated call costs two atomic additions and one load
//! (`acb_auto_enter`, `acb_auto_exit`). After a release, the first gated call blocks until
//! the assigner grants a GPU and the process's memory is back on it (`Client::begin`), then
//! proceeds. libacb's own thread ends the phase after `ACB_IDLE_MS` (default 200) with no gated
//! call and none in flight: it synchronises the program's CUDA contexts first, then ends the
//! phase (lazy or eager release, as `ACB_EAGER_RELEASE` says).
//!
//! The protocol between a caller and the idle thread: a caller adds to `ENTERED`, then reads
//! `STATE`; the idle thread, having seen `ENTERED == DONE` and no change for the idle time,
//! stores `RELEASING`, then reads `ENTERED` again. Both sides use sequentially consistent
//! operations, so at least one sees the other: the caller either saw `ACTIVE` (and the idle
//! thread then sees its entry and goes back to `ACTIVE`), or sees `RELEASING` and waits for the
//! release to finish and the next grant.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::fail;
use crate::panic::ffi_panic_boundary;
use crate::status::acb_status;

/// Not started, or given up (no CUDA, no assigner): gated calls pass through, unbrokered.
const OFF: u32 = 1;
/// In a GPU phase: gated calls pass.
const ACTIVE: u32 = 3;
/// No GPU phase: the next gated call begins one.
const RELEASED: u32 = 0;
/// The idle thread is ending the phase: callers wait.
const RELEASING: u32 = 2;
/// Bit set in the states whose calls pass at once.
const PASS: u32 = 1;

static STATE: AtomicU32 = AtomicU32::new(OFF);
static ENTERED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
static PHASES: AtomicU64 = AtomicU64::new(0);
static RELEASES: AtomicU64 = AtomicU64::new(0);
static BLOCKED_NS: AtomicU64 = AtomicU64::new(0);

/// The process's automatic-mode client and settings.
struct Auto {
    /// Leaked: it lives as long as the process (the allocator's client points to it).
    client: &'static crate::client::acb_client,
    request: ::acb_client::Request,
    idle: Duration,
    lock: Mutex<Inner>,
    changed: Condvar,
}

/// What the lock guards: the program's CUDA contexts seen at phase starts (synchronised at
/// every release).
#[derive(Default)]
struct Inner {
    contexts: Vec<usize>,
}

static AUTO: OnceLock<Option<Auto>> = OnceLock::new();

fn env_u64(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().map(Some).map_err(|_| format!("{name}={v:?}: not a whole number"))
        }
        _ => Ok(None),
    }
}

/// Builds the client and request from the environment (what `agarun --mode auto` sets).
fn setup() -> Result<Auto, String> {
    let mut config = ::acb_client::Config::from_env().map_err(|e| e.to_string())?;
    // Device memory must be the GPU's (VMM) unless a backend was asked for; every phase after
    // the first asks for the first grant's GPUs (the program's contexts live there).
    if std::env::var("ACB_MEMORY_BACKEND").is_err() {
        config.memory_backend = ::acb_client::MemoryBackend::Cuda;
    }
    config.pin_gpus = true;
    let idle = Duration::from_millis(env_u64("ACB_IDLE_MS")?.unwrap_or(200));
    let gpus = env_u64("ACB_GPUS")?.unwrap_or(1);
    let gpus = u32::try_from(gpus).ok().filter(|g| *g >= 1).ok_or_else(|| format!("ACB_GPUS={gpus}: 1 or more"))?;
    let memory_per_gpu = match std::env::var("ACB_MEMORY") {
        Ok(m) if !m.trim().is_empty() => {
            Some(acb_core::units::parse_size(&m).map_err(|e| format!("ACB_MEMORY={m:?}: {e}"))?)
        }
        _ => None,
    };
    let client = ::acb_client::Client::new(config).map_err(|e| e.to_string())?;
    let client: &'static crate::client::acb_client = Box::leak(Box::new(crate::client::acb_client(client)));
    let request = ::acb_client::Request { gpus, memory_per_gpu, ..Default::default() };
    Ok(Auto { client, request, idle, lock: Mutex::new(Inner::default()), changed: Condvar::new() })
}

fn auto() -> Option<&'static Auto> {
    AUTO.get().and_then(Option::as_ref)
}

/// Starts automatic mode in this process (the interposer calls it at its first intercepted
/// call when `ACB_MODE=auto`): makes the process's client from the environment, with CUDA
/// device memory, sets it as the allocator's, and starts the idle thread. Once per process;
/// later calls return what the first did. Where it cannot start (no CUDA driver, a bad setting)
/// it says why once on stderr and gated calls run unbrokered.
#[unsafe(no_mangle)]
pub extern "C" fn acb_auto_start() -> acb_status {
    ffi_panic_boundary! {
        crate::log::init_from_env();
        let a = AUTO.get_or_init(|| match setup() {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("libacb: automatic mode is off, the program runs unbrokered: {e}");
                None
            }
        });
        let Some(a) = a.as_ref() else {
            return fail(acb_status::NotActive, "automatic mode could not start (said on stderr)");
        };
        static THREAD: std::sync::Once = std::sync::Once::new();
        THREAD.call_once(|| {
            // The allocator's client is the automatic mode's: the interposer's cuMemAlloc goes
            // to it. It lives as long as the process (never freed).
            crate::client::ALLOCATOR_CLIENT.store(std::ptr::from_ref(a.client).cast_mut(), SeqCst);
            let _ = STATE.compare_exchange(OFF, RELEASED, SeqCst, SeqCst);
            let spawned = std::thread::Builder::new().name("acb-auto-idle".into()).spawn(move || idle_loop(a));
            if let Err(e) = spawned {
                eprintln!("libacb: automatic mode cannot start its idle thread ({e}); the program runs unbrokered");
                STATE.store(OFF, SeqCst);
            }
        });
        acb_status::Ok
    }
}

/// Whether automatic mode is brokering this process's CUDA calls now (started, not given up).
#[unsafe(no_mangle)]
pub extern "C" fn acb_auto_active() -> bool {
    STATE.load(SeqCst) != OFF
}

/// Before a gated call: returns at once while the process holds its GPU phase (or automatic
/// mode is off); else blocks until a GPU is granted and the process's memory is back on it.
/// Pair every call with `acb_auto_exit`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_auto_enter() {
    loop {
        ENTERED.fetch_add(1, SeqCst);
        if STATE.load(SeqCst) & PASS != 0 {
            return;
        }
        if ::acb_client::internal::is_internal_thread() {
            // libacb's own swap copies, while it starts or ends the phase they belong to.
            return;
        }
        DONE.fetch_add(1, SeqCst);
        if std::panic::catch_unwind(wait_for_phase).is_err() {
            eprintln!("libacb: automatic mode failed inside; the program runs unbrokered from now on");
            STATE.store(OFF, SeqCst);
        }
    }
}

/// After a gated call.
#[unsafe(no_mangle)]
pub extern "C" fn acb_auto_exit() {
    DONE.fetch_add(1, SeqCst);
}

/// The slow path: begins a phase, or waits for a release in progress to end and then begins.
#[cold]
fn wait_for_phase() {
    let Some(a) = auto() else {
        STATE.store(OFF, SeqCst);
        return;
    };
    let started = Instant::now();
    let mut inner = a.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        match STATE.load(SeqCst) {
            s if s & PASS != 0 => break,
            RELEASING => inner = a.changed.wait(inner).unwrap_or_else(std::sync::PoisonError::into_inner),
            _ => {
                if let Some(ctx) = ::acb_client::internal::current_cuda_context()
                    && !inner.contexts.contains(&ctx)
                {
                    inner.contexts.push(ctx);
                }
                match a.client.0.begin(&a.request) {
                    Ok(_lease) => {
                        PHASES.fetch_add(1, SeqCst);
                        STATE.store(ACTIVE, SeqCst);
                    }
                    Err(e) => {
                        // Its memory may be in host memory (swapped out at the last release):
                        // it comes back onto its GPU, unbrokered, before the program goes on.
                        let taken = ::acb_client::internal::as_internal(|| a.client.0.take_back_memory_unbrokered());
                        let back = match taken {
                            Ok(0) => String::new(),
                            Ok(n) => format!("; its {n} bytes of device memory are back on its GPU"),
                            Err(e) => format!("; its device memory could not come back ({e})"),
                        };
                        eprintln!(
                            "libacb: automatic mode cannot get a GPU ({e}); the program runs unbrokered from now on{back}"
                        );
                        STATE.store(OFF, SeqCst);
                    }
                }
                a.changed.notify_all();
            }
        }
    }
    drop(inner);
    BLOCKED_NS.fetch_add(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX), SeqCst);
}

/// The interposer says a context was made (`cuCtxCreate`, `cuDevicePrimaryCtxRetain`): its work
/// is synchronised before every release, whichever thread queued it.
#[unsafe(no_mangle)]
pub extern "C" fn acb_auto_note_context(ctx: *mut std::ffi::c_void) {
    // libacb's own threads make contexts while a caller holds the lock waiting for them (a
    // swap-in): theirs are not the program's, and waiting for the lock would deadlock.
    if ctx.is_null() || ::acb_client::internal::is_internal_thread() {
        return;
    }
    if let Some(a) = auto() {
        let mut inner = a.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !inner.contexts.contains(&(ctx as usize)) {
            inner.contexts.push(ctx as usize);
        }
    }
}

/// The interposer says a context is about to be destroyed (`cuCtxDestroy`): no release touches
/// it again.
#[unsafe(no_mangle)]
pub extern "C" fn acb_auto_forget_context(ctx: *mut std::ffi::c_void) {
    if ::acb_client::internal::is_internal_thread() {
        return;
    }
    if let Some(a) = auto() {
        let mut inner = a.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.contexts.retain(|c| *c != ctx as usize);
    }
}

/// libacb's idle thread: ends the phase after the idle time with no gated call.
fn idle_loop(a: &'static Auto) {
    let tick = (a.idle / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let mut seen = u64::MAX;
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(tick);
        let state = STATE.load(SeqCst);
        if state == OFF {
            return;
        }
        if state != ACTIVE {
            seen = u64::MAX;
            continue;
        }
        let entered = ENTERED.load(SeqCst);
        let done = DONE.load(SeqCst);
        if entered != done || entered != seen {
            seen = if entered == done { entered } else { u64::MAX };
            quiet_since = Instant::now();
            continue;
        }
        if quiet_since.elapsed() < a.idle {
            continue;
        }
        release(a, entered);
        seen = u64::MAX;
    }
}

/// Ends the phase unless a gated call slipped in after `entered` was read.
fn release(a: &Auto, entered: u64) -> bool {
    let inner = a.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if STATE.compare_exchange(ACTIVE, RELEASING, SeqCst, SeqCst).is_err() {
        return false;
    }
    if ENTERED.load(SeqCst) != entered {
        STATE.store(ACTIVE, SeqCst);
        a.changed.notify_all();
        return false;
    }
    // Nothing may still run on the GPU when its memory moves. A context that cannot be made
    // current is gone (destroyed behind the interposer's back): forgotten.
    let mut inner = inner;
    inner.contexts.retain(|ctx| match ::acb_client::internal::synchronize_cuda_context(*ctx) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("automatic mode: before a release: {e}; the context is forgotten");
            false
        }
    });
    if let Err(e) = a.client.0.end() {
        tracing::warn!("automatic mode: ending the phase: {e}");
    }
    RELEASES.fetch_add(1, SeqCst);
    STATE.store(RELEASED, SeqCst);
    a.changed.notify_all();
    true
}

/// Ends the phase now if nothing is in flight (for tests, and programs that know they are done
/// with the GPU for a while): `ACB_STATUS_OK` if it ended, `ACB_STATUS_NOT_ACTIVE` if there was
/// no phase or a call was in flight.
#[unsafe(no_mangle)]
pub extern "C" fn acb_auto_release() -> acb_status {
    ffi_panic_boundary! {
        let Some(a) = auto() else { return fail(acb_status::NotActive, "automatic mode is not started") };
        let entered = ENTERED.load(SeqCst);
        if entered != DONE.load(SeqCst) {
            return fail(acb_status::NotActive, "a gated call is in flight");
        }
        if release(a, entered) { acb_status::Ok } else { fail(acb_status::NotActive, "no GPU phase to end") }
    }
}

/// Automatic mode's counters.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct acb_auto_stats {
    /// GPU phases begun by a gated call.
    pub phases: u64,
    /// Phases ended by the idle thread (or `acb_auto_release`).
    pub releases: u64,
    /// Gated calls that have entered the gate.
    pub gated_calls: u64,
    /// Time callers spent blocked waiting for a grant and swap-in, in nanoseconds.
    pub blocked_ns: u64,
    /// Whether automatic mode is on (1) or off (0).
    pub active: u32,
}

/// Writes automatic mode's counters into `*out`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_auto_get_stats(out: *mut acb_auto_stats) -> acb_status {
    ffi_panic_boundary! {
        if out.is_null() {
            return fail(acb_status::InvalidArgument, "out is NULL");
        }
        let s = acb_auto_stats {
            phases: PHASES.load(SeqCst),
            releases: RELEASES.load(SeqCst),
            gated_calls: ENTERED.load(SeqCst),
            blocked_ns: BLOCKED_NS.load(SeqCst),
            active: u32::from(acb_auto_active()),
        };
        // SAFETY: checked non-NULL; the caller's contract is a writable acb_auto_stats.
        unsafe { *out = s };
        acb_status::Ok
    }
}
