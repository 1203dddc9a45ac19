//! The warren worker: consumes tasks from RabbitMQ, runs them, publishes
//! their results, and acks each task only once its result is safely queued.
//!
//! - [`cli`]: flags, and their validation into a [`Config`].
//! - `consume`: the connection and consume loop, reconnects, graceful
//!   shutdown, and the per-task ack/requeue/dead-letter decisions.
//! - `liveness`: whether a task's job still exists.
//! - `metrics`: Prometheus metrics, `/healthz` and `/readyz` on
//!   `--metrics-addr`.
//! - `tasks`: running each task kind (`tasks/sum.rs`, `tasks/range.rs`,
//!   `tasks/download/`).
//! - [`error`]: [`Error`] and [`Result`].
//!
//! `main.rs` only parses flags, installs logging and signal handling, and
//! maps the outcome of [`run`] to an exit status.

pub mod cli;
mod consume;
pub mod error;
mod liveness;
mod metrics;
mod tasks;

pub use cli::{Cli, Config};
pub use error::{Error, Result};

use tokio_util::sync::CancellationToken;

/// Runs the worker until `shutdown` is cancelled, then finishes the tasks in
/// hand (bounded by the shutdown timeout) and returns.
///
/// # Errors
/// Only failures that retrying cannot fix (refused credentials, conflicting
/// queues); a broker that is down is retried with backoff.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<()> {
    let metrics = std::sync::Arc::new(metrics::Metrics::new());
    // The endpoint outlives the shutdown signal: while the worker drains,
    // /healthz still answers and /readyz says 503.
    let endpoint_stop = CancellationToken::new();
    let endpoint = match config.metrics_addr {
        Some(addr) => Some(
            metrics::serve(addr, std::sync::Arc::clone(&metrics), endpoint_stop.clone()).await?,
        ),
        None => None,
    };
    let outcome = consume::run(config, metrics, shutdown).await;
    // Whatever ended the worker, the endpoint goes with it.
    endpoint_stop.cancel();
    if let Some(endpoint) = endpoint {
        let _ = endpoint.await;
    }
    outcome
}
