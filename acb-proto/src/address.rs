//! Where an assigner listens, or where a client finds it: `unix:/path/to.sock` or
//! `tcp:IP:PORT`. One syntax for the daemon's `--listen`, `ACB_ASSIGNER`, agarun and libacb.
//!
//! In a Unix socket's path `%N` stands for this node's name ([`node_name`]), as in Slurm's file
//! name patterns: one `ACB_ASSIGNER=unix:/tmp/acb-slurm-42/%N.sock` exported by a batch script
//! finds each node's own assigner, also where several Slurm nodes share one host and its /tmp.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// An assigner's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket (`unix:/path/to.sock`).
    Unix(PathBuf),
    /// TCP (`tcp:127.0.0.1:7878`).
    Tcp(SocketAddr),
}

/// A malformed address; the message says the syntax expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// `unix:` with no path.
    #[error("{0:?}: a unix address needs a path, e.g. unix:/run/acb/assigner.sock")]
    EmptyPath(String),
    /// `tcp:` with something that is not `IP:PORT`.
    #[error("{0:?}: a tcp address is tcp:IP:PORT, e.g. tcp:127.0.0.1:7878")]
    BadTcp(String),
    /// Neither scheme.
    #[error("{0:?}: expected unix:/path/to.sock or tcp:IP:PORT")]
    UnknownScheme(String),
    /// A malformed address in an environment variable.
    #[error("{var}: {source}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with its value.
        source: Box<AddressError>,
    },
}

impl Address {
    /// The system socket, where a system daemon (running as root) listens.
    pub const SYSTEM_SOCKET: &'static str = "/run/acb/assigner.sock";

    /// The per-user socket, `$XDG_RUNTIME_DIR/acb/assigner.sock`: only for a process that is not
    /// root and has an absolute `XDG_RUNTIME_DIR` (a directory only its user can write, so no
    /// other local user can take the socket's place there).
    pub fn user_socket() -> Option<Address> {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return None;
        }
        let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?);
        dir.is_absolute().then(|| Address::Unix(dir.join("acb").join("assigner.sock")))
    }

    /// Where a daemon listens by default: [`Address::user_socket`] for a daemon run by a user
    /// other than root, else [`Address::SYSTEM_SOCKET`].
    pub fn default_listen() -> Address {
        Address::user_socket().unwrap_or_else(|| Address::Unix(PathBuf::from(Self::SYSTEM_SOCKET)))
    }

    /// Where a client looks by default: its user's own socket ([`Address::user_socket`]) if one
    /// exists there, else [`Address::SYSTEM_SOCKET`].
    pub fn default_socket() -> Address {
        match Address::user_socket() {
            Some(Address::Unix(p)) if std::fs::symlink_metadata(&p).is_ok() => Address::Unix(p),
            _ => Address::Unix(PathBuf::from(Self::SYSTEM_SOCKET)),
        }
    }

    /// Where clients look: `ACB_ASSIGNER` if set, else [`Address::default_socket`].
    pub fn from_env() -> Result<Address, AddressError> {
        match std::env::var("ACB_ASSIGNER") {
            Ok(s) if !s.is_empty() => {
                s.parse().map_err(|e| AddressError::Env { var: "ACB_ASSIGNER", source: Box::new(e) })
            }
            _ => Ok(Address::default_socket()),
        }
    }

    /// Whether a TCP address is on the loopback interface (Unix sockets count as local).
    pub fn is_local(&self) -> bool {
        match self {
            Address::Unix(_) => true,
            Address::Tcp(a) => a.ip().is_loopback(),
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddressError::EmptyPath(s.to_owned()));
            }
            let path = if path.contains("%N") { path.replace("%N", &node_name()) } else { path.to_owned() };
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            return addr.parse::<SocketAddr>().map(Address::Tcp).map_err(|_| AddressError::BadTcp(s.to_owned()));
        }
        Err(AddressError::UnknownScheme(s.to_owned()))
    }
}

/// This node's name, what `%N` stands for in a Unix socket's path: `SLURMD_NODENAME` (set by
/// Slurm in a job's tasks and in its Prolog) if set, else the host name up to its first dot,
/// else `localhost`. A name with a `/` or NUL in it (no real one has) is not used.
pub fn node_name() -> String {
    let ok = |n: &str| !n.is_empty() && !n.contains(['/', '\0']) && n != "." && n != "..";
    if let Ok(n) = std::env::var("SLURMD_NODENAME") {
        let n = n.trim().to_owned();
        if ok(&n) {
            return n;
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let short = host.trim().split('.').next().unwrap_or("").to_owned();
    if ok(&short) { short } else { "localhost".to_owned() }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_print_back_and_bad_ones_say_the_syntax() {
        for s in ["unix:/a/b.sock", "tcp:127.0.0.1:7878", "tcp:[::1]:9"] {
            assert_eq!(s.parse::<Address>().unwrap().to_string(), s);
        }
        assert_eq!("unix:".parse::<Address>(), Err(AddressError::EmptyPath("unix:".into())));
        let e = "tcp:localhost".parse::<Address>().unwrap_err().to_string();
        assert!(e.contains("tcp:IP:PORT"), "{e}");
        let e = "/a/b.sock".parse::<Address>().unwrap_err().to_string();
        assert!(e.contains("expected unix:/path/to.sock or tcp:IP:PORT"), "{e}");
        assert!(Address::Unix("/x".into()).is_local());
        assert!("tcp:[::1]:1".parse::<Address>().unwrap().is_local());
        assert!(!"tcp:10.0.0.1:1".parse::<Address>().unwrap().is_local());
    }

    #[test]
    fn percent_n_in_a_socket_path_is_this_node() {
        let node = node_name();
        assert!(!node.is_empty() && !node.contains('/'));
        assert_eq!(
            "unix:/tmp/acb-slurm-7/%N.sock".parse::<Address>().unwrap(),
            Address::Unix(format!("/tmp/acb-slurm-7/{node}.sock").into())
        );
        assert_eq!("unix:/a/b.sock".parse::<Address>().unwrap(), Address::Unix("/a/b.sock".into()), "no %N, as given");
    }

    #[test]
    fn the_defaults_are_the_system_socket_unless_a_user_runs_it() {
        // Whoever runs the tests: root gets the system socket whatever XDG_RUNTIME_DIR says.
        let system = Address::Unix(Address::SYSTEM_SOCKET.into());
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(Address::user_socket(), None);
            assert_eq!(Address::default_listen(), system);
            assert_eq!(Address::default_socket(), system);
        } else if let Some(Address::Unix(p)) = Address::user_socket() {
            assert_eq!(Address::default_listen(), Address::Unix(p.clone()));
            let expected = if p.exists() { Address::Unix(p) } else { system };
            assert_eq!(Address::default_socket(), expected);
        }
    }
}
