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
//! - `durable`: a job's record on the broker (what it is, its latest
//!   checkpoint), which lets it outlive its producer.
//! - `attach`: `producer attach`, `producer jobs`, `producer cancel`.
//! - `management`: where the broker's management HTTP API is, for the
//!   counts AMQP does not give.
//! - [`status`]: `producer status`, what the queues hold.
//! - [`progress`]: the progress bar and warnings on stderr.
//! - [`output`]: the answer on stdout and the exit status.
//! - [`error`]: [`Error`] and [`Result`].
//!
//! `main.rs` only parses flags, installs logging and signal handling, and
//! maps the outcome of [`run`] to an exit status.

mod attach;
pub mod cli;
pub mod config;
pub mod download;
mod durable;
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

pub use attach::JobListing;
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
        JobConfig::Sum { config: sum, .. } if sum.detach => {
            let job = sum::submit(&config.broker, sum, &local, progress, shutdown).await?;
            Ok(Report::Detached(job))
        }
        JobConfig::Sum { config: sum, seed } => {
            run_sum(config, sum, *seed, &local, progress, shutdown).await
        }
        JobConfig::Status(status) => Ok(Report::Status(status::run(&config.broker, status).await?)),
        JobConfig::Jobs(jobs) => Ok(Report::Jobs(
            attach::list(&config.broker, jobs.management_url.as_deref()).await?,
        )),
        JobConfig::Attach {
            job,
            timeout,
            stall_timeout,
        } => {
            let limits = sum::RunLimits {
                timeout: *timeout,
                stall_timeout: *stall_timeout,
            };
            let outcome = attach::attach(
                &config.broker,
                job,
                limits,
                &local,
                progress,
                shutdown.clone(),
            );
            match outcome.await {
                Err(Error::BrokerLost { job }) => {
                    attach::reconnect(&config.broker, &job, limits, &local, progress, shutdown)
                        .await
                }
                outcome => outcome,
            }
        }
        JobConfig::Cancel(job) => {
            attach::cancel(&config.broker, job).await?;
            Ok(Report::Cancelled(job.clone()))
        }
        JobConfig::Download(download) if download.detach => {
            let submitted = download::submit(&config.broker, download, &local, progress, shutdown);
            Ok(match submitted.await? {
                download::Submitted::Detached(job) => Report::Detached(job),
                download::Submitted::Finished(summary) => Report::Download(summary),
            })
        }
        JobConfig::Download(download) => {
            let summary =
                download::run(&config.broker, download, &local, progress, shutdown.clone());
            match summary.await {
                Ok(summary) => Ok(Report::Download(summary)),
                Err(Error::BrokerLost { job }) => {
                    let limits = sum::RunLimits {
                        timeout: download.timeout,
                        stall_timeout: download.stall_timeout,
                    };
                    attach::reconnect(&config.broker, &job, limits, &local, progress, shutdown)
                        .await
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Runs a sum job; if the broker connection drops mid-job, connects again
/// and carries the job on from its record.
async fn run_sum(
    config: &Config,
    sum: &sum::SumConfig,
    seed: Option<u32>,
    local: &LocalPlan,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<Report> {
    match sum::run(&config.broker, sum, local, progress, shutdown.clone()).await {
        Ok(report) => Ok(Report::Sum { report, seed }),
        Err(Error::BrokerLost { job }) => {
            let limits = sum::RunLimits {
                timeout: sum.timeout,
                stall_timeout: sum.stall_timeout,
            };
            attach::reconnect(&config.broker, &job, limits, local, progress, shutdown).await
        }
        Err(e) => Err(e),
    }
}
