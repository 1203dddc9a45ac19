//! Collecting a download job's replies: body chunks, the workers' reports
//! and dead-lettered messages, until every URL has its manifest record.
//!
//! [`DownloadCollector`] is the download job's [`Collector`] for
//! `job::drive`. A result answers one whole message (several tasks when
//! files prove small, see [`batching`](super::batching)); each report in it
//! finishes one download: a failure is recorded at once, a file is
//! [assembled](super::assemble) from its chunks (broker delivery) or taken
//! from the [shared](super::shared) directory, then verified and placed on
//! a blocking thread while replies keep flowing; its outcome comes back
//! through [`Collector::completion`]. A task counts once: a redelivered
//! message's second result, or a replaced attempt's report, changes
//! nothing. Not here: what goes out ([`publish`](super::publish)).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinSet;
use warren::JobId;
use warren::protocol::{
    BodyChunk, DeadLetter, DownloadErrorKind, DownloadReport, DownloadStatus, FileRoute, Outcome,
    TaskResult,
};

use super::assemble::{Assembler, ChunkOutcome, Completion};
use super::batching::Batching;
use super::config::DownloadConfig;
use super::manifest::{ItemStatus, ManifestRecord, ManifestWriter, Verified};
use super::plan::Plan;
use super::resume::DownloadCheckpoint;
use super::shared;
use super::urls::{NamedEntry, UrlList};
use super::verify::Saved;
use crate::error::{Error, Result};
use crate::job::{Accepted, Collector, explain_dead_letter};

/// A file finished on a blocking thread: its task, its record so far, and
/// the outcome ([`Error::FileRejected`] fails the download; any other
/// error is a local failure that ends the job).
type Finished = (u64, ManifestRecord, Result<Saved>);

/// Gathers chunks and reports, finishing each file.
pub(super) struct DownloadCollector<'a> {
    pub(super) job: JobId,
    delivery: FileRoute,
    pub(super) assembler: Assembler,
    out_dir: PathBuf,
    named: &'a UrlList,
    /// Slots in `named` of the entries being fetched; task `i` is
    /// `named.get(to_fetch[i])`.
    to_fetch: &'a [u32],
    /// By slot: what warren last verified at the name, carried forward in
    /// a failed record (see `manifest`).
    last_ok: &'a HashMap<usize, Verified>,
    /// By task: whether the file may replace other content at its name
    /// (`plan::Decision::Fetch`).
    replace: &'a [bool],
    /// Where each outcome goes: the manifest is the record of what is
    /// done; which tasks are answered is in `batching`'s registry.
    manifest: &'a mut ManifestWriter,
    /// Files being placed or checked on blocking threads.
    finishing: JoinSet<Finished>,
    /// Tasks whose file is in `finishing`.
    finishing_tasks: HashSet<u64>,
    /// Downloads per message, and the messages sent.
    pub(super) batching: Batching,
    /// Body bytes received, for the throughput display.
    received: u64,
    failures: u64,
    /// Names of the workers that answered.
    pub(super) workers: BTreeSet<String>,
    /// The job outlives its producer: replies are acked only once a
    /// checkpoint covers them.
    durable: bool,
    /// This producer carries on a job another one started (`attach`): see
    /// [`DownloadCollector::resumed`].
    resumed: bool,
    /// Tasks below this are out already, published by the producer that
    /// submitted the job (`--detach`).
    published_before: u64,
}

impl<'a> DownloadCollector<'a> {
    /// A collector for job `job`, fetching the entries `plan` says, into
    /// `out_dir`, writing each outcome to `manifest`.
    pub(super) fn new(
        job: JobId,
        config: &DownloadConfig,
        out_dir: &Path,
        plan: &'a Plan,
        manifest: &'a mut ManifestWriter,
    ) -> Self {
        DownloadCollector {
            assembler: Assembler::new(out_dir, job.clone(), config.limits.max_bytes, config.fsync),
            job,
            delivery: config.delivery,
            out_dir: out_dir.to_owned(),
            named: &plan.named,
            to_fetch: &plan.to_fetch[..],
            last_ok: &plan.last_ok,
            replace: &plan.replace,
            manifest,
            finishing: JoinSet::new(),
            finishing_tasks: HashSet::new(),
            batching: Batching::new(config.max_in_flight),
            received: 0,
            failures: 0,
            workers: BTreeSet::new(),
            durable: false,
            resumed: false,
            published_before: 0,
        }
    }

    /// Makes the collector keep checkpoints, for a job that outlives its
    /// producer.
    pub(super) fn keep_checkpoints(&mut self) {
        self.durable = true;
    }

    /// Takes up where `checkpoint` left off, for a job another producer
    /// started. Replies then may answer messages this producer did not
    /// send (the earlier one's, published after its last checkpoint), and
    /// a report whose file reached only the earlier producer (its chunks,
    /// or its stored file already placed) is left unanswered: every task
    /// the checkpoint does not cover is published again, and that task's
    /// new report settles it. Only the tasks of a job submitted with
    /// `--detach` and not collected since are not published again (the
    /// checkpoint's `published`): no producer has taken a reply of theirs,
    /// so each one's message or reply is still on the broker.
    pub(super) fn resumed(&mut self, checkpoint: &DownloadCheckpoint) {
        self.durable = true;
        self.resumed = true;
        self.published_before = checkpoint.published;
        let mut registry = self.batching.messages.lock();
        for &(start, end) in &checkpoint.answered {
            registry.restore_answered(start..end);
        }
        drop(registry);
        self.workers.clone_from(&checkpoint.workers);
        self.failures = checkpoint.failures;
    }

    /// Tasks an earlier producer published that no producer has taken a
    /// reply of: they are not published again.
    pub(super) fn published_before(&self) -> u64 {
        self.published_before
    }

    /// Tasks answered so far.
    pub(super) fn answered_count(&self) -> u64 {
        self.batching.messages.lock().answered_count()
    }

    /// The entries of the tasks, in task order.
    pub(super) fn tasks(&self) -> impl Iterator<Item = NamedEntry<'a>> + 'a {
        let (named, to_fetch) = (self.named, self.to_fetch);
        to_fetch.iter().map(move |&slot| named.get(slot as usize))
    }

    /// The entry of task `index`, unless it is unknown, already done, or
    /// being finished (a redelivered task's second report is ignored).
    fn open_task(&self, index: u64) -> Option<NamedEntry<'a>> {
        let slot = *self.to_fetch.get(usize::try_from(index).ok()?)?;
        (!self.is_done(index)).then(|| self.named.get(slot as usize))
    }

    /// Whether task `index` is answered or being finished.
    fn is_done(&self, index: u64) -> bool {
        self.finishing_tasks.contains(&index) || self.batching.messages.lock().is_answered(index)
    }

    /// The tasks of the open message that starts with task `first`.
    fn message(&self, first: u64) -> Option<std::ops::Range<u64>> {
        let messages = self.batching.messages.lock();
        messages.starting_at(first).map(|(tasks, _)| tasks)
    }

    /// The entry of task `index`, which is known.
    fn entry(&self, index: u64) -> NamedEntry<'a> {
        self.named.get(self.slot(index))
    }

    fn slot(&self, index: u64) -> usize {
        self.to_fetch[usize::try_from(index).expect("a task index within the list")] as usize // invariant: tasks are numbered within to_fetch
    }

    /// Writes task `index`'s `record` to the manifest and marks the task
    /// answered.
    fn finish(&mut self, index: u64, mut record: ManifestRecord) -> Result<Accepted> {
        self.finishing_tasks.remove(&index);
        let slot = self.slot(index);
        if record.status == ItemStatus::Failed {
            self.failures += 1;
            // The file at the name is as it was: the next run must still
            // know what it should hold.
            record.last_ok = self.last_ok.get(&slot).cloned();
        }
        self.manifest.record(slot, &record)?;
        let answered = self.batching.messages.lock().answer(index..index + 1);
        Ok(Accepted::answered(answered))
    }

    /// Records what became of a file: saved, or rejected (the download
    /// fails).
    ///
    /// # Errors
    /// Any other error, which ends the job, and manifest write failures.
    fn settle(
        &mut self,
        index: u64,
        mut record: ManifestRecord,
        outcome: Result<Saved>,
    ) -> Result<Accepted> {
        match outcome {
            Ok(saved) => {
                self.batching.observe(saved.bytes);
                record.status = ItemStatus::Ok;
                record.bytes = saved.bytes;
                record.sha256 = Some(saved.sha256);
            }
            Err(Error::FileRejected { reason }) => record.error = Some(reason),
            Err(e) => return Err(e),
        }
        self.finish(index, record)
    }

    /// After the job ended early (`--timeout`, Ctrl-C, a broker or local
    /// failure): waits for the files being placed or checked and records
    /// them, then records every URL without an outcome as failed, with the
    /// reason.
    ///
    /// # Errors
    /// [`Error::Write`] when the manifest cannot be written.
    pub(super) async fn end_early(&mut self, ended: &Error) -> Result<()> {
        self.finish_pending().await;
        let reason = format!(
            "the job ended before it finished: {}",
            warren::display_chain(ended)
        );
        for index in 0..self.to_fetch.len() as u64 {
            if !self.is_done(index) {
                let record = ManifestRecord {
                    error: Some(reason.clone()),
                    ..ManifestRecord::for_entry(self.entry(index))
                };
                self.finish(index, record)?;
            }
        }
        Ok(())
    }

    /// Waits for the files being placed or checked, and records them.
    pub(super) async fn finish_pending(&mut self) {
        while self.has_pending() {
            if let Err(e) = self.completion().await {
                // The local failure that stopped this file is its reason.
                tracing::debug!(error = %e, "placing a file failed as the job ended");
            }
        }
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
        reports: Vec<DownloadReport>,
    ) -> Result<Accepted> {
        let malformed = |reason: String| Error::from(warren::Error::malformed("result", reason));
        let message = match self.message(first) {
            Some(tasks) if tasks.end - tasks.start == reports.len() as u64 => Some(tasks),
            _ if self.resumed => self.earlier_message(first, &reports),
            other => other,
        };
        let Some(tasks) = message else {
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
            if self.open_task(index).is_none() {
                tracing::debug!(task = index, "duplicate download report ignored");
                continue;
            }
            answered += self.finish_download(index, report).await?.tasks();
        }
        Ok(Accepted::answered(answered))
    }

    /// In a resumed job, the tasks a result answers when it matches no
    /// message this producer sent: one the earlier producer sent, whose
    /// reports name the URLs of tasks `first, first + 1, ...`.
    fn earlier_message(
        &self,
        first: u64,
        reports: &[DownloadReport],
    ) -> Option<std::ops::Range<u64>> {
        let end = first.checked_add(reports.len() as u64)?;
        let fits = end <= self.to_fetch.len() as u64 && !reports.is_empty();
        let same_urls = fits
            && (first..end)
                .zip(reports)
                .all(|(index, report)| self.entry(index).url() == report.url);
        same_urls.then_some(first..end)
    }

    /// Fails every task still open of the message that starts with task
    /// `first` (a worker refused the message, or the broker dead-lettered
    /// it), for `reason`.
    fn fail_message(&mut self, first: u64, reason: &str) -> Result<Accepted> {
        let tasks = self.message(first).unwrap_or(first..first + 1);
        let mut answered = 0;
        for index in tasks {
            let Some(entry) = self.open_task(index) else {
                continue;
            };
            self.assembler.forget(index);
            let record = ManifestRecord {
                error: Some(reason.to_owned()),
                ..ManifestRecord::for_entry(entry)
            };
            answered += self.finish(index, record)?.tasks();
        }
        Ok(Accepted::answered(answered))
    }

    /// Finishes task `index` by its worker's report: a failure is
    /// recorded now; a file is checked and placed on a blocking thread
    /// (see [`Collector::completion`]).
    async fn finish_download(&mut self, index: u64, report: DownloadReport) -> Result<Accepted> {
        let record = ManifestRecord {
            http_status: report.http_status,
            attempts: report.attempts,
            bytes: report.bytes,
            ..ManifestRecord::for_entry(self.entry(index))
        };
        if report.status == DownloadStatus::Failed {
            return self.finish_failed(index, record, report);
        }
        match self.delivery {
            FileRoute::Broker => self.finish_received(index, record, &report),
            FileRoute::Shared => self.finish_stored(index, record, &report),
        }
    }

    /// A worker's report that the download failed.
    fn finish_failed(
        &mut self,
        index: u64,
        mut record: ManifestRecord,
        report: DownloadReport,
    ) -> Result<Accepted> {
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
        // A failed download took a message's turn like a file of the
        // bytes it received (a 404: next to none).
        self.batching.observe(report.bytes);
        record.error = Some(
            report
                .error
                .map_or_else(|| "failed without a reason".to_owned(), |e| e.message),
        );
        self.finish(index, record)
    }

    /// Broker delivery: the file's chunks are all in; it is checked now
    /// and placed in the background.
    fn finish_received(
        &mut self,
        index: u64,
        record: ManifestRecord,
        report: &DownloadReport,
    ) -> Result<Accepted> {
        let entry = self.entry(index);
        let completion = self.assembler.complete(
            index,
            &entry.path(),
            report.attempt.as_deref().unwrap_or_default(),
            (report.bytes, report.sha256.as_deref().unwrap_or_default()),
            entry.sha256(),
        );
        match completion {
            Ok(Completion::Ready(ready)) => {
                let replace = self.replace_at(index);
                self.finish_in_background(index, record, move || ready.place(replace));
                Ok(Accepted::Other)
            }
            Ok(Completion::Stale) => {
                tracing::debug!(task = index, "a replaced attempt's report ignored");
                Ok(Accepted::Other)
            }
            Ok(Completion::Unseen) if self.resumed => {
                tracing::debug!(task = index, "a report of data the earlier producer took");
                Ok(Accepted::Other)
            }
            Ok(Completion::Unseen) => {
                self.assembler.forget(index);
                let rejected = Error::FileRejected {
                    reason: "the file's data did not arrive".into(),
                };
                self.settle(index, record, Err(rejected))
            }
            Err(e) => self.settle(index, record, Err(e)),
        }
    }

    /// Whether task `index`'s file may replace other content at its name.
    fn replace_at(&self, index: u64) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.replace.get(i))
            .copied()
            .unwrap_or(false)
    }

    /// Shared delivery: the worker stored the file; it is checked and
    /// placed in the background.
    fn finish_stored(
        &mut self,
        index: u64,
        mut record: ManifestRecord,
        report: &DownloadReport,
    ) -> Result<Accepted> {
        let stored = report.path.as_deref();
        let Some(temp) = stored.and_then(|path| shared::stored_temp(&self.job, index, path)) else {
            record.error = Some(format!(
                "the worker reported an unusable path for the file it stored: {stored:?}"
            ));
            return self.finish(index, record);
        };
        if self.resumed && !self.out_dir.join(&temp).exists() {
            // Placed by the earlier producer after its last checkpoint:
            // the task went out again, and its new report settles it.
            tracing::debug!(task = index, "a stored file the earlier producer took");
            return Ok(Accepted::Other);
        }
        // The bytes came in through the workers all the same: they count
        // for the throughput shown.
        self.received += report.bytes;
        let entry = self.entry(index);
        let out_dir = self.out_dir.clone();
        let name = entry.path();
        let expected = entry.sha256().map(str::to_owned);
        let reported = (report.bytes, report.sha256.clone().unwrap_or_default());
        let replace = self.replace_at(index);
        self.finish_in_background(index, record, move || {
            let (bytes, sha256) = &reported;
            let expected = expected.as_deref();
            shared::finish_stored(&out_dir, &temp, &name, (*bytes, sha256), expected, replace)
        });
        Ok(Accepted::Other)
    }

    /// Runs `finish` (placing a file: sync, link; checking a stored one
    /// first: read, hash) on a blocking thread while replies keep flowing;
    /// the outcome comes back through [`Collector::completion`].
    fn finish_in_background(
        &mut self,
        index: u64,
        record: ManifestRecord,
        finish: impl FnOnce() -> Result<Saved> + Send + 'static,
    ) {
        self.finishing_tasks.insert(index);
        self.finishing
            .spawn_blocking(move || (index, record, finish()));
    }

    /// A dead-lettered message: every task it carried fails.
    fn accept_dead_letter(&mut self, dead: &DeadLetter) -> Result<Accepted> {
        let Some(first) = dead.task else {
            return Ok(Accepted::Other);
        };
        let reason = format!(
            "the broker gave up on it: {}",
            explain_dead_letter(&dead.reason)
        );
        self.fail_message(first, &reason)
    }

    /// A body chunk, written to its file as it comes.
    fn accept_chunk(&mut self, chunk: &BodyChunk, data: &[u8]) -> Result<Accepted> {
        self.job.check_reply("body chunk", &chunk.job)?;
        let Some(entry) = self.open_task(chunk.task) else {
            return Ok(Accepted::Other);
        };
        match self.assembler.chunk(chunk, data) {
            Ok(ChunkOutcome::Written(bytes)) => self.received += bytes,
            Ok(ChunkOutcome::Ignored) => {}
            Err(e) => {
                let record = ManifestRecord::for_entry(entry);
                return self.settle(chunk.task, record, Err(e));
            }
        }
        Ok(Accepted::Other)
    }

    /// A worker's result: the reports of one message, or its refusal.
    async fn accept_result(&mut self, result: TaskResult) -> Result<Accepted> {
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
}

impl Collector for DownloadCollector<'_> {
    /// Chunks are written as they come; a report finishes its file; a
    /// dead-lettered task fails its URL, not the job.
    async fn accept(&mut self, delivery: &lapin::message::Delivery) -> Result<Accepted> {
        if let Some(dead) = DeadLetter::of(&delivery.properties) {
            return self.accept_dead_letter(&dead);
        }
        if let Some(chunk) = BodyChunk::of(&delivery.properties) {
            return self.accept_chunk(&chunk?, &delivery.data);
        }
        let result = TaskResult::decode(&delivery.data)?;
        self.accept_result(result).await
    }

    fn has_pending(&self) -> bool {
        !self.finishing.is_empty()
    }

    async fn completion(&mut self) -> Result<Accepted> {
        let Some(joined) = self.finishing.join_next().await else {
            return Ok(Accepted::Other);
        };
        let (index, record, outcome) = joined.expect("placing and verifying do not panic"); // invariant: both return their failures
        self.settle(index, record, outcome)
    }

    fn keeps_checkpoints(&self) -> bool {
        self.durable
    }

    /// The answered tasks and how much of the manifest records them,
    /// synced first: the lines a checkpoint counts are on disk before it
    /// is saved. Tasks whose file is still being placed are not answered
    /// yet: if this producer dies, they go out again. So does every task
    /// not answered (`published` stays 0): this producer takes replies, and
    /// a reply's data it took after this checkpoint (chunks, a stored file
    /// it placed) reaches no other producer; only a new fetch settles it.
    fn checkpoint(&self, _through: u64) -> serde_json::Value {
        if let Err(e) = self.manifest.sync() {
            // The next checkpoint tries again; the lines are written.
            tracing::warn!("{}", warren::display_chain(&e));
        }
        let checkpoint = DownloadCheckpoint {
            answered: self
                .batching
                .messages
                .lock()
                .answered_ranges()
                .map(|r| (r.start, r.end))
                .collect(),
            manifest_bytes: self.manifest.written(),
            failures: self.failures,
            workers: self.workers.clone(),
            published: 0,
        };
        serde_json::to_value(checkpoint).expect("a checkpoint always serializes") // invariant: plain data
    }

    fn unanswered(&self) -> Vec<u64> {
        let mut unanswered = self.batching.messages.lock().unanswered();
        unanswered.retain(|index| !self.finishing_tasks.contains(index));
        unanswered
    }

    fn progress_message(&self, elapsed: Duration) -> String {
        let rate = self.received as f64 / elapsed.as_secs_f64().max(1e-3) / 1e6;
        format!("{rate:.1} MB/s, {} failed", self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::manifest::Tally;
    use crate::download::urls;
    use sha2::{Digest, Sha256};
    use warren::filename::TEMP_DIR;
    use warren::protocol::{DownloadError, DownloadErrorKind, DownloadReport};

    /// What a collector borrows, for one URL `https://h/f.bin` saved as
    /// `f.bin`.
    struct Fixture {
        dir: tempfile::TempDir,
        named: UrlList,
        /// Holds the manifest, apart from the output directory.
        manifest_dir: tempfile::TempDir,
        manifest: ManifestWriter,
    }

    impl Fixture {
        fn new() -> Fixture {
            Self::with_files(1)
        }

        /// `n` URLs, `https://h/f.bin` then `https://h/f1.bin`, ...
        fn with_files(n: usize) -> Fixture {
            let urls: Vec<String> = (0..n)
                .map(|i| match i {
                    0 => "https://h/f.bin".to_owned(),
                    _ => format!("https://h/f{i}.bin"),
                })
                .collect();
            let mut named = UrlList::default();
            urls::add_arguments(&urls, &mut named).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let manifest_dir = tempfile::tempdir().unwrap();
            let path = manifest_dir.path().join("manifest.jsonl");
            Fixture {
                manifest: ManifestWriter::create(Some(&path), dir.path()).unwrap(),
                dir,
                named,
                manifest_dir,
            }
        }

        /// The manifest's lines so far, by URL.
        fn records(&self) -> HashMap<String, ManifestRecord> {
            let path = self.manifest_dir.path().join("manifest.jsonl");
            let text = std::fs::read_to_string(super::super::manifest::partial_path(&path));
            text.unwrap()
                .lines()
                .map(|line| serde_json::from_str::<ManifestRecord>(line).unwrap())
                .map(|record| (record.url.clone(), record))
                .collect()
        }

        fn collector<'a>(
            &'a mut self,
            delivery: FileRoute,
            last_ok: &'a HashMap<usize, Verified>,
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
                manifest: &mut self.manifest,
                finishing: tokio::task::JoinSet::new(),
                finishing_tasks: std::collections::HashSet::new(),
                batching: Batching::new(64),
                received: 0,
                failures: 0,
                workers: BTreeSet::new(),
                durable: false,
                resumed: false,
                published_before: 0,
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
        let none = HashMap::new();
        let mut collector = fixture.collector(FileRoute::Shared, &none);
        collector.batching.sent(0, 1);
        let report = DownloadReport {
            path: Some(format!("{TEMP_DIR}/j-0-1")),
            ..report(DownloadStatus::Ok, &data)
        };
        let accepted = collector.answer(0, "w".into(), vec![report]).await;
        assert_eq!(accepted.unwrap(), Accepted::Other, "answered once placed");
        assert_eq!(
            collector.batching.messages.lock().open_messages().count(),
            1,
            "the message stays until its file is placed"
        );
        assert!(collector.unanswered().is_empty(), "being finished");
        assert_eq!(
            collector.progress_message(Duration::from_secs(1)),
            "2.0 MB/s, 0 failed"
        );
        assert!(collector.has_pending());
        assert_eq!(collector.completion().await.unwrap(), Accepted::Answered(1));
        assert_eq!(std::fs::read(dir.join("f.bin")).unwrap(), data);
        assert!(!dir.join(TEMP_DIR).join("j-0-1").exists());
        assert_eq!(
            collector.batching.messages.lock().open_messages().count(),
            0
        );
        drop(collector);
        assert_eq!(fixture.records()["https://h/f.bin"].status, ItemStatus::Ok);
        assert_eq!(
            fixture.manifest.tally(),
            Tally {
                ok: 1,
                bytes: 2_000_000,
                ..Tally::default()
            }
        );
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
        let none = HashMap::new();
        let mut collector = fixture.collector(FileRoute::Broker, &none);
        collector.batching.sent(0, 1);
        collector.batching.sent(1, 3);
        assert_eq!(collector.unanswered(), [0, 1, 2, 3]);
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
        let open: Vec<(u64, u64)> = collector
            .batching
            .messages
            .lock()
            .open_messages()
            .map(|(t, _)| (t.start, t.end))
            .collect();
        assert_eq!(
            open,
            [(0, 1)],
            "an answered message is forgotten; message 0 is still open"
        );
        assert_eq!(collector.unanswered(), [0]);
        // A redelivered message's second result counts nothing.
        let again = collector.answer(1, "w".into(), three).await;
        assert_eq!(again.unwrap(), Accepted::Other);
        drop(collector);
        let records = fixture.records();
        assert!(
            !records.contains_key("https://h/f.bin"),
            "task 0 is another message"
        );
        assert_eq!(records.len(), 3, "each of tasks 1 to 3 once");
    }

    #[tokio::test]
    async fn failed_downloads_count_for_batching_as_the_bytes_they_received() {
        // Issue 13: a list of 404s went one URL per message.
        let mut fixture = Fixture::with_files(2);
        let none = HashMap::new();
        let mut collector = fixture.collector(FileRoute::Broker, &none);
        assert_eq!(collector.batching.per_message(), 1);
        collector.batching.sent(0, 1);
        let accepted = collector.answer(0, "w".into(), vec![failed("a")]).await;
        assert_eq!(accepted.unwrap(), Accepted::Answered(1));
        assert_eq!(
            collector.batching.per_message(),
            8,
            "as many as the window allows, as for tiny files"
        );
        collector.batching.sent(1, 1);
        let large = DownloadReport {
            bytes: 64 << 20,
            ..failed("b")
        };
        collector.answer(1, "w".into(), vec![large]).await.unwrap();
        assert_eq!(
            collector.batching.per_message(),
            1,
            "a download that failed late, after 64 MiB, counts its bytes"
        );
    }

    #[tokio::test]
    async fn a_resumed_job_takes_earlier_messages_and_leaves_reports_without_data_open() {
        let mut fixture = Fixture::with_files(4);
        let none = HashMap::new();
        let mut collector = fixture.collector(FileRoute::Broker, &none);
        let checkpoint = DownloadCheckpoint {
            answered: vec![(0, 1)],
            ..DownloadCheckpoint::default()
        };
        collector.resumed(&checkpoint);
        assert_eq!(collector.answered_count(), 1);
        // This producer sent tasks 1 to 3 in one message; the earlier one
        // had sent tasks 1 and 2 in one.
        collector.batching.sent(1, 3);
        let wrong = vec![failed("https://h/x"), failed("https://h/f2.bin")];
        let err = collector.answer(1, "w".into(), wrong).await.unwrap_err();
        assert!(err.to_string().contains("which no message"), "{err}");
        let two = vec![failed("https://h/f1.bin"), failed("https://h/f2.bin")];
        let accepted = collector.answer(1, "w".into(), two).await.unwrap();
        assert_eq!(accepted, Accepted::Answered(2));
        // Its chunks went to the earlier producer: the task stays open
        // for the report of the task published again.
        let unseen = DownloadReport {
            url: "https://h/f3.bin".into(),
            attempt: Some("a".into()),
            ..report(DownloadStatus::Ok, b"data")
        };
        let accepted = collector.answer(3, "w".into(), vec![unseen]).await;
        assert_eq!(accepted.unwrap(), Accepted::Other);
        assert_eq!(collector.unanswered(), [3]);
        let saved: DownloadCheckpoint = serde_json::from_value(collector.checkpoint(0)).unwrap();
        assert_eq!(saved.answered, [(0, 3)]);
        assert_eq!(saved.published, 0, "this producer took replies");
        assert_eq!(saved.failures, 2);
        assert!(saved.manifest_bytes > 0);
    }

    #[test]
    fn a_refused_or_dead_lettered_message_fails_every_task_it_carried() {
        let mut fixture = Fixture::with_files(4);
        let none = HashMap::new();
        let mut collector = fixture.collector(FileRoute::Shared, &none);
        collector.batching.sent(0, 1);
        collector.batching.sent(1, 3);
        let accepted = collector.fail_message(1, "the broker gave up on it");
        assert_eq!(accepted.unwrap(), Accepted::Answered(3));
        assert_eq!(collector.fail_message(1, "again").unwrap(), Accepted::Other);
        drop(collector);
        let records = fixture.records();
        assert!(!records.contains_key("https://h/f.bin"));
        assert_eq!(records.len(), 3);
        assert_eq!(fixture.manifest.tally().failed, 3);
        for record in records.values() {
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
        let last_ok = HashMap::from([(0, good.clone())]);
        let mut collector = fixture.collector(FileRoute::Broker, &last_ok);
        collector.batching.sent(0, 1);
        let failed = DownloadReport {
            error: Some(DownloadError {
                kind: DownloadErrorKind::HttpStatus,
                message: "HTTP 500".into(),
            }),
            sha256: None,
            ..report(DownloadStatus::Failed, b"")
        };
        let accepted = collector.finish_download(0, failed).await.unwrap();
        assert_eq!(accepted, Accepted::Answered(1));
        drop(collector);
        let record = fixture.records()["https://h/f.bin"].clone();
        assert_eq!(record.status, ItemStatus::Failed);
        assert_eq!(record.last_ok, Some(good.clone()));
        assert_eq!(record.verified(), Some(good));
    }
}
