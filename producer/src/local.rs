//! `--workers N`: real workers running inside the producer for the duration
//! of its job, through the same broker: the one-machine experience of
//! `multiprocessing.Pool(N)`. They are the worker library itself (same
//! consume loop, acks and guarantees), each with its own connection; workers
//! on other hosts still share the job.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warren::protocol::FileRoute;

use warren::BrokerConfig;

use crate::cli::{Config, JobConfig};
use crate::error::{Error, Result};
use crate::input::InputSpec;
use crate::reference::{Location, ReferenceSpec};

/// How long local workers get to finish their tasks in hand once the job
/// is over (they are only still busy after a failure or a cancel).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The running local workers.
#[derive(Debug)]
pub(crate) struct LocalWorkers {
    stop: CancellationToken,
    running: JoinSet<()>,
}

/// What `--workers N` asks for, decided before the job starts.
#[derive(Debug, Clone)]
pub(crate) struct LocalPlan {
    count: u16,
    broker: BrokerConfig,
    /// The directory shared with the workers: a shared-directory download
    /// job's output directory, or the shared directory of a sum by
    /// reference. Local workers use the producer's own, which is trivially
    /// the same storage.
    shared_dir: Option<std::path::PathBuf>,
}

impl LocalPlan {
    pub(crate) fn of(config: &Config) -> Self {
        LocalPlan {
            count: config.local_workers,
            broker: config.broker.clone(),
            shared_dir: match &config.job {
                JobConfig::Download(download) if download.delivery == FileRoute::Shared => {
                    Some(download.out_dir.clone())
                }
                JobConfig::Sum { config, .. } => match &config.input {
                    InputSpec::Reference(ReferenceSpec {
                        location: Location::Shared { dir, .. },
                        ..
                    }) => Some(dir.clone()),
                    _ => None,
                },
                _ => None,
            },
        }
    }

    /// Starts the workers (none: nothing runs). Called once the job's input
    /// is validated and its session open, so that a bad input never makes
    /// workers touch the broker.
    ///
    /// # Errors
    /// [`Error::Write`] when a shared-directory job's output directory
    /// cannot be resolved.
    pub(crate) fn start(&self, shutdown: &CancellationToken) -> Result<LocalWorkers> {
        let stop = shutdown.child_token();
        let mut running = JoinSet::new();
        if self.count == 0 {
            return Ok(LocalWorkers { stop, running });
        }
        let shared_dir = match &self.shared_dir {
            Some(dir) => Some(std::fs::canonicalize(dir).map_err(|e| Error::Write {
                output: dir.display().to_string(),
                source: e,
            })?),
            None => None,
        };
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        for i in 0..self.count {
            let worker_config = worker::Config {
                broker: self.broker.clone(),
                concurrency: worker::cli::DEFAULT_CONCURRENCY,
                shared_dir: shared_dir.clone(),
                name: format!("{host}:{}/local-{i}", std::process::id()),
                shutdown_timeout: SHUTDOWN_TIMEOUT,
                metrics_addr: None,
                max_task_size: u64::MAX,
            };
            let token = stop.clone();
            running.spawn(async move {
                if let Err(e) = worker::run(&worker_config, token).await {
                    tracing::warn!(
                        "local worker {} stopped: {}",
                        worker_config.name,
                        warren::display_chain(&e)
                    );
                }
            });
        }
        tracing::debug!(workers = self.count, "local workers started");
        Ok(LocalWorkers { stop, running })
    }
}

impl LocalWorkers {
    /// No local workers.
    pub(crate) fn none() -> Self {
        LocalWorkers {
            stop: CancellationToken::new(),
            running: JoinSet::new(),
        }
    }

    /// Stops the workers after the job and waits for them (bounded).
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        let all = async { while self.running.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_TIMEOUT * 2, all)
            .await
            .is_err()
        {
            tracing::warn!("local workers did not stop in time");
        }
    }
}
