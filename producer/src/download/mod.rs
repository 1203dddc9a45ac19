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
//! 7. `resume`: unless `--job-ttl 0`, the job outlives its producer: its
//!    record and checkpoints, and `producer attach` carrying it on.
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
mod resume;
mod shared;
mod sweep;
pub mod urls;
mod verify;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use warren::protocol::FileRoute;
use warren::{BrokerConfig, JobId};

pub use config::{DEFAULT_DOWNLOADS_IN_FLIGHT, DownloadConfig, UrlInput};

use crate::durable::{JobRecord, JobSpec};
use crate::error::{Error, Result};
use crate::job::{self, Drive, JobSession, Opening, PublishCounts, Publishing};
use crate::local::LocalPlan;
use crate::progress::Progress;
use collect::DownloadCollector;
use manifest::{History, ManifestWriter, Records, Tally};
use plan::Plan;
use resume::DownloadCheckpoint;
pub(crate) use resume::{DownloadJobSpec, resume};
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

/// Runs a download job to its end. Unless `--job-ttl 0`, the job outlives
/// its producer: its record lets `producer attach` carry it on.
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
    let planned = plan_new_job(config, progress, &shutdown).await?;
    let run = Run {
        broker,
        config,
        local,
        progress,
        shutdown: &shutdown,
        started,
        out_dir: &planned.out_dir,
    };
    fetch_planned(&run, planned.plan, planned.manifest, planned.opening).await
}

/// Fetches what `plan` says to and sums up.
async fn fetch_planned(
    run: &Run<'_>,
    plan: Plan,
    mut manifest: ManifestWriter,
    opening: Opening,
) -> Result<DownloadSummary> {
    let fetched = fetch_missing(run, &plan, &mut manifest, Start::New(opening)).await;
    drop(plan);
    conclude(run, manifest, fetched).await
}

/// A new job, read and planned, before anything is published.
struct Planned {
    plan: Plan,
    /// Holds the records of the entries decided without a download.
    manifest: ManifestWriter,
    /// How its broker session opens, with its record unless `--job-ttl 0`.
    opening: Opening,
    /// The output directory, made and canonical.
    out_dir: PathBuf,
}

/// Reads the lists, names the files and decides which to fetch.
async fn plan_new_job(
    config: &DownloadConfig,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Result<Planned> {
    let durable = !config.job_ttl.is_zero();
    // Pinned before they are read: a list changed later is refused by
    // `attach`.
    let pins = if durable {
        Some(resume::pin_inputs(&config.inputs)?)
    } else {
        None
    };
    let named = read_urls(config, progress, shutdown).await?;
    let out_dir = make_out_dir(&config.out_dir)?;
    // Read before the writer truncates this run's partial manifest: the
    // partial one of a run that never finished is part of the history.
    let history = config
        .manifest
        .as_deref()
        .map(History::read)
        .unwrap_or_default();
    let job = JobId::random();
    let manifest = if durable {
        ManifestWriter::create_for_job(config.manifest.as_deref(), &out_dir, &job)?
    } else {
        ManifestWriter::create(config.manifest.as_deref(), &out_dir)?
    };
    let decided = decide(&out_dir, named, (history, manifest), config, shutdown);
    let (plan, manifest) = decided.await?;
    let opening = match pins {
        Some(pins) => {
            let spec = DownloadJobSpec::new(config, pins, &out_dir, &plan, &manifest)?;
            let spec = JobSpec::Download(Box::new(spec));
            Opening::New(Box::new(JobRecord::new(job, config.job_ttl, spec)))
        }
        None => Opening::WithProducer(job),
    };
    Ok(Planned {
        plan,
        manifest,
        opening,
        out_dir,
    })
}

/// What `producer download --detach` did.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// Every task is out: `producer attach` collects the job.
    Detached(JobId),
    /// Nothing was to fetch: the summary a run without `--detach` gives.
    Finished(DownloadSummary),
}

/// `--detach`: reads and plans as [`run`] does, publishes every task,
/// saves the job's record and leaves the job to `producer attach`.
///
/// # Errors
/// [`Error::Usage`] without `--shared` (the files would come back through
/// this producer) or with `--job-ttl 0`, and what [`run`] may fail with
/// before its first reply.
pub(crate) async fn submit(
    broker: &BrokerConfig,
    config: &DownloadConfig,
    local: &LocalPlan,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<Submitted> {
    if config.delivery != FileRoute::Shared {
        return Err(Error::Usage(
            "--detach needs --shared: without it the files come back through the producer, \
             which must stay until the end"
                .into(),
        ));
    }
    if config.job_ttl.is_zero() {
        return Err(Error::Usage(
            "--detach needs a --job-ttl longer than 0".into(),
        ));
    }
    let started = Instant::now();
    let Planned {
        plan,
        manifest,
        opening,
        out_dir,
    } = plan_new_job(config, progress, &shutdown).await?;
    if plan.to_fetch.is_empty() {
        let run = Run {
            broker,
            config,
            local,
            progress,
            shutdown: &shutdown,
            started,
            out_dir: &out_dir,
        };
        // Nothing is published: the summary of a run without --detach.
        let summary = fetch_planned(&run, plan, manifest, opening).await;
        return summary.map(Submitted::Finished);
    }
    let mut session = JobSession::open(broker, opening, local, &shutdown).await?;
    let job = session.job.clone();
    progress.set_job(&job);
    let published = publish_every_task(
        &mut session,
        config,
        &out_dir,
        (&plan, &manifest),
        &shutdown,
    );
    match published.await {
        Ok(()) => {
            session.detach().await;
            Ok(Submitted::Detached(job))
        }
        Err(e) => {
            session.close().await;
            Err(e)
        }
    }
}

/// Publishes every task of `plan` at once (they are small control
/// messages: the workers store the files), then saves a checkpoint that
/// says so, for `attach` not to publish them again.
async fn publish_every_task(
    session: &mut JobSession,
    config: &DownloadConfig,
    out_dir: &Path,
    (plan, manifest): (&Plan, &ManifestWriter),
    shutdown: &CancellationToken,
) -> Result<()> {
    let marker = shared::make_marker(out_dir, &session.job)?;
    let tasks = (Arc::clone(&plan.named), Arc::clone(&plan.to_fetch));
    let tasks = publish::TaskSource::new(&session.job, tasks, config, Some(&marker))?;
    let total = plan.to_fetch.len() as u64;
    let batching = batching::Batching::new(config.max_in_flight);
    let messages = publish::spawn_messages(tasks, batching, session.reply_queue.clone(), 0);
    let window = usize::try_from(total).unwrap_or(usize::MAX);
    let publishing = Publishing::start(session, messages, window, PublishCounts::default());
    publishing.all_published(shutdown).await?;
    // The lines of the entries decided without a download are on disk
    // before the checkpoint that counts them.
    manifest.sync()?;
    let checkpoint = DownloadCheckpoint {
        manifest_bytes: manifest.written(),
        published: total,
        ..DownloadCheckpoint::default()
    };
    let state = serde_json::to_value(checkpoint).expect("a checkpoint always serializes"); // invariant: plain data
    session.checkpoint(state, 0, Some(total)).await
}

/// Makes the job's files and manifest durable and sums up, also when the
/// job ended early: the files placed so far are as good as those of a
/// finished job, made durable and listed, so a re-run can trust them. A
/// job that lost its broker is left as it is, for the same producer to
/// carry on once it connects again.
async fn conclude(
    run: &Run<'_>,
    manifest: ManifestWriter,
    fetched: Result<(Option<JobId>, BTreeSet<String>)>,
) -> Result<DownloadSummary> {
    if let Err(lost @ Error::BrokerLost { .. }) = fetched {
        return Err(lost);
    }
    let durable = manifest::make_durable(run.out_dir, manifest).await;
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
        out_dir: run.out_dir.to_owned(),
        manifest: run.config.manifest.clone(),
        workers,
        elapsed: run.started.elapsed(),
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

/// How a job's broker session starts.
enum Start {
    /// A new job, opened this way once there is something to fetch.
    New(Opening),
    /// A job another producer started (`attach`): its session, and where
    /// its checkpoint left it.
    Resumed(Box<JobSession>, DownloadCheckpoint),
}

/// Fetches the entries `plan` says to, recording each outcome in `plan`
/// and `manifest`; returns the job's id and the workers that answered
/// (no job when nothing is to fetch).
async fn fetch_missing(
    run: &Run<'_>,
    plan: &Plan,
    manifest: &mut ManifestWriter,
    start: Start,
) -> Result<(Option<JobId>, BTreeSet<String>)> {
    let (session, checkpoint) = match start {
        Start::Resumed(session, checkpoint) => (*session, Some(checkpoint)),
        Start::New(_) if plan.to_fetch.is_empty() => return Ok((None, BTreeSet::new())),
        Start::New(opening) => {
            let opened = JobSession::open(run.broker, opening, run.local, run.shutdown);
            (opened.await?, None)
        }
    };
    let job = session.job.clone();
    if session.record().is_some() && checkpoint.is_none() {
        run.progress.note(&format!(
            "job {job} started; if this producer stops, `producer attach {job}` carries it on"
        ));
    }
    let mut collector =
        DownloadCollector::new(job.clone(), run.config, run.out_dir, plan, manifest);
    match &checkpoint {
        Some(checkpoint) => collector.resumed(checkpoint),
        None if session.record().is_some() => collector.keep_checkpoints(),
        None => {}
    }
    let tasks = (Arc::clone(&plan.named), Arc::clone(&plan.to_fetch));
    let outcome = publish_and_collect(run, &mut collector, tasks, session).await;
    if let Err(Error::BrokerLost { .. }) = &outcome {
        // Everything stays for the producer that carries the job on, once
        // the files being placed are: it may receive them again, under the
        // same temporary names.
        collector.finish_pending().await;
        return outcome.map(|()| (None, BTreeSet::new()));
    }
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

/// Starts publishing the tasks of `tasks` that `collector` neither counts
/// as answered nor as published by an earlier producer, `max_in_flight` in
/// flight at most.
fn start_publishing(
    session: &JobSession,
    tasks: publish::TaskSource,
    collector: &DownloadCollector<'_>,
    max_in_flight: usize,
) -> Publishing {
    let files = collector.tasks().count() as u64;
    let messages = publish::spawn_messages(
        tasks,
        collector.batching.clone(),
        session.reply_queue.clone(),
        collector.published_before(),
    );
    let mut publishing =
        Publishing::start(session, messages, max_in_flight, PublishCounts::default());
    // The job has a task per file, whoever published it.
    let publisher = publishing.publisher;
    publishing.publisher = tokio::spawn(async move {
        match publisher.await {
            Ok(published) => published.map(|_| files),
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        }
    });
    publishing
}

/// Publishes one task per entry to fetch (for a resumed job, those its
/// checkpoint neither answers nor counts as published) and collects until
/// all are done.
async fn publish_and_collect(
    run: &Run<'_>,
    collector: &mut DownloadCollector<'_>,
    tasks: (Arc<UrlList>, Arc<Vec<u32>>),
    mut session: JobSession,
) -> Result<()> {
    let (config, progress) = (run.config, run.progress);
    let job = collector.job.clone();
    progress.set_job(&job);
    let swept = sweep::dead_jobs(run.out_dir, &mut session).await;
    if swept > 0 {
        tracing::info!(
            files = swept,
            "removed temporary files of jobs that are over"
        );
    }
    let files = collector.tasks().count();
    let answered_before = collector.answered_count();
    tracing::info!(job_id = %job, files, "download job started");
    progress.start("files", Some(files as u64));
    progress.advance(answered_before);
    // In shared mode, the marker is there before any task goes out.
    let marker = match config.delivery {
        FileRoute::Shared => Some(shared::make_marker(run.out_dir, &job)?),
        FileRoute::Broker => None,
    };
    let tasks = publish::TaskSource::new(&job, tasks, config, marker.as_deref())?;
    let Publishing {
        source: messages,
        publisher,
        window,
        counts,
    } = start_publishing(&session, tasks, collector, config.max_in_flight);
    let drive = Drive {
        window: &window,
        counts: &counts,
        answered_before,
        timeout: config.timeout,
        stall_timeout: config.stall_timeout,
        progress,
        shutdown: run.shutdown,
        started: run.started,
    };
    let outcome = job::drive(&mut session, collector, publisher, drive).await;
    messages.abort();
    progress.finish();
    // A job that outlives its producer outlives a lost connection too: the
    // caller connects again and carries it on from its record.
    if outcome.is_err() && !session.is_connected() && session.record().is_some() {
        session.detach().await;
        return Err(Error::BrokerLost { job });
    }
    session.close().await;
    outcome.map(drop)
}
