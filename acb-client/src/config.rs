//! [`Config`]: how a client finds the assigner and who it is.

use std::time::Duration;

use acb_core::ReleaseMode;
use acb_proto::Address;

use crate::error::Error;
use crate::group::Group;

/// Client settings: [`Config::from_env`] reads them from the environment; change the fields
/// before [`crate::Client::new`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the assigner is.
    pub assigner: Address,
    /// The job's name, shown by the assigner (1 to 256 bytes, no control characters).
    pub job: String,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How many more connection attempts after a failed one (200 ms apart).
    pub connect_retries: u32,
    /// Lazy (keep an idle GPU until someone waits) or eager (give it back at every end).
    pub release: ReleaseMode,
    /// Under lazy release, give a kept GPU back after this long idle even if nobody waits.
    pub idle_timeout: Option<Duration>,
    /// The bearer token the assigner requires, if it requires one.
    pub auth_token: Option<String>,
    /// Where [`crate::Client::alloc`] memory lives.
    pub memory_backend: MemoryBackend,
    /// Every phase after the first asks for the GPUs of the first grant.
    pub pin_gpus: bool,
    /// The uid allowed to own the assigner's Unix socket besides root and the client's own
    /// (`ACB_ASSIGNER_UID`): see [`crate::socket_owner`].
    pub assigner_uid: Option<u32>,
    /// The gang across processes this client is one member of (`ACB_GROUP`, `ACB_GROUP_SIZE`,
    /// else torchrun's or Slurm's environment: see [`crate::group`]): its requests are granted
    /// together with the other members', once all of them wait. `None`: no group.
    pub group: Option<Group>,
    /// The only GPUs (assigner ids, as `status` shows them) this job may be granted; empty for
    /// any. `ACB_REQUIRED_GPUS`, which acb's Kubernetes device plugin sets to the GPUs whose
    /// device nodes the container has.
    pub required_gpus: Vec<u32>,
}

/// Where `acb_client_alloc` memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBackend {
    /// Host memory standing in for device memory (simulated GPUs, tests). The default.
    Host,
    /// CUDA VMM on the granted GPU.
    Cuda,
}

impl MemoryBackend {
    /// `host` or `cuda`.
    pub fn parse(s: &str) -> Result<MemoryBackend, Error> {
        match s {
            "host" => Ok(MemoryBackend::Host),
            "cuda" => Ok(MemoryBackend::Cuda),
            other => Err(Error::InvalidArgument(format!("memory backend {other:?}: expected host or cuda"))),
        }
    }
}

impl Config {
    /// The settings the environment gives: `ACB_ASSIGNER` (else Fujitsu ACB's
    /// `AGA_GPU_ALLOC_SERVER_ADDRESS`/`AGA_GPU_ALLOC_SERVER_PORT`, see [`aga_address`]; else the
    /// default socket),
    /// `ACB_JOB_ID` (else a generated id), `ACB_AUTH_TOKEN_FILE`, `ACB_MEMORY_BACKEND` (`host`,
    /// the default, or `cuda`), `ACB_EAGER_RELEASE` (`1` for eager release; lazy by default),
    /// `ACB_PIN_GPUS` (`1`: every phase on the GPUs of the first), `ACB_ASSIGNER_UID` (the uid
    /// that may own the assigner's socket besides root and this user), `ACB_GROUP` and
    /// `ACB_GROUP_SIZE` (the group, else torchrun's or Slurm's: [`crate::group::from_vars`]; a
    /// member of a group whose launcher gives its rank is job `<group>-rank<RANK>` unless
    /// `ACB_JOB_ID` names it).
    ///
    /// A job id the assigner would refuse (over [`acb_proto::MAX_JOB_BYTES`] bytes, control
    /// characters, not UTF-8) is [`Error::InvalidArgument`] here, naming the limit; so is a
    /// malformed group setting, naming its variable.
    pub fn from_env() -> Result<Config, Error> {
        let acb_assigner_set = std::env::var_os("ACB_ASSIGNER").is_some_and(|v| !v.is_empty());
        let aga = if acb_assigner_set {
            None // ACB_ASSIGNER wins over Fujitsu ACB's variables
        } else {
            let var = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
            aga_address(var("AGA_GPU_ALLOC_SERVER_ADDRESS").as_deref(), var("AGA_GPU_ALLOC_SERVER_PORT").as_deref())?
        };
        let assigner = match aga {
            Some(a) => a,
            None => Address::from_env().map_err(|e| Error::InvalidArgument(e.to_string()))?,
        };
        let env_group = crate::group::from_vars(crate::group::env_var, crate::group::hostname)?;
        let job = match std::env::var("ACB_JOB_ID") {
            Ok(j) if !j.is_empty() => {
                check_job(&j).map_err(|e| Error::InvalidArgument(format!("ACB_JOB_ID: {e}")))?;
                j
            }
            Ok(_) | Err(std::env::VarError::NotPresent) => default_job_id(&env_group),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::InvalidArgument("ACB_JOB_ID: a job name is UTF-8".into()));
            }
        };
        let assigner_uid = crate::socket_owner::uid_from_env()?;
        let auth_token = match std::env::var_os("ACB_AUTH_TOKEN_FILE") {
            Some(p) => Some(read_token(std::path::Path::new(&p))?),
            None => None,
        };
        let memory_backend = match std::env::var("ACB_MEMORY_BACKEND") {
            Ok(b) if !b.is_empty() => {
                MemoryBackend::parse(&b).map_err(|e| Error::InvalidArgument(format!("ACB_MEMORY_BACKEND: {e}")))?
            }
            _ => MemoryBackend::Host,
        };
        let release = if env_flag("ACB_EAGER_RELEASE")? { ReleaseMode::Eager } else { ReleaseMode::Lazy };
        let pin_gpus = env_flag("ACB_PIN_GPUS")?;
        let required_gpus = match std::env::var("ACB_REQUIRED_GPUS") {
            Ok(v) => parse_gpu_ids(&v).map_err(|e| Error::InvalidArgument(format!("ACB_REQUIRED_GPUS={v:?}: {e}")))?,
            Err(_) => Vec::new(),
        };
        Ok(Config {
            assigner,
            job,
            connect_timeout: Duration::from_secs(2),
            connect_retries: 3,
            release,
            idle_timeout: None,
            auth_token,
            memory_backend,
            pin_gpus,
            assigner_uid,
            group: env_group.group,
            required_gpus,
        })
    }
}

/// `0,3`: GPU ids, each once (an empty or blank text: none).
pub fn parse_gpu_ids(text: &str) -> Result<Vec<u32>, String> {
    let mut ids: Vec<u32> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let id: u32 = item.parse().map_err(|_| format!("{item:?} is not a GPU id"))?;
        if ids.contains(&id) {
            return Err(format!("GPU {id} is listed twice"));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// A job's name when `ACB_JOB_ID` gives none: `<group>-rank<RANK>` for a member of a group whose
/// launcher gives its rank (when that is a valid name), else the Slurm step's name
/// ([`slurm_job_id`]) inside a Slurm job, else a generated id.
fn default_job_id(g: &crate::group::EnvGroup) -> String {
    if let (Some(group), Some(rank)) = (&g.group, g.rank) {
        let job = format!("{}-rank{rank}", group.name);
        if check_job(&job).is_ok() {
            return job;
        }
    }
    let var = |name: &str| std::env::var(name).ok();
    slurm_job_id(var).filter(|j| check_job(j).is_ok()).unwrap_or_else(generated_job_id)
}

/// The name of a Slurm task outside a group: `slurm:<SLURM_JOB_ID>.<SLURM_STEP_ID>` in a step
/// (`slurm:<SLURM_JOB_ID>` in the batch script), followed by `-rank<SLURM_PROCID>` when the
/// step has more than one task. `None` outside Slurm.
pub fn slurm_job_id(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let job = set("SLURM_JOB_ID")?;
    let mut name = match set("SLURM_STEP_ID") {
        Some(step) => format!("slurm:{job}.{step}"),
        None => format!("slurm:{job}"),
    };
    let tasks = set("SLURM_NTASKS").and_then(|n| n.parse::<u32>().ok()).unwrap_or(1);
    if let (true, Some(rank)) = (tasks > 1, set("SLURM_PROCID")) {
        name.push_str(&format!("-rank{rank}"));
    }
    Some(name)
}

/// The port of an assigner named by `AGA_GPU_ALLOC_SERVER_ADDRESS` alone (and the port
/// `gpu_assigner --address A start` listens on): acb's choice, since Fujitsu's documentation
/// gives none. The Python `gpu_assigner` has the same number (a test compares them).
pub const AGA_DEFAULT_PORT: u16 = 50051;

/// The assigner that Fujitsu ACB's variables name, for its users' scripts to run unchanged:
/// `AGA_GPU_ALLOC_SERVER_ADDRESS` (an IP or a host name, resolved here; default `127.0.0.1`)
/// and `AGA_GPU_ALLOC_SERVER_PORT` (default [`AGA_DEFAULT_PORT`]) make `tcp:ADDRESS:PORT`.
/// `None` when neither is given. `ACB_ASSIGNER`, when set, wins (see [`Config::from_env`]).
pub fn aga_address(address: Option<&str>, port: Option<&str>) -> Result<Option<Address>, Error> {
    use std::net::ToSocketAddrs;

    if address.is_none() && port.is_none() {
        return Ok(None);
    }
    let port = match port.map(str::trim) {
        None => AGA_DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "AGA_GPU_ALLOC_SERVER_PORT={p:?}: expected a port number, 1 to 65535"
                )));
            }
        },
    };
    let host = address.map_or("127.0.0.1", str::trim);
    // An IPv6 address may come bracketed ([::1]), as in a URL.
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let resolved = (bare, port).to_socket_addrs().map_err(|e| {
        Error::InvalidArgument(format!(
            "AGA_GPU_ALLOC_SERVER_ADDRESS={host:?}: not an IP address or a known host ({e})"
        ))
    })?;
    let mut addrs: Vec<_> = resolved.collect();
    addrs.sort_by_key(|a| !a.is_ipv4()); // IPv4 first, as gpu_assigner resolves for its listener
    match addrs.first() {
        Some(a) => Ok(Some(Address::Tcp(*a))),
        None => Err(Error::InvalidArgument(format!("AGA_GPU_ALLOC_SERVER_ADDRESS={host:?}: the host has no address"))),
    }
}

/// A job's name as the assigner accepts it: 1 to [`acb_proto::MAX_JOB_BYTES`] bytes, no control
/// characters ([`acb_proto::check_job_name`], the assigner's own rule). The error names the limit.
pub fn check_job(job: &str) -> Result<(), Error> {
    if job.is_empty() {
        return Err(Error::InvalidArgument("a job name has at least 1 byte".into()));
    }
    acb_proto::check_job_name(job).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// A yes/no setting from the environment: `1`/`true`/`yes`, `0`/`false`/`no`/empty/unset.
fn env_flag(name: &str) -> Result<bool, Error> {
    match std::env::var(name).as_deref() {
        Ok("1" | "true" | "yes") => Ok(true),
        Ok("0" | "false" | "no" | "") | Err(_) => Ok(false),
        Ok(other) => Err(Error::InvalidArgument(format!("{name}: {other:?}: expected 1 or 0"))),
    }
}

fn generated_job_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    format!("job-{}-{:08x}", std::process::id(), u32::from_le_bytes(b))
}

/// Reads an auth token from the first line of `path` (at least 16 characters).
pub fn read_token(path: &std::path::Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidArgument(format!("auth token file {}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(Error::InvalidArgument(format!(
            "auth token file {}: the token must be at least 16 characters",
            path.display()
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_name_is_checked_as_the_assigner_checks_it() {
        assert_eq!(check_job("train-7"), Ok(()));
        let empty = check_job("").expect_err("empty").to_string();
        assert!(empty.contains("at least 1 byte"), "{empty}");
        let long = check_job(&"j".repeat(300)).expect_err("300 bytes").to_string();
        assert!(long.contains("at most 256 bytes, not 300"), "{long}");
        assert!(check_job("a\tb").is_err());
    }

    #[test]
    fn required_gpus_are_a_list_of_distinct_ids() {
        assert_eq!(parse_gpu_ids("0, 3"), Ok(vec![0, 3]));
        assert_eq!(parse_gpu_ids(" "), Ok(vec![]));
        assert!(parse_gpu_ids("0,x").unwrap_err().contains("\"x\" is not a GPU id"));
        assert!(parse_gpu_ids("1,1").unwrap_err().contains("twice"));
        assert!(parse_gpu_ids("-1").is_err());
    }

    #[test]
    fn a_slurm_task_is_named_by_its_job_and_step() {
        let name = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
            slurm_job_id(move |n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
        };
        assert_eq!(name(&[]), None, "not in Slurm");
        assert_eq!(name(&[("SLURM_JOB_ID", "81")]).as_deref(), Some("slurm:81"), "the batch script");
        let step = [("SLURM_JOB_ID", "81"), ("SLURM_STEP_ID", "3"), ("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0")];
        assert_eq!(name(&step).as_deref(), Some("slurm:81.3"));
        let mut tasks = step.to_vec();
        tasks[2].1 = "4";
        tasks[3].1 = "2";
        assert_eq!(name(&tasks).as_deref(), Some("slurm:81.3-rank2"), "one name per task of a many-task step");
    }

    #[test]
    fn a_ranked_group_member_is_named_by_its_rank() {
        use crate::group::EnvGroup;
        let member = |name: &str, rank| EnvGroup { group: Some(Group { name: name.into(), size: 2 }), rank };
        assert_eq!(default_job_id(&member("torchrun:abc", Some(1))), "torchrun:abc-rank1");
        assert!(default_job_id(&member("torchrun:abc", None)).starts_with("job-"));
        assert!(default_job_id(&EnvGroup { group: None, rank: Some(1) }).starts_with("job-"));
        // A name that would be too long for a job: a generated one instead.
        assert!(default_job_id(&member(&"g".repeat(256), Some(3))).starts_with("job-"));
    }

    #[test]
    fn fujitsu_acb_variables_name_a_tcp_assigner() {
        let tcp = |s: &str| Some(s.parse::<Address>().expect("an address"));
        assert_eq!(aga_address(None, None), Ok(None));
        assert_eq!(aga_address(Some("10.1.2.3"), Some("7000")), Ok(tcp("tcp:10.1.2.3:7000")));
        assert_eq!(aga_address(Some("localhost"), Some("7000")), Ok(tcp("tcp:127.0.0.1:7000")));
        assert_eq!(aga_address(Some("[::1]"), Some("9")), Ok(tcp("tcp:[::1]:9")));
        assert_eq!(aga_address(None, Some(" 7000 ")), Ok(tcp("tcp:127.0.0.1:7000")));
        assert_eq!(aga_address(Some("10.1.2.3"), None), Ok(tcp(&format!("tcp:10.1.2.3:{AGA_DEFAULT_PORT}"))));
        for bad in ["0", "65536", "http", "-1"] {
            let e = aga_address(None, Some(bad)).expect_err(bad).to_string();
            assert!(e.contains("AGA_GPU_ALLOC_SERVER_PORT") && e.contains("1 to 65535"), "{e}");
        }
        let e = aga_address(Some("no such host.invalid"), Some("1")).expect_err("unresolvable").to_string();
        assert!(e.contains("AGA_GPU_ALLOC_SERVER_ADDRESS"), "{e}");
    }
}
