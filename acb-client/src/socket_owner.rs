//! Who may own the assigner's Unix socket. Before a client connects it checks the socket file's
//! owner: root (a system daemon), the client's own user (a per-user daemon), or the uid
//! configured as the assigner's (`ACB_ASSIGNER_UID`, [`crate::Config::assigner_uid`]). Anyone
//! else may be a second local user who took the socket's place to collect the clients' bearer
//! tokens: the client refuses to connect, and says how to allow that owner if it is the real
//! assigner.
//!
//! The configured uid reaches [`check`] (called by `connection::channel`) from the client's
//! [`Config`](crate::Config) through [`with_assigner_uid`], a scope the client's driver and its
//! status calls run in; callers outside a client (the assigner's CLI, tools) get the
//! environment's.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::Error;

/// The environment variable naming the assigner's uid (a number) when it is neither root nor
/// the client's user.
pub const ASSIGNER_UID_VAR: &str = "ACB_ASSIGNER_UID";

tokio::task_local! {
    /// The uid the current client's config allows besides root and its own.
    static CONFIGURED: Option<u32>;
}

/// The uid `ACB_ASSIGNER_UID` names (`None` when unset or empty); a value that is not a uid is
/// [`Error::InvalidArgument`].
pub fn uid_from_env() -> Result<Option<u32>, Error> {
    match std::env::var(ASSIGNER_UID_VAR) {
        Ok(s) if !s.trim().is_empty() => parse_uid(s.trim()).map(Some),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Error::InvalidArgument(format!("{ASSIGNER_UID_VAR} is not a uid (not UTF-8)")))
        }
    }
}

fn parse_uid(s: &str) -> Result<u32, Error> {
    s.parse::<u32>().ok().filter(|u| *u != u32::MAX).ok_or_else(|| {
        Error::InvalidArgument(format!("{ASSIGNER_UID_VAR}={s:?} is not a uid: expected a number, e.g. 998"))
    })
}

/// Runs `f` with `uid` as the assigner's configured uid for the socket checks inside it.
pub(crate) async fn with_assigner_uid<F: std::future::Future>(uid: Option<u32>, f: F) -> F::Output {
    CONFIGURED.scope(uid, f).await
}

/// Checks the owner of the socket at `path` before a connection to it: root, this process's
/// effective uid, or the configured one (the client's config inside a client, else
/// `ACB_ASSIGNER_UID`). A path that cannot be read is left to the connection to report.
pub fn check(path: &Path) -> Result<(), Error> {
    let configured = match CONFIGURED.try_with(|u| *u) {
        Ok(u) => u,
        Err(_) => uid_from_env()?,
    };
    check_owner(path, configured)
}

/// [`check`] with the configured uid given.
pub fn check_owner(path: &Path, configured: Option<u32>) -> Result<(), Error> {
    let Ok(meta) = std::fs::metadata(path) else { return Ok(()) };
    let owner = meta.uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if owner == 0 || owner == me || Some(owner) == configured {
        return Ok(());
    }
    let allowed = match configured {
        Some(u) => format!("root, this process's uid {me} or {ASSIGNER_UID_VAR}={u}"),
        None => format!("root or this process's uid {me}"),
    };
    Err(Error::PermissionDenied(format!(
        "not connecting to {}: the socket is owned by uid {owner}, not {allowed}; another user may have \
         taken the assigner's place. If uid {owner} runs the assigner, allow it with {ASSIGNER_UID_VAR}={owner} \
         (or acb_config_set_assigner_uid)",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A socket of another uid is refused, naming the owner and the variable; with that uid
    /// configured it is accepted. Needs root (to chown); skips otherwise, unless CI asks for it.
    #[test]
    fn a_socket_of_another_user_is_refused_unless_configured() {
        if !is_root() {
            assert!(
                !std::env::var("ACB_REQUIRE_ROOT").is_ok_and(|v| v == "1"),
                "ACB_REQUIRE_ROOT=1 but this is not root"
            );
            eprintln!("skipped: needs root to chown a socket");
            return;
        }
        let dir = std::env::temp_dir().join(format!("acb-owner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        let path = dir.join("assigner.sock");
        let _ = std::fs::remove_file(&path);
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert_eq!(check_owner(&path, None), Ok(()), "root's own socket");
        std::os::unix::fs::chown(&path, Some(4242), None).expect("chown");
        let e = check_owner(&path, None).expect_err("uid 4242 is neither root nor this process");
        let text = e.to_string();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
        assert!(text.contains("owned by uid 4242") && text.contains("ACB_ASSIGNER_UID=4242"), "{text}");
        assert!(check_owner(&path, Some(4243)).is_err(), "another configured uid does not help");
        assert_eq!(check_owner(&path, Some(4242)), Ok(()), "the configured uid is accepted");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_socket_is_left_to_the_connection() {
        assert_eq!(check_owner(Path::new("/nonexistent/acb/assigner.sock"), None), Ok(()));
    }

    #[test]
    fn a_uid_is_a_number() {
        assert_eq!(parse_uid("998"), Ok(998));
        for bad in ["root", "-1", "4294967295", "1.5"] {
            let e = parse_uid(bad).expect_err(bad).to_string();
            assert!(e.contains("ACB_ASSIGNER_UID") && e.contains("expected a number"), "{e}");
        }
    }
}
