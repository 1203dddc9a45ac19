//! A download job: fetch a list of URLs with the workers and land the files
//! in the output directory, each complete and verified, with a manifest.
//!
//! The modules, in the order a download goes:
//!
//! 1. [`urls`]: read every list line and URL, and give each its file name.
//!    [`plan`]: decide, from what is in the output directory and the
//!    previous [`manifest`], which to skip, fetch or refuse. Everything
//!    that can be checked is checked before the first task is published,
//!    so a re-run fetches only what is missing or failed.
//! 2. `publish`: one task per URL, several to a message when files prove
//!    small (`batching`), through the shared pipeline (`job.rs`).
//! 3. `collect`: the replies, until every URL has its outcome.
//! 4. With the default delivery, each file comes back through the broker
//!    as body chunks and is put together (`assemble`); with `--shared`,
//!    workers store it in the shared directory's temporary area (`shared`).
//! 5. `verify`: size and SHA-256 against the worker's report and the list;
//!    then `placement` moves the file under its final name, the only step
//!    that touches final names.
//! 6. [`manifest`]: one line per URL (ok, failed with the reason, or
//!    skipped), written as each outcome is known: the lines on disk, not
//!    memory, are the run's record of its URLs, and the summary reads its
//!    failures back from them. At the end, one `syncfs` makes the job's
//!    files durable, and only then the manifest (group commit; `--fsync`
//!    adds a sync per file; see docs/DOWNLOADS.md).
//!
//! This file holds [`run`], which strings the steps together, and
//! [`DownloadSummary`], what it returns; the settings are in `config`.

mod assemble;
mod batching;
mod collect;
mod config;
pub mod manifest;
mod placement;
pub mod plan;
mod publish;
mod shared;
mod sweep;
pub mod urls;
mod verify;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use warren::protocol::FileRoute;
use warren::{BrokerConfig, JobId};

pub use config::{DEFAULT_DOWNLOADS_IN_FLIGHT, DownloadConfig, UrlInput};

use crate::error::{Error, Result};
use crate::job::{self, Drive, JobSession, Opening, PublishCounts};
use crate::local::LocalPlan;
use crate::progress::Progress;
use collect::DownloadCollector;
use manifest::{History, ManifestWriter, Records, Tally};
use plan::Plan;
use urls::{NamedEntry, UrlList};

/// What a finished download job reports.
#[derive(Debug, Clone)]
pub struct DownloadSummary {
    /// The job's id; `None` when nothing needed downloading.
    pub job_id: Option<JobId>,
    /// What became of the URLs: the counts, and the manifest lines to read
    /// the failures back from (in list order, then exact repeats).
    pub records: Records,
    /// The output directory.
    pub out_dir: PathBuf,
    /// Where the manifest was written.
    pub manifest: Option<PathBuf>,
    /// Names of the workers that answered.
    pub workers: BTreeSet<String>,
    /// Wall time.
    pub elapsed: Duration,
}

impl DownloadSummary {
    /// How many URLs ended each way, and the bytes downloaded.
    pub fn tally(&self) -> Tally {
        self.records.tally
    }
}

/// What one run works with, passed down the steps as one.
struct Run<'a> {
    broker: &'a BrokerConfig,
    config: &'a DownloadConfig,
    local: &'a LocalPlan,
    progress: &'a Progress,
    shutdown: &'a CancellationToken,
    started: Instant,
    /// The output directory, made and canonical.
    out_dir: &'a Path,
}

/// Runs a download job to its end.
///
/// # Errors
/// Bad lists or names (before anything is published), an unusable output
/// directory, broker failures, `--timeout`, or [`Error::Cancelled`]. Failed
/// downloads are not errors: they are in the summary.
pub(crate) async fn run(
    broker: &BrokerConfig,
    config: &DownloadConfig,
    local: &LocalPlan,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<DownloadSummary> {
    let started = Instant::now();
    let named = read_urls(config, progress, &shutdown).await?;
    let out_dir = make_out_dir(&config.out_dir)?;
    // Read before the writer truncates this run's partial manifest: the
    // partial one of a run that never finished is part of the history.
    let history = config
        .manifest
        .as_deref()
        .map(History::read)
        .unwrap_or_default();
    let manifest = ManifestWriter::create(config.manifest.as_deref(), &out_dir)?;
    let decided = decide(&out_dir, named, (history, manifest), config, &shutdown);
    let (plan, mut manifest) = decided.await?;
    let run = Run {
        broker,
        config,
        local,
        progress,
        shutdown: &shutdown,
        started,
        out_dir: &out_dir,
    };
    let fetched = fetch_missing(&run, &plan, &mut manifest).await;
    drop(plan);
    // Also when the job ended early: the files placed so far are as good
    // as those of a finished job, made durable and listed, so a re-run can
    // trust them.
    let durable = manifest::make_durable(&out_dir, manifest).await;
    let ((job_id, workers), records) = match (fetched, durable) {
        (Ok(fetched), durable) => (fetched, durable?),
        (Err(e), durable) => {
            if let Err(commit) = durable {
                tracing::warn!("{}", warren::display_chain(&commit));
            }
            return Err(e);
        }
    };
    Ok(DownloadSummary {
        job_id,
        records,
        out_dir,
        manifest: config.manifest.clone(),
        workers,
        elapsed: started.elapsed(),
    })
}

/// Reads every list and URL and names the files; exact repeats are set
/// aside, with a warning.
async fn read_urls(
    config: &DownloadConfig,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Result<UrlList> {
    let inputs = config.inputs.clone();
    let mut named = job::read_blocking(shutdown, move || urls::read_all(&inputs)).await?;
    urls::assign_names(&mut named)?;
    for repeat in named.repeats() {
        progress.warn(&format!(
            "{} repeats {} ({}) and is fetched only once",
            repeat.entry.origin(),
            named.get(repeat.of).origin(),
            repeat.entry.url()
        ));
    }
    Ok(named)
}

/// Creates the output directory if need be; returns its canonical path.
fn make_out_dir(out_dir: &Path) -> Result<PathBuf> {
    let write_error = |source| Error::Write {
        output: out_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(write_error)?;
    std::fs::canonicalize(out_dir).map_err(write_error)
}

/// Decides about the files already in `out_dir` (this hashes them), with
/// what earlier runs' manifests say, before anything is published: the
/// plan, with the records of the entries skipped, refused or repeated in
/// `manifest`.
async fn decide(
    out_dir: &Path,
    named: UrlList,
    (history, mut manifest): (History, ManifestWriter),
    config: &DownloadConfig,
    shutdown: &CancellationToken,
) -> Result<(Plan, ManifestWriter)> {
    let out_dir = out_dir.to_owned();
    let overwrite = config.overwrite;
    // Hashing thousands of existing files takes a while: Ctrl-C stops it.
    job::read_blocking(shutdown, move || {
        let decide = |entry: NamedEntry<'_>| plan::decide(&out_dir, entry, &history, overwrite);
        let plan = Plan::new(named, decide, &mut manifest)?;
        Ok((plan, manifest))
    })
    .await
}

/// Fetches the entries `plan` says to, recording each outcome in `plan`
/// and `manifest`; returns the job's id and the workers that answered
/// (no job when nothing is to fetch).
async fn fetch_missing(
    run: &Run<'_>,
    plan: &Plan,
    manifest: &mut ManifestWriter,
) -> Result<(Option<JobId>, BTreeSet<String>)> {
    if plan.to_fetch.is_empty() {
        return Ok((None, BTreeSet::new()));
    }
    let job = JobId::random();
    let mut collector =
        DownloadCollector::new(job.clone(), run.config, run.out_dir, plan, manifest);
    let tasks = (Arc::clone(&plan.named), Arc::clone(&plan.to_fetch));
    let outcome = publish_and_collect(run, &mut collector, tasks).await;
    if let Err(e) = &outcome {
        // Every URL still gets its manifest line: files being placed
        // finish first (their threads would run on anyway), the rest fail
        // with the reason the job ended.
        if let Err(write) = collector.end_early(e).await {
            tracing::warn!("{}", warren::display_chain(&write));
        }
    }
    collector.assembler.clean_up();
    outcome.map(|()| (Some(job), std::mem::take(&mut collector.workers)))
}

/// Publishes one task per entry to fetch and collects until all are done.
async fn publish_and_collect(
    run: &Run<'_>,
    collector: &mut DownloadCollector<'_>,
    tasks: (Arc<UrlList>, Arc<Vec<u32>>),
) -> Result<()> {
    let (config, progress) = (run.config, run.progress);
    let job = collector.job.clone();
    progress.set_job(&job);
    let mut session = JobSession::open(
        run.broker,
        Opening::WithProducer(job.clone()),
        run.local,
        run.shutdown,
    )
    .await?;
    let swept = sweep::dead_jobs(run.out_dir, &mut session).await;
    if swept > 0 {
        tracing::info!(
            files = swept,
            "removed temporary files of jobs that are over"
        );
    }
    let files = collector.tasks().count();
    tracing::info!(job_id = %job, files, "download job started");
    progress.start("files", Some(files as u64));
    // In shared mode, the marker is there before any task goes out.
    let marker = match config.delivery {
        FileRoute::Shared => Some(shared::make_marker(run.out_dir, &job)?),
        FileRoute::Broker => None,
    };
    let tasks = publish::TaskSource::new(&job, tasks, config, marker.as_deref())?;
    let (messages, outgoing) = publish::spawn_messages(
        tasks,
        collector.batching.clone(),
        session.reply_queue.clone(),
    );
    let window = Arc::new(Semaphore::new(config.max_in_flight));
    let counts = Arc::new(PublishCounts::default());
    let publisher =
        job::spawn_publisher(&session, outgoing, Arc::clone(&window), Arc::clone(&counts));
    let drive = Drive {
        window: &window,
        counts: &counts,
        answered_before: 0,
        timeout: config.timeout,
        stall_timeout: config.stall_timeout,
        progress,
        shutdown: run.shutdown,
        started: run.started,
    };
    let outcome = job::drive(&mut session, collector, publisher, drive).await;
    messages.abort();
    session.close().await;
    progress.finish();
    outcome.map(drop)
}
