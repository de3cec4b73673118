//! The router's Prometheus metrics, per model (`GET /metrics`, OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub model: String,
    pub state: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 9 minutes.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 20))
}

/// Every metric the router keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by model and HTTP status (unknown models count under `_unknown`).
    pub requests: Family<RequestLabels, Counter>,
    /// Time a request waited for its model to be awake.
    pub queue_wait: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// Time from the wish to wake a model to its first healthy answer (grant included).
    pub wake: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// Time from a request's arrival to the first byte of its answer's body.
    pub ttfb: Family<ModelLabel, Histogram, fn() -> Histogram>,
    pub sleeps: Family<ModelLabel, Counter>,
    pub cold_starts: Family<ModelLabel, Counter>,
    pub wake_failures: Family<ModelLabel, Counter>,
    pub restarts: Family<ModelLabel, Counter>,
    pub yields: Family<ModelLabel, Counter>,
    pub in_flight: Family<ModelLabel, Gauge>,
    pub queued: Family<ModelLabel, Gauge>,
    /// 1 for the state each model is in.
    pub state: Family<StateLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("acb_router");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered, by model and HTTP status", requests.clone());
        let queue_wait = Family::<ModelLabel, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        registry.register("queue_wait_seconds", "Time a request waited for its model to be awake", queue_wait.clone());
        let wake = Family::<ModelLabel, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        registry.register("wake_seconds", "Time to wake a model: lease grant, start or wake_up, health", wake.clone());
        let ttfb = Family::<ModelLabel, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        registry.register(
            "time_to_first_byte_seconds",
            "Time from a request's arrival to its answer's first body byte",
            ttfb.clone(),
        );
        let sleeps = Family::<ModelLabel, Counter>::default();
        registry.register(
            "sleeps",
            "Times a model was put to sleep (or stopped) and its lease given back",
            sleeps.clone(),
        );
        let cold_starts = Family::<ModelLabel, Counter>::default();
        registry.register("cold_starts", "Times a model's server was started", cold_starts.clone());
        let wake_failures = Family::<ModelLabel, Counter>::default();
        registry.register("wake_failures", "Wakes that failed (requests got 502)", wake_failures.clone());
        let restarts = Family::<ModelLabel, Counter>::default();
        registry.register("restarts", "Servers that died while awake and were restarted", restarts.clone());
        let yields = Family::<ModelLabel, Counter>::default();
        registry.register("yields", "Times the assigner asked a model to give its GPU back", yields.clone());
        let in_flight = Family::<ModelLabel, Gauge>::default();
        registry.register("in_flight", "Requests being answered now", in_flight.clone());
        let queued = Family::<ModelLabel, Gauge>::default();
        registry.register("queued", "Requests waiting for their model to wake", queued.clone());
        let state = Family::<StateLabels, Gauge>::default();
        registry.register("model_state", "1 for the state each model is in", state.clone());
        Metrics {
            registry,
            requests,
            queue_wait,
            wake,
            ttfb,
            sleeps,
            cold_starts,
            wake_failures,
            restarts,
            yields,
            in_flight,
            queued,
            state,
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn model(name: &str) -> ModelLabel {
        ModelLabel { model: name.to_string() }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
