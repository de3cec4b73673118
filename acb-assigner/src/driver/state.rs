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
    /// The node it runs on (a controller's client), if not the daemon's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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
    /// A controller's pool, in GPU id order, so that a restarted controller gives its
    /// executors' GPUs the same ids (its own GPUs come first, as discovered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pool: Vec<SavedGpu>,
    /// Leases granted together (gangs across processes), so that a restarted assigner links
    /// them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gangs: Vec<SavedGang>,
}

/// A gang's leases, as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedGang {
    /// The group's name.
    pub group: String,
    /// Its members' leases still held.
    pub leases: Vec<u64>,
}

/// A GPU of a controller's pool, as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedGpu {
    /// Its node.
    pub node: String,
    /// Index on the node.
    pub index: u32,
    /// Uuid.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Memory, bytes.
    pub memory: u64,
    /// Simulated.
    pub fake: bool,
}

/// The largest id a saved state may name: far beyond what a daemon hands out, far below where
/// counting on from it could overflow.
pub(super) const MAX_ID: u64 = 1 << 53;

/// The largest state file read (a file is about 200 bytes a lease).
pub(super) const MAX_FILE_BYTES: u64 = 256 << 20;

/// Whether `token` can be one this daemon gave out: 1 to 128 printable ASCII characters.
fn token_ok(token: &str) -> bool {
    !token.is_empty() && token.len() <= 128 && token.bytes().all(|b| b.is_ascii_graphic())
}

impl SavedState {
    /// The state with every entry that this daemon could not have written left out, and why
    /// each was; an error when the file as a whole cannot be trusted (ids at or past
    /// [`MAX_ID`]). Clients: id from 1 below `next_client`, a token of the daemon's form and
    /// not another client's, a valid job name, ids not repeated. Leases: id from 1 below
    /// `next_lease`, not repeated. (GPUs and memory are checked by the scheduler on restore.)
    pub fn checked(self) -> Result<(SavedState, Vec<String>), String> {
        use std::collections::HashSet;
        if self.next_client > MAX_ID || self.next_lease > MAX_ID {
            return Err(format!(
                "next_client {} or next_lease {} is over {MAX_ID}: not written by an assigner",
                self.next_client, self.next_lease
            ));
        }
        let mut dropped = Vec::new();
        let (mut ids, mut tokens, mut lease_ids) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut clients = Vec::new();
        for mut c in self.clients {
            let why = if c.id == 0 || c.id >= self.next_client {
                Some(format!("client#{}: its id is not between 1 and next_client {}", c.id, self.next_client))
            } else if !token_ok(&c.token) {
                Some(format!("client#{}: its token is not one an assigner makes", c.id))
            } else if let Err(e) = acb_proto::check_job_name(&c.job) {
                Some(format!("client#{}: {e}", c.id))
            } else if !ids.insert(c.id) {
                Some(format!("client#{}: a client id twice", c.id))
            } else if !tokens.insert(c.token.clone()) {
                Some(format!("client#{}: the token of another client", c.id))
            } else {
                None
            };
            if let Some(why) = why {
                dropped.push(why);
                continue;
            }
            let mut kept = Vec::new();
            for l in std::mem::take(&mut c.leases) {
                if l.id == 0 || l.id >= self.next_lease {
                    dropped.push(format!("lease#{}: its id is not between 1 and next_lease {}", l.id, self.next_lease));
                } else if !lease_ids.insert(l.id) {
                    dropped.push(format!("lease#{}: a lease id twice", l.id));
                } else {
                    kept.push(l);
                }
            }
            c.leases = kept;
            clients.push(c);
        }
        Ok((SavedState { clients, ..self }, dropped))
    }
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
        if meta.mode() & 0o022 != 0 {
            // Others could have planted a leases.json (or a temporary file) in it already.
            return Err(StateError::Unsafe(
                dir.to_path_buf(),
                format!(
                    "group or others may write it (mode {:o}); use a directory only this user can write",
                    meta.mode() & 0o7777
                ),
            ));
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
        let store = Store { dir: dir.to_path_buf(), _lock: lock };
        // A daemon that cannot save would quietly lose the protection across restarts: find
        // out now, not at the first grant.
        store.fresh_tmp().and_then(|_| std::fs::remove_file(store.tmp_path())).map_err(io("cannot write in it"))?;
        Ok(store)
    }

    /// Where the leases are saved.
    pub fn path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    fn tmp_path(&self) -> PathBuf {
        self.dir.join("leases.json.tmp")
    }

    /// The temporary file, made anew (`O_EXCL`, after removing any left there): never one
    /// someone else opened before.
    fn fresh_tmp(&self) -> std::io::Result<File> {
        let tmp = self.tmp_path();
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
    }

    /// The saved state, if there is a file: only a file of this user's that no one else may
    /// write, at most [`MAX_FILE_BYTES`]; its entries checked ([`SavedState::checked`]).
    pub fn load(&self) -> Result<Option<SavedState>, StateError> {
        use std::io::Read;
        let path = self.path();
        let io = |what| {
            let path = path.clone();
            move |source| StateError::Io { path, what, source }
        };
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, what: "cannot read it (a symlink?)", source }),
        };
        let meta = file.metadata().map_err(io("cannot stat it"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if !meta.is_file() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(StateError::Unsafe(
                path,
                format!(
                    "not a regular file of uid {euid} that only it may write (uid {}, mode {:o}); not trusted",
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(io("cannot read it"))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(StateError::Corrupt(path, format!("over {MAX_FILE_BYTES} bytes")));
        }
        let state: SavedState =
            serde_json::from_str(&text).map_err(|e| StateError::Corrupt(path.clone(), e.to_string()))?;
        if state.format != FORMAT {
            return Err(StateError::Corrupt(path, format!("format {} (this assigner reads {FORMAT})", state.format)));
        }
        let (state, dropped) = state.checked().map_err(|why| StateError::Corrupt(path.clone(), why))?;
        for why in dropped {
            tracing::warn!("state file {}: {why}; skipped", path.display());
        }
        Ok(Some(state))
    }

    /// Replaces the file with `state`, atomically (a temporary file, then a rename).
    pub fn save(&self, state: &SavedState) -> Result<(), StateError> {
        let path = self.path();
        let io = |what| {
            let path = path.clone();
            move |source| StateError::Io { path, what, source }
        };
        let mut state = state.clone();
        state.format = FORMAT;
        let bytes = serde_json::to_vec(&state).map_err(|e| StateError::Corrupt(path.clone(), e.to_string()))?;
        let mut f = self.fresh_tmp().map_err(io("cannot write a temporary file"))?;
        f.write_all(&bytes).map_err(io("cannot write a temporary file"))?;
        drop(f);
        std::fs::rename(self.tmp_path(), &path).map_err(io("cannot rename the temporary file over it"))
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
                token: "0123456789abcdef0123456789abcdef".into(),
                job: "j".into(),
                pid: 42,
                uid: Some(1000),
                one_off: false,
                node: None,
                leases: vec![SavedLease { id: 8, gpus: vec![0], memory: vec![1 << 30], priority: 0, idle: true }],
            }],
            pool: vec![SavedGpu {
                node: "n1".into(),
                index: 3,
                uuid: "GPU-1".into(),
                name: "simulated GPU".into(),
                memory: 1 << 34,
                fake: true,
            }],
            gangs: vec![SavedGang { group: "run-7".into(), leases: vec![8, 9] }],
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

    fn client(id: u64, token: &str, job: &str, leases: &[u64]) -> SavedClient {
        SavedClient {
            id,
            token: token.into(),
            job: job.into(),
            pid: 1,
            uid: Some(0),
            one_off: false,
            node: None,
            leases: leases
                .iter()
                .map(|&id| SavedLease { id, gpus: vec![0], memory: vec![1], priority: 0, idle: false })
                .collect(),
        }
    }

    #[test]
    fn entries_no_assigner_writes_are_left_out_and_huge_ids_refused() {
        let huge = SavedState {
            format: FORMAT,
            next_client: u64::MAX,
            next_lease: 2,
            clients: vec![],
            pool: vec![],
            gangs: vec![],
        };
        assert!(huge.checked().unwrap_err().contains("over"));
        let huge = SavedState {
            format: FORMAT,
            next_client: 2,
            next_lease: MAX_ID + 1,
            clients: vec![],
            pool: vec![],
            gangs: vec![],
        };
        assert!(huge.checked().is_err());
        let state = SavedState {
            format: FORMAT,
            next_client: 10,
            next_lease: 10,
            clients: vec![
                client(1, "aaaa", "good", &[1, 0, 10, 2]),
                client(0, "bbbb", "id zero", &[3]),
                client(10, "cccc", "id at next", &[4]),
                client(2, "", "empty token", &[5]),
                client(3, "dd dd", "space in token", &[5]),
                client(4, "eeee", "new\nline", &[5]),
                client(5, "ffff", &"x".repeat(300), &[5]),
                client(1, "gggg", "id twice", &[6]),
                client(6, "aaaa", "token twice", &[7]),
                client(7, "hhhh", "lease twice", &[2, 8]),
            ],
            pool: vec![],
            gangs: vec![],
        };
        let (kept, dropped) = state.checked().unwrap();
        let kept: Vec<(u64, Vec<u64>)> =
            kept.clients.iter().map(|c| (c.id, c.leases.iter().map(|l| l.id).collect())).collect();
        assert_eq!(kept, vec![(1, vec![1, 2]), (7, vec![8])], "{dropped:?}");
        // Two bad leases of client 1, eight bad clients, client 7's repeated lease.
        assert_eq!(dropped.len(), 11, "{dropped:?}");
        assert!(dropped.iter().any(|d| d.contains("the token of another client")), "{dropped:?}");
    }

    #[test]
    fn a_directory_others_may_write_and_a_file_not_ours_alone_are_refused() {
        let dir = temp_dir("loose");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Store::open(&dir).unwrap_err().to_string();
        assert!(e.contains("group or others may write it"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = Store::open(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        std::fs::write(store.path(), r#"{"format":1,"next_client":1,"next_lease":1,"clients":[]}"#).unwrap();
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("not trusted"), "{e}");
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(store.load().unwrap().is_some());
        // A temporary file left (or planted) there is replaced by a new one, never written through.
        let planted = dir.join("leases.json.tmp");
        std::fs::write(&planted, "planted").unwrap();
        let held = std::fs::File::open(&planted).unwrap();
        store
            .save(&SavedState {
                format: FORMAT,
                next_client: 1,
                next_lease: 1,
                clients: vec![],
                pool: vec![],
                gangs: vec![],
            })
            .unwrap();
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut &held, &mut seen).unwrap();
        assert_eq!(seen, "planted");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
