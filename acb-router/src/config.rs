//! The router's configuration file (TOML): where it listens, where the assigner is, and its
//! models. [`Config::parse`] checks everything a model needs before the router starts, so that a
//! mistake is one clear error at start, never a failure at the first request.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// How the router brings a model onto a GPU and off it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// A vLLM server with sleep mode (`VLLM_SERVER_DEV_MODE=1`, `--enable-sleep-mode`): started
    /// at its first wake (or already running at `url`), then put to sleep (`POST /sleep`) and
    /// woken (`POST /wake_up`) by the router.
    Vllm,
    /// A server run under `agarun --mode auto`: its own libacb takes the lease and swaps its
    /// memory; the router starts it once, queues its requests and takes no lease itself.
    Auto,
    /// A server with no sleep mode (llama.cpp's, for one): started at each wake, stopped at
    /// each sleep (a cold start every time).
    Process,
}

impl Engine {
    /// Its name in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Auto => "auto",
            Engine::Process => "process",
        }
    }
}

/// One model as the router runs it.
#[derive(Clone, Debug)]
pub struct Model {
    /// The name requests give in their `model` field (the table's key).
    pub name: String,
    /// Other names that route to it.
    pub aliases: Vec<String>,
    /// The name its server answers to (vLLM's `--served-model-name`): the router puts it in a
    /// request's `model` field when the request named the model otherwise (default: `name`).
    pub served_name: String,
    pub engine: Engine,
    /// The server's command line (`{port}` in an argument becomes `port`); `None` for a server
    /// that is already running at `url` (vLLM only).
    pub command: Option<Vec<String>>,
    /// Extra environment for the command.
    pub env: BTreeMap<String, String>,
    /// Where its server listens (`http://127.0.0.1:{port}` unless the file says otherwise).
    pub url: String,
    /// The port the command is told to use.
    pub port: Option<u16>,
    /// The path answered with 200 once the server is ready (vLLM's and llama.cpp's `/health`).
    pub health: String,
    /// GPUs it needs, granted together.
    pub gpus: u32,
    /// Memory per GPU it needs (`None`: whole GPUs). Under `gpu-sharing`, small models share.
    pub memory: Option<u64>,
    /// Only these GPUs (the assigner's ids); empty for any.
    pub required_gpus: Vec<u32>,
    /// Higher is served first by the assigner.
    pub priority: i32,
    /// Asleep after this long with no request.
    pub idle_ttl: Duration,
    /// vLLM's sleep level (1: weights to host memory; 2: weights dropped).
    pub sleep_level: u8,
    /// How long a wake (grant, start or wake_up, health) may take.
    pub wake_timeout: Duration,
    /// How many requests may wait for this model to wake; more get 503 at once.
    pub queue_size: usize,
    /// How long a request may wait in the queue before a 503.
    pub queue_timeout: Duration,
    /// Restarts of a dead server in a row before the model is marked failed.
    pub max_restarts: u32,
    /// The `agarun` launcher (auto engine).
    pub agarun: String,
}

impl Model {
    /// The assigner's job name for it: `acb-assigner status` shows the model under it.
    pub fn job(&self) -> String {
        format!("router:{}", self.name)
    }
}

/// The router's whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The assigner (`None`: `ACB_ASSIGNER` or the default socket).
    pub assigner: Option<String>,
    /// A file holding the assigner's bearer token.
    pub auth_token_file: Option<String>,
    /// How long shutdown waits for in-flight requests before it stops the servers anyway.
    pub drain_timeout: Duration,
    /// Largest request body accepted.
    pub max_body: usize,
    /// How long a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Models in the file's order of names.
    pub models: Vec<Model>,
}

impl Config {
    /// The model a request's `model` field names (by name or alias).
    pub fn lookup(&self) -> HashMap<String, usize> {
        let mut names = HashMap::new();
        for (i, m) in self.models.iter().enumerate() {
            names.insert(m.name.clone(), i);
            for a in &m.aliases {
                names.insert(a.clone(), i);
            }
        }
        names
    }
}

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    assigner: Option<String>,
    auth_token_file: Option<String>,
    drain_timeout: Option<String>,
    max_body: Option<String>,
    header_timeout: Option<String>,
    /// Defaults for every model.
    #[serde(default)]
    defaults: FileDefaults,
    #[serde(default)]
    models: BTreeMap<String, FileModel>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDefaults {
    idle_ttl: Option<String>,
    wake_timeout: Option<String>,
    queue_size: Option<usize>,
    queue_timeout: Option<String>,
    max_restarts: Option<u32>,
    sleep_level: Option<u8>,
    agarun: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    engine: Engine,
    command: Option<Command>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    url: Option<String>,
    port: Option<u16>,
    health: Option<String>,
    gpus: Option<u32>,
    memory: Option<String>,
    #[serde(default)]
    required_gpus: Vec<u32>,
    priority: Option<i32>,
    idle_ttl: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    served_name: Option<String>,
    sleep_level: Option<u8>,
    wake_timeout: Option<String>,
    queue_size: Option<usize>,
    queue_timeout: Option<String>,
    max_restarts: Option<u32>,
}

/// A command as an argument list, or as one string split at whitespace (no shell).
#[derive(Deserialize)]
#[serde(untagged)]
enum Command {
    Line(String),
    Args(Vec<String>),
}

fn duration(what: &str, text: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(t) => acb_core::units::parse_duration(t).map_err(|e| ConfigError(format!("{what}: {e}"))),
    }
}

/// A model name the router can route and the assigner can show: 1 to 200 bytes of letters,
/// digits and `._:/@+-`.
fn check_name(what: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 200 {
        return err(format!("{what} {name:?}: a model name is 1 to 200 bytes"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._:/@+-".contains(*c))) {
        return err(format!("{what} {name:?}: {c:?} is not allowed in a model name (letters, digits and ._:/@+- are)"));
    }
    Ok(())
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read the configuration {}: {e}", path.display())))?;
        Config::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError(e.to_string().trim_end().to_string()))?;
        let listen = match file.listen.as_deref() {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(l) => l
                .parse()
                .map_err(|_| ConfigError(format!("listen = {l:?}: give an IP address and port, as 127.0.0.1:8080")))?,
        };
        let drain_timeout = duration("drain_timeout", file.drain_timeout.as_deref(), Duration::from_secs(30))?;
        let header_timeout = duration("header_timeout", file.header_timeout.as_deref(), Duration::from_secs(30))?;
        if header_timeout.is_zero() {
            return err("header_timeout is 0: no request could arrive");
        }
        let max_body = match file.max_body.as_deref() {
            None => 32 << 20,
            Some(s) => acb_core::units::parse_size(s)
                .ok()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| ConfigError(format!("max_body = {s:?}: give a size over 0, as 32MiB")))?,
        };
        let d = &file.defaults;
        let d_idle = duration("defaults.idle_ttl", d.idle_ttl.as_deref(), Duration::from_secs(300))?;
        let d_wake = duration("defaults.wake_timeout", d.wake_timeout.as_deref(), Duration::from_secs(300))?;
        let d_queue_timeout = duration("defaults.queue_timeout", d.queue_timeout.as_deref(), Duration::from_secs(600))?;
        if file.models.is_empty() {
            return err("no models: add a [models.NAME] table for each model");
        }
        let mut models = Vec::new();
        let mut names: HashMap<String, String> = HashMap::new();
        let mut ports: HashMap<u16, String> = HashMap::new();
        for (name, m) in file.models {
            let what = format!("models.{name}");
            check_name("model", &name)?;
            for a in std::iter::once(&name).chain(&m.aliases) {
                check_name(&format!("{what}: alias"), a)?;
                if let Some(other) = names.insert(a.clone(), name.clone()) {
                    return err(format!("{what}: the name {a:?} is already model {other:?}'s"));
                }
            }
            let command = match m.command {
                None => None,
                Some(Command::Line(l)) => Some(l.split_whitespace().map(str::to_string).collect::<Vec<_>>()),
                Some(Command::Args(a)) => Some(a),
            };
            if command.as_ref().is_some_and(|c| c.is_empty() || c[0].is_empty()) {
                return err(format!("{what}: command is empty"));
            }
            if command.is_none() && m.engine != Engine::Vllm {
                return err(format!(
                    "{what}: engine {:?} needs a command (only a vllm model may name a running server by url alone)",
                    m.engine.name()
                ));
            }
            let uses_port = command.as_ref().is_some_and(|c| c.iter().any(|a| a.contains("{port}")));
            if uses_port && m.port.is_none() {
                return err(format!("{what}: the command uses {{port}} but no port is set"));
            }
            let url = match (m.url, m.port) {
                (Some(u), _) => u,
                (None, Some(p)) => format!("http://127.0.0.1:{p}"),
                (None, None) => return err(format!("{what}: give the server's port (or its url)")),
            };
            let url = url.trim_end_matches('/').to_string();
            check_url(&what, &url)?;
            if let Some(p) = m.port
                && let Some(other) = ports.insert(p, name.clone())
            {
                return err(format!("{what}: port {p} is already model {other:?}'s"));
            }
            let health = m.health.unwrap_or_else(|| "/health".into());
            if !health.starts_with('/') {
                return err(format!("{what}: health = {health:?} is a path, starting with /"));
            }
            let gpus = m.gpus.unwrap_or(1);
            if gpus == 0 || gpus > 64 {
                return err(format!("{what}: gpus = {gpus}: a model needs 1 to 64 GPUs"));
            }
            let memory = match m.memory.as_deref() {
                None => None,
                Some(s) => Some(
                    acb_core::units::parse_size(s)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| ConfigError(format!("{what}: memory = {s:?}: give a size over 0, as 8GiB")))?,
                ),
            };
            let sleep_level = m.sleep_level.or(d.sleep_level).unwrap_or(1);
            if !(1..=2).contains(&sleep_level) {
                return err(format!("{what}: sleep_level = {sleep_level}: vLLM's levels are 1 and 2"));
            }
            let queue_size = m.queue_size.or(d.queue_size).unwrap_or(64);
            if !(1..=1_000_000).contains(&queue_size) {
                return err(format!(
                    "{what}: queue_size = {queue_size}: 1 to 1000000 (a request for a sleeping model waits in the queue \
                     while the model wakes)"
                ));
            }
            let idle_ttl = duration(&format!("{what}.idle_ttl"), m.idle_ttl.as_deref(), d_idle)?;
            let wake_timeout = duration(&format!("{what}.wake_timeout"), m.wake_timeout.as_deref(), d_wake)?;
            if wake_timeout.is_zero() {
                return err(format!("{what}: wake_timeout is 0"));
            }
            let queue_timeout =
                duration(&format!("{what}.queue_timeout"), m.queue_timeout.as_deref(), d_queue_timeout)?;
            if queue_timeout.is_zero() {
                return err(format!("{what}: queue_timeout is 0: no request could wait for a wake"));
            }
            let served_name = m.served_name.unwrap_or_else(|| name.clone());
            if served_name.is_empty() || served_name.len() > 1000 || served_name.chars().any(char::is_control) {
                return err(format!("{what}: served_name is 1 to 1000 bytes with no control characters"));
            }
            models.push(Model {
                name,
                aliases: m.aliases,
                served_name,
                engine: m.engine,
                command,
                env: m.env,
                url,
                port: m.port,
                health,
                gpus,
                memory,
                required_gpus: m.required_gpus,
                priority: m.priority.unwrap_or(0),
                idle_ttl,
                sleep_level,
                wake_timeout,
                queue_size,
                queue_timeout,
                max_restarts: m.max_restarts.or(d.max_restarts).unwrap_or(3),
                agarun: d.agarun.clone().unwrap_or_else(|| "agarun".into()),
            });
        }
        Ok(Config {
            listen,
            assigner: file.assigner,
            auth_token_file: file.auth_token_file,
            drain_timeout,
            max_body,
            header_timeout,
            models,
        })
    }
}

/// The router speaks plain HTTP/1.1 to its servers: `http://HOST:PORT` with no path.
fn check_url(what: &str, url: &str) -> Result<(), ConfigError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return err(format!("{what}: url = {url:?}: the router reaches its servers over http:// (no TLS)"));
    };
    let ok = !rest.is_empty()
        && !rest.contains('/')
        && rest
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return err(format!("{what}: url = {url:?}: give http://HOST:PORT, with no path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:9000"
[defaults]
idle_ttl = "10s"
[models.small]
engine = "vllm"
command = "vllm serve small --port {port} --enable-sleep-mode"
port = 8001
memory = "8GiB"
aliases = ["gpt-small"]
[models.big]
engine = "process"
command = ["llama-server", "-m", "big.gguf", "--port", "{port}"]
port = 8002
idle_ttl = "1m"
"#;

    #[test]
    fn parses_a_good_file() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.listen.port(), 9000);
        let names = c.lookup();
        let small = &c.models[names["gpt-small"]];
        assert_eq!(small.name, "small");
        assert_eq!(small.memory, Some(8 << 30));
        assert_eq!(small.idle_ttl, Duration::from_secs(10));
        assert_eq!(small.url, "http://127.0.0.1:8001");
        assert_eq!(small.command.as_ref().unwrap()[0], "vllm");
        assert_eq!(small.job(), "router:small");
        let big = &c.models[names["big"]];
        assert_eq!(big.engine, Engine::Process);
        assert_eq!(big.idle_ttl, Duration::from_secs(60));
        assert_eq!(big.command.as_ref().unwrap()[4], "{port}");
    }

    #[test]
    fn refuses_mistakes_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "no models"),
            ("[models.a]\nengine = \"tgi\"\nport = 1", "unknown variant"),
            ("[models.a]\nengine = \"process\"\nport = 1", "needs a command"),
            ("[models.a]\nengine = \"vllm\"", "port"),
            ("[models.a]\nengine = \"vllm\"\nport = 1\nmemory = \"lots\"", "memory"),
            ("[models.a]\nengine = \"vllm\"\nport = 1\nsleep_level = 3", "sleep_level"),
            ("[models.a]\nengine = \"vllm\"\nport = 1\nurl = \"https://x:1\"", "http://"),
            ("[models.a]\nengine = \"vllm\"\nport = 1\n[models.b]\nengine = \"vllm\"\nport = 1", "port 1"),
            (
                "[models.a]\nengine = \"vllm\"\nport = 1\naliases = [\"b\"]\n[models.b]\nengine = \"vllm\"\nport = 2",
                "already",
            ),
            ("[models.\"a b\"]\nengine = \"vllm\"\nport = 1", "not allowed"),
            ("[models.a]\nengine = \"vllm\"\nport = 1\ncommand = \"x --port\"\ngpus = 0", "gpus"),
            ("[models.a]\nengine = \"process\"\ncommand = \"x {port}\"\nurl = \"http://h:1\"", "no port"),
            ("[models.a]\nengine = \"vllm\"\nport = 1\nidle_ttl = \"-1s\"", "idle_ttl"),
            ("[models.a]\nengine = \"vllm\"\nport = 1\ncolour = 1", "unknown field"),
            ("listen = \"localhost\"\n[models.a]\nengine = \"vllm\"\nport = 1", "listen"),
            ("[models.a]\nengine = \"vllm\"\nport = 1\nqueue_size = 0", "queue_size"),
            ("[models.a]\nengine = \"vllm\"\nport = 1\nqueue_timeout = \"0s\"", "queue_timeout"),
        ];
        for (text, needle) in cases {
            let e = Config::parse(text).unwrap_err().0;
            assert!(e.contains(needle), "{text:?}: {e:?} lacks {needle:?}");
        }
    }
}
