//! Accepting connections without running out of file descriptors or spinning.
//!
//! Under systemd's default soft limit of 1024 descriptors, 1,100 idle connections used to leave
//! the daemon at 70-95% CPU in tonic's accept loop (every accept failing with EMFILE at once)
//! while new clients timed out. So:
//! - at start the soft `RLIMIT_NOFILE` is raised to the hard limit ([`raise_fd_limit`]);
//! - the open connections of all listeners together are capped ([`Limits::max_connections`],
//!   kept below the descriptor limit with [`FD_HEADROOM`] to spare): past the cap a connection
//!   is accepted and closed at once;
//! - a connection that has not sent the 24 bytes of an HTTP/2 preface (or, under TLS, of its
//!   hello) within [`Limits::handshake_timeout`] is closed;
//! - accept errors (EMFILE, ENFILE, ENOBUFS...) back off from 5 ms doubling to 1 s instead of
//!   being retried at once;
//! - TCP connections get TCP keepalive (and the server HTTP/2 keepalive, set in `server`), so a
//!   client whose host vanished is noticed.
//!
//! [`incoming`] runs the accept loop on a task and hands tonic [`Tracked`] connections, which
//! keep the inner stream's [`Connected`] information (a Unix peer's credentials stay in
//! `request.extensions()` as `UdsConnectInfo`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::authority::AuthorityFix;

/// Descriptors kept free below the limit for everything that is not a connection (listeners,
/// the metrics endpoint, files, the runtime).
pub const FD_HEADROOM: u64 = 64;

/// The default cap on open connections (lowered to fit the descriptor limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The default time a new connection has to send its first bytes.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bytes of the HTTP/2 client preface: a connection that sent this many is past the
/// handshake timeout's reach.
const PREFACE_LEN: usize = 24;

/// First and longest wait after an accept error.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// TCP keepalive: first probe after 30 s idle, then every 10 s, 3 probes.
const TCP_KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(30), Duration::from_secs(10), 3);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most `/proc/sys/fs/nr_open`) and
/// returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!("cannot read the file descriptor limit: {}", io::Error::last_os_error());
        return 1024;
    }
    let before = lim.rlim_cur;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = if lim.rlim_max == libc::RLIM_INFINITY { nr_open } else { lim.rlim_max.min(nr_open) };
    if target > before {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!("file descriptor limit raised from {before} to {target} (the hard limit)");
            return target;
        }
        tracing::warn!("cannot raise the file descriptor limit from {before}: {}", io::Error::last_os_error());
    } else {
        tracing::info!("file descriptor limit {before} (the hard limit)");
    }
    before
}

/// What every listener of a daemon shares: the cap on open connections, and how long a new
/// one has to start talking.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at most, all listeners together.
    pub max_connections: usize,
    /// Time a new connection has to send its first [`PREFACE_LEN`] bytes.
    pub handshake_timeout: Duration,
    open: Arc<AtomicUsize>,
}

impl Limits {
    /// `max_connections`, lowered to the descriptor limit `fd_limit` less [`FD_HEADROOM`]
    /// (saying so), and `handshake_timeout`.
    pub fn new(max_connections: usize, handshake_timeout: Duration, fd_limit: u64) -> Limits {
        let fits = usize::try_from(fd_limit.saturating_sub(FD_HEADROOM).max(1)).unwrap_or(usize::MAX);
        let max = if max_connections > fits {
            tracing::warn!(
                "--max-connections {max_connections} lowered to {fits}: the file descriptor limit is {fd_limit}"
            );
            fits
        } else {
            max_connections
        };
        tracing::info!("at most {max} connections; {} ms to start talking", handshake_timeout.as_millis());
        Limits { max_connections: max, handshake_timeout, open: Arc::new(AtomicUsize::new(0)) }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A listener whose connections [`incoming`] can accept.
pub trait Accept: Send + Sync + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept_io(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Unix-socket connections go through [`AuthorityFix`], so that clients which put the socket
/// path in `:authority` (grpcio, grpc-java, grpcurl) are served.
impl Accept for UnixListener {
    type Io = AuthorityFix<UnixStream>;
    async fn accept_io(&self) -> io::Result<AuthorityFix<UnixStream>> {
        self.accept().await.map(|(s, _)| AuthorityFix::new(s))
    }
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept_io(&self) -> io::Result<TcpStream> {
        let (s, _) = self.accept().await?;
        let _ = s.set_nodelay(true);
        let (time, interval, retries) = TCP_KEEPALIVE;
        let ka = socket2::TcpKeepalive::new().with_time(time).with_interval(interval).with_retries(retries);
        if let Err(e) = socket2::SockRef::from(&s).set_tcp_keepalive(&ka) {
            tracing::debug!("cannot set TCP keepalive: {e}");
        }
        Ok(s)
    }
}

/// Accepts on `listener` on a task of its own, under `limits`; the stream ends (and the task
/// with the listener) when tonic drops it.
pub fn incoming<L: Accept>(listener: L, limits: Limits, name: String) -> ReceiverStream<io::Result<Tracked<L::Io>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = BACKOFF.0;
        let mut refused: u64 = 0;
        loop {
            let accepted = tokio::select! {
                r = listener.accept_io() => r,
                () = tx.closed() => return,
            };
            match accepted {
                Ok(io) => {
                    backoff = BACKOFF.0;
                    let Some(slot) = Slot::take(&limits) else {
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(
                                "{name}: {} connections open, the most allowed (--max-connections): \
                                 closed a new one ({refused} so far)",
                                limits.max_connections
                            );
                        }
                        drop(io);
                        continue;
                    };
                    if tx.send(Ok(Tracked::new(io, slot, limits.handshake_timeout))).await.is_err() {
                        return;
                    }
                }
                // The peer gave up before we accepted: nothing to wait for.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => {}
                Err(e) => {
                    tracing::warn!("{name}: accept failed: {e}; retrying in {} ms", backoff.as_millis());
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = tx.closed() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// One of the [`Limits::max_connections`] places, given back on drop.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(limits: &Limits) -> Option<Slot> {
        let max = limits.max_connections;
        limits.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot(limits.open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted connection: holds its place under the cap, and fails its reads once the
/// handshake timeout passes before the first [`PREFACE_LEN`] bytes came.
#[derive(Debug)]
pub struct Tracked<IO> {
    io: IO,
    _slot: Slot,
    handshake: Option<Pin<Box<Sleep>>>,
    seen: usize,
}

impl<IO> Tracked<IO> {
    fn new(io: IO, slot: Slot, timeout: Duration) -> Self {
        Tracked { io, _slot: slot, handshake: Some(Box::pin(tokio::time::sleep(timeout))), seen: 0 }
    }
}

impl<IO: Connected> Connected for Tracked<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.handshake.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.handshake = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection sent no handshake in time (--handshake-timeout)",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.handshake.is_some()
            && let Poll::Ready(Ok(())) = r
        {
            this.seen += buf.filled().len() - before;
            if this.seen >= PREFACE_LEN {
                this.handshake = None;
            }
        }
        r
    }
}

/// `impl AsyncWrite` for a wrapper whose writes all go to its field `io` (the wrappers here
/// change what is read, or when, never what is written).
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<IO> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
        }
    };
}
pub(crate) use write_through;

write_through!(Tracked);
