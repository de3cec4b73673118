//! [`Client`]: one job (or one rank of a job) as a client of the assigner, in Rust: GPU phases
//! (`begin`/`end`, the white paper's manual mode) and swappable device memory.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use acb_core::{GpuDemand, ReleaseMode};
use acb_proto::v1 as proto;
use tokio::sync::mpsc;

use crate::config::{Config, MemoryBackend};
use crate::driver::{Cmd, Driver, SharedKept, lock};
use crate::error::Error;
use crate::lease::{Lease, Request};
use crate::memory::cuda::CudaBackend;
use crate::memory::host::HostBackend;
use crate::memory::{Backend, Memory, MemoryStats, SharedMemory};
use crate::profile::{Mark, Profile};

/// Where the caller's GPU phase is ([`Client::phase`] values).
const IDLE: u8 = 0;
const BEGINNING: u8 = 1;
const ACTIVE: u8 = 2;

/// A client of the assigner. Any thread may call its methods; GPU phases are one at a time per
/// client. It connects at its first GPU phase, not when it is made, so it works when the
/// assigner starts later. Dropping it releases a lease it holds and closes its session.
///
/// Inside, a background tokio runtime of one thread runs the [`Driver`]; the methods send it
/// commands and wait for replies. Phases on a GPU kept from the last phase start and end on the
/// caller's thread without waking the driver (see `driver::Kept`).
pub struct Client {
    tx: mpsc::UnboundedSender<Cmd>,
    runtime: Option<tokio::runtime::Runtime>,
    config: Config,
    kept: SharedKept,
    /// Where the caller's GPU phase is (IDLE, BEGINNING, ACTIVE). `end` checks it here and posts
    /// the end without waiting for the driver: one thread round trip less per phase. Commands are
    /// handled in order, so a begin after it still sees the end first.
    phase: AtomicU8,
    /// Numbers begins, so that the driver can tell a late cancel from a current one.
    begins: std::sync::atomic::AtomicU64,
    /// Phase boundaries are recorded here when `ACB_PROFILE` is set (`agarun --profile`).
    profile: Option<Profile>,
    /// The job's swappable device memory (shared with the driver, which swaps it).
    memory: SharedMemory,
    /// The process that made the client. In a forked child (another pid) every call fails with
    /// [`Error::Forked`] and dropping leaks: the child has none of the runtime's threads, and its
    /// copies of the connection's descriptors and of the epoll set are shared with the parent.
    pid: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("job", &self.config.job).finish_non_exhaustive()
    }
}

fn stopped() -> Error {
    Error::Internal("the client's driver thread has stopped".into())
}

impl Client {
    /// Makes a client. Fails with [`Error::NoCuda`] for the CUDA memory backend where no CUDA
    /// driver or GPU is found. When `ACB_PROFILE` names a file, the client appends a JSON line
    /// to it at each phase boundary (`agarun --profile`).
    pub fn new(config: Config) -> Result<Client, Error> {
        let backend: Box<dyn Backend> = match config.memory_backend {
            MemoryBackend::Host => Box::new(HostBackend::new()),
            MemoryBackend::Cuda => Box::new(CudaBackend::new()?),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("acb-client")
            // Its threads write into the assigner's socket, which may be closed under them.
            .on_thread_start(|| {
                crate::sigpipe::block_in_this_thread();
                crate::internal::mark_this_thread();
            })
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the client's runtime: {e}")))?;
        let (tx, cmds) = mpsc::unbounded_channel();
        let (itx, irx) = mpsc::unbounded_channel();
        let kept = SharedKept::default();
        let memory = SharedMemory::new(Memory::new(backend));
        let start = runtime.block_on(async { tokio::time::Instant::now() });
        let driver = Driver::new(config.clone(), kept.clone(), memory.clone(), itx, start);
        runtime.spawn(crate::socket_owner::with_assigner_uid(config.assigner_uid, driver.run(cmds, irx)));
        let profile = Profile::from_env(&config.job);
        let client = Client {
            tx,
            runtime: Some(runtime),
            config,
            kept,
            phase: AtomicU8::new(IDLE),
            begins: Default::default(),
            profile,
            memory,
            pid: std::process::id(),
        };
        client.mark(Mark::Start);
        Ok(client)
    }

    /// [`Error::Forked`] when called in another process than the one that made the client (a
    /// fork's child): what every call checks first.
    pub fn ensure_same_process(&self) -> Result<(), Error> {
        let here = std::process::id();
        if here == self.pid {
            return Ok(());
        }
        Err(Error::Forked(format!(
            "this client was made by process {}, and this is process {here}, a fork of it: a forked child \
             cannot use its parent's client; make a new one in the child (freeing the inherited one only \
             forgets it)",
            self.pid
        )))
    }

    /// The settings the client was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn mark(&self, mark: Mark) {
        if let Some(p) = &self.profile {
            p.mark(mark);
        }
    }

    /// A granted lease goes out to the caller: the phase is active.
    fn hand_out(&self, lease: Lease) -> Lease {
        self.mark(Mark::Got { gpus: lease.devices.len(), memory: lease.memory_per_gpu });
        self.phase.store(ACTIVE, Ordering::Release);
        lease
    }

    /// Starts a GPU phase: blocks until the GPUs `request` asks for are granted (or its timeout
    /// passes) and the job's memory is back on them. Under lazy release a GPU kept from the
    /// previous phase is reused at once.
    ///
    /// Errors: [`Error::AlreadyActive`] (a phase is active or being requested),
    /// [`Error::Unavailable`] (no assigner after the configured retries), [`Error::Timeout`]
    /// (request withdrawn), [`Error::Rejected`] (the assigner refused the request),
    /// [`Error::OutOfMemory`] (the job's memory could not come back).
    pub fn begin(&self, request: &Request) -> Result<Lease, Error> {
        self.ensure_same_process()?;
        if request.gpus == 0 {
            return Err(Error::InvalidArgument("a request asks for at least one GPU".into()));
        }
        if self.phase.compare_exchange(IDLE, BEGINNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(Error::AlreadyActive("on_device_begin called twice without on_device_end".into()));
        }
        self.mark(Mark::Ask);
        let seq = self.begins.fetch_add(1, Ordering::Relaxed);
        let demand = GpuDemand {
            gpus: request.gpus,
            memory_per_gpu: request.memory_per_gpu,
            priority: request.priority,
            affinity: Default::default(),
        };
        // Fast path: the GPU kept from the last phase fits; take it here (see `driver::Kept`).
        {
            let mut k = lock(&self.kept);
            // A loss said for an earlier phase whose end came first is not this phase's.
            k.lost_mid_phase = None;
            if k.lease.as_ref().is_some_and(|(d, _)| *d == demand)
                && let Some((d, lease)) = k.lease.take()
            {
                k.claimed = Some((d, seq));
                drop(k);
                return Ok(self.hand_out(lease));
            }
        }
        let (tx, rx) = std_mpsc::channel();
        if self.tx.send(Cmd::Begin { seq, demand, reply: tx }).is_err() {
            self.phase.store(IDLE, Ordering::Release);
            return Err(stopped());
        }
        let result = match request.timeout {
            Some(t) => match rx.recv_timeout(t) {
                Ok(res) => res,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.tx.send(Cmd::Cancel { seq });
                    self.phase.store(IDLE, Ordering::Release);
                    return Err(Error::Timeout(format!(
                        "no GPU granted within {} ms; request withdrawn",
                        t.as_millis()
                    )));
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(stopped()),
            },
            None => rx.recv().unwrap_or_else(|_| Err(stopped())),
        };
        match result {
            Ok(lease) => Ok(self.hand_out(lease)),
            Err(e) => {
                self.phase.store(IDLE, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Ends the GPU phase. Under lazy release the GPU is kept until another job waits for it
    /// (or the idle timeout passes); under eager release it goes back now.
    pub fn end(&self) -> Result<(), Error> {
        self.ensure_same_process()?;
        if self.phase.compare_exchange(ACTIVE, IDLE, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(Error::NotActive("on_device_end called without on_device_begin".into()));
        }
        if self.profile.is_some() {
            // What the job keeps on the GPU between phases: what a swap-out would move now.
            let stats = self.memory_stats();
            self.mark(Mark::End { swappable: stats.resident_bytes.saturating_add(stats.swapped_bytes) });
        }
        // Under eager release the GPU goes back now, not at the driver's next tick; a pending
        // yield is answered now too.
        let eager = self.config.release == ReleaseMode::Eager;
        let wake = {
            let mut k = lock(&self.kept);
            k.end_pending = true;
            k.yield_pending || eager
        };
        if wake && self.tx.send(Cmd::Wake).is_err() {
            return Err(stopped());
        }
        // Taken at every end, so that one phase's loss is never said at a later one's.
        let lost = lock(&self.kept).lost_mid_phase.take();
        if let Some(lease) = lost {
            return Err(Error::LeaseRevoked(format!(
                "lease#{lease} was not kept through the phase: the assigner restarted and did not resume this \
                 client's session (its grace period ended, or it saved no leases), so another job may have used \
                 the GPU during the phase; the phase has ended and its memory is kept, but its results may be wrong"
            )));
        }
        Ok(())
    }

    /// Brings the job's swapped-out memory back onto the GPU it was last on, with no lease, for
    /// a process that goes on unbrokered (its assigner is gone): automatic mode's way out when
    /// no GPU can be granted. The GPU is then shared with whatever the assigner grants it to.
    pub fn take_back_memory_unbrokered(&self) -> Result<u64, Error> {
        self.ensure_same_process()?;
        self.memory.lock().swap_in_unbrokered().map_err(|e| Error::OutOfMemory(e.to_string()))
    }

    /// Whether a GPU phase is active (between a `begin` that succeeded and its `end`).
    pub fn in_phase(&self) -> bool {
        self.phase.load(Ordering::Acquire) == ACTIVE
    }

    /// Allocates `size` bytes of swappable device memory on the GPU of the active phase. The
    /// address stays valid until [`Client::free`], across swaps; while the client holds no GPU
    /// the bytes live in host memory, and touching them then is the caller's error.
    ///
    /// Errors: [`Error::NotActive`] outside a GPU phase, [`Error::OutOfMemory`] past the lease's
    /// memory per GPU (the fence), [`Error::InvalidArgument`] for 0 bytes.
    pub fn alloc(&self, size: usize) -> Result<std::ptr::NonNull<u8>, Error> {
        self.ensure_same_process()?;
        if !self.in_phase() {
            return Err(Error::from(crate::memory::MemError::NoLease));
        }
        let addr = self.memory.lock().alloc(size)?;
        std::ptr::NonNull::new(addr as *mut u8).ok_or_else(|| Error::Internal("the backend gave address 0".into()))
    }

    /// Frees memory from [`Client::alloc`], resident or swapped out. A pointer the client did
    /// not hand out (or a second free) is [`Error::InvalidArgument`].
    pub fn free(&self, ptr: *mut u8) -> Result<(), Error> {
        self.ensure_same_process()?;
        Ok(self.memory.lock().free(ptr as usize)?)
    }

    /// Marks an allocation read-only (weights): once copied to host memory its copy is kept,
    /// and later swap-outs skip it. Mark it writable (`read_only` false) before writing it.
    pub fn set_read_only(&self, ptr: *mut u8, read_only: bool) -> Result<(), Error> {
        self.ensure_same_process()?;
        Ok(self.memory.lock().set_read_only(ptr as usize, read_only)?)
    }

    /// The client's memory figures. (In a forked child, check [`Client::ensure_same_process`]
    /// first: the lock may have been held by the parent's driver thread at the fork.)
    pub fn memory_stats(&self) -> MemoryStats {
        self.memory.lock().stats()
    }

    /// What the assigner offers (its `status --json`: scheduler, GPUs with holders, queue,
    /// clients), over one connection attempt within the connect timeout.
    pub fn status_json(&self) -> Result<String, Error> {
        self.ensure_same_process()?;
        let rt = self.runtime.as_ref().ok_or_else(|| Error::Internal("the client is closed".into()))?;
        let cfg = &self.config;
        // The connection is made, and its HTTP/2 preface written, on this (the caller's) thread.
        let _sigpipe = crate::sigpipe::Suppressed::new();
        rt.block_on(crate::socket_owner::with_assigner_uid(cfg.assigner_uid, async {
            let mut rpc =
                crate::connection::connect(&cfg.assigner, cfg.auth_token.as_deref(), cfg.connect_timeout).await?;
            let status = rpc
                .status(proto::StatusRequest::default())
                .await
                .map_err(|e| Error::Unavailable(e.message().to_string()))?;
            Ok(crate::status::status_json(&status.into_inner()))
        }))
    }
}

impl Drop for Client {
    /// Releases a lease the client holds, closes its session and stops its thread.
    fn drop(&mut self) {
        if self.ensure_same_process().is_err() {
            // A fork's child: nothing here is its own. Shutting the runtime down would wait for
            // threads the child does not have and deregister the parent's sockets from the
            // epoll set both share; dropping the sender could wake the parent's driver. Leak.
            std::mem::forget(self.runtime.take());
            let (closed, _) = mpsc::unbounded_channel();
            std::mem::forget(std::mem::replace(&mut self.tx, closed));
            std::mem::forget(self.profile.take());
            return;
        }
        // The shutdown below drops the connection's tasks from here; none is known to write on
        // the way out, but the host must not die of SIGPIPE if one did.
        let _sigpipe = crate::sigpipe::Suppressed::new();
        self.mark(Mark::Stop);
        let (tx, rx) = std_mpsc::channel();
        if self.tx.send(Cmd::Close { reply: tx }).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(3));
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
