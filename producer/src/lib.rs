//! The warren producer: reads a job, splits it into tasks on RabbitMQ,
//! gathers the workers' results and prints one answer.
//!
//! - [`cli`]: flags, and their validation into a [`Config`].
//! - [`config`]: [`Config`], the validated settings of a run.
//! - [`input`]: the sum job's input formats, read as bounded chunks.
//! - [`sum`]: the sum job: publish chunks, collect exact partial sums.
//! - [`download`]: the download job: URL lists, file names, existing files,
//!   files put together from chunks or verified in the shared directory,
//!   the manifest.
//! - `job`: the broker side every job shares: session, reply queue,
//!   worker watch, cleanup.
//! - `local`: workers run inside the producer with `--workers N`.
//! - `management`: where the broker's management HTTP API is, for the
//!   counts AMQP does not give.
//! - [`status`]: `producer status`, what the queues hold.
//! - [`progress`]: the progress bar and warnings on stderr.
//! - [`output`]: the answer on stdout and the exit status.
//! - [`error`]: [`Error`] and [`Result`].
//!
//! `main.rs` only parses flags, installs logging and signal handling, and
//! maps the outcome of [`run`] to an exit status.

pub mod cli;
pub mod config;
pub mod download;
pub mod error;
pub mod input;
mod job;
mod local;
mod management;
pub mod output;
pub mod progress;
pub mod reference;
pub mod status;
pub mod sum;

pub use cli::Cli;
pub use config::{Config, JobConfig};
pub use error::{Error, Result};
pub use output::Report;

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::local::LocalPlan;
use crate::progress::Progress;

/// Runs one job to its end. Cancelling `shutdown` cancels the job cleanly
/// (its queued tasks are dropped and [`Error::Cancelled`] returned).
/// `progress` shows the job on stderr and keeps its id and counts for a
/// run that ends early.
///
/// # Errors
/// Whatever ended the job early; see [`Error`].
pub async fn run(
    config: &Config,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<Report> {
    let local = LocalPlan::new(
        config.local_workers,
        config.broker.clone(),
        config.shared_dir().map(Path::to_owned),
    );
    match &config.job {
        JobConfig::Sum { config: sum, seed } => {
            let report = sum::run(&config.broker, sum, &local, progress, shutdown).await?;
            Ok(Report::Sum {
                report,
                seed: *seed,
            })
        }
        JobConfig::Status(status) => Ok(Report::Status(status::run(&config.broker, status).await?)),
        JobConfig::Download(download) => {
            let summary =
                download::run(&config.broker, download, &local, progress, shutdown).await?;
            Ok(Report::Download(summary))
        }
    }
}
