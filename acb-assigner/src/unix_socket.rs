//! The daemon's Unix socket, made so that no other local user can take its place.
//!
//! A second user who creates the socket's directory first (mode 0777), or makes it a symlink to
//! a directory of theirs, could move the daemon's socket away and listen in its place, reading
//! the clients' bearer tokens. So the daemon creates the directory if it is missing (mode 0755,
//! owned by itself) and refuses one that is a symlink, that it does not own, or that group or
//! others can write. The socket gets its mode with no window in which it has another: it is
//! bound in a private (0700) directory inside the checked one, given [`SOCKET_MODE`], then
//! renamed into place.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::Error;

/// Mode of the Unix socket: owner and group may connect. Put the users of the GPUs in the
/// daemon's group.
pub const SOCKET_MODE: u32 = 0o660;

/// Mode of a socket directory the daemon creates: anyone may reach the socket, only the daemon
/// may change what is in it.
pub const DIR_MODE: u32 = 0o755;

/// Binds a Unix socket at `path` with [`SOCKET_MODE`] in a directory only this process's user
/// can change (created if missing), replacing a stale socket file but never a live socket or a
/// file that is not a socket.
pub fn bind_unix(path: &Path) -> Result<UnixListener, Error> {
    let failed = |what: String| move |source| Error::Listen { what, source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err(Error::SocketDir(format!("{}: a socket path must end in a file name", path.display())));
    };
    ensure_dir(&dir)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::SocketInUse(format!("{} exists and is not a socket; not touching it", path.display())));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::SocketInUse(format!("another process is listening on {}", path.display())));
        }
        std::fs::remove_file(path).map_err(failed(format!("cannot remove stale socket {}", path.display())))?;
    }
    let private =
        private_dir(&dir).map_err(failed(format!("cannot create a private directory in {}", dir.display())))?;
    let result = bind_in(&private, name.as_ref(), path);
    let _ = std::fs::remove_dir(&private);
    result
}

/// Binds at `private/name`, sets the mode, renames to `path`.
fn bind_in(private: &Path, name: &Path, path: &Path) -> Result<UnixListener, Error> {
    let failed = |what: String| move |source| Error::Listen { what, source };
    let staged = private.join(name);
    let listener = std::os::unix::net::UnixListener::bind(&staged)
        .map_err(failed(format!("cannot listen on {}", path.display())))?;
    let placed = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(failed(format!("cannot set the mode of {}", path.display())))
        .and_then(|()| {
            std::fs::rename(&staged, path).map_err(failed(format!("cannot put the socket at {}", path.display())))
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    listener.set_nonblocking(true).map_err(failed(format!("cannot listen on {}", path.display())))?;
    UnixListener::from_std(listener).map_err(failed(format!("cannot listen on {}", path.display())))
}

/// A fresh directory only this user can enter, inside `dir`.
fn private_dir(dir: &Path) -> io::Result<PathBuf> {
    for attempt in 0..16u32 {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
        let p = dir.join(format!(".acb-bind-{}-{:016x}", std::process::id(), u64::from_ne_bytes(nonce)));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 15 => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free name"))
}

/// Creates `dir` if missing (its parents as `create_dir_all` would, itself with [`DIR_MODE`]),
/// then checks it with [`check_dir`].
pub fn ensure_dir(dir: &Path) -> Result<(), Error> {
    if std::fs::symlink_metadata(dir).is_err() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| Error::Listen { what: format!("cannot create {}", parent.display()), source })?;
        }
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
            // The umask may have taken bits away: clients must reach the socket.
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(|source| {
                Error::Listen { what: format!("cannot set the mode of {}", dir.display()), source }
            })?,
            // Someone else may have made it meanwhile: check_dir judges whatever is there.
            Err(_) if std::fs::symlink_metadata(dir).is_ok() => {}
            Err(source) => return Err(Error::Listen { what: format!("cannot create {}", dir.display()), source }),
        }
    }
    check_dir(dir)
}

/// Refuses a socket directory another local user could use to take the socket's place: a
/// symlink (not followed), not a directory, not owned by this process's user, or writable by
/// group or others.
pub fn check_dir(dir: &Path) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|source| Error::Listen { what: format!("cannot examine {}", dir.display()), source })?;
    let refuse = |why: String| {
        Err(Error::SocketDir(format!(
            "refusing the socket directory {}: {why}; another local user could take the socket's place \
             (use a directory only this user can write, e.g. /run/acb, or remove it and let the daemon create it)",
            dir.display()
        )))
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symlink".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return refuse(format!("it is owned by uid {}, not by this daemon's uid {me}", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(format!("group or others can write it (mode {mode:04o})"));
    }
    if let Some(why) = unsafe_ancestor(dir, me) {
        return refuse(why);
    }
    Ok(())
}

/// Why a directory above `dir` would let another user move `dir` away (and put their own in
/// its place), if one would: every directory above it, as the path is written and as it
/// resolves, must be root's or this user's, and not writable by group or others unless sticky
/// (like /tmp, where only an entry's owner may move it). Symlinks on the way must be root's or
/// this user's too.
fn unsafe_ancestor(dir: &Path, me: u32) -> Option<String> {
    let trusted = |uid: u32| uid == 0 || uid == me;
    let dir = std::path::absolute(dir).ok()?;
    for a in dir.ancestors().skip(1) {
        let meta = std::fs::symlink_metadata(a).ok()?;
        if meta.file_type().is_symlink() && !trusted(meta.uid()) {
            return Some(format!("{} above it is a symlink of uid {}", a.display(), meta.uid()));
        }
    }
    let real = std::fs::canonicalize(dir.parent()?).ok()?;
    for a in real.ancestors() {
        let meta = std::fs::metadata(a).ok()?;
        let mode = meta.mode() & 0o7777;
        if !trusted(meta.uid()) {
            return Some(format!("{} above it is owned by uid {}, who could move it away", a.display(), meta.uid()));
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Some(format!(
                "{} above it can be written by group or others (mode {mode:04o}, not sticky), who could move it away",
                a.display()
            ));
        }
    }
    None
}
