//! The router's HTTP side: OpenAI-compatible endpoints routed by the body's `model` field, with
//! the model's server's answer passed through byte for byte (streams included), plus
//! `/running`, `/metrics` and `/health`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router as AxumRouter;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use crate::config::Config;
use crate::engine::HttpClient;
use crate::metrics::{Metrics, RequestLabels};
use crate::model::{ModelHandle, Refusal, Ticket};

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub models: Vec<Arc<ModelHandle>>,
    pub names: HashMap<String, usize>,
    pub http: HttpClient,
    pub metrics: Arc<Metrics>,
}

/// The router's routes.
pub fn app(shared: Arc<Shared>) -> AxumRouter {
    AxumRouter::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(forward))
        .route("/v1/completions", post(forward))
        .route("/v1/embeddings", post(forward))
        .route("/running", get(running))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .fallback(not_found)
        .with_state(shared)
}

/// An error in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`.
pub fn openai_error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": serde_json::Value::Null, "code": code }
    });
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn not_found(method: Method, uri: Uri) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("not_found"),
        &format!(
            "no route {method} {}: the router serves /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, /running, /metrics, /health",
            uri.path()
        ),
    )
}

async fn list_models(State(s): State<Arc<Shared>>) -> Response {
    let mut data = Vec::new();
    for h in &s.models {
        let m = &h.model;
        for id in std::iter::once(&m.name).chain(&m.aliases) {
            data.push(serde_json::json!({
                "id": id, "object": "model", "created": 0, "owned_by": "acb-router",
                "root": m.name,
            }));
        }
    }
    axum::Json(serde_json::json!({ "object": "list", "data": data })).into_response()
}

async fn running(State(s): State<Arc<Shared>>) -> Response {
    let models: Vec<_> = s.models.iter().map(|h| h.running()).collect();
    axum::Json(serde_json::json!({ "models": models })).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let mut resp = s.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// Headers that belong to one hop, not to the request or answer.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

const UNKNOWN_MODEL: &str = "_unknown";

async fn forward(State(s): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let (label, resp) = route(&s, method, uri, headers, body, started).await;
    s.metrics.requests.get_or_create(&RequestLabels { model: label, code: resp.status().as_u16() }).inc();
    resp
}

async fn route(
    s: &Arc<Shared>,
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: Body,
    started: Instant,
) -> (String, Response) {
    let unknown = || UNKNOWN_MODEL.to_string();
    // A declared length over the limit is refused before any of the body is read (and before
    // hyper would answer an `Expect: 100-continue` with 100).
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.config.max_body as u64) {
        let msg = format!("the request body is over the router's limit of {} bytes (max_body)", s.config.max_body);
        return (unknown(), openai_error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None, &msg));
    }
    let mut bytes = match Limited::new(body, s.config.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let msg = format!("the request body is over the router's limit of {} bytes (max_body)", s.config.max_body);
            return (unknown(), openai_error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None, &msg));
        }
        Err(e) => {
            let msg = format!("could not read the request body: {e}");
            return (unknown(), openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", None, &msg));
        }
    };
    let mut body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("the request body is not valid JSON: {e}");
            return (unknown(), openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", None, &msg));
        }
    };
    let name = match body.get("model") {
        Some(serde_json::Value::String(m)) => m.clone(),
        Some(_) => {
            let msg = "\"model\" must be a string naming one of /v1/models";
            return (unknown(), openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", None, msg));
        }
        None if !body.is_object() => {
            let msg = "the request body must be a JSON object";
            return (unknown(), openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", None, msg));
        }
        None => {
            let msg = "the request has no \"model\": name one of /v1/models";
            return (unknown(), openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", None, msg));
        }
    };
    let Some(&index) = s.names.get(&name) else {
        let shown: String = name.chars().take(200).collect();
        let msg = format!(
            "The model `{shown}` does not exist: the router serves {}",
            s.config.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        return (
            unknown(),
            openai_error(StatusCode::NOT_FOUND, "invalid_request_error", Some("model_not_found"), &msg),
        );
    };
    let handle = &s.models[index];
    let label = handle.model.name.clone();
    if name != handle.model.served_name {
        // An alias, or a name the server does not know (vLLM answers 404 to any name but its
        // served ones): the server gets its own name.
        body["model"] = serde_json::Value::String(handle.model.served_name.clone());
        match serde_json::to_vec(&body) {
            Ok(b) => bytes = b.into(),
            Err(e) => {
                let msg = format!("cannot forward the request: {e}");
                return (label, openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", None, &msg));
            }
        }
    }
    let ticket = match handle.admit().await {
        Ok(t) => t,
        Err(r) => return (label, refused(&handle.model.name, r)),
    };
    let Some(path) = uri.path_and_query().map(|p| p.as_str()) else {
        return (label, openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", None, "no path"));
    };
    let target = format!("{}{}", handle.model.url, path);
    headers.retain_hop_by_hop();
    let mut req = http::Request::builder().method(method).uri(&target);
    if let Some(h) = req.headers_mut() {
        *h = headers;
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    }
    let req = match req.body(Body::from(bytes)) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("cannot forward the request: {e}");
            return (label, openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", None, &msg));
        }
    };
    let resp = match s.http.request(req).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!(
                "model {}: its server did not answer: {}",
                handle.model.name,
                acb_client::connection::source_chain(&e)
            );
            tracing::warn!(model = %handle.model.name, error = %msg, "forward failed");
            return (label, openai_error(StatusCode::BAD_GATEWAY, "server_error", Some("backend_unavailable"), &msg));
        }
    };
    let (mut parts, incoming) = resp.into_parts();
    parts.headers.retain_hop_by_hop();
    let ttfb = s.metrics.ttfb.get_or_create(&Metrics::model(&handle.model.name)).clone();
    let body = Tracked { inner: incoming, ticket: Some(ticket), started, ttfb: Some(ttfb) };
    tracing::debug!(model = %handle.model.name, status = parts.status.as_u16(), "forwarded");
    (label, Response::from_parts(parts, Body::new(body)))
}

/// Drops the hop-by-hop headers.
trait RetainHopByHop {
    fn retain_hop_by_hop(&mut self);
}

impl RetainHopByHop for HeaderMap {
    fn retain_hop_by_hop(&mut self) {
        // Headers the message's `Connection` names belong to the hop too (RFC 9110, 7.6.1).
        let named: Vec<header::HeaderName> = self
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            self.remove(n);
        }
        let names: Vec<header::HeaderName> = self.keys().filter(|n| hop_by_hop(n)).cloned().collect();
        for n in names {
            self.remove(n);
        }
    }
}

fn refused(model: &str, r: Refusal) -> Response {
    let (status, retry, message) = match r {
        Refusal::QueueFull => {
            (StatusCode::SERVICE_UNAVAILABLE, Some(1), format!("model {model}: its queue is full; retry later"))
        }
        Refusal::QueueTimeout => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(5),
            format!("model {model}: not awake within its queue timeout; retry later"),
        ),
        Refusal::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, None, "the router is shutting down".to_string()),
        Refusal::WakeFailed(why) => (StatusCode::BAD_GATEWAY, None, format!("model {model} could not be woken: {why}")),
    };
    let code = if status == StatusCode::BAD_GATEWAY { "wake_failed" } else { "unavailable" };
    let mut resp = openai_error(status, "server_error", Some(code), &message);
    if let Some(secs) = retry {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The server's answer body on its way to the client: the first data frame's time is the time
/// to first byte; the ticket (the model kept awake) goes when the body ends or is dropped.
struct Tracked {
    inner: hyper::body::Incoming,
    ticket: Option<Ticket>,
    started: Instant,
    ttfb: Option<Histogram>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                if let Some(h) = this.ttfb.take() {
                    h.observe(this.started.elapsed().as_secs_f64());
                }
            }
            Poll::Ready(None | Some(Err(_))) => {
                this.ticket = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
