//! The saved state: the leases the assigner has granted, in `DIR/leases.json`, so that a
//! restarted assigner does not grant a GPU a client still computes on (like slurmctld's
//! StateSaveLocation).
//!
//! The file is written atomically (a temporary file, then a rename) before a grant's reply goes
//! out and after every release or change of holders. It is not fsync'ed: it survives a crash or
//! a SIGKILL of the daemon, not a crash of the host (where the clients die too). It holds the
//! clients' tokens, so it is the daemon's secret: the directory is 0700, the file 0600. The
//! daemon holds an exclusive `flock` on `DIR/lock` while it runs: a second daemon on the same
//! directory refuses to start.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version of the file's format.
const FORMAT: u32 = 1;

/// A lease as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLease {
    /// Lease id.
    pub id: u64,
    /// GPU ids in the pool.
    pub gpus: Vec<u32>,
    /// Memory counted on each GPU, in bytes.
    pub memory: Vec<u64>,
    /// The request's priority.
    pub priority: i32,
    /// Reported idle.
    pub idle: bool,
}

/// A client with leases, as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedClient {
    /// Client id.
    pub id: u64,
    /// Its token (the file is 0600).
    pub token: String,
    /// Job name.
    pub job: String,
    /// Process id.
    pub pid: u32,
    /// Uid from SO_PEERCRED, if it connected over the Unix socket.
    pub uid: Option<u32>,
    /// A one-off client (no session).
    pub one_off: bool,
    /// Its leases.
    pub leases: Vec<SavedLease>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// Format version.
    pub format: u32,
    /// The next client id (ids are never reused).
    pub next_client: u64,
    /// The next lease id.
    pub next_lease: u64,
    /// Clients holding leases.
    pub clients: Vec<SavedClient>,
}

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O error, with what was being done.
    #[error("state directory {path}: {what}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Another daemon holds the lock.
    #[error(
        "state directory {0}: another acb-assigner is using it (its lock file is locked); stop it or choose another --state-dir"
    )]
    Locked(PathBuf),
    /// The directory is not safe to keep secrets in.
    #[error("state directory {0}: {1}")]
    Unsafe(PathBuf, String),
    /// The file cannot be read back.
    #[error("state file {0}: {1}")]
    Corrupt(PathBuf, String),
}

/// The open state directory, locked for this daemon.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Held open: the flock lives as long as it does.
    _lock: File,
}

impl Store {
    /// Creates `dir` (0700) if needed, checks it is this user's and not writable by others,
    /// and takes the lock.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let io = |what| move |source| StateError::Io { path: dir.to_path_buf(), what, source };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("cannot create it"))?;
        let meta = std::fs::symlink_metadata(dir).map_err(io("cannot stat it"))?;
        if !meta.is_dir() {
            return Err(StateError::Unsafe(dir.to_path_buf(), "not a directory (or a symlink)".into()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(StateError::Unsafe(dir.to_path_buf(), format!("owned by uid {}, not {euid}", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("cannot chmod 0700"))?;
        }
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io("cannot open its lock file"))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Err(StateError::Locked(dir.to_path_buf())),
                _ => Err(StateError::Io { path: lock_path, what: "cannot lock", source: e }),
            };
        }
        Ok(Store { dir: dir.to_path_buf(), _lock: lock })
    }

    /// Where the leases are saved.
    pub fn path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    /// The saved state, if there is a file.
    pub fn load(&self) -> Result<Option<SavedState>, StateError> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, what: "cannot read it", source }),
        };
        let state: SavedState =
            serde_json::from_str(&text).map_err(|e| StateError::Corrupt(path.clone(), e.to_string()))?;
        if state.format != FORMAT {
            return Err(StateError::Corrupt(path, format!("format {} (this assigner reads {FORMAT})", state.format)));
        }
        Ok(Some(state))
    }

    /// Replaces the file with `state`, atomically (a temporary file, then a rename).
    pub fn save(&self, state: &SavedState) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join("leases.json.tmp");
        let io = |what| {
            let path = path.clone();
            move |source| StateError::Io { path, what, source }
        };
        let mut state = state.clone();
        state.format = FORMAT;
        let bytes = serde_json::to_vec(&state).map_err(|e| StateError::Corrupt(path.clone(), e.to_string()))?;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io("cannot write a temporary file"))?;
        f.write_all(&bytes).map_err(io("cannot write a temporary file"))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io("cannot rename the temporary file over it"))
    }
}

/// The default state directory: /var/lib/acb for root, else `$XDG_STATE_HOME/acb` or
/// `~/.local/state/acb`.
pub fn default_dir() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/lib/acb"));
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("acb"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".local/state/acb"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("acb-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn saves_atomically_with_private_modes_and_reads_back() {
        let dir = temp_dir("roundtrip");
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let state = SavedState {
            format: FORMAT,
            next_client: 5,
            next_lease: 9,
            clients: vec![SavedClient {
                id: 3,
                token: "t".into(),
                job: "j".into(),
                pid: 42,
                uid: Some(1000),
                one_off: false,
                leases: vec![SavedLease { id: 8, gpus: vec![0], memory: vec![1 << 30], priority: 0, idle: true }],
            }],
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&store.path()), 0o600);
        assert!(!dir.join("leases.json.tmp").exists());
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_daemon_on_the_same_directory_is_refused() {
        let dir = temp_dir("lock");
        let first = Store::open(&dir).unwrap();
        let second = Store::open(&dir).unwrap_err();
        assert!(matches!(second, StateError::Locked(_)), "{second}");
        assert!(second.to_string().contains("another acb-assigner"), "{second}");
        drop(first);
        Store::open(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = temp_dir("corrupt");
        let store = Store::open(&dir).unwrap();
        std::fs::write(store.path(), "{not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("leases.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
