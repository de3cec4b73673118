//! DEADLINE_EXCEEDED for a call whose deadline passes in the daemon.
//!
//! tonic ends a call at its `grpc-timeout` with CANCELLED "Timeout expired", and the client then
//! reports CANCELLED instead of DEADLINE_EXCEEDED whenever the server's answer beats its own
//! timer (8 to 20 of 60 calls of grpcio, measured). [`DeadlineLayer`] runs inside tonic's timer
//! and answers DEADLINE_EXCEEDED a millisecond before it, as the gRPC protocol says a server
//! should; the handler's future is dropped, so a waiting `Begin` is withdrawn as on any cancel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tower::{Layer, Service};

/// How much earlier than tonic's own timer the call is ended.
const MARGIN: Duration = Duration::from_millis(1);

/// The layer (see the module).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// The service [`DeadlineLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timeout = req.headers().get("grpc-timeout").and_then(|v| parse_timeout(v.as_bytes()));
        let fut = self.inner.call(req);
        match timeout {
            None => Box::pin(fut),
            Some(t) => Box::pin(async move {
                match tokio::time::timeout(t.saturating_sub(MARGIN), fut).await {
                    Ok(r) => r,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(
                        "the call's deadline (grpc-timeout) passed before it finished",
                    )
                    .into_http()),
                }
            }),
        }
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n), as the gRPC
/// protocol defines it; None for anything else (tonic then ignores it too).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b""[..], b"m", b"100", b"123456789S", b"-1S", b"1x", b"1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
