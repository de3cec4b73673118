//! Prometheus metrics, served as text on `/metrics` when `--metrics ADDR` is given.

use std::sync::Arc;
use std::time::Duration;

use acb_core::Scheduler;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The assigner's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    gpus_held: Gauge,
    gpus_idle_held: Gauge,
    gpus_free: Gauge,
    queue_length: Gauge,
    clients: Gauge,
    grant_wait: Histogram,
    grants: Counter,
    releases: Counter,
    yields: Counter,
    swap_in: Counter,
    swap_out: Counter,
    sessions_ended_behind: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("acb");
        let m = Metrics {
            gpus_held: Gauge::default(),
            gpus_idle_held: Gauge::default(),
            gpus_free: Gauge::default(),
            queue_length: Gauge::default(),
            clients: Gauge::default(),
            grant_wait: Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0]),
            grants: Counter::default(),
            releases: Counter::default(),
            yields: Counter::default(),
            swap_in: Counter::default(),
            swap_out: Counter::default(),
            sessions_ended_behind: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("gpus_held", "GPUs with at least one holder in a GPU phase", m.gpus_held.clone());
        registry.register(
            "gpus_idle_held",
            "GPUs kept by holders between GPU phases (lazy release)",
            m.gpus_idle_held.clone(),
        );
        registry.register("gpus_free", "Healthy GPUs without a holder", m.gpus_free.clone());
        registry.register("queue_length", "Requests waiting for GPUs", m.queue_length.clone());
        registry.register("clients", "Connected clients", m.clients.clone());
        registry.register("grant_wait_seconds", "Time from request to grant", m.grant_wait.clone());
        registry.register("grants", "Grants made", m.grants.clone());
        registry.register("releases", "Leases ended", m.releases.clone());
        registry.register("yields", "Holders asked to yield", m.yields.clone());
        registry.register("swap_in_bytes", "Bytes swapped into GPUs, as clients report", m.swap_in.clone());
        registry.register("swap_out_bytes", "Bytes swapped out of GPUs, as clients report", m.swap_out.clone());
        registry.register(
            "sessions_ended_behind",
            "Sessions the assigner ended because they left too many events unread",
            m.sessions_ended_behind.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Refreshes the gauges from the scheduler.
    pub fn update(&self, sched: &Scheduler) {
        let (mut held, mut idle, mut free) = (0, 0, 0);
        for g in sched.pool().gpus() {
            let Some(s) = sched.gpu_state(g.id) else { continue };
            if s.holders.is_empty() {
                if g.health == acb_core::Health::Healthy {
                    free += 1;
                }
            } else if s.busy_holders == 0 {
                idle += 1;
            } else {
                held += 1;
            }
        }
        self.gpus_held.set(held);
        self.gpus_idle_held.set(idle);
        self.gpus_free.set(free);
        self.queue_length.set(sched.queue_len() as i64);
        self.clients.set(sched.clients().count() as i64);
    }

    /// A grant after `waited`.
    pub fn granted(&self, waited: Duration) {
        self.grants.inc();
        self.grant_wait.observe(waited.as_secs_f64());
    }

    /// A lease ended.
    pub fn released(&self) {
        self.releases.inc();
    }

    /// A holder was asked to yield.
    pub fn yielded(&self) {
        self.yields.inc();
    }

    /// Swap bytes reported by a client (checked at the edge: see `validate::check_swap`). The
    /// counters stop at `u64::MAX` rather than wrap.
    pub fn swap(&self, bytes_in: u64, bytes_out: u64) {
        for (counter, bytes) in [(&self.swap_in, bytes_in), (&self.swap_out, bytes_out)] {
            // Only the driver adds, so nothing moves between the read and the add.
            counter.inc_by(bytes.min(u64::MAX - counter.get()));
        }
    }

    /// A session was ended for leaving too many events unread.
    pub fn session_ended_behind(&self) {
        self.sessions_ended_behind.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    m.render(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_counters_stop_at_the_top_instead_of_wrapping() {
        let m = Metrics::new();
        m.swap(u64::MAX - 1, 5);
        m.swap(10, 7);
        assert_eq!((m.swap_in.get(), m.swap_out.get()), (u64::MAX, 12));
    }
}
