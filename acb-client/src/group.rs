//! The gang a client is one member of: requests naming the same group are granted together,
//! once `size` of them wait (the ranks of a torchrun job, the tasks of a Slurm step). Named by
//! `ACB_GROUP`/`ACB_GROUP_SIZE`, else read from the launcher's environment ([`from_vars`]).
//!
//! Group names made from a launcher's environment carry the launcher's prefix, so that two
//! different jobs never share one:
//! - `torchrun:<RUN_ID>@<MASTER_ADDR>:<MASTER_PORT>`: torch.distributed's variables, as
//!   torchrun sets them for every rank (`TORCHELASTIC_RUN_ID`, left out when it is torchrun's
//!   placeholder `none`; the rendezvous endpoint, which no two running jobs share), followed by
//!   `@<host name>` when `MASTER_ADDR` is a loopback address (a one-node job: another node may
//!   run one on the same port). The size is `WORLD_SIZE`, the rank `RANK`.
//! - `slurm:<SLURM_JOB_ID>.<SLURM_STEP_ID>`: the tasks of one `srun` step (one Slurm cluster's
//!   job ids are unique). The size is `SLURM_NTASKS`, the rank `SLURM_PROCID`.
//!
//! torchrun's environment wins when both are there (torchrun runs inside a Slurm step, never the
//! other way round, so it describes the process's own job), and a launcher's group is made only
//! for more than one process: a 1-process job is no gang.

pub use acb_core::{Group, MAX_GROUP_SIZE};

use crate::error::Error;

/// What the environment says of the client's group: the group, and the process's rank in it
/// when the launcher says (for a default job name, `<group>-rank<RANK>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvGroup {
    /// The group, if any.
    pub group: Option<Group>,
    /// The launcher's rank of this process (`RANK`, `SLURM_PROCID`), if known.
    pub rank: Option<u32>,
}

/// A group's name as the assigner accepts it: the rule of a job's name (1 to
/// [`acb_proto::MAX_JOB_BYTES`] bytes, no control characters).
pub fn check_group_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("a group name has at least 1 byte".into()));
    }
    acb_proto::check_job_name(name)
        .map_err(|e| Error::InvalidArgument(e.to_string().replace("a job name", "a group name")))
}

/// A group size as the assigner accepts it: 1 to [`MAX_GROUP_SIZE`].
pub fn check_group_size(size: u32) -> Result<(), Error> {
    if (1..=MAX_GROUP_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("a group has 1 to {MAX_GROUP_SIZE} members, not {size}")))
    }
}

/// The group the variables name (`var` reads one: `Ok(None)` when unset, an error when it is
/// not UTF-8; `hostname` is asked only for a loopback `MASTER_ADDR`):
/// - `ACB_GROUP` set and empty: no group (the way out of a launcher's group, for a job of which
///   only some processes use acb). `ACB_GROUP_SIZE` is then an error.
/// - `ACB_GROUP` set: that name, with `ACB_GROUP_SIZE` members, else the launcher's size.
/// - `ACB_GROUP` unset: the launcher's group (see the module), if its size is over 1;
///   `ACB_GROUP_SIZE` overrides its size.
///
/// Every malformed value is [`Error::InvalidArgument`] naming its variable.
pub fn from_vars(
    var: impl Fn(&str) -> Result<Option<String>, Error>,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<EnvGroup, Error> {
    let explicit = var("ACB_GROUP")?;
    let size = match var("ACB_GROUP_SIZE")?.filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(parse_size("ACB_GROUP_SIZE", &s)?),
        None => None,
    };
    let launcher = launcher(&var, hostname)?;
    let rank = launcher.as_ref().and_then(|l| l.rank);
    match explicit {
        Some(name) if name.is_empty() => {
            if size.is_some() {
                return Err(Error::InvalidArgument(
                    "ACB_GROUP_SIZE is set but ACB_GROUP is empty, which means no group".into(),
                ));
            }
            Ok(EnvGroup::default())
        }
        Some(name) => {
            check_group_name(&name).map_err(|e| Error::InvalidArgument(format!("ACB_GROUP: {e}")))?;
            let size = match (size, &launcher) {
                (Some(n), _) => n,
                (None, Some(l)) => l.size()?,
                (None, None) => {
                    return Err(Error::InvalidArgument(format!(
                        "ACB_GROUP={name:?} is set but ACB_GROUP_SIZE is not: say how many processes the group has"
                    )));
                }
            };
            Ok(EnvGroup { group: Some(Group { name, size }), rank })
        }
        None => {
            let gang = match &launcher {
                Some(l) => l.size()? > 1,
                None => false,
            };
            let group = match &launcher {
                Some(l) if gang => {
                    check_group_name(&l.name).map_err(|e| {
                        Error::InvalidArgument(format!(
                            "the group name {:?} made from {}'s environment: {e}; set ACB_GROUP to name the \
                             group yourself, or ACB_GROUP= (empty) for none",
                            l.name, l.launcher
                        ))
                    })?;
                    Some(Group { name: l.name.clone(), size: size.map_or_else(|| l.size(), Ok)? })
                }
                _ => None,
            };
            if group.is_none() && size.is_some() {
                return Err(Error::InvalidArgument(
                    "ACB_GROUP_SIZE is set but no group is named (by ACB_GROUP, or by torchrun's or Slurm's \
                     environment for more than one process)"
                        .into(),
                ));
            }
            let rank = if group.is_some() { rank } else { None };
            Ok(EnvGroup { group, rank })
        }
    }
}

/// A launcher's group: its name, its size as the launcher wrote it (checked when used), the
/// process's rank.
struct Launcher {
    launcher: &'static str,
    name: String,
    size_var: &'static str,
    size: String,
    rank: Option<u32>,
}

impl Launcher {
    fn size(&self) -> Result<u32, Error> {
        parse_size(self.size_var, &self.size).map_err(|e| {
            Error::InvalidArgument(format!(
                "{e} ({}'s; set ACB_GROUP_SIZE, or ACB_GROUP= (empty) for no group)",
                self.launcher
            ))
        })
    }
}

/// torchrun's group if its variables are there, else Slurm's, else none.
fn launcher(
    var: &impl Fn(&str) -> Result<Option<String>, Error>,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<Option<Launcher>, Error> {
    let set = |name: &str| -> Result<Option<String>, Error> { Ok(var(name)?.filter(|v| !v.trim().is_empty())) };
    let rank = |name: &str| -> Result<Option<u32>, Error> { Ok(set(name)?.and_then(|r| r.trim().parse().ok())) };
    if let Some(size) = set("WORLD_SIZE")? {
        let run_id = set("TORCHELASTIC_RUN_ID")?.filter(|id| id != "none");
        let endpoint = match (set("MASTER_ADDR")?, set("MASTER_PORT")?) {
            (Some(addr), Some(port)) => {
                let mut e = format!("{addr}:{port}");
                if is_loopback(&addr)
                    && let Some(host) = hostname()
                {
                    e = format!("{e}@{host}");
                }
                Some(e)
            }
            _ => None,
        };
        let name = match (run_id, endpoint) {
            (Some(id), Some(e)) => Some(format!("torchrun:{id}@{e}")),
            (Some(id), None) => Some(format!("torchrun:{id}")),
            (None, Some(e)) => Some(format!("torchrun:{e}")),
            (None, None) => None,
        };
        if let Some(name) = name {
            return Ok(Some(Launcher {
                launcher: "torchrun",
                name,
                size_var: "WORLD_SIZE",
                size,
                rank: rank("RANK")?,
            }));
        }
    }
    if let (Some(job), Some(step), Some(size)) = (set("SLURM_JOB_ID")?, set("SLURM_STEP_ID")?, set("SLURM_NTASKS")?) {
        let name = format!("slurm:{}.{}", job.trim(), step.trim());
        return Ok(Some(Launcher {
            launcher: "Slurm",
            name,
            size_var: "SLURM_NTASKS",
            size,
            rank: rank("SLURM_PROCID")?,
        }));
    }
    Ok(None)
}

fn is_loopback(addr: &str) -> bool {
    let bare = addr.trim().trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_size(var: &str, value: &str) -> Result<u32, Error> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_GROUP_SIZE).contains(&n) => Ok(n),
        _ => Err(Error::InvalidArgument(format!(
            "{var}={value:?}: a group has 1 to {MAX_GROUP_SIZE} members (a whole number)"
        ))),
    }
}

/// This machine's host name (for a one-node torchrun job's group).
pub(crate) fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..end]).ok().filter(|h| !h.is_empty()).map(str::to_owned)
}

/// The variable `name` of the process's environment: `Ok(None)` when unset, an error naming it
/// when it is not UTF-8.
pub(crate) fn env_var(name: &str) -> Result<Option<String>, Error> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidArgument(format!("{name}: not UTF-8"))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<EnvGroup, Error> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        from_vars(|name| Ok(map.get(name).cloned()), || Some("node7".to_owned()))
    }

    fn group(name: &str, size: u32) -> Option<Group> {
        Some(Group { name: name.into(), size })
    }

    fn err(vars: &[(&str, &str)]) -> String {
        read(vars).expect_err("an error").to_string()
    }

    const TORCHRUN: [(&str, &str); 5] = [
        ("TORCHELASTIC_RUN_ID", "5f1c"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29400"),
        ("WORLD_SIZE", "4"),
        ("RANK", "2"),
    ];
    const SLURM: [(&str, &str); 4] =
        [("SLURM_JOB_ID", "811"), ("SLURM_STEP_ID", "0"), ("SLURM_NTASKS", "8"), ("SLURM_PROCID", "5")];

    #[test]
    fn no_variables_no_group() {
        assert_eq!(read(&[]), Ok(EnvGroup::default()));
    }

    #[test]
    fn acb_group_names_the_group_with_its_size() {
        let g = read(&[("ACB_GROUP", "train-7"), ("ACB_GROUP_SIZE", "3")]).unwrap();
        assert_eq!(g, EnvGroup { group: group("train-7", 3), rank: None });
        // A group of one is allowed when asked for by name.
        assert_eq!(read(&[("ACB_GROUP", "solo"), ("ACB_GROUP_SIZE", "1")]).unwrap().group, group("solo", 1));
        // Its size may come from the launcher, and the launcher's name is not used.
        let g = read(&[&TORCHRUN[..], &[("ACB_GROUP", "mine")]].concat()).unwrap();
        assert_eq!(g, EnvGroup { group: group("mine", 4), rank: Some(2) });
    }

    #[test]
    fn torchrun_names_the_group_by_run_id_and_endpoint() {
        let g = read(&TORCHRUN).unwrap();
        assert_eq!(g, EnvGroup { group: group("torchrun:5f1c@10.0.0.1:29400", 4), rank: Some(2) });
        // torchrun's placeholder run id is not a name: the endpoint is.
        let mut vars = TORCHRUN.to_vec();
        vars[0].1 = "none";
        assert_eq!(read(&vars).unwrap().group, group("torchrun:10.0.0.1:29400", 4));
        // A loopback endpoint is one node's: the host name makes it the job's.
        vars[1].1 = "127.0.0.1";
        assert_eq!(read(&vars).unwrap().group, group("torchrun:127.0.0.1:29400@node7", 4));
        vars[1].1 = "localhost";
        assert_eq!(read(&vars).unwrap().group, group("torchrun:localhost:29400@node7", 4));
        // A run id without an endpoint is enough.
        let g = read(&[("TORCHELASTIC_RUN_ID", "abc"), ("WORLD_SIZE", "2")]).unwrap();
        assert_eq!(g.group, group("torchrun:abc", 2));
        assert_eq!(g.rank, None);
        // Neither: not torchrun's environment.
        assert_eq!(read(&[("WORLD_SIZE", "2")]).unwrap(), EnvGroup::default());
    }

    #[test]
    fn slurm_names_the_group_by_job_and_step() {
        assert_eq!(read(&SLURM).unwrap(), EnvGroup { group: group("slurm:811.0", 8), rank: Some(5) });
        // No step: the batch script itself, one process.
        assert_eq!(read(&SLURM[..1].iter().chain(&SLURM[2..]).copied().collect::<Vec<_>>()).unwrap().group, None);
    }

    #[test]
    fn torchrun_wins_over_slurm() {
        let g = read(&[&SLURM[..], &TORCHRUN[..]].concat()).unwrap();
        assert_eq!(g, EnvGroup { group: group("torchrun:5f1c@10.0.0.1:29400", 4), rank: Some(2) });
        // torchrun's single process inside a Slurm step: torchrun's job, no gang.
        let mut vars = [&SLURM[..], &TORCHRUN[..]].concat();
        vars.retain(|(k, _)| *k != "WORLD_SIZE");
        vars.push(("WORLD_SIZE", "1"));
        assert_eq!(read(&vars).unwrap().group, None);
    }

    #[test]
    fn a_one_process_job_is_no_gang() {
        let mut vars = TORCHRUN.to_vec();
        vars[3].1 = "1";
        assert_eq!(read(&vars).unwrap(), EnvGroup::default());
        let mut vars = SLURM.to_vec();
        vars[2].1 = "1";
        assert_eq!(read(&vars).unwrap(), EnvGroup::default());
    }

    #[test]
    fn acb_group_size_overrides_the_launchers() {
        let g = read(&[&TORCHRUN[..], &[("ACB_GROUP_SIZE", "2")]].concat()).unwrap();
        assert_eq!(g.group, group("torchrun:5f1c@10.0.0.1:29400", 2));
    }

    #[test]
    fn an_empty_acb_group_opts_out_of_the_launchers_group() {
        let g = read(&[&TORCHRUN[..], &[("ACB_GROUP", "")]].concat()).unwrap();
        assert_eq!(g.group, None);
        let e = err(&[&TORCHRUN[..], &[("ACB_GROUP", ""), ("ACB_GROUP_SIZE", "4")]].concat());
        assert!(e.contains("ACB_GROUP_SIZE") && e.contains("empty"), "{e}");
    }

    #[test]
    fn bad_sizes_name_their_variable() {
        for bad in ["0", "4097", "-1", "two", "1.5", "99999999999"] {
            let e = err(&[("ACB_GROUP", "g"), ("ACB_GROUP_SIZE", bad)]);
            assert!(e.starts_with("ACB_GROUP_SIZE=") && e.contains("1 to 4096"), "{e}");
            let mut vars = TORCHRUN.to_vec();
            vars[3].1 = bad;
            let e = err(&vars);
            assert!(e.starts_with("WORLD_SIZE=") && e.contains("1 to 4096") && e.contains("ACB_GROUP="), "{e}");
            let mut vars = SLURM.to_vec();
            vars[2].1 = bad;
            let e = err(&vars);
            assert!(e.starts_with("SLURM_NTASKS=") && e.contains("Slurm"), "{e}");
        }
        // A bad launcher size does not matter when ACB_GROUP_SIZE says the size.
        let mut vars = TORCHRUN.to_vec();
        vars[3].1 = "lots";
        vars.extend([("ACB_GROUP", "g"), ("ACB_GROUP_SIZE", "2")]);
        assert_eq!(read(&vars).unwrap().group, group("g", 2));
    }

    #[test]
    fn bad_names_and_missing_sizes_are_errors() {
        let e = err(&[("ACB_GROUP", "g")]);
        assert!(e.contains("ACB_GROUP_SIZE is not"), "{e}");
        let e = err(&[("ACB_GROUP", "a\nb"), ("ACB_GROUP_SIZE", "2")]);
        assert!(e.starts_with("ACB_GROUP: a group name has no control characters"), "{e}");
        let long = "g".repeat(300);
        let e = err(&[("ACB_GROUP", long.as_str()), ("ACB_GROUP_SIZE", "2")]);
        assert!(e.contains("at most 256 bytes, not 300"), "{e}");
        let e = err(&[("ACB_GROUP_SIZE", "2")]);
        assert!(e.contains("no group is named"), "{e}");
        let mut vars = TORCHRUN.to_vec();
        vars[0].1 = long.as_str();
        let e = err(&vars);
        assert!(e.contains("torchrun's environment") && e.contains("at most 256 bytes"), "{e}");
    }

    #[test]
    fn a_variable_that_is_not_utf8_is_an_error() {
        let e = from_vars(
            |name| {
                if name == "WORLD_SIZE" { Err(Error::InvalidArgument(format!("{name}: not UTF-8"))) } else { Ok(None) }
            },
            || None,
        )
        .expect_err("not UTF-8")
        .to_string();
        assert_eq!(e, "WORLD_SIZE: not UTF-8");
    }

    #[test]
    fn loopback_addresses() {
        for a in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"] {
            assert!(is_loopback(a), "{a}");
        }
        for a in ["10.0.0.1", "node1", "::2"] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn checks() {
        assert_eq!(check_group_size(1), Ok(()));
        assert_eq!(check_group_size(4096), Ok(()));
        assert!(check_group_size(0).is_err() && check_group_size(4097).is_err());
        assert!(check_group_name("").is_err());
        assert_eq!(check_group_name("torchrun:x"), Ok(()));
    }
}
