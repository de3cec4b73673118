//! Prometheus metrics, served on `/metrics` when `--metrics ADDR` is given: Prometheus text
//! (0.0.4) by default, OpenMetrics 1.0 when the scraper's `Accept` asks for it.
//!
//! Labels have bounded cardinality: `gpu` is a GPU's index (what the node has); `acb_job` is a
//! job name, of which at most [`MAX_JOBS`] are kept, later ones counted as `_other` (the label
//! is not `job`, which Prometheus gives the scrape target); `state` and `direction` take a
//! few fixed values. Holder series exist only while the job holds the GPU.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acb_core::{ClientId, Scheduler};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::discovery::FoundGpu;

/// Job names kept as label values; later ones are counted under [`OTHER_JOBS`].
pub const MAX_JOBS: usize = 256;
/// The `acb_job` value of jobs past [`MAX_JOBS`].
pub const OTHER_JOBS: &str = "_other";

type SecondsCounter = Counter<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabel {
    gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuInfoLabels {
    gpu: String,
    uuid: String,
    name: String,
    simulated: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuStateLabels {
    gpu: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    gpu: String,
    acb_job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    acb_job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStateLabels {
    acb_job: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobDirectionLabels {
    acb_job: String,
    direction: String,
}

/// A GPU's state as the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GpuPhase {
    /// At least one holder in a GPU phase.
    Computing,
    /// Held, every holder between GPU phases (lazy release).
    HeldIdle,
    Free,
    Lost,
}

impl GpuPhase {
    const ALL: [GpuPhase; 4] = [GpuPhase::Computing, GpuPhase::HeldIdle, GpuPhase::Free, GpuPhase::Lost];

    fn name(self) -> &'static str {
        match self {
            GpuPhase::Computing => "computing",
            GpuPhase::HeldIdle => "held_idle",
            GpuPhase::Free => "free",
            GpuPhase::Lost => "lost",
        }
    }
}

/// What one GPU looked like at the last change: its state, and its holders (job, computing).
#[derive(Clone, Debug, PartialEq)]
struct GpuSnapshot {
    phase: GpuPhase,
    granted: u64,
    holders: Vec<(String, bool)>,
}

/// The time accounting: each GPU's last snapshot, and when it was taken.
#[derive(Debug)]
struct Clock {
    /// Per GPU: since when its snapshot holds.
    at: Vec<Instant>,
    gpus: Vec<GpuSnapshot>,
    /// `(lease ids, holders computing, state)` per GPU: whether it changed, without naming
    /// jobs (`None`: never seen).
    keys: Vec<Option<(Vec<u64>, u32, GpuPhase)>>,
    jobs: HashSet<String>,
}

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
    gpu_state: Family<GpuStateLabels, Gauge>,
    gpu_holders: Family<HolderLabels, Gauge>,
    gpu_memory_granted: Family<GpuLabel, Gauge>,
    gpu_seconds: Family<GpuStateLabels, SecondsCounter>,
    job_gpu_seconds: Family<JobStateLabels, SecondsCounter>,
    job_grants: Family<JobLabel, Counter>,
    job_wait_seconds: Family<JobLabel, SecondsCounter>,
    job_swap_bytes: Family<JobDirectionLabels, Counter>,
    clock: Mutex<Clock>,
    /// The `gpu` label of each GPU of the pool, in pool order: its index on the node (which
    /// `--gpus auto:1,3` keeps), as `gpu_info` and `status` show it; `NODE:INDEX` for the GPUs of
    /// a controller's executors.
    gpu_labels: Mutex<Vec<String>>,
    gpu_info: Family<GpuInfoLabels, Gauge>,
    gpu_memory: Family<GpuLabel, Gauge>,
    node_up: Family<NodeLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Metrics {
    /// Registers every metric, with one info series per GPU of `gpus`.
    pub fn new(gpus: &[FoundGpu]) -> Self {
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
            gpu_state: Family::default(),
            gpu_holders: Family::default(),
            gpu_memory_granted: Family::default(),
            gpu_seconds: Family::default(),
            job_gpu_seconds: Family::default(),
            job_grants: Family::default(),
            job_wait_seconds: Family::default(),
            job_swap_bytes: Family::default(),
            clock: Mutex::new(Clock { at: Vec::new(), gpus: Vec::new(), keys: Vec::new(), jobs: HashSet::new() }),
            gpu_labels: Mutex::new(Vec::new()),
            gpu_info: Family::default(),
            gpu_memory: Family::default(),
            node_up: Family::default(),
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
        for g in gpus {
            m.push_gpu(g.index.to_string(), g);
        }
        registry.register(
            "gpu_info",
            "One series per GPU: its UUID, product name and whether it is simulated",
            m.gpu_info.clone(),
        );
        registry.register("gpu_memory_bytes", "Each GPU's memory", m.gpu_memory.clone());
        registry.register(
            "node_up",
            "A controller's nodes: 1 while the node's executor is registered and heartbeating, 0 when it is lost",
            m.node_up.clone(),
        );
        registry.register(
            "gpu_state",
            "Each GPU's state, 1 for the one it is in: computing (a holder in a GPU phase), held_idle (held, no \
             holder computing), free, lost",
            m.gpu_state.clone(),
        );
        registry.register(
            "gpu_holder_leases",
            "Leases each job holds on each GPU, while it holds them",
            m.gpu_holders.clone(),
        );
        registry.register("gpu_memory_granted_bytes", "Memory granted on each GPU", m.gpu_memory_granted.clone());
        registry.register(
            "gpu_seconds",
            "Seconds each GPU spent computing (a holder in a GPU phase) and held idle (held, nobody computing)",
            m.gpu_seconds.clone(),
        );
        registry.register(
            "job_gpu_seconds",
            "GPU-seconds each job held, per GPU of its leases, computing or idle (past 256 job names: _other)",
            m.job_gpu_seconds.clone(),
        );
        registry.register("job_grants", "Grants each job received", m.job_grants.clone());
        registry.register(
            "job_wait_seconds",
            "Seconds each job's requests waited for their grants",
            m.job_wait_seconds.clone(),
        );
        registry.register(
            "job_swap_bytes",
            "Bytes each job swapped in and out of GPUs, as its clients report",
            m.job_swap_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Refreshes the gauges from the scheduler; for each GPU whose holders or state changed,
    /// closes the time spent in its previous state and updates its series (a GPU that did not
    /// change costs a comparison: a controller's pool has thousands). `job` names a client's job.
    pub fn update(&self, sched: &Scheduler, job: impl Fn(ClientId) -> String) {
        let pool = sched.pool();
        let mut clock = self.clock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if clock.keys.len() < pool.len() {
            let n = pool.len();
            clock.keys.resize(n, None);
            clock.at.resize(n, now);
            clock.gpus.resize(n, GpuSnapshot { phase: GpuPhase::Free, granted: 0, holders: Vec::new() });
        }
        let mut counts = [0i64; 4];
        for g in pool.gpus() {
            let i = g.id.0 as usize;
            let Some(s) = sched.gpu_state(g.id) else { continue };
            let phase = match (s.holders.is_empty(), s.busy_holders > 0) {
                (true, _) if g.health != acb_core::Health::Healthy => GpuPhase::Lost,
                (true, _) => GpuPhase::Free,
                (false, true) => GpuPhase::Computing,
                (false, false) => GpuPhase::HeldIdle,
            };
            counts[phase as usize] += 1;
            let same = clock.keys[i].as_ref().is_some_and(|(leases, busy, p)| {
                *p == phase && *busy == s.busy_holders && leases.iter().copied().eq(s.holders.iter().map(|l| l.0))
            });
            if same {
                continue;
            }
            self.account_gpu(&mut clock, i, now);
            let holders: Vec<(String, bool)> = s
                .holders
                .iter()
                .filter_map(|l| sched.lease(*l))
                .map(|l| (job_label(&mut clock.jobs, job(l.client)), !l.idle))
                .collect();
            let gpu = self.gpu_label(i);
            for (j, _) in &clock.gpus[i].holders {
                self.gpu_holders.remove(&HolderLabels { gpu: gpu.clone(), acb_job: j.clone() });
            }
            for (j, _) in &holders {
                self.gpu_holders.get_or_create(&HolderLabels { gpu: gpu.clone(), acb_job: j.clone() }).inc();
            }
            for p in GpuPhase::ALL {
                let label = GpuStateLabels { gpu: gpu.clone(), state: p.name().into() };
                self.gpu_state.get_or_create(&label).set(i64::from(p == phase));
            }
            self.gpu_memory_granted.get_or_create(&GpuLabel { gpu }).set(i64::try_from(s.granted).unwrap_or(i64::MAX));
            clock.gpus[i] = GpuSnapshot { phase, granted: s.granted, holders };
            clock.keys[i] = Some((s.holders.iter().map(|l| l.0).collect(), s.busy_holders, phase));
        }
        self.gpus_held.set(counts[GpuPhase::Computing as usize]);
        self.gpus_idle_held.set(counts[GpuPhase::HeldIdle as usize]);
        self.gpus_free.set(counts[GpuPhase::Free as usize]);
        self.queue_length.set(sched.queue_len() as i64);
        self.clients.set(sched.clients().count() as i64);
    }

    /// A controller's node came up (registered) or went down.
    pub fn node(&self, node: &str, up: bool) {
        self.node_up.get_or_create(&NodeLabel { node: node.to_string() }).set(i64::from(up));
    }

    /// A GPU added to the pool (a controller's executor registered it): labelled `NODE:INDEX`.
    pub fn add_gpu(&self, node: &str, g: &FoundGpu) {
        self.push_gpu(format!("{node}:{}", g.index), g);
    }

    fn push_gpu(&self, label: String, g: &FoundGpu) {
        let simulated = if g.fake { "true" } else { "false" };
        self.gpu_info
            .get_or_create(&GpuInfoLabels {
                gpu: label.clone(),
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                simulated: simulated.into(),
            })
            .set(1);
        self.gpu_memory
            .get_or_create(&GpuLabel { gpu: label.clone() })
            .set(i64::try_from(g.memory).unwrap_or(i64::MAX));
        self.gpu_labels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(label);
    }

    /// The `gpu` label of the pool's `i`-th GPU.
    fn gpu_label(&self, i: usize) -> String {
        let labels = self.gpu_labels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        labels.get(i).cloned().unwrap_or_else(|| i.to_string())
    }

    /// Adds GPU `i`'s time since its last accounting to the counters of the state it was in.
    fn account_gpu(&self, clock: &mut Clock, i: usize, now: Instant) {
        let Some(at) = clock.at.get_mut(i) else { return };
        let secs = now.saturating_duration_since(*at).as_secs_f64();
        *at = now;
        let Some(g) = clock.gpus.get(i) else { return };
        if secs <= 0.0 {
            return;
        }
        if matches!(g.phase, GpuPhase::Computing | GpuPhase::HeldIdle) {
            let label = GpuStateLabels { gpu: self.gpu_label(i), state: g.phase.name().into() };
            self.gpu_seconds.get_or_create(&label).inc_by(secs);
        }
        for (j, computing) in &g.holders {
            let state = if *computing { "computing" } else { "held_idle" };
            let label = JobStateLabels { acb_job: j.clone(), state: state.into() };
            self.job_gpu_seconds.get_or_create(&label).inc_by(secs);
        }
    }

    /// Brings every GPU's time counters up to `now` (before an exposition).
    fn account(&self, clock: &mut Clock, now: Instant) {
        for i in 0..clock.gpus.len() {
            self.account_gpu(clock, i, now);
        }
    }

    /// A grant to `job` after `waited`.
    pub fn granted(&self, job: &str, waited: Duration) {
        self.grants.inc();
        self.grant_wait.observe(waited.as_secs_f64());
        let job = self.job_label(job);
        self.job_grants.get_or_create(&JobLabel { acb_job: job.clone() }).inc();
        self.job_wait_seconds.get_or_create(&JobLabel { acb_job: job }).inc_by(waited.as_secs_f64());
    }

    /// A lease ended.
    pub fn released(&self) {
        self.releases.inc();
    }

    /// A holder was asked to yield.
    pub fn yielded(&self) {
        self.yields.inc();
    }

    /// Swap bytes reported by a client of `job` (checked at the edge: see
    /// `validate::check_swap`). The counters stop at `u64::MAX` rather than wrap.
    pub fn swap(&self, job: &str, bytes_in: u64, bytes_out: u64) {
        let job = self.job_label(job);
        for (counter, direction, bytes) in [(&self.swap_in, "in", bytes_in), (&self.swap_out, "out", bytes_out)] {
            // Only the driver adds, so nothing moves between the read and the add.
            counter.inc_by(bytes.min(u64::MAX - counter.get()));
            let per_job = self
                .job_swap_bytes
                .get_or_create_owned(&JobDirectionLabels { acb_job: job.clone(), direction: direction.into() });
            per_job.inc_by(bytes.min(u64::MAX - per_job.get()));
        }
    }

    /// A session was ended for leaving too many events unread.
    pub fn session_ended_behind(&self) {
        self.sessions_ended_behind.inc();
    }

    fn job_label(&self, job: &str) -> String {
        let mut clock = self.clock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        job_label(&mut clock.jobs, job.to_string())
    }

    /// The OpenMetrics 1.0 exposition, time counters brought up to now.
    pub fn render_openmetrics(&self) -> String {
        {
            let mut clock = self.clock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.account(&mut clock, Instant::now());
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        openmetrics_to_text(&self.render_openmetrics())
    }
}

/// The job's label value: itself while fewer than [`MAX_JOBS`] names were seen, else `_other`.
fn job_label(seen: &mut HashSet<String>, job: String) -> String {
    if seen.contains(&job) {
        return job;
    }
    if seen.len() >= MAX_JOBS {
        return OTHER_JOBS.to_string();
    }
    seen.insert(job.clone());
    job
}

/// Prometheus text 0.0.4 from the OpenMetrics text of this registry: a counter's family takes
/// its samples' `_total` name in HELP and TYPE, `unknown` becomes `untyped`, and `# UNIT` and
/// `# EOF` go (the older format has neither). What this registry writes has no exemplars or
/// timestamps, the only other differences.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut counters = HashSet::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, ""));
            if ty == "counter" {
                counters.insert(name.to_string());
            }
        }
    }
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
                let tail = if kind == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
                out.push_str(kind);
                out.push_str(&name);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether an `Accept` header asks for OpenMetrics rather than the Prometheus text format.
pub fn wants_openmetrics(accept: &str) -> bool {
    let mut best: Option<(f32, bool)> = None;
    for part in accept.split(',') {
        let mut fields = part.split(';').map(str::trim);
        let media = fields.next().unwrap_or("").to_ascii_lowercase();
        let q = fields.filter_map(|f| f.strip_prefix("q=")).find_map(|v| v.parse::<f32>().ok()).unwrap_or(1.0);
        let om = match media.as_str() {
            "application/openmetrics-text" => true,
            "text/plain" | "*/*" | "text/*" => false,
            _ => continue,
        };
        // The highest q wins; on a tie the first listed.
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, om));
        }
    }
    best.is_some_and(|(_, om)| om)
}

/// The content type of the OpenMetrics exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text exposition.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let m = metrics.clone();
            async move {
                let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
                if wants_openmetrics(accept) {
                    ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], m.render_openmetrics())
                } else {
                    ([(axum::http::header::CONTENT_TYPE, PROMETHEUS_TEXT)], m.render())
                }
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
        let m = Metrics::default();
        m.swap("j", u64::MAX - 1, 5);
        m.swap("j", 10, 7);
        assert_eq!((m.swap_in.get(), m.swap_out.get()), (u64::MAX, 12));
    }

    #[test]
    fn gpus_are_labelled_by_their_index_on_the_node() {
        // `--gpus auto:1,3`: the pool's GPUs 0 and 1 are the node's 1 and 3, as gpu_info says.
        let found: Vec<FoundGpu> = [1, 3]
            .into_iter()
            .map(|index| FoundGpu {
                index,
                uuid: format!("GPU-{index}"),
                name: "t".into(),
                memory: 1 << 30,
                fake: false,
            })
            .collect();
        let m = Metrics::new(&found);
        let sched = Scheduler::new(acb_core::SchedulerConfig::default(), crate::discovery::pool_of("n", &found));
        m.update(&sched, |_| "j".into());
        let text = m.render();
        for want in [
            "acb_gpu_info{gpu=\"3\",uuid=\"GPU-3\",name=\"t\",simulated=\"false\"} 1\n",
            "acb_gpu_state{gpu=\"3\",state=\"free\"} 1\n",
            "acb_gpu_memory_granted_bytes{gpu=\"1\"} 0\n",
            "acb_gpus_free 2\n",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        assert!(!text.contains("gpu=\"0\""), "{text}");
    }

    #[test]
    fn job_labels_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_JOBS + 50 {
            m.granted(&format!("job-{i}"), Duration::from_millis(1));
        }
        m.granted("job-0", Duration::from_millis(1));
        let text = m.render();
        let grants: Vec<_> = text.lines().filter(|l| l.starts_with("acb_job_grants_total{")).collect();
        assert_eq!(grants.len(), MAX_JOBS + 1, "256 names and _other");
        assert!(text.contains("acb_job_grants_total{acb_job=\"_other\"} 50\n"), "{text}");
        assert!(text.contains("acb_job_grants_total{acb_job=\"job-0\"} 2\n"), "{text}");
    }

    #[test]
    fn accept_headers_choose_the_format() {
        for (accept, om) in [
            ("", false),
            ("*/*", false),
            ("text/plain", false),
            ("application/openmetrics-text", true),
            ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", true),
            ("text/plain;q=0.9, application/openmetrics-text;q=0.5", false),
            ("application/openmetrics-text;q=0, text/plain", false),
            ("application/json", false),
            ("Application/OpenMetrics-Text; q=1", true),
        ] {
            assert_eq!(wants_openmetrics(accept), om, "{accept}");
        }
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let om = "# HELP acb_grants Grants made.\n# TYPE acb_grants counter\nacb_grants_total 3\n\
                  # HELP acb_x X.\n# TYPE acb_x unknown\n# UNIT acb_x seconds\nacb_x 1\n\
                  # HELP acb_g G.\n# TYPE acb_g gauge\nacb_g{a=\"b c\"} 2\n# EOF\n";
        let want = "# HELP acb_grants_total Grants made.\n# TYPE acb_grants_total counter\nacb_grants_total 3\n\
                    # HELP acb_x X.\n# TYPE acb_x untyped\nacb_x 1\n\
                    # HELP acb_g G.\n# TYPE acb_g gauge\nacb_g{a=\"b c\"} 2\n";
        assert_eq!(openmetrics_to_text(om), want);
    }
}
