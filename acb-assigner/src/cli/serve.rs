//! `serve`: resolve the flags over the settings file, start the logs, run the daemon until a
//! termination signal.

use acb_core::Policy;

use super::{CliError, ServeArgs, parse_policy};
use crate::Error;
use crate::config::{self, Address, FileConfig, GpuSpec, LogFormat, ServeConfig};

pub(super) async fn run(args: ServeArgs, activated: Vec<std::os::fd::OwnedFd>) -> Result<(), CliError> {
    // Bad settings are status 2, as bad flags are; what keeps the daemon from serving, 1.
    let cfg = resolve(args).map_err(CliError::usage)?;
    init_logs(cfg.log_format);
    crate::server::serve_activated(cfg, activated, crate::server::termination()).await?;
    Ok(())
}

/// Resolves `serve`'s flags over its settings file.
fn resolve(args: ServeArgs) -> Result<ServeConfig, Error> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    resolve_with(args, file)
}

/// Resolves a settings file's values as `serve --config FILE` does with no other flag: what the
/// settings fuzz target (`fuzz/`) runs on every input.
pub fn resolve_settings(file: FileConfig) -> Result<ServeConfig, Error> {
    use clap::{Args, FromArgMatches};
    let no_flags = |e: clap::Error| Error::Setting { what: "serve flags", why: e.to_string() };
    let matches =
        ServeArgs::augment_args(clap::Command::new("serve")).try_get_matches_from(["serve"]).map_err(no_flags)?;
    resolve_with(ServeArgs::from_arg_matches(&matches).map_err(no_flags)?, file)
}

fn resolve_with(args: ServeArgs, file: FileConfig) -> Result<ServeConfig, Error> {
    let listen = if !args.listen.is_empty() {
        args.listen
    } else if let Some(l) = file.listen {
        l.iter()
            .map(|s| s.parse::<Address>().map_err(|e| Error::Setting { what: "config listen", why: e.to_string() }))
            .collect::<Result<_, _>>()?
    } else {
        vec![Address::default_listen()]
    };
    let gpus = match (args.gpus, file.gpus) {
        (Some(g), _) => g,
        (None, Some(s)) => s.parse().map_err(|e: acb_core::inventory::GpuSpecError| Error::Setting {
            what: "config gpus",
            why: e.to_string(),
        })?,
        (None, None) => GpuSpec::Auto,
    };
    let scheduler = match (args.scheduler, file.scheduler) {
        (Some(p), _) => p,
        (None, Some(s)) => {
            parse_policy(&s).map_err(|e| Error::Setting { what: "config scheduler", why: e.to_string() })?
        }
        (None, None) => Policy::Simple,
    };
    let quantum = match (args.quantum, file.quantum) {
        (Some(q), _) => Some(q),
        (None, Some(s)) => Some(
            config::parse_duration(&s).map_err(|e| Error::Setting { what: "config quantum", why: e.to_string() })?,
        ),
        (None, None) => None,
    };
    if quantum == Some(std::time::Duration::ZERO) {
        return Err(Error::Setting {
            what: "quantum",
            why: "0s would ask every holder to yield at once; give a time slice over 0, or none".into(),
        });
    }
    let metrics = match (args.metrics, file.metrics) {
        (Some(m), _) => Some(m),
        (None, Some(s)) => Some(
            s.parse().map_err(|_| Error::Setting { what: "config metrics", why: format!("{s:?} is not IP:PORT") })?,
        ),
        (None, None) => None,
    };
    let auth_token_file = args.auth_token_file.or(file.auth_token_file);
    let auth_token = auth_token_file
        .as_ref()
        .map(|p| {
            acb_client::read_token(p).map_err(|e| Error::Setting { what: "--auth-token-file", why: e.to_string() })
        })
        .transpose()?;
    let handshake_timeout = match (args.handshake_timeout, file.handshake_timeout) {
        (Some(t), _) => t,
        (None, Some(s)) => config::parse_duration(&s)
            .map_err(|e| Error::Setting { what: "config handshake_timeout", why: e.to_string() })?,
        (None, None) => crate::listener::DEFAULT_HANDSHAKE_TIMEOUT,
    };
    if handshake_timeout.is_zero() {
        return Err(Error::Setting { what: "--handshake-timeout", why: "must be more than 0".into() });
    }
    let max_connections =
        args.max_connections.or(file.max_connections).unwrap_or(crate::listener::DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(Error::Setting { what: "--max-connections", why: "must be at least 1".into() });
    }
    let tls = match (args.tls_cert.or(file.tls_cert), args.tls_key.or(file.tls_key)) {
        (Some(cert), Some(key)) => {
            Some(crate::tls::TlsFiles { cert, key, client_ca: args.tls_client_ca.or(file.tls_client_ca) })
        }
        (None, None) if args.tls_client_ca.is_none() && file.tls_client_ca.is_none() => None,
        _ => {
            return Err(Error::Setting {
                what: "TLS",
                why: "--tls-cert and --tls-key go together (and --tls-client-ca needs both)".into(),
            });
        }
    };
    let insecure = args.insecure || file.insecure.unwrap_or(false);
    let cluster_path = args.cluster_file.clone().or(file.cluster_file.clone());
    let cluster = match &cluster_path {
        Some(p) => config::ClusterFile::load(p)?,
        None => config::ClusterFile::default(),
    };
    let mut listed = std::collections::HashSet::new();
    for n in &cluster.nodes {
        if crate::peer::check_node_name(&n.name).is_err() || !listed.insert(n.name.clone()) {
            return Err(Error::Setting {
                what: "cluster file nodes",
                why: format!("{:?}: each node needs a name (1 to 253 printable ASCII characters), listed once", n.name),
            });
        }
    }
    let role_name = args.role.clone().or(file.role.clone()).unwrap_or_else(|| "standalone".into());
    let controller = args.controller.clone().or(file.controller.clone()).or(cluster.controller.clone());
    let role = match (role_name.as_str(), controller) {
        ("standalone", None) => config::RoleConfig::Standalone,
        ("controller", None) => config::RoleConfig::Controller,
        ("standalone" | "controller", Some(_)) if args.controller.is_some() || file.controller.is_some() => {
            return Err(Error::Setting {
                what: "--controller",
                why: format!("only an executor has a controller (this is a {role_name})"),
            });
        }
        ("standalone", Some(_)) => config::RoleConfig::Standalone,
        ("controller", Some(_)) => config::RoleConfig::Controller,
        ("executor", Some(c)) => {
            let controller: config::ControllerAddr =
                c.parse().map_err(|why| Error::Setting { what: "--controller", why })?;
            config::RoleConfig::Executor { controller }
        }
        ("executor", None) => {
            return Err(Error::Setting {
                what: "--role executor",
                why: "needs --controller tcp:HOST:PORT (or controller in the cluster file)".into(),
            });
        }
        (other, _) => {
            return Err(Error::Setting {
                what: "--role",
                why: format!("{other:?} is not a role: standalone, controller or executor"),
            });
        }
    };
    let cluster_token_file =
        args.cluster_token_file.clone().or(file.cluster_token_file.clone()).or(cluster.cluster_token_file.clone());
    let cluster_token = cluster_token_file
        .as_ref()
        .map(|p| {
            acb_client::read_token(p).map_err(|e| Error::Setting { what: "--cluster-token-file", why: e.to_string() })
        })
        .transpose()?;
    if let Some(p) = &cluster_token_file {
        crate::tls::warn_if_readable_by_others(p, "the cluster token file");
    }
    if role != config::RoleConfig::Standalone && cluster_token.is_none() {
        return Err(Error::Setting {
            what: "--cluster-token-file",
            why: format!("a {role_name} needs the cluster token (the secret its executors and controller share)"),
        });
    }
    if role == config::RoleConfig::Standalone && cluster_token.is_some() {
        return Err(Error::Setting {
            what: "--cluster-token-file",
            why: "only a controller or an executor uses it".into(),
        });
    }
    let node_name = args.node_name.clone().or(file.node_name.clone()).unwrap_or_else(config::host_name);
    if role != config::RoleConfig::Standalone
        && let Err(why) = crate::peer::check_node_name(&node_name)
    {
        return Err(Error::Setting { what: "--node-name", why });
    }
    let heartbeat = match (args.heartbeat, file.heartbeat.clone().or(cluster.heartbeat.clone())) {
        (Some(h), _) => h,
        (None, Some(s)) => {
            config::parse_duration(&s).map_err(|e| Error::Setting { what: "config heartbeat", why: e.to_string() })?
        }
        (None, None) => config::DEFAULT_HEARTBEAT,
    };
    if heartbeat < std::time::Duration::from_millis(50) || heartbeat > std::time::Duration::from_secs(60) {
        return Err(Error::Setting { what: "--heartbeat", why: "must be from 50ms to 60s".into() });
    }
    crate::server::check_exposure(&listen, auth_token.is_some() || cluster_token.is_some(), tls.is_some(), insecure)?;
    let default_socket = listen == [Address::default_listen()];
    Ok(ServeConfig {
        listen,
        gpus,
        scheduler,
        quantum,
        metrics,
        auth_token,
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        node_name,
        auth_token_file,
        max_connections,
        handshake_timeout,
        tls,
        insecure,
        max_one_off_clients: args
            .max_one_off_clients
            .or(file.max_one_off_clients)
            .unwrap_or(config::DEFAULT_MAX_ONE_OFF_CLIENTS),
        state_dir: match args.state_dir.or(file.state_dir) {
            Some(d) if d == "none" => None,
            Some(d) if d.is_empty() => {
                return Err(Error::Setting { what: "--state-dir", why: "empty (give a directory, or none)".into() });
            }
            Some(d) => Some(d.into()),
            // The default directory goes with the default socket: daemons on other sockets
            // (tests, a second daemon for other GPUs) would otherwise share it and lock each
            // other out.
            None if default_socket => crate::driver::default_state_dir(),
            None => None,
        },
        reclaim_grace: duration_setting(args.reclaim_grace, file.reclaim_grace, "config reclaim_grace")?
            .unwrap_or(config::DEFAULT_RECLAIM_GRACE),
        one_off_ttl: match duration_setting(args.one_off_ttl, file.one_off_ttl, "config one_off_ttl")? {
            Some(d) if d.is_zero() => {
                return Err(Error::Setting { what: "--one-off-ttl", why: "must be more than 0".into() });
            }
            d => d.unwrap_or(config::DEFAULT_ONE_OFF_TTL),
        },
        admin_uid: args.admin_uid.or(file.admin_uid).unwrap_or(0),
        role,
        cluster_token,
        heartbeat,
        cluster_nodes: cluster.nodes.iter().map(|n| n.name.clone()).collect(),
    })
}

/// A duration from its flag, else from the settings file (`what` names the key in errors).
fn duration_setting(
    flag: Option<std::time::Duration>,
    file: Option<String>,
    what: &'static str,
) -> Result<Option<std::time::Duration>, Error> {
    match (flag, file) {
        (Some(d), _) => Ok(Some(d)),
        (None, Some(s)) => {
            config::parse_duration(&s).map(Some).map_err(|e| Error::Setting { what, why: e.to_string() })
        }
        (None, None) => Ok(None),
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: logs sent to a file or a journal carry no escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
