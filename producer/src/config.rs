//! [`Config`], the validated settings of one producer run, and
//! [`JobConfig`], the job it runs. `cli.rs` builds them from the flags;
//! tests and benchmarks build them directly.

use std::path::Path;
use std::time::Duration;

use warren::protocol::FileRoute;
use warren::{BrokerConfig, JobId};

use crate::download::DownloadConfig;
use crate::input::InputSpec;
use crate::reference::{Location, ReferenceSpec};
use crate::status::StatusConfig;
use crate::sum::SumConfig;

/// Validated settings of one producer run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the broker is.
    pub broker: BrokerConfig,
    /// The job to run.
    pub job: JobConfig,
    /// `--json`.
    pub json: bool,
    /// `--quiet`.
    pub quiet: bool,
    /// `--workers`: workers to run in this process during the job.
    pub local_workers: u16,
}

/// One job of any kind.
#[derive(Debug, Clone)]
pub enum JobConfig {
    /// `producer sum`.
    Sum {
        /// The job's settings.
        config: SumConfig,
        /// The seed used for `--random`, to report it.
        seed: Option<u32>,
    },
    /// `producer download`.
    Download(DownloadConfig),
    /// `producer status`.
    Status(StatusConfig),
    /// `producer jobs`.
    Jobs(StatusConfig),
    /// `producer attach`.
    Attach {
        /// The job.
        job: JobId,
        /// `--timeout`.
        timeout: Option<Duration>,
        /// `--stall-timeout`.
        stall_timeout: Duration,
    },
    /// `producer cancel`.
    Cancel(JobId),
}

impl Config {
    /// The directory the job shares with its workers: a shared-directory
    /// download's output directory, or the shared directory of a sum by
    /// reference. Local workers (`--workers N`) use it as their own
    /// `--shared-dir`, which is trivially the same storage.
    pub fn shared_dir(&self) -> Option<&Path> {
        match &self.job {
            JobConfig::Download(download) if download.delivery == FileRoute::Shared => {
                Some(&download.out_dir)
            }
            JobConfig::Sum { config, .. } => match &config.input {
                InputSpec::Reference(ReferenceSpec {
                    location: Location::Shared { dir, .. },
                    ..
                }) => Some(dir),
                _ => None,
            },
            _ => None,
        }
    }
}
