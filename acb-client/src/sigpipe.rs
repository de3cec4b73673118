//! SIGPIPE never reaches the host process from the client's sockets.
//!
//! Writing into a Unix socket whose peer has gone (an assigner that stopped, its HTTP/2 GOAWAY
//! or a ping on the way) raises SIGPIPE, whose default action ends the process. Rust programs
//! ignore it (std sets `SIG_IGN` before `main`), but C and C++ hosts of libacb do not, and a
//! library must not change a process-wide disposition behind its host's back. So, per thread:
//!
//! - the client's own runtime threads block SIGPIPE for their whole life ([`block_in_this_thread`],
//!   from the runtime's `on_thread_start`): a write into a closed socket fails with `EPIPE`, which
//!   the connection handles, and the signal stays pending on that thread, never delivered;
//! - on the caller's thread, the calls that drive a socket there (a `block_on`: tonic's connect
//!   writes the HTTP/2 preface on the thread that awaits it) run inside a [`Suppressed`] scope,
//!   which blocks SIGPIPE and, before restoring the caller's mask, takes back a SIGPIPE raised
//!   meanwhile (`sigtimedwait` with a zero timeout), as OpenSSL and libcurl users do.
//!
//! (TCP is not affected: std sends with `MSG_NOSIGNAL`. tokio gives no way to pass it for Unix
//! sockets.)

/// A signal set holding only SIGPIPE.
fn sigpipe_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset with a valid signal.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        set
    }
}

/// Whether SIGPIPE is pending for this thread (or the process).
fn sigpipe_pending() -> bool {
    // SAFETY: sigpending fills the set it is given.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pending) == 0 && libc::sigismember(&pending, libc::SIGPIPE) == 1
    }
}

/// Blocks SIGPIPE in the calling thread, for good: for threads the client creates.
pub(crate) fn block_in_this_thread() {
    let set = sigpipe_set();
    // SAFETY: a valid set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// While alive, SIGPIPE is blocked in this thread; dropping it consumes a SIGPIPE raised in the
/// meantime and restores the thread's previous mask. Not `Send`: it must end on its thread.
pub(crate) struct Suppressed {
    old: libc::sigset_t,
    /// SIGPIPE was already pending before: one pending after may be the host's, so it is left.
    was_pending: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Suppressed {
    pub(crate) fn new() -> Suppressed {
        let was_pending = sigpipe_pending();
        let set = sigpipe_set();
        // SAFETY: valid sets; `old` receives the previous mask.
        let old = unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            old
        };
        Suppressed { old, was_pending, _not_send: std::marker::PhantomData }
    }
}

impl Drop for Suppressed {
    fn drop(&mut self) {
        // Pending now and not before: raised by this scope's writes (even where the host blocks
        // SIGPIPE itself, it did not ask for this one).
        if !self.was_pending && sigpipe_pending() {
            let set = sigpipe_set();
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // A bounded loop: sigtimedwait fails with EINTR only when another signal's handler
            // ran, and with EAGAIN when nothing is pending.
            for _ in 0..8 {
                // SAFETY: valid set and timeout; the siginfo is not wanted.
                let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
                if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    break;
                }
            }
        }
        // SAFETY: restores the mask saved in `new`, on the same thread (the type is not Send).
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGPIPE raised inside the scope does not survive it, and the thread's mask is back.
    /// (The test binary ignores SIGPIPE, as every Rust program does; a blocked signal is made
    /// pending even so, which is what the scope must take back.)
    #[test]
    fn a_sigpipe_raised_in_scope_is_taken_back() {
        std::thread::spawn(|| {
            let (a, b) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
            drop(b);
            {
                let _s = Suppressed::new();
                // SAFETY: a valid fd and buffer; plain write(2), which raises SIGPIPE.
                let n = unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(&a), b"x".as_ptr().cast(), 1) };
                assert_eq!(n, -1);
                assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EPIPE));
                assert!(sigpipe_pending(), "blocked, the SIGPIPE is pending inside the scope");
            }
            assert!(!sigpipe_pending(), "taken back when the scope ended");
            // SAFETY: reads this thread's mask.
            let blocked = unsafe {
                let mut cur: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
                libc::sigismember(&cur, libc::SIGPIPE) == 1
            };
            assert!(!blocked, "the mask is restored");
        })
        .join()
        .expect("the test thread");
    }

    /// A host that blocks SIGPIPE itself keeps it blocked, and gets no SIGPIPE it did not cause.
    #[test]
    fn a_host_that_blocks_sigpipe_keeps_its_mask_and_gets_no_stray_signal() {
        std::thread::spawn(|| {
            block_in_this_thread();
            let (a, b) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
            drop(b);
            {
                let _s = Suppressed::new();
                // SAFETY: as above.
                let n = unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(&a), b"x".as_ptr().cast(), 1) };
                assert_eq!(n, -1);
            }
            assert!(!sigpipe_pending(), "the scope's SIGPIPE was taken back");
            // SAFETY: reads this thread's mask.
            let blocked = unsafe {
                let mut cur: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
                libc::sigismember(&cur, libc::SIGPIPE) == 1
            };
            assert!(blocked, "still blocked, as the host had it");
        })
        .join()
        .expect("the test thread");
    }
}
