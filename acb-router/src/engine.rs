//! A model's server process and the calls that put it on a GPU and off it: start and stop
//! (process), `POST /wake_up` and `POST /sleep` (vLLM), start once under `agarun` (auto).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::config::{Engine, Model};

/// The HTTP client the router uses for its servers (proxied requests and control calls).
pub type HttpClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, axum::body::Body>;

/// A new [`HttpClient`]: HTTP/1.1, kept-alive connections, no proxy.
pub fn http_client() -> HttpClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(4)) // under uvicorn's 5 s keep-alive: no reuse of a closed connection
        .build(connector)
}

/// How a wake went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woke {
    /// The server was started (or restarted): a cold start.
    Cold,
    /// A sleeping server was woken.
    Warm,
    /// Nothing to do (auto engine, already running).
    Running,
}

/// One model's server as the router drives it.
#[derive(Debug)]
pub struct Backend {
    model: Arc<Model>,
    http: HttpClient,
    child: Option<Child>,
    /// A `url`-only vLLM server (no command) is running all along.
    external: bool,
}

/// Calls to a server's control endpoints time out after this long.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
/// A stopped server gets this long after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Backend {
    pub fn new(model: Arc<Model>, http: HttpClient) -> Backend {
        let external = model.command.is_none();
        Backend { model, http, child: None, external }
    }

    /// The server's process id, while the router runs one.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Brings the server up on the GPUs `devices` (node-local indexes, as `CUDA_VISIBLE_DEVICES`
    /// names them) and waits until it answers its health check, within the model's wake
    /// timeout.
    /// `deadline` bounds the whole wake, the grant before it included.
    pub async fn wake(&mut self, devices: &[u32], deadline: Instant) -> Result<Woke, String> {
        // A server that died while asleep is started again, not woken.
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            tracing::warn!(model = %self.model.name, %status, "the server died while asleep; starting it again");
            self.child = None;
        }
        match self.model.engine {
            Engine::Process => {
                self.start(devices).await?;
                self.wait_healthy(deadline).await?;
                Ok(Woke::Cold)
            }
            Engine::Auto => {
                if self.child.is_some() {
                    return Ok(Woke::Running);
                }
                self.start(devices).await?;
                self.wait_healthy(deadline).await?;
                Ok(Woke::Cold)
            }
            Engine::Vllm => {
                if !self.external && self.child.is_none() {
                    self.start(devices).await?;
                    self.wait_healthy(deadline).await?;
                    return Ok(Woke::Cold);
                }
                self.control("POST", "/wake_up", deadline).await?;
                Ok(Woke::Warm)
            }
        }
    }

    /// Takes the server off its GPU: stops it (process), puts it to sleep (vLLM). The auto
    /// engine's server stays as it is (its libacb releases the GPU itself).
    pub async fn sleep(&mut self) -> Result<(), String> {
        match self.model.engine {
            Engine::Process => {
                self.stop().await;
                Ok(())
            }
            Engine::Auto => Ok(()),
            Engine::Vllm => {
                let path = format!("/sleep?level={}", self.model.sleep_level);
                self.control("POST", &path, Instant::now() + CONTROL_TIMEOUT).await
            }
        }
    }

    /// Puts a running `url`-only vLLM server to sleep at the router's start, unless it sleeps
    /// already: it holds its GPU without a lease until then.
    pub async fn sleep_external(&mut self) -> Result<(), String> {
        if !(self.external && self.model.engine == Engine::Vllm) {
            return Ok(());
        }
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        let body = self.get("/is_sleeping", deadline).await?;
        let sleeping = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("is_sleeping").and_then(serde_json::Value::as_bool));
        match sleeping {
            Some(true) => Ok(()),
            Some(false) => self.sleep().await,
            None => Err(format!(
                "{} GET /is_sleeping did not answer {{\"is_sleeping\": bool}}: is it vLLM with VLLM_SERVER_DEV_MODE=1?",
                self.model.url
            )),
        }
    }

    /// Stops the server the router started (SIGTERM to its process group, SIGKILL after a grace).
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on the process group of our own child, which it leads (not yet
            // reaped: `id()` is Some).
            unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
        }
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
            if let Some(pid) = child.id() {
                // SAFETY: as above.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.wait().await;
        }
    }

    /// Waits until the server the router started exits, and says how; never returns while
    /// it runs none.
    pub async fn died(&mut self) -> String {
        let Some(child) = self.child.as_mut() else { return std::future::pending().await };
        let status = child.wait().await;
        self.child = None;
        match status {
            Ok(s) => format!("the server exited ({s})"),
            Err(e) => format!("the server could not be waited for: {e}"),
        }
    }

    /// Something already answering on the server's address is not this model's server: the
    /// router would route to it and count the real one's failures. (A server of this model that
    /// is still exiting gets 3 s to let go of it.)
    async fn check_port_free(&self) -> Result<(), String> {
        let Some(addr) = self.model.url.strip_prefix("http://") else { return Ok(()) };
        let until = Instant::now() + Duration::from_secs(3);
        loop {
            let probe = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await;
            if !matches!(probe, Ok(Ok(_))) {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "{} is already in use by another process: the router does not route to a server it did not start",
                    self.model.url
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn start(&mut self, devices: &[u32]) -> Result<(), String> {
        self.check_port_free().await?;
        let Some(command) = &self.model.command else {
            return Err("no command to start the server with".into());
        };
        let port = self.model.port.map(|p| p.to_string()).unwrap_or_default();
        let mut args: Vec<String> = command.iter().map(|a| a.replace("{port}", &port)).collect();
        if self.model.engine == Engine::Auto {
            let job = self.model.job();
            let mut wrapped =
                vec![self.model.agarun.clone(), "--mode".into(), "auto".into(), "--job".into(), job, "--".into()];
            wrapped.append(&mut args);
            args = wrapped;
        }
        if !runnable(&args[0]) {
            return Err(format!("cannot start {:?}: no such executable (as a path, or in PATH)", args[0]));
        }
        // The guardian (this program, `--guard`) runs the command in its process group and stops
        // the whole group when the router dies, even servers behind a wrapper script.
        let me = std::env::current_exe().map_err(|e| format!("cannot find the router's own program: {e}"))?;
        let mut cmd = Command::new(me);
        cmd.arg(crate::cli::GUARD_FLAG)
            .arg("--")
            .args(&args)
            .envs(&self.model.env)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
        if self.model.engine == Engine::Vllm {
            cmd.env("VLLM_SERVER_DEV_MODE", "1");
        }
        if self.model.engine != Engine::Auto {
            let ids: Vec<String> = devices.iter().map(u32::to_string).collect();
            cmd.env("CUDA_VISIBLE_DEVICES", ids.join(","));
        }
        // SAFETY: prctl(2) in the child before exec, async-signal-safe: the server gets SIGTERM
        // if the router dies without stopping it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {:?}: {e}", args[0]))?;
        tracing::info!(model = %self.model.name, pid = child.id(), command = ?args, "started the server");
        self.child = Some(child);
        Ok(())
    }

    /// Polls the health path until it answers 2xx; fails at `deadline` or when the server dies.
    async fn wait_healthy(&mut self, deadline: Instant) -> Result<(), String> {
        let started = Instant::now();
        let url = format!("{}{}", self.model.url, self.model.health);
        let mut pause = Duration::from_millis(20);
        let mut last = String::from("no answer yet");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("the server exited while starting ({status}); last health check: {last}"));
            }
            match self.request("GET", &url, (Instant::now() + Duration::from_secs(5)).min(deadline)).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() + pause >= deadline {
                self.stop().await;
                return Err(format!(
                    "not healthy within the wake timeout ({} s, {:.1} s of it spent starting): GET {url}: {last}",
                    self.model.wake_timeout.as_secs_f64(),
                    started.elapsed().as_secs_f64()
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn control(&self, method: &str, path: &str, deadline: Instant) -> Result<(), String> {
        let url = format!("{}{path}", self.model.url);
        self.request(method, &url, deadline).await.map(drop).map_err(|e| format!("{method} {url}: {e}"))
    }

    async fn get(&self, path: &str, deadline: Instant) -> Result<Bytes, String> {
        let url = format!("{}{path}", self.model.url);
        self.request("GET", &url, deadline).await.map_err(|e| format!("GET {url}: {e}"))
    }

    /// One bodiless request; its body if the status is 2xx.
    async fn request(&self, method: &str, url: &str, deadline: Instant) -> Result<Bytes, String> {
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .body(axum::body::Body::new(Empty::<Bytes>::new()))
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self.http.request(req).await.map_err(|e| acb_client::connection::source_chain(&e))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                Err(format!("answered {status}: {text}"))
            }
        };
        match tokio::time::timeout_at(deadline, call).await {
            Ok(r) => r,
            Err(_) => Err("no answer in time".into()),
        }
    }
}

/// Whether `program` names an executable file: a path, or a name found in `PATH`.
fn runnable(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let executable =
        |p: &std::path::Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return executable(std::path::Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| executable(&d.join(program))))
}
