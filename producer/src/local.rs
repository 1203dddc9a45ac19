//! `--workers N`: real workers running inside the producer for the duration
//! of its job, through the same broker: the one-machine experience of
//! `multiprocessing.Pool(N)`. They are the worker library itself (same
//! consume loop, acks and guarantees), each with its own connection; workers
//! on other hosts still share the job.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warren::BrokerConfig;

use crate::error::{Error, Result};

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
    shared_dir: Option<PathBuf>,
}

impl LocalPlan {
    /// `count` workers on `broker`, sharing `shared_dir` with the job
    /// (see [`crate::Config::shared_dir`]).
    pub(crate) fn new(count: u16, broker: BrokerConfig, shared_dir: Option<PathBuf>) -> Self {
        LocalPlan {
            count,
            broker,
            shared_dir,
        }
    }

    /// This plan, sharing `dir` with the job unless it shares one already
    /// (an attached job names its own: the flags of `attach` do not).
    pub(crate) fn sharing(&self, dir: Option<&Path>) -> LocalPlan {
        LocalPlan {
            shared_dir: self.shared_dir.clone().or(dir.map(Path::to_owned)),
            ..self.clone()
        }
    }

    /// Starts the workers (none: nothing runs). Called once the job's input
    /// is validated and its session open, so that a bad input never makes
    /// workers touch the broker.
    ///
    /// # Errors
    /// [`Error::LocalWorkers`] when the shared directory is not an existing
    /// directory.
    pub(crate) fn start(&self, shutdown: &CancellationToken) -> Result<LocalWorkers> {
        let stop = shutdown.child_token();
        let mut running = JoinSet::new();
        if self.count == 0 {
            return Ok(LocalWorkers { stop, running });
        }
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let configs = (0..self.count)
            .map(|i| {
                worker::Config::local(
                    self.broker.clone(),
                    format!("{host}:{}/local-{i}", std::process::id()),
                    self.shared_dir.as_deref(),
                    SHUTDOWN_TIMEOUT,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::LocalWorkers)?;
        for worker_config in configs {
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
