//! Helpers shared by the router's tests and benchmark: processes (the assigner, the router, the
//! test model servers) that are killed when dropped, and a small HTTP/1.1 client over a plain
//! `TcpStream` that returns a response's bytes exactly as they came.
//!
//! Test support: a failed step panics with what went wrong, as a test would.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL) and reaped when dropped unless it has exited.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `cmd` with its stdout read line by line; stderr goes to the test's.
    pub fn spawn(mut cmd: Command) -> Result<Proc, String> {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { child, lines: rx })
    }

    /// The next stdout line containing `needle`, within `timeout`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(_) => {}
                Err(_) => return Err(format!("no line containing {needle:?} within {timeout:?}")),
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, not reaped before drop.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits up to `timeout` for the process to exit; its exit code (None: killed by a signal,
    /// or still running and then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(s.code());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("still running after {timeout:?}; killed"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("acb-router-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port free on 127.0.0.1 now (bound to port 0 and closed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// An assigner (`serve`) on a Unix socket in `dir`, with `extra` flags; ready when returned.
pub fn assigner(bin: &Path, dir: &TempDir, extra: &[&str]) -> (Proc, String) {
    let socket = dir.path("assigner.sock");
    let addr = format!("unix:{}", socket.display());
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", &addr]).args(extra).env("RUST_LOG", "warn");
    let p = Proc::spawn(cmd).unwrap_or_else(|e| panic!("{e}"));
    p.wait_line("ready", Duration::from_secs(20)).unwrap_or_else(|e| panic!("assigner: {e}"));
    (p, addr)
}

/// The test model server (a test double) named `name` on a free port, with `extra` flags;
/// ready when returned. Returns it and its base URL.
pub fn test_model(bin: &Path, name: &str, extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(bin);
    cmd.args(["--name", name, "--listen", "127.0.0.1:0"]).args(extra);
    let p = Proc::spawn(cmd).unwrap_or_else(|e| panic!("{e}"));
    let line = p.wait_line("listening on", Duration::from_secs(20)).unwrap_or_else(|e| panic!("test model: {e}"));
    let url = line.rsplit(' ').next().unwrap_or_default().trim().to_string();
    (p, url)
}

/// The router with the configuration `toml` (written to `dir`), on a free port; ready when
/// returned. Returns it and its `host:port`.
pub fn router(bin: &Path, dir: &TempDir, toml: &str) -> (Proc, String) {
    let config = dir.path("router.toml");
    std::fs::write(&config, toml).unwrap_or_else(|e| panic!("write config: {e}"));
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config).args(["--listen", "127.0.0.1:0"]);
    cmd.env("RUST_LOG", std::env::var("ACB_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()));
    let p = Proc::spawn(cmd).unwrap_or_else(|e| panic!("{e}"));
    let line = p.wait_line("listening on", Duration::from_secs(20)).unwrap_or_else(|e| panic!("router: {e}"));
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_default();
    (p, url.trim_start_matches("http://").to_string())
}

/// An HTTP response as it came.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked: the bytes the server sent as its content.
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request (`Connection: close`), bounded by `timeout`. `addr` is `host:port`, with or
/// without `http://`.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&[u8]>, timeout: Duration) -> Result<Response, String> {
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|()| s.write_all(body)).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read from {addr}: {e}"))?;
    parse_response(&raw)
}

/// `POST path` with a JSON body.
pub fn post(addr: &str, path: &str, body: &serde_json::Value) -> Result<Response, String> {
    http(addr, "POST", path, Some(body.to_string().as_bytes()), Duration::from_secs(60))
}

/// `GET path`.
pub fn get(addr: &str, path: &str) -> Result<Response, String> {
    http(addr, "GET", path, None, Duration::from_secs(30))
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Ok(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Runs `acb-assigner watch --replay --no-follow --json` and returns the events.
pub fn events(bin: &Path, addr: &str) -> Vec<serde_json::Value> {
    let out = Command::new(bin)
        .args(["watch", "--replay", "--no-follow", "--json", "--assigner", addr])
        .output()
        .unwrap_or_else(|e| panic!("watch: {e}"));
    assert!(out.status.success(), "watch failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("watch line {l:?}: {e}")))
        .collect()
}

/// The most leases held at once in an event record, and the leases granted per job.
pub fn holders(events: &[serde_json::Value]) -> (usize, std::collections::BTreeMap<String, usize>) {
    let mut held = std::collections::BTreeSet::new();
    let mut most = 0;
    let mut grants = std::collections::BTreeMap::new();
    for e in events {
        match e["event"].as_str() {
            Some("granted") => {
                held.insert(e["lease"].as_u64());
                most = most.max(held.len());
                *grants.entry(e["job"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
            }
            Some("released" | "taken-back") => {
                held.remove(&e["lease"].as_u64());
            }
            _ => {}
        }
    }
    (most, grants)
}

/// A kept-alive HTTP/1.1 connection for the benchmark: one request at a time, responses read by
/// `content-length` or chunked encoding.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
    host: String,
}

/// One timed exchange.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub status: u16,
    /// From the request's first byte sent to the response body's first byte read.
    pub first_byte: Duration,
    /// From the request's first byte sent to the response's last byte read.
    pub total: Duration,
    pub body_bytes: usize,
}

impl Conn {
    pub fn connect(addr: &str) -> Result<Conn, String> {
        let host = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
        let s = TcpStream::connect(&host).map_err(|e| format!("connect {host}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        Ok(Conn { reader: BufReader::new(s), host })
    }

    /// `POST path` with `body`; the whole response read.
    pub fn post(&mut self, path: &str, body: &[u8]) -> Result<Timed, String> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        let start = Instant::now();
        self.reader.get_mut().write_all(&msg).map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        let mut status = 0;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).map_err(|e| format!("read: {e}"))? == 0 {
                return Err("the connection closed".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status == 0 {
                status = l.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
            } else if let Some((n, v)) = l.split_once(':') {
                let (n, v) = (n.trim().to_ascii_lowercase(), v.trim());
                if n == "content-length" {
                    length = v.parse().ok();
                } else if n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut first_byte = None;
        let mut body_bytes = 0;
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|e| format!("chunk size {line:?}: {e}"))?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).map_err(|e| format!("read: {e}"))?;
                if size == 0 {
                    break;
                }
                first_byte.get_or_insert_with(|| start.elapsed());
                body_bytes += size;
            }
        } else {
            let n = length.ok_or("no content-length and not chunked")?;
            let mut buf = vec![0; n];
            self.reader.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
            first_byte = Some(start.elapsed());
            body_bytes = n;
        }
        let total = start.elapsed();
        Ok(Timed { status, first_byte: first_byte.unwrap_or(total), total, body_bytes })
    }
}

/// A chat completion request for `model` with one user message.
pub fn chat(model: &str, prompt: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

/// The router's `/running` list.
pub fn running(router: &str) -> Vec<serde_json::Value> {
    get(router, "/running").unwrap_or_else(|e| panic!("/running: {e}")).json()["models"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// One model's entry in `/running`.
pub fn model_state(router: &str, name: &str) -> serde_json::Value {
    running(router).into_iter().find(|m| m["model"] == name).unwrap_or_else(|| panic!("{name} not in /running"))
}

/// Polls `ok` every 50 ms; panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
