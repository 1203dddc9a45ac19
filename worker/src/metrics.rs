//! What the worker tells orchestrators and monitoring: Prometheus metrics
//! on `/metrics`, liveness on `/healthz` (the process answers) and
//! readiness on `/readyz` (connected to the broker and consuming), served
//! on `--metrics-addr`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// The task kind, as a label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Kind {
    Sum,
    Download,
    /// A malformed task whose kind could not be read.
    Unknown,
}

/// How a task ended, as a label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum TaskOutcome {
    /// Carried out; its result is in the reply queue.
    Ok,
    /// Carried out, but it failed (a download error); the job was told.
    Failed,
    /// Dead-lettered as malformed.
    Malformed,
    /// Dropped because its job is gone.
    Dropped,
    /// Returned to the queue (shutdown, or the connection failed).
    Requeued,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Sum => "sum",
            Kind::Download => "download",
            Kind::Unknown => "unknown",
        }
    }
}

impl TaskOutcome {
    fn label(self) -> &'static str {
        match self {
            TaskOutcome::Ok => "ok",
            TaskOutcome::Failed => "failed",
            TaskOutcome::Malformed => "malformed",
            TaskOutcome::Dropped => "dropped",
            TaskOutcome::Requeued => "requeued",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type DurationFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

/// The worker's metrics. Cheap to update from any task.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    durations: DurationFamily,
    summed_bytes: Counter,
    downloaded_bytes: Counter,
    in_flight: Gauge,
    reconnects: Counter,
    ready_gauge: Gauge,
    ready: AtomicBool,
}

fn duration_histogram() -> Histogram {
    // 100 µs to about 30 minutes.
    Histogram::new(exponential_buckets(0.0001, 4.0, 13))
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("warren_worker");
        let tasks = Family::<TaskLabels, Counter>::default();
        registry.register("tasks", "Tasks handled, by kind and outcome", tasks.clone());
        let durations = DurationFamily::new_with_constructor(duration_histogram);
        registry.register(
            "task_duration_seconds",
            "Time from delivery to result, by kind",
            durations.clone(),
        );
        let summed_bytes = Counter::default();
        registry.register(
            "summed_bytes",
            "Bytes of elements summed",
            summed_bytes.clone(),
        );
        let downloaded_bytes = Counter::default();
        registry.register(
            "downloaded_bytes",
            "Bytes of files downloaded",
            downloaded_bytes.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("tasks_in_flight", "Tasks in hand", in_flight.clone());
        let reconnects = Counter::default();
        registry.register(
            "reconnects",
            "Broker connections re-established after a loss",
            reconnects.clone(),
        );
        let ready_gauge = Gauge::default();
        registry.register(
            "ready",
            "1 while connected and consuming",
            ready_gauge.clone(),
        );
        Metrics {
            registry,
            tasks,
            durations,
            summed_bytes,
            downloaded_bytes,
            in_flight,
            reconnects,
            ready_gauge,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts a finished task.
    /// Counts `count` tasks (a message may carry several) that ended so.
    pub(crate) fn tasks(&self, kind: Kind, outcome: TaskOutcome, count: u64) {
        if count == 0 {
            return;
        }
        self.tasks
            .get_or_create(&TaskLabels {
                kind: kind.label(),
                outcome: outcome.label(),
            })
            .inc_by(count);
    }

    /// Records how long a task message took from delivery to result.
    pub(crate) fn took(&self, kind: Kind, took: Duration) {
        self.durations
            .get_or_create(&KindLabels { kind: kind.label() })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn summed(&self, bytes: u64) {
        self.summed_bytes.inc_by(bytes);
    }

    pub(crate) fn downloaded(&self, bytes: u64) {
        self.downloaded_bytes.inc_by(bytes);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Tracks one task in hand until the guard drops.
    pub(crate) fn in_hand(self: &Arc<Self>) -> InHand {
        self.in_flight.inc();
        InHand(Arc::clone(self))
    }

    /// Connected and consuming, or not.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.ready_gauge.set(i64::from(ready));
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A task in hand; counted in `tasks_in_flight` until dropped.
#[derive(Debug)]
pub(crate) struct InHand(Arc<Metrics>);

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Binds `addr` now (so a bad address fails at start-up) and serves the
/// endpoints until `shutdown`.
///
/// # Errors
/// [`Error::MetricsListen`] when the address cannot be bound.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::MetricsListen { addr, source })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_page))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readiness))
        .with_state(metrics);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    }))
}

async fn metrics_page(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn readiness(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_their_labels() {
        let metrics = Arc::new(Metrics::new());
        metrics.tasks(Kind::Sum, TaskOutcome::Ok, 3);
        metrics.took(Kind::Sum, Duration::from_millis(3));
        metrics.summed(800);
        {
            let _task = metrics.in_hand();
            assert!(metrics.encode().contains("warren_worker_tasks_in_flight 1"));
        }
        let text = metrics.encode();
        assert!(
            text.contains(r#"warren_worker_tasks_total{kind="sum",outcome="ok"} 3"#),
            "{text}"
        );
        assert!(
            text.contains("warren_worker_summed_bytes_total 800"),
            "{text}"
        );
        assert!(text.contains("warren_worker_tasks_in_flight 0"), "{text}");
        assert!(
            text.contains(r#"warren_worker_task_duration_seconds_count{kind="sum"} 1"#),
            "{text}"
        );
        assert!(!metrics.is_ready());
        metrics.set_ready(true);
        assert!(metrics.encode().contains("warren_worker_ready 1"));
    }
}
