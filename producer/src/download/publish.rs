//! Publishing a download job's tasks: one `DownloadTask` per URL to fetch,
//! grouped into `DownloadBatch` messages as the in-flight window lets them
//! go.
//!
//! The tasks are small, so all are built before the first goes out; the
//! messages are made one at a time, each with as many tasks as
//! [`batching`](super::batching) says when it is made (the sizes of the
//! files finished so far decide). The shared publisher (`job.rs`) sends
//! them with confirms. Not here: what comes back
//! ([`collect`](super::collect)).

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use warren::JobId;
use warren::protocol::{DownloadBatch, DownloadSpec, DownloadTask};

use super::batching::Batching;
use super::config::DownloadConfig;
use super::urls::NamedEntry;
use crate::error::Result;
use crate::job::OutgoingTask;

/// The tasks of `job`, one per entry, numbered from 0 in order. `marker`
/// is the job's marker file in shared mode.
///
/// # Errors
/// [`Error::Warren`](crate::Error::Warren) when a task cannot be encoded.
pub(super) fn build_tasks<'a>(
    job: &JobId,
    entries: impl Iterator<Item = &'a NamedEntry>,
    config: &DownloadConfig,
    marker: Option<&str>,
) -> Result<Vec<DownloadTask>> {
    let mut tasks = Vec::new();
    for (index, entry) in (0u64..).zip(entries) {
        let spec = DownloadSpec {
            url: entry.listed.url.to_string(),
            name: entry.name.to_string(),
            sha256: entry.listed.sha256.clone(),
            delivery: config.delivery,
            limits: config.limits,
            fsync: config.fsync,
            marker: marker.map(str::to_owned),
        };
        tasks.push(DownloadTask::new(job.clone(), index, spec)?);
    }
    Ok(tasks)
}

/// Makes messages of `tasks` in the background, for the publisher to take
/// from the returned channel; abort the handle when the job ends.
pub(super) fn spawn_messages(
    tasks: Vec<DownloadTask>,
    batching: Batching,
    reply_queue: String,
) -> (JoinHandle<()>, mpsc::Receiver<OutgoingTask>) {
    // One message waits here while the publisher holds the next: each is
    // made with the latest estimate of the file sizes.
    let (messages, receiver) = mpsc::channel(1);
    let making = tokio::spawn(make_messages(tasks, batching, reply_queue, messages));
    (making, receiver)
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
