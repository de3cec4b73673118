//! `acb-test-model` — **TEST DOUBLE: not a model; a test double for acb-router's tests and
//! benchmark.** No weights, no GPU, no inference.
//!
//! It behaves like an OpenAI-compatible LLM server (vLLM flavour) closely enough for a router to
//! be tested against it: `/v1/chat/completions`, `/v1/completions` (both also streaming, as
//! server-sent events), `/v1/embeddings`, `/v1/models`, `/health`, and vLLM's sleep mode
//! (`POST /sleep?level=1|2`, `POST /wake_up`, `GET /is_sleeping`). Output is deterministic:
//! the text is `"{name} heard:"` followed by the prompt's words in reverse order (at most
//! `max_tokens` of them, default 16), and the response id is `cmpl-` + the FNV-1a 64 hash of the
//! raw request body, so a test can compare the bytes of a direct and a routed answer.
//!
//! What a test can check, through `GET /stats`:
//! - `requests`: completion/embedding requests received (all of them, also those refused);
//! - `requests_while_sleeping`: of those, the ones that arrived while asleep (answered 503; a
//!   correct router never sends one);
//! - `sleeps` / `wakes`: `POST /sleep` and `POST /wake_up` calls answered 200;
//! - `violations`: wakes (or an awake start) that found the `--gpu-lock` file locked by another
//!   process, i.e. two models "on the one GPU" at once;
//! - `slept_in_flight`: sleeps that arrived while requests were still being answered;
//! - `in_flight` (including unfinished streams) and `sleeping`.
//!
//! `--token-delay-ms` paces stream chunks; a non-streaming answer takes as long as the stream
//! would have. `--exit-after N` simulates a crash: after answering N requests (200s), the process
//! exits with code 3; requests arriving meanwhile are never answered.

use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// TEST DOUBLE (not a model): an OpenAI-compatible server with vLLM's sleep endpoints and
/// deterministic text, for acb-router's tests and benchmark.
#[derive(Debug, Parser)]
#[command(name = "acb-test-model", version)]
struct Args {
    /// Address to listen on; prints `listening on http://IP:PORT` once ready.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The model id it serves.
    #[arg(long)]
    name: String,
    /// Delay between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Sleep this long before binding (simulates loading a model), in milliseconds.
    #[arg(long, default_value_t = 0)]
    start_delay_ms: u64,
    /// A file standing for the simulated GPU's memory: held with an exclusive flock while awake.
    #[arg(long)]
    gpu_lock: Option<PathBuf>,
    /// Start sleeping (without the GPU lock).
    #[arg(long)]
    start_asleep: bool,
    /// Make `POST /wake_up` fail with 500 and stay asleep.
    #[arg(long)]
    fail_wake: bool,
    /// Exit with code 3 after answering this many completion/embedding requests (a crash).
    #[arg(long)]
    exit_after: Option<u64>,
}

/// The one simulated GPU's state, changed under one lock so that sleeping and counting
/// in-flight requests cannot race.
#[derive(Debug)]
struct Gpu {
    sleeping: bool,
    in_flight: u64,
    lock_held: bool,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    requests_while_sleeping: AtomicU64,
    sleeps: AtomicU64,
    wakes: AtomicU64,
    violations: AtomicU64,
    slept_in_flight: AtomicU64,
    answered: AtomicU64,
}

#[derive(Debug)]
struct Model {
    name: String,
    token_delay: Duration,
    fail_wake: bool,
    exit_after: Option<u64>,
    lock_file: Option<File>,
    gpu: Mutex<Gpu>,
    counters: Counters,
    dying: AtomicBool,
}

type Shared = Arc<Model>;

impl Model {
    fn gpu(&self) -> MutexGuard<'_, Gpu> {
        self.gpu.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the GPU lock (if any) on becoming awake; counts a violation if another holds it.
    fn take_gpu(&self, gpu: &mut Gpu) {
        let Some(file) = &self.lock_file else { return };
        if gpu.lock_held {
            return;
        }
        match flock(file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => gpu.lock_held = true,
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                self.counters.violations.fetch_add(1, Ordering::SeqCst);
                eprintln!("VIOLATION: {} woke while another held the GPU", self.name);
            }
            Err(e) => eprintln!("acb-test-model {}: flock on the GPU lock failed: {e}", self.name),
        }
    }

    fn release_gpu(&self, gpu: &mut Gpu) {
        let Some(file) = &self.lock_file else { return };
        if gpu.lock_held {
            if let Err(e) = flock(file, libc::LOCK_UN) {
                eprintln!("acb-test-model {}: unlocking the GPU lock failed: {e}", self.name);
            }
            gpu.lock_held = false;
        }
    }

    /// Called when a request has been answered in full; starts the simulated crash if due.
    fn answered(self: &Arc<Self>) {
        let n = self.counters.answered.fetch_add(1, Ordering::SeqCst) + 1;
        if self.exit_after.is_some_and(|limit| n >= limit) && !self.dying.swap(true, Ordering::SeqCst) {
            eprintln!("acb-test-model {}: exiting with code 3 after {n} requests (--exit-after)", self.name);
            tokio::spawn(async {
                // Leaves the last answer time to reach the client.
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::process::exit(3);
            });
        }
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: the descriptor belongs to `file`, which stays open for the call; flock reads no
    // memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Counts a request as in flight from creation until dropped (at the end of a stream for a
/// streamed answer).
#[derive(Debug)]
struct InFlight(Shared);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut gpu = self.0.gpu();
        gpu.in_flight = gpu.in_flight.saturating_sub(1);
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(status, &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}))
}

fn bad_request(message: &str) -> Response {
    openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

/// Admits a completion/embedding request: counts it, refuses it while asleep, and otherwise
/// counts it in flight (under the GPU lock, so a sleep cannot slip in between).
async fn admit(model: &Shared) -> Result<InFlight, Response> {
    model.counters.requests.fetch_add(1, Ordering::SeqCst);
    if model.dying.load(Ordering::SeqCst) {
        // The simulated crash is under way: this request is never answered.
        std::future::pending::<()>().await;
    }
    let mut gpu = model.gpu();
    if gpu.sleeping {
        model.counters.requests_while_sleeping.fetch_add(1, Ordering::SeqCst);
        let message = format!("{} is sleeping (test double)", model.name);
        return Err(openai_error(StatusCode::SERVICE_UNAVAILABLE, "server_error", &message));
    }
    gpu.in_flight += 1;
    Ok(InFlight(Arc::clone(model)))
}

async fn chat(State(model): State<Shared>, body: Bytes) -> Response {
    generate(model, Endpoint::Chat, body).await
}

async fn completions(State(model): State<Shared>, body: Bytes) -> Response {
    generate(model, Endpoint::Completions, body).await
}

async fn embeddings(State(model): State<Shared>, body: Bytes) -> Response {
    generate(model, Endpoint::Embeddings, body).await
}

/// The prompt's text: chat messages' contents joined by spaces (string contents, or the `text`
/// of array-of-parts contents), or the completion's `prompt` (a string or array of strings).
fn prompt_text(endpoint: Endpoint, req: &Value) -> Result<String, String> {
    match endpoint {
        Endpoint::Chat => {
            let messages = req.get("messages").and_then(Value::as_array).ok_or("`messages` must be an array")?;
            let mut parts = Vec::new();
            for message in messages {
                match message.get("content") {
                    Some(Value::String(s)) => parts.push(s.clone()),
                    Some(Value::Array(items)) => {
                        parts.extend(items.iter().filter_map(|p| p.get("text")?.as_str().map(str::to_owned)));
                    }
                    Some(Value::Null) | None => {}
                    Some(_) => return Err("message `content` must be a string or an array".into()),
                }
            }
            Ok(parts.join(" "))
        }
        Endpoint::Completions => match req.get("prompt") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|p| p.as_str().map(str::to_owned).ok_or_else(|| "`prompt` must be a string".to_owned()))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join(" ")),
            _ => Err("`prompt` must be a string".into()),
        },
        Endpoint::Embeddings => Err("no prompt for embeddings".into()),
    }
}

/// The answer as chunks: the prefix, then up to `max_tokens` reversed prompt words, each with
/// its leading space. Their concatenation is the answer's text.
fn answer_pieces(name: &str, prompt: &str, max_tokens: usize) -> Vec<String> {
    let mut pieces = vec![format!("{name} heard:")];
    pieces.extend(prompt.split_whitespace().rev().take(max_tokens).map(|w| format!(" {w}")));
    pieces
}

async fn generate(model: Shared, endpoint: Endpoint, body: Bytes) -> Response {
    let guard = match admit(&model).await {
        Ok(guard) => guard,
        Err(response) => return response,
    };
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad_request("the request body must be a JSON object"),
        Err(e) => return bad_request(&format!("malformed JSON body: {e}")),
    };
    if endpoint == Endpoint::Embeddings {
        return embed(model, guard, &req).await;
    }
    let prompt = match prompt_text(endpoint, &req) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let max_tokens = match req.get("max_tokens").or_else(|| req.get("max_completion_tokens")) {
        None | Some(Value::Null) => 16,
        Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => n,
            None => return bad_request("`max_tokens` must be a non-negative integer"),
        },
    };
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad_request("`stream` must be a boolean"),
    };
    let id = format!("cmpl-{:016x}", fnv1a(&body));
    let pieces = answer_pieces(&model.name, &prompt, max_tokens);
    let prompt_tokens = prompt.split_whitespace().count();
    if stream {
        return stream_answer(model, guard, endpoint, id, pieces);
    }
    let delay = model.token_delay.saturating_mul(u32::try_from(pieces.len()).unwrap_or(u32::MAX));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let text = pieces.concat();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": pieces.len(),
        "total_tokens": prompt_tokens + pieces.len(),
    });
    let choice = match endpoint {
        Endpoint::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": "stop",
        }),
        _ => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}),
    };
    let object = if endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" };
    let answer = json!({
        "id": id,
        "object": object,
        "created": 0,
        "model": model.name,
        "choices": [choice],
        "usage": usage,
    });
    drop(guard);
    model.answered();
    json_response(StatusCode::OK, &answer)
}

fn stream_answer(model: Shared, guard: InFlight, endpoint: Endpoint, id: String, pieces: Vec<String>) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(8);
    tokio::spawn(async move {
        let chunk = |delta: Option<&str>, first: bool| -> Value {
            let finish = if delta.is_some() { Value::Null } else { json!("stop") };
            let (object, choice) = match endpoint {
                Endpoint::Chat => {
                    let delta = match delta {
                        Some(text) if first => json!({"role": "assistant", "content": text}),
                        Some(text) => json!({"content": text}),
                        None => json!({}),
                    };
                    ("chat.completion.chunk", json!({"index": 0, "delta": delta, "finish_reason": finish}))
                }
                _ => {
                    let text = delta.unwrap_or("");
                    ("text_completion", json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}))
                }
            };
            json!({"id": id, "object": object, "created": 0, "model": model.name, "choices": [choice]})
        };
        let mut events: Vec<String> =
            pieces.iter().enumerate().map(|(i, piece)| format!("data: {}\n\n", chunk(Some(piece), i == 0))).collect();
        events.push(format!("data: {}\n\n", chunk(None, false)));
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 && !model.token_delay.is_zero() {
                tokio::time::sleep(model.token_delay).await;
            }
            if tx.send(Ok(Bytes::from(event))).await.is_err() {
                return; // The client went away; `guard` ends the request.
            }
        }
        if tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await.is_ok() {
            drop(guard);
            model.answered();
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

/// Eight values in [-1, 1], rounded to 6 decimals, derived from the FNV-1a hash of `text`.
fn embedding_of(text: &str) -> Vec<f64> {
    let mut state = fnv1a(text.as_bytes());
    (0..8)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let unit = (z >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
            ((unit * 2.0 - 1.0) * 1e6).round() / 1e6
        })
        .collect()
}

async fn embed(model: Shared, guard: InFlight, req: &Value) -> Response {
    let inputs: Vec<&str> = match req.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => match items.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
            Some(v) => v,
            None => return bad_request("`input` must be a string or an array of strings"),
        },
        _ => return bad_request("`input` must be a string or an array of strings"),
    };
    if !model.token_delay.is_zero() {
        tokio::time::sleep(model.token_delay).await;
    }
    let tokens: usize = inputs.iter().map(|s| s.split_whitespace().count()).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": embedding_of(s)}))
        .collect();
    let answer = json!({
        "object": "list",
        "data": data,
        "model": model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    drop(guard);
    model.answered();
    json_response(StatusCode::OK, &answer)
}

async fn health() -> &'static str {
    "ok"
}

async fn models(State(model): State<Shared>) -> Response {
    let list = json!({
        "object": "list",
        "data": [{"id": model.name, "object": "model", "created": 0, "owned_by": "acb-test-model"}],
    });
    json_response(StatusCode::OK, &list)
}

#[derive(Debug, Deserialize)]
struct SleepQuery {
    level: Option<String>,
}

async fn sleep(State(model): State<Shared>, Query(query): Query<SleepQuery>) -> Response {
    match query.level.as_deref().map(str::trim) {
        None | Some("1" | "2") => {}
        Some(other) => return bad_request(&format!("sleep level must be 1 or 2, not {other:?}")),
    }
    let mut gpu = model.gpu();
    if gpu.in_flight > 0 {
        model.counters.slept_in_flight.fetch_add(1, Ordering::SeqCst);
        eprintln!("acb-test-model {}: told to sleep with {} requests in flight", model.name, gpu.in_flight);
    }
    gpu.sleeping = true;
    model.release_gpu(&mut gpu);
    model.counters.sleeps.fetch_add(1, Ordering::SeqCst);
    StatusCode::OK.into_response()
}

async fn wake_up(State(model): State<Shared>) -> Response {
    if model.fail_wake {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "wake failed (test double --fail-wake)"}),
        );
    }
    let mut gpu = model.gpu();
    if gpu.sleeping {
        model.take_gpu(&mut gpu);
        gpu.sleeping = false;
    }
    model.counters.wakes.fetch_add(1, Ordering::SeqCst);
    StatusCode::OK.into_response()
}

async fn is_sleeping(State(model): State<Shared>) -> Response {
    let sleeping = model.gpu().sleeping;
    json_response(StatusCode::OK, &json!({"is_sleeping": sleeping}))
}

async fn stats(State(model): State<Shared>) -> Response {
    let (in_flight, sleeping) = {
        let gpu = model.gpu();
        (gpu.in_flight, gpu.sleeping)
    };
    let c = &model.counters;
    let get = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
    let body = json!({
        "name": model.name,
        "requests": get(&c.requests),
        "requests_while_sleeping": get(&c.requests_while_sleeping),
        "sleeps": get(&c.sleeps),
        "wakes": get(&c.wakes),
        "violations": get(&c.violations),
        "slept_in_flight": get(&c.slept_in_flight),
        "in_flight": in_flight,
        "sleeping": sleeping,
    });
    json_response(StatusCode::OK, &body)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            eprintln!("acb-test-model: cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let lock_file = match &args.gpu_lock {
        None => None,
        Some(path) => match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("acb-test-model {}: cannot open --gpu-lock {}: {e}", args.name, path.display());
                return ExitCode::from(2);
            }
        },
    };
    if args.start_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.start_delay_ms)).await;
    }
    let model = Arc::new(Model {
        name: args.name,
        token_delay: Duration::from_millis(args.token_delay_ms),
        fail_wake: args.fail_wake,
        exit_after: args.exit_after,
        lock_file,
        gpu: Mutex::new(Gpu { sleeping: args.start_asleep, in_flight: 0, lock_held: false }),
        counters: Counters::default(),
        dying: AtomicBool::new(false),
    });
    if !args.start_asleep {
        let mut gpu = model.gpu();
        model.take_gpu(&mut gpu);
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("acb-test-model {}: cannot listen on {}: {e}", model.name, args.listen);
            return ExitCode::from(2);
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("acb-test-model {}: cannot read the listening address: {e}", model.name);
            return ExitCode::from(2);
        }
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/sleep", post(sleep))
        .route("/wake_up", post(wake_up))
        .route("/is_sleeping", get(is_sleeping))
        .route("/stats", get(stats))
        .with_state(Arc::clone(&model));

    // No Nagle delay: a streamed chunk goes out when it is written (as vLLM's server does).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "listening on http://{addr}").and_then(|()| stdout.flush()).is_err() {
        eprintln!("acb-test-model {}: cannot write to stdout", model.name);
    }
    tokio::select! {
        () = shutdown_signal() => {}
        result = &mut server => {
            eprintln!("acb-test-model {}: the server stopped: {result:?}", model.name);
            return ExitCode::FAILURE;
        }
    }
    let _ = stop_tx.send(());
    // Open streams may hold the graceful shutdown up; give them a moment, no more.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    ExitCode::SUCCESS
}
