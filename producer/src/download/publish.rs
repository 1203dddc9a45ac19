//! Publishing a download job's tasks: one `DownloadTask` per URL to fetch,
//! grouped into `DownloadBatch` messages as the in-flight window lets them
//! go.
//!
//! Every task is checked before the first goes out, then made again with
//! its message, so that a long list's tasks never all sit in memory; the
//! messages are made one at a time, each with as many tasks as
//! [`batching`](super::batching) says when it is made (the sizes of the
//! files finished so far decide). The shared publisher (`job.rs`) sends
//! them with confirms. Not here: what comes back
//! ([`collect`](super::collect)).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use warren::JobId;
use warren::protocol::{DownloadBatch, DownloadLimits, DownloadSpec, DownloadTask, FileRoute};

use super::batching::Batching;
use super::config::DownloadConfig;
use super::urls::UrlList;
use crate::error::Result;
use crate::job::OutgoingTask;

/// What a job's tasks are made of: one per entry to fetch, numbered from 0
/// in order. Each task is made when its message is, so that the tasks of a
/// long list do not all sit in memory at once.
#[derive(Debug, Clone)]
pub(super) struct TaskSource {
    job: JobId,
    named: Arc<UrlList>,
    /// Task `i` fetches `named.get(to_fetch[i])`.
    to_fetch: Arc<Vec<u32>>,
    delivery: FileRoute,
    limits: DownloadLimits,
    fsync: bool,
    /// The job's marker file in shared mode.
    marker: Option<String>,
}

impl TaskSource {
    /// The tasks of `job`, each checked once now, so that a bad one fails
    /// the job before anything is published.
    ///
    /// # Errors
    /// [`Error::Warren`](crate::Error::Warren) when a task cannot be made.
    pub(super) fn new(
        job: &JobId,
        (named, to_fetch): (Arc<UrlList>, Arc<Vec<u32>>),
        config: &DownloadConfig,
        marker: Option<&str>,
    ) -> Result<TaskSource> {
        let source = TaskSource {
            job: job.clone(),
            named,
            to_fetch,
            delivery: config.delivery,
            limits: config.limits,
            fsync: config.fsync,
            marker: marker.map(str::to_owned),
        };
        for index in 0..source.to_fetch.len() as u64 {
            source.task(index)?;
        }
        Ok(source)
    }

    /// Task `index`.
    fn task(&self, index: u64) -> Result<DownloadTask> {
        let slot = self.to_fetch[usize::try_from(index).unwrap_or(usize::MAX)];
        let entry = self.named.get(slot as usize);
        let spec = DownloadSpec {
            url: entry.url().to_owned(),
            name: entry.name().to_owned(),
            sha256: entry.sha256().map(str::to_owned),
            delivery: self.delivery,
            limits: self.limits,
            fsync: self.fsync,
            marker: self.marker.clone(),
        };
        Ok(DownloadTask::new(self.job.clone(), index, spec)?)
    }

    /// How many tasks.
    fn len(&self) -> u64 {
        self.to_fetch.len() as u64
    }
}

/// Makes messages of `tasks` from task `first` on (those before it are
/// out already) in the background, for the publisher to take from the
/// returned channel; abort the handle when the job ends.
pub(super) fn spawn_messages(
    tasks: TaskSource,
    batching: Batching,
    reply_queue: String,
    first: u64,
) -> (JoinHandle<()>, mpsc::Receiver<OutgoingTask>) {
    // One message waits here while the publisher holds the next: each is
    // made with the latest estimate of the file sizes.
    let (messages, receiver) = mpsc::channel(1);
    let making = tokio::spawn(make_messages(
        tasks,
        batching,
        (reply_queue, first),
        messages,
    ));
    (making, receiver)
}

/// The next run of consecutive tasks from `next` not answered yet (a
/// resumed job's checkpoint answered some), at most `per_message` long;
/// `None` when every task from `next` on is answered.
fn next_run(tasks: &TaskSource, batching: &Batching, next: u64) -> Option<std::ops::Range<u64>> {
    let registry = batching.messages.lock();
    let start = (next..tasks.len()).find(|&index| !registry.is_answered(index))?;
    let limit = tasks.len().min(start + batching.per_message());
    let end = (start..limit)
        .find(|&index| registry.is_answered(index))
        .unwrap_or(limit);
    Some(start..end)
}

/// Groups the tasks from `first` on not answered yet into messages for
/// the publisher, in order, each with as many tasks as `batching` says
/// when it is made.
async fn make_messages(
    tasks: TaskSource,
    batching: Batching,
    (reply_queue, first): (String, u64),
    messages: mpsc::Sender<OutgoingTask>,
) {
    let mut next = first;
    while let Some(run) = next_run(&tasks, &batching, next) {
        let (start, end) = (run.start, run.end);
        let batch: Vec<DownloadTask> = (start..end)
            .map(|index| {
                tasks
                    .task(index)
                    .expect("every task was checked when the job started")
            }) // invariant: see TaskSource::new
            .collect();
        next = end;
        let batch = DownloadBatch::new(batch).expect("consecutive tasks of one job make a message"); // invariant: indices 0, 1, 2, ... of one job
        let carried = batch.tasks().len() as u64;
        if !batching.sent(batch.index(), carried) {
            continue; // answered meanwhile (by an earlier producer's result)
        }
        let outgoing = OutgoingTask {
            first: batch.index(),
            body: batch.body(),
            properties: batch.properties(&reply_queue),
            tasks: carried as u32,
        };
        if messages.send(outgoing).await.is_err() {
            return; // the publisher stopped: the job is ending
        }
    }
}
