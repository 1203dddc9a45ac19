//! Running a decoded task. Each kind lives in its own module; this one
//! holds what every task may need and dispatches.

mod download;
mod range;
mod sum;

use std::path::PathBuf;
use std::sync::Arc;

use lapin::Connection;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use warren::Topology;
use warren::broker::Publisher;
use warren::protocol::{Outcome, Task};

pub(crate) use download::{HttpClients, discard_stored};

use crate::liveness::JobLiveness;
use crate::metrics::Metrics;

/// What task handlers share within one broker session.
#[derive(Debug)]
pub(crate) struct TaskContext {
    /// This worker's name, for results and logs.
    pub(crate) worker: String,
    pub(crate) topology: Topology,
    /// The confirm-mode channel results and body chunks go out on.
    pub(crate) publisher: Publisher,
    pub(crate) connection: Arc<Connection>,
    pub(crate) liveness: Arc<JobLiveness>,
    /// Where shared-directory downloads are written, if configured.
    pub(crate) shared_dir: Option<PathBuf>,
    pub(crate) http: Arc<HttpClients>,
    /// HTTP origins and S3 buckets read by sums by reference.
    pub(crate) stores: Arc<warren::source::Stores>,
    /// One permit per core: CPU-bound work never oversubscribes the
    /// machine, however many tasks are in hand.
    pub(crate) cpu: Arc<Semaphore>,
    /// One permit per download fetching at once (`--concurrency`): a
    /// message may carry several downloads, and the messages in hand
    /// together many more.
    pub(crate) downloads: Arc<Semaphore>,
    /// Cancelled by a task that found the session unusable (its publishing
    /// channel failed): the worker then reconnects instead of taking more
    /// tasks it cannot answer.
    pub(crate) session_broken: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    /// Largest task message accepted, in bytes.
    pub(crate) max_task_size: u64,
}

/// Runs a task on its body and returns what to report.
pub(crate) async fn run(context: &TaskContext, task: &Task, body: Vec<u8>) -> Outcome {
    match task {
        Task::Sum(sum) => sum::run(context, sum, body).await,
        Task::SumRange(range) => range::run(context, range).await,
        Task::Download(batch) => download::run(context, batch).await,
    }
}
