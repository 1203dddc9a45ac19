//! A download job's settings, as the CLI (or a test) builds them: where
//! the URLs come from, where the files go, and the bounds the workers keep
//! to. Validating the flags is `cli.rs`'s business, not this module's.

use std::path::PathBuf;
use std::time::Duration;

use warren::protocol::{DownloadLimits, FileRoute};

use crate::input::Source;

/// Downloads queued or in work at once unless `--max-in-flight` says
/// otherwise: enough to keep a few workers busy, few enough that a
/// cancelled job leaves little behind.
pub const DEFAULT_DOWNLOADS_IN_FLIGHT: usize = 64;

/// Where the URLs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlInput {
    /// A list file, or stdin.
    List(Source),
    /// One URL given on the command line.
    Url(String),
}

/// A download job's settings.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// The URL lists and URLs, in order.
    pub inputs: Vec<UrlInput>,
    /// Where the files land.
    pub out_dir: PathBuf,
    /// Through the broker, or straight into the shared directory.
    pub delivery: FileRoute,
    /// Where to write the manifest.
    pub manifest: Option<PathBuf>,
    /// Replace existing files that differ.
    pub overwrite: bool,
    /// `--fsync`: sync each file before it is reported, not only the whole
    /// job at its end.
    pub fsync: bool,
    /// Bounds every worker keeps to.
    pub limits: DownloadLimits,
    /// Tasks queued or in work at once.
    pub max_in_flight: usize,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Fail the job after this long without a reply while the task queue
    /// holds none of its tasks (see `--stall-timeout`).
    pub stall_timeout: Duration,
    /// How long the job outlives its producer (`--job-ttl`); zero: it
    /// ends with its producer and keeps no checkpoints.
    pub job_ttl: Duration,
    /// `--detach`: publish every task, then leave the job to `attach`.
    pub detach: bool,
}
