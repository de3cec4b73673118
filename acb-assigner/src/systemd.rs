//! systemd's two protocols, without libsystemd: readiness (`sd_notify`) and socket activation
//! (`sd_listen_fds`), both as systemd documents them.
//!
//! - [`notify`] sends `READY=1`, `STATUS=...` or `STOPPING=1` to `$NOTIFY_SOCKET` (a Unix
//!   datagram socket; a leading `@` means the abstract namespace), so that a `Type=notify`
//!   unit is started only once the daemon listens. Without the variable it does nothing.
//! - [`listen_fds`] takes the sockets systemd passed (`$LISTEN_FDS` descriptors from 3, when
//!   `$LISTEN_PID` is this process) and unsets the variables, so that children do not take them.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;
/// More passed sockets than this is a mistake, not a configuration.
const MAX_LISTEN_FDS: usize = 64;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service manager, if one listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&path, state) {
        tracing::warn!("cannot tell the service manager {state:?} through NOTIFY_SOCKET {path:?}: {e}");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        Some((b'/', _)) => {
            sock.send_to(state.as_bytes(), path)?;
        }
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "neither an absolute path nor @abstract")),
    }
    Ok(())
}

/// The listening sockets systemd passed to this process (socket activation); empty when none.
/// Each is close-on-exec. `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are removed from the
/// environment.
pub fn listen_fds() -> Result<Vec<OwnedFd>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    // SAFETY: the daemon calls this at start, before it starts threads that read the
    // environment (the runtime's workers do not).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let (Some(pid), Some(fds)) = (pid, fds) else { return Ok(Vec::new()) };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (the variables were inherited).
        return Ok(Vec::new());
    }
    let n: usize = fds.trim().parse().map_err(|_| format!("LISTEN_FDS={fds:?} is not a number"))?;
    if n > MAX_LISTEN_FDS {
        return Err(format!("LISTEN_FDS={n}: more than {MAX_LISTEN_FDS} sockets"));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let fd = SD_LISTEN_FDS_START + i as RawFd;
        // SAFETY: fcntl on a descriptor number only reads or sets its flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(format!("LISTEN_FDS={n}, but descriptor {fd} is not open"));
        }
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        if !is_listening_stream(fd) {
            return Err(format!("descriptor {fd} passed by systemd is not a listening stream socket (ListenStream=)"));
        }
        // SAFETY: systemd passed this descriptor to this process, which owns it from now on;
        // nothing else in the process refers to it.
        out.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(out)
}

fn is_listening_stream(fd: RawFd) -> bool {
    let get = |opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`.
        let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut len) };
        (r == 0).then_some(v)
    };
    get(libc::SO_TYPE) == Some(libc::SOCK_STREAM) && get(libc::SO_ACCEPTCONN) == Some(1)
}

/// A passed socket's family: whether it is a Unix socket (else TCP).
pub fn is_unix(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_storage is plain data; getsockname writes at most `len` bytes.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    let r = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len) };
    r == 0 && libc::c_int::from(addr.ss_family) == libc::AF_UNIX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("acb-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("acb-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert!(send(std::ffi::OsStr::new("relative"), "READY=1").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
