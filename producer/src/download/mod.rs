//! A download job: fetch a list of URLs with the workers and land the files
//! in the output directory, each complete and verified, with a manifest.
//!
//! Everything that can be checked is checked before the first task is
//! published: every line of the list ([`urls`]), every file name, and what
//! is already in the output directory ([`plan`]), so a re-run fetches only
//! what is missing or failed. Then one task per URL goes out through the
//! shared pipeline (`job.rs`), several to a message when files prove small
//! ([`batching`]). With the default delivery, each file comes
//! back through the broker as body chunks and is put together here
//! ([`files`]); with `--shared`, workers store it in the shared directory's
//! temporary area and the producer verifies it there. Either way only the
//! producer moves files under their final names ([`placement`]). Every URL
//! ends as one [`manifest`] line: ok, failed (with the reason) or skipped.
//! At the end, one `syncfs` makes the job's files durable, and only then
//! the manifest (group commit; `--fsync` adds a sync per file; see
//! docs/DOWNLOADS.md).

mod batching;
pub mod files;
pub mod manifest;
pub mod placement;
pub mod plan;
pub mod urls;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use warren::protocol::{
    BodyChunk, DeadLetter, DownloadBatch, DownloadErrorKind, DownloadLimits, DownloadSpec,
    DownloadStatus, DownloadTask, FileRoute, Outcome, TaskResult,
};
use warren::{BrokerConfig, JobId};

use crate::error::{Error, Result};
use crate::input::Source;
use crate::job::{self, Accepted, Collector, Drive, JobSession, OutgoingTask, explain_dead_letter};
use crate::local::LocalPlan;
use crate::progress::Progress;
use batching::Batching;
use files::{Assembler, ChunkOutcome, Completion};
use manifest::{History, ItemStatus, ManifestRecord, ManifestWriter, Verified};
use plan::Decision;
use urls::NamedEntry;

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
}

/// What a finished download job reports.
#[derive(Debug, Clone)]
pub struct DownloadSummary {
    /// The job's id; `None` when nothing needed downloading.
    pub job_id: Option<JobId>,
    /// One record per URL: in list order, then exact repeats.
    pub records: Vec<ManifestRecord>,
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
    /// Records with the given status.
    pub fn with_status(&self, status: ItemStatus) -> impl Iterator<Item = &ManifestRecord> {
        self.records.iter().filter(move |r| r.status == status)
    }

    /// Bytes downloaded in this run.
    pub fn bytes(&self) -> u64 {
        self.with_status(ItemStatus::Ok).map(|r| r.bytes).sum()
    }
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
    let inputs = config.inputs.clone();
    let entries = job::read_blocking(&shutdown, move || read_inputs(&inputs)).await?;
    let (named, repeats) = urls::assign_names(entries)?;
    for repeat in &repeats {
        progress.warn(&format!(
            "{} repeats {} ({}) and is fetched only once",
            repeat.entry.origin, named[repeat.of].entry.origin, repeat.entry.url
        ));
    }
    std::fs::create_dir_all(&config.out_dir).map_err(|e| Error::Write {
        output: config.out_dir.display().to_string(),
        source: e,
    })?;
    let out_dir = std::fs::canonicalize(&config.out_dir).map_err(|e| Error::Write {
        output: config.out_dir.display().to_string(),
        source: e,
    })?;

    // Decide about existing files (this hashes them) before publishing.
    let history = config
        .manifest
        .as_deref()
        .map(History::read)
        .unwrap_or_default();
    let (decisions, named) = {
        let out_dir = out_dir.clone();
        let overwrite = config.overwrite;
        // Hashing thousands of existing files takes a while: Ctrl-C stops it.
        job::read_blocking(&shutdown, move || {
            let decisions: Vec<Decision> = named
                .iter()
                .map(|entry| plan::decide(&out_dir, entry, &history, overwrite))
                .collect();
            Ok((decisions, named))
        })
        .await?
    };

    let mut manifest = ManifestWriter::create(config.manifest.as_deref())?;
    let mut records: Vec<Option<ManifestRecord>> = vec![None; named.len()];
    let mut to_fetch = Vec::new();
    let mut last_ok = vec![None; named.len()];
    let mut replace = vec![false; named.len()];
    for (slot, (entry, decision)) in named.iter().zip(decisions).enumerate() {
        let record = match decision {
            Decision::Fetch {
                last_ok: known,
                replace: allowed,
            } => {
                to_fetch.push(slot);
                last_ok[slot] = known;
                replace[slot] = allowed;
                continue;
            }
            Decision::Skip { bytes, sha256 } => ManifestRecord {
                status: ItemStatus::Skipped,
                bytes,
                sha256: Some(sha256),
                ..record_for(entry)
            },
            Decision::Refuse { reason, last_ok } => ManifestRecord {
                status: ItemStatus::Failed,
                error: Some(reason),
                last_ok,
                ..record_for(entry)
            },
        };
        manifest.record(&record)?;
        records[slot] = Some(record);
    }
    // An exact repeat gets its own line too, saying which entry it repeats.
    let repeated: Vec<ManifestRecord> = repeats
        .iter()
        .map(|repeat| ManifestRecord {
            url: repeat.entry.url.to_string(),
            status: ItemStatus::Skipped,
            error: Some(format!(
                "repeats {}: fetched once",
                named[repeat.of].entry.origin
            )),
            ..record_for(&named[repeat.of])
        })
        .collect();
    for record in &repeated {
        manifest.record(record)?;
    }

    let mut summary = DownloadSummary {
        job_id: None,
        records: Vec::new(),
        out_dir: out_dir.clone(),
        manifest: config.manifest.clone(),
        workers: BTreeSet::new(),
        elapsed: Duration::ZERO,
    };
    if !to_fetch.is_empty() {
        let job = JobId::random();
        summary.job_id = Some(job.clone());
        let mut collector = DownloadCollector {
            job: job.clone(),
            delivery: config.delivery,
            assembler: Assembler::new(&out_dir, job.clone(), config.limits.max_bytes, config.fsync),
            out_dir: out_dir.clone(),
            named: &named,
            to_fetch: &to_fetch,
            last_ok: &last_ok,
            replace: &replace,
            records: &mut records,
            manifest: &mut manifest,
            finishing: tokio::task::JoinSet::new(),
            finishing_slots: std::collections::HashSet::new(),
            batching: Batching::new(config.max_in_flight),
            received: 0,
            failures: 0,
            workers: BTreeSet::new(),
        };
        let outcome = fetch(
            broker,
            config,
            local,
            &mut collector,
            progress,
            &shutdown,
            started,
        )
        .await;
        if let Err(e) = &outcome {
            // Every URL still gets its manifest line: files being placed
            // finish first (their threads would run on anyway), the rest
            // fail with the reason the job ended.
            if let Err(write) = collector.end_early(e).await {
                tracing::warn!("{}", warren::display_chain(&write));
            }
        }
        collector.assembler.clean_up();
        summary.workers = std::mem::take(&mut collector.workers);
        // It borrows the manifest, which is made durable below.
        drop(collector);
        if let Err(e) = outcome {
            // The files placed so far are as good as those of a finished
            // job: made durable and listed, so a re-run can trust them.
            if let Err(commit) = make_durable(&out_dir, manifest).await {
                tracing::warn!("{}", warren::display_chain(&commit));
            }
            return Err(e);
        }
    }
    make_durable(&out_dir, manifest).await?;
    summary.records = records
        .into_iter()
        .zip(&named)
        .map(|(record, entry)| {
            record.unwrap_or_else(|| ManifestRecord {
                status: ItemStatus::Failed,
                error: Some("no result arrived".into()),
                ..record_for(entry)
            })
        })
        .chain(repeated)
        .collect();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The job's one durability point: makes every file written to the output
/// file system durable with one `syncfs` (the workers' files in shared
/// mode too: they closed them, which handed their data to the file system,
/// and on NFS to the server), and only then the manifest that lists them,
/// so a manifest never names a file that a power cut can take back.
async fn make_durable(out_dir: &std::path::Path, mut manifest: ManifestWriter) -> Result<()> {
    let out_dir = out_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        manifest::sync_file_system(&out_dir)?;
        manifest.commit()
    })
    .await
    .expect("syncing does not panic") // invariant: both calls return their failures
}

/// In shared mode, makes the job's marker file in the output directory's
/// temporary area, which every worker must find in its own shared
/// directory before it downloads anything (see
/// [`warren::protocol::marker_name`]). It is removed with the job's other
/// temporary files.
fn make_marker(out_dir: &std::path::Path, job: &JobId) -> Result<String> {
    let temp_dir = out_dir.join(warren::filename::TEMP_DIR);
    let name = warren::protocol::marker_name(job);
    let path = temp_dir.join(&name);
    std::fs::create_dir_all(&temp_dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
        })
        .map_err(|e| Error::Write {
            output: path.display().to_string(),
            source: e,
        })?;
    Ok(name)
}

fn read_inputs(inputs: &[UrlInput]) -> Result<Vec<urls::UrlEntry>> {
    let mut entries = Vec::new();
    let mut arguments = Vec::new();
    for input in inputs {
        match input {
            UrlInput::List(source) => entries.extend(urls::read_list(source)?),
            UrlInput::Url(url) => arguments.push(url.clone()),
        }
    }
    entries.extend(urls::from_arguments(&arguments)?);
    if entries.is_empty() {
        return Err(Error::Usage(
            "no URL to download: the lists are empty".into(),
        ));
    }
    Ok(entries)
}

/// The record of an entry, before its outcome is known.
fn record_for(entry: &NamedEntry) -> ManifestRecord {
    ManifestRecord {
        url: entry.entry.url.to_string(),
        path: entry.name.to_string(),
        status: ItemStatus::Failed,
        bytes: 0,
        sha256: None,
        http_status: None,
        attempts: 0,
        error: None,
        last_ok: None,
    }
}

/// Publishes one task per entry to fetch and collects until all are done.
async fn fetch(
    broker: &BrokerConfig,
    config: &DownloadConfig,
    local: &LocalPlan,
    collector: &mut DownloadCollector<'_>,
    progress: &Progress,
    shutdown: &CancellationToken,
    started: Instant,
) -> Result<()> {
    let job = collector.job.clone();
    progress.set_job(&job);
    let mut session = JobSession::open(broker, job.clone(), local, shutdown).await?;
    tracing::info!(job_id = %job, files = collector.to_fetch.len(), "download job started");
    progress.start("files", Some(collector.to_fetch.len() as u64));

    // The tasks are small: build them all now; messages are made of them as
    // the window lets them go, as many to a message as `batching` says then.
    let marker = match config.delivery {
        FileRoute::Shared => Some(make_marker(&collector.out_dir, &job)?),
        FileRoute::Broker => None,
    };
    let mut tasks = Vec::with_capacity(collector.to_fetch.len());
    for (index, &slot) in collector.to_fetch.iter().enumerate() {
        let entry = &collector.named[slot];
        let spec = DownloadSpec {
            url: entry.entry.url.to_string(),
            name: entry.name.to_string(),
            sha256: entry.entry.sha256.clone(),
            delivery: config.delivery,
            limits: config.limits,
            fsync: config.fsync,
            marker: marker.clone(),
        };
        tasks.push(DownloadTask::new(job.clone(), index as u64, spec)?);
    }
    // One message waits here while the publisher holds the next: each is
    // made with the latest estimate of the file sizes.
    let (tasks_tx, tasks_rx) = mpsc::channel(1);
    let messages = tokio::spawn(make_messages(
        tasks,
        collector.batching.clone(),
        session.reply_queue.clone(),
        tasks_tx,
    ));
    let window = Arc::new(Semaphore::new(config.max_in_flight));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = job::spawn_publisher(
        &session,
        tasks_rx,
        Arc::clone(&window),
        Arc::clone(&published),
    );
    let drive = Drive {
        window: &window,
        published: &published,
        timeout: config.timeout,
        stall_timeout: config.stall_timeout,
        progress,
        shutdown,
        started,
    };
    let outcome = job::drive(&mut session, collector, publisher, drive).await;
    messages.abort();
    session.close().await;
    progress.finish();
    outcome.map(drop)
}

/// Groups `tasks` into messages for the publisher, in order, each with as
/// many tasks as `batching` says when it is made.
async fn make_messages(
    tasks: Vec<DownloadTask>,
    batching: Batching,
    reply_queue: String,
    messages: mpsc::Sender<OutgoingTask>,
) {
    let mut tasks = tasks.into_iter().peekable();
    while tasks.peek().is_some() {
        let take = usize::try_from(batching.per_message()).unwrap_or(1);
        let batch = DownloadBatch::new(tasks.by_ref().take(take).collect())
            .expect("consecutive tasks of one job make a message"); // invariant: indices 0, 1, 2, ... of one job
        let carried = batch.tasks().len() as u64;
        batching.sent(batch.index(), carried);
        let outgoing = OutgoingTask {
            body: batch.body(),
            properties: batch.properties(&reply_queue),
            tasks: carried as u32,
        };
        if messages.send(outgoing).await.is_err() {
            return; // the publisher stopped: the job is ending
        }
    }
}

/// A file finished in the background: its slot, its record so far, and
/// the outcome (an `Err` is a local failure that ends the job; an inner
/// `Err` fails the download).
type Finished = (
    usize,
    ManifestRecord,
    Result<std::result::Result<files::Saved, String>>,
);

/// Gathers chunks and reports, finishing each file.
struct DownloadCollector<'a> {
    job: JobId,
    delivery: FileRoute,
    assembler: Assembler,
    out_dir: PathBuf,
    named: &'a [NamedEntry],
    /// Slots in `named` of the entries being fetched; task `i` is
    /// `named[to_fetch[i]]`.
    to_fetch: &'a [usize],
    /// By slot: what warren last verified at the name, carried forward in
    /// a failed record (see `manifest`).
    last_ok: &'a [Option<Verified>],
    /// By slot: whether the file may replace other content at its name
    /// (`plan::Decision::Fetch`).
    replace: &'a [bool],
    records: &'a mut [Option<ManifestRecord>],
    manifest: &'a mut ManifestWriter,
    /// Files being placed or checked on blocking threads: their slot, their
    /// record so far, and the outcome (an `Err` is a local failure that
    /// ends the job; an inner `Err` fails the download).
    finishing: tokio::task::JoinSet<Finished>,
    /// Slots whose file is in `finishing`.
    finishing_slots: std::collections::HashSet<usize>,
    /// Downloads per message, and the messages sent.
    batching: Batching,
    /// Body bytes received, for the throughput display.
    received: u64,
    failures: u64,
    workers: BTreeSet<String>,
}

impl DownloadCollector<'_> {
    /// The entry of task `index`, unless it is unknown, already done, or
    /// being finished (a redelivered task's second report is ignored).
    fn open_task(&self, index: u64) -> Option<usize> {
        let slot = *self.to_fetch.get(usize::try_from(index).ok()?)?;
        (self.records[slot].is_none() && !self.finishing_slots.contains(&slot)).then_some(slot)
    }

    fn finish(&mut self, slot: usize, mut record: ManifestRecord) -> Result<Accepted> {
        self.finishing_slots.remove(&slot);
        if record.status == ItemStatus::Failed {
            self.failures += 1;
            // The file at the name is as it was: the next run must still
            // know what it should hold.
            record.last_ok = self.last_ok[slot].clone();
        }
        self.manifest.record(&record)?;
        self.records[slot] = Some(record);
        Ok(Accepted::Answered(1))
    }

    /// After the job ended early (`--timeout`, Ctrl-C, a broker or local
    /// failure): waits for the files being placed or checked and records
    /// them, then records every URL without an outcome as failed, with the
    /// reason.
    ///
    /// # Errors
    /// [`Error::Write`] when the manifest cannot be written.
    async fn end_early(&mut self, ended: &Error) -> Result<()> {
        while self.has_pending() {
            if let Err(e) = self.completion().await {
                // The local failure that stopped this file is its reason.
                tracing::debug!(error = %e, "placing a file failed as the job ended");
            }
        }
        let reason = format!(
            "the job ended before it finished: {}",
            warren::display_chain(ended)
        );
        for &slot in self.to_fetch {
            if self.records[slot].is_none() {
                let record = ManifestRecord {
                    error: Some(reason.clone()),
                    ..record_for(&self.named[slot])
                };
                self.finish(slot, record)?;
            }
        }
        Ok(())
    }

    /// Takes the reports answering the message whose first task is `first`:
    /// one per task, each finishing its download unless it was done already
    /// (a redelivered message). A result that matches no message sent, or
    /// not all of it, is malformed and ends the job rather than leave tasks
    /// unanswered.
    async fn answer(
        &mut self,
        first: u64,
        worker: String,
        reports: Vec<warren::protocol::DownloadReport>,
    ) -> Result<Accepted> {
        let malformed = |reason: String| Error::from(warren::Error::malformed("result", reason));
        let Some(tasks) = self.batching.message(first) else {
            if self.is_done(first) {
                // A redelivered message's second result, after its first
                // closed the message.
                tracing::debug!(task = first, "duplicate download result ignored");
                return Ok(Accepted::Other);
            }
            return Err(malformed(format!(
                "worker {worker} answered task {first}, which no message starts with"
            )));
        };
        if reports.len() as u64 != tasks.end - tasks.start {
            return Err(malformed(format!(
                "worker {worker} answered the {} task(s) from {first} with {} report(s)",
                tasks.end - tasks.start,
                reports.len()
            )));
        }
        self.workers.insert(worker);
        let mut answered = 0;
        for (index, report) in tasks.zip(reports) {
            let Some(slot) = self.open_task(index) else {
                tracing::debug!(task = index, "duplicate download report ignored");
                continue;
            };
            answered += self.finish_download(index, slot, report).await?.tasks();
        }
        // Every task of it is now recorded or being finished.
        self.batching.close(first);
        Ok(Accepted::answered(answered))
    }

    /// Whether task `index` has its record or is being finished.
    fn is_done(&self, index: u64) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.to_fetch.get(i))
            .is_some_and(|&slot| {
                self.records[slot].is_some() || self.finishing_slots.contains(&slot)
            })
    }

    /// Fails every task still open of the message that starts with task
    /// `first` (a worker refused the message, or the broker dead-lettered
    /// it), for `reason`.
    fn fail_message(&mut self, first: u64, reason: &str) -> Result<Accepted> {
        let tasks = self.batching.message(first).unwrap_or(first..first + 1);
        let mut answered = 0;
        for index in tasks {
            let Some(slot) = self.open_task(index) else {
                continue;
            };
            self.assembler.forget(index);
            let record = ManifestRecord {
                error: Some(reason.to_owned()),
                ..record_for(&self.named[slot])
            };
            answered += self.finish(slot, record)?.tasks();
        }
        self.batching.close(first);
        Ok(Accepted::answered(answered))
    }

    async fn finish_download(
        &mut self,
        index: u64,
        slot: usize,
        report: warren::protocol::DownloadReport,
    ) -> Result<Accepted> {
        let named = self.named;
        let entry = &named[slot];
        let mut record = ManifestRecord {
            http_status: report.http_status,
            attempts: report.attempts,
            bytes: report.bytes,
            ..record_for(entry)
        };
        if report.status == DownloadStatus::Failed {
            if let Some(error) = &report.error
                && error.kind == DownloadErrorKind::SharedDirMismatch
            {
                // Every task would fail the same way: said once, the job
                // ends before the workers fetch anything more.
                return Err(Error::SharedDirMismatch {
                    out_dir: self.out_dir.display().to_string(),
                    reason: error.message.clone(),
                });
            }
            // A replaced attempt's failure (its worker lost the task to a
            // redelivery, then failed) says nothing about the newer one.
            if self.delivery == FileRoute::Broker
                && let Some(attempt) = &report.attempt
                && self.assembler.is_retired(index, attempt)
            {
                tracing::debug!(task = index, "a replaced attempt's failure ignored");
                return Ok(Accepted::Other);
            }
            self.assembler.forget(index);
            record.error = Some(
                report
                    .error
                    .map_or_else(|| "failed without a reason".to_owned(), |e| e.message),
            );
            return self.finish(slot, record);
        }
        let expected = entry.entry.sha256.clone();
        let sha256 = report.sha256.clone().unwrap_or_default();
        // Placing a file (sync, link) and checking a stored one first
        // (read, hash) run on a blocking thread while replies keep flowing;
        // the outcome comes back through `completion`.
        match self.delivery {
            FileRoute::Broker => {
                let attempt = report.attempt.clone().unwrap_or_default();
                let ready = self.assembler.complete(
                    index,
                    &entry.name,
                    &attempt,
                    report.bytes,
                    &sha256,
                    expected.as_deref(),
                )?;
                match ready {
                    Completion::Ready(ready) => {
                        let replace = self.replace[slot];
                        self.finishing_slots.insert(slot);
                        self.finishing
                            .spawn_blocking(move || (slot, record, ready.place(replace)));
                    }
                    Completion::Failed(reason) => {
                        record.error = Some(reason);
                        return self.finish(slot, record);
                    }
                    Completion::Stale => {
                        tracing::debug!(task = index, "a replaced attempt's report ignored");
                        return Ok(Accepted::Other);
                    }
                }
            }
            FileRoute::Shared => {
                let Some(temp) = report
                    .path
                    .as_deref()
                    .and_then(|path| files::stored_temp(&self.job, index, path))
                else {
                    record.error = Some(format!(
                        "the worker reported an unusable path for the file it stored: {:?}",
                        report.path
                    ));
                    return self.finish(slot, record);
                };
                // The bytes came in through the workers all the same: they
                // count for the throughput shown.
                self.received += report.bytes;
                let out_dir = self.out_dir.clone();
                let name = entry.name.clone();
                let bytes = report.bytes;
                let replace = self.replace[slot];
                self.finishing_slots.insert(slot);
                self.finishing.spawn_blocking(move || {
                    let finished = files::finish_stored(
                        &out_dir,
                        &temp,
                        &name,
                        (bytes, &sha256),
                        expected.as_deref(),
                        replace,
                    );
                    (slot, record, finished)
                });
            }
        }
        Ok(Accepted::Other)
    }
}

impl Collector for DownloadCollector<'_> {
    /// Chunks are written as they come; a report finishes its file; a
    /// dead-lettered task fails its URL, not the job.
    async fn accept(&mut self, delivery: &lapin::message::Delivery) -> Result<Accepted> {
        if let Some(dead) = DeadLetter::of(&delivery.properties) {
            let Some(first) = dead.task else {
                return Ok(Accepted::Other);
            };
            let reason = format!(
                "the broker gave up on it: {}",
                explain_dead_letter(&dead.reason)
            );
            return self.fail_message(first, &reason);
        }
        if let Some(chunk) = BodyChunk::of(&delivery.properties) {
            let chunk = chunk?;
            self.job.check_reply("body chunk", &chunk.job)?;
            let Some(slot) = self.open_task(chunk.task) else {
                return Ok(Accepted::Other);
            };
            match self.assembler.chunk(&chunk, &delivery.data)? {
                ChunkOutcome::Written(bytes) => self.received += bytes,
                ChunkOutcome::Ignored => {}
                ChunkOutcome::TooLarge(reason) => {
                    let record = ManifestRecord {
                        error: Some(reason),
                        ..record_for(&self.named[slot])
                    };
                    return self.finish(slot, record);
                }
            }
            return Ok(Accepted::Other);
        }
        let result = TaskResult::decode(&delivery.data)?;
        self.job.check_reply("result", &result.job_id)?;
        let Some(first) = result.task else {
            return Err(warren::Error::malformed(
                "result",
                "a download result without a task index",
            )
            .into());
        };
        match result.outcome {
            Outcome::Download(reports) => self.answer(first, result.worker, reports).await,
            Outcome::Error(failure) => {
                self.workers.insert(result.worker);
                self.fail_message(first, &failure.message)
            }
            Outcome::Sum(_) => {
                Err(warren::Error::malformed("result", "a sum result for a download job").into())
            }
        }
    }

    fn has_pending(&self) -> bool {
        !self.finishing.is_empty()
    }

    async fn completion(&mut self) -> Result<Accepted> {
        let Some(joined) = self.finishing.join_next().await else {
            return Ok(Accepted::Other);
        };
        let (slot, mut record, outcome) = joined.expect("placing and verifying do not panic"); // invariant: both return their failures
        match outcome? {
            Ok(saved) => {
                self.batching.observe(saved.bytes);
                record.status = ItemStatus::Ok;
                record.bytes = saved.bytes;
                record.sha256 = Some(saved.sha256);
            }
            Err(reason) => record.error = Some(reason),
        }
        self.finish(slot, record)
    }

    fn unanswered(&self) -> Vec<u64> {
        (0u64..)
            .zip(self.to_fetch.iter())
            .filter(|&(_, &slot)| {
                self.records[slot].is_none() && !self.finishing_slots.contains(&slot)
            })
            .map(|(index, _)| index)
            .collect()
    }

    fn progress_message(&self, elapsed: Duration) -> String {
        let rate = self.received as f64 / elapsed.as_secs_f64().max(1e-3) / 1e6;
        format!("{rate:.1} MB/s, {} failed", self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use warren::filename::{RelativePath, TEMP_DIR};
    use warren::protocol::{DownloadError, DownloadErrorKind, DownloadReport};

    /// What a collector borrows, for one URL `https://h/f.bin` saved as
    /// `f.bin`.
    struct Fixture {
        dir: tempfile::TempDir,
        named: Vec<NamedEntry>,
        records: Vec<Option<ManifestRecord>>,
        manifest: ManifestWriter,
    }

    impl Fixture {
        fn new() -> Fixture {
            Self::with_files(1)
        }

        /// `n` URLs, `https://h/f.bin` then `https://h/f1.bin`, ...
        fn with_files(n: usize) -> Fixture {
            let named = (0..n)
                .map(|i| {
                    let file = if i == 0 {
                        "f.bin".to_owned()
                    } else {
                        format!("f{i}.bin")
                    };
                    NamedEntry {
                        entry: urls::UrlEntry {
                            origin: format!("argument {}", i + 1),
                            url: url::Url::parse(&format!("https://h/{file}")).unwrap(),
                            name: None,
                            sha256: None,
                        },
                        name: RelativePath::parse(&file).unwrap(),
                    }
                })
                .collect();
            Fixture {
                dir: tempfile::tempdir().unwrap(),
                named,
                records: vec![None; n],
                manifest: ManifestWriter::create(None).unwrap(),
            }
        }

        fn collector<'a>(
            &'a mut self,
            delivery: FileRoute,
            last_ok: &'a [Option<Verified>],
        ) -> DownloadCollector<'a> {
            let job = JobId::parse("j").unwrap();
            DownloadCollector {
                job: job.clone(),
                delivery,
                assembler: Assembler::new(self.dir.path(), job, 1 << 30, false),
                out_dir: self.dir.path().to_owned(),
                named: &self.named,
                to_fetch: &[0, 1, 2, 3][..self.named.len()],
                last_ok,
                replace: &[false; 4][..self.named.len()],
                records: &mut self.records,
                manifest: &mut self.manifest,
                finishing: tokio::task::JoinSet::new(),
                finishing_slots: std::collections::HashSet::new(),
                batching: Batching::new(64),
                received: 0,
                failures: 0,
                workers: BTreeSet::new(),
            }
        }
    }

    fn report(status: DownloadStatus, data: &[u8]) -> DownloadReport {
        DownloadReport {
            url: "https://h/f.bin".into(),
            status,
            http_status: Some(200),
            attempts: 1,
            bytes: data.len() as u64,
            sha256: Some(hex::encode(Sha256::digest(data))),
            content_type: None,
            attempt: None,
            path: None,
            error: None,
        }
    }

    #[tokio::test]
    async fn a_shared_download_is_placed_and_counts_for_the_throughput() {
        let mut fixture = Fixture::new();
        let dir = fixture.dir.path().to_owned();
        let data = vec![7u8; 2_000_000];
        std::fs::create_dir(dir.join(TEMP_DIR)).unwrap();
        std::fs::write(dir.join(TEMP_DIR).join("j-0-1"), &data).unwrap();
        let mut collector = fixture.collector(FileRoute::Shared, &[None]);
        let report = DownloadReport {
            path: Some(format!("{TEMP_DIR}/j-0-1")),
            ..report(DownloadStatus::Ok, &data)
        };
        let accepted = collector.finish_download(0, 0, report).await.unwrap();
        assert_eq!(accepted, Accepted::Other, "answered once placed");
        assert_eq!(
            collector.progress_message(Duration::from_secs(1)),
            "2.0 MB/s, 0 failed"
        );
        assert!(collector.has_pending());
        assert_eq!(collector.completion().await.unwrap(), Accepted::Answered(1));
        assert_eq!(std::fs::read(dir.join("f.bin")).unwrap(), data);
        assert!(!dir.join(TEMP_DIR).join("j-0-1").exists());
        assert_eq!(fixture.records[0].as_ref().unwrap().status, ItemStatus::Ok);
    }

    fn failed(url: &str) -> DownloadReport {
        DownloadReport {
            url: url.into(),
            error: Some(DownloadError {
                kind: DownloadErrorKind::HttpStatus,
                message: "HTTP 404 Not Found".into(),
            }),
            sha256: None,
            ..report(DownloadStatus::Failed, b"")
        }
    }

    #[tokio::test]
    async fn a_result_answers_its_whole_message_and_only_that() {
        let mut fixture = Fixture::with_files(4);
        let mut collector = fixture.collector(FileRoute::Broker, &[None, None, None, None]);
        collector.batching.sent(0, 1);
        collector.batching.sent(1, 3);
        let err = collector
            .answer(1, "w".into(), vec![failed("a"), failed("b")])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("answered the 3 task(s) from 1 with 2 report(s)"),
            "{err}"
        );
        let err = collector
            .answer(2, "w".into(), vec![failed("a")])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("which no message starts with"),
            "{err}"
        );
        let three = vec![failed("a"), failed("b"), failed("c")];
        let accepted = collector.answer(1, "w".into(), three.clone()).await;
        assert_eq!(accepted.unwrap(), Accepted::Answered(3));
        assert_eq!(
            collector.batching.open_messages(),
            1,
            "an answered message is forgotten; message 0 is still open"
        );
        // A redelivered message's second result counts nothing.
        let again = collector.answer(1, "w".into(), three).await;
        assert_eq!(again.unwrap(), Accepted::Other);
        assert!(fixture.records[0].is_none(), "task 0 is another message");
        assert!(fixture.records[1..].iter().all(Option::is_some));
    }

    #[test]
    fn a_refused_or_dead_lettered_message_fails_every_task_it_carried() {
        let mut fixture = Fixture::with_files(4);
        let mut collector = fixture.collector(FileRoute::Shared, &[None, None, None, None]);
        collector.batching.sent(0, 1);
        collector.batching.sent(1, 3);
        let accepted = collector.fail_message(1, "the broker gave up on it");
        assert_eq!(accepted.unwrap(), Accepted::Answered(3));
        assert_eq!(collector.fail_message(1, "again").unwrap(), Accepted::Other);
        assert!(fixture.records[0].is_none());
        for record in &fixture.records[1..] {
            let record = record.as_ref().unwrap();
            assert_eq!(record.status, ItemStatus::Failed);
            assert_eq!(record.error.as_deref(), Some("the broker gave up on it"));
        }
    }

    #[tokio::test]
    async fn a_failed_download_keeps_what_the_file_should_be() {
        let mut fixture = Fixture::new();
        let good = Verified {
            bytes: 3,
            sha256: "ab".into(),
        };
        let last_ok = [Some(good.clone())];
        let mut collector = fixture.collector(FileRoute::Broker, &last_ok);
        let failed = DownloadReport {
            error: Some(DownloadError {
                kind: DownloadErrorKind::HttpStatus,
                message: "HTTP 500".into(),
            }),
            sha256: None,
            ..report(DownloadStatus::Failed, b"")
        };
        let accepted = collector.finish_download(0, 0, failed).await.unwrap();
        assert_eq!(accepted, Accepted::Answered(1));
        let record = fixture.records[0].clone().unwrap();
        assert_eq!(record.status, ItemStatus::Failed);
        assert_eq!(record.last_ok, Some(good.clone()));
        assert_eq!(record.verified(), Some(good));
    }
}
