//! [`Sink`]: where one attempt's body goes, as the task's delivery mode
//! says: back through the broker ([`RelaySink`]) or into the shared
//! directory ([`FileSink`]).

use bytes::Bytes;
use warren::protocol::{DownloadTask, FileRoute};

use super::failure::Failure;
use super::relay::RelaySink;
use super::shared::FileSink;
use crate::tasks::TaskContext;

/// Where an attempt's body goes.
pub(super) enum Sink<'a> {
    Relay(RelaySink<'a>),
    File(FileSink),
}

/// Where a complete body went.
pub(super) enum Finished {
    /// Every chunk is in the reply queue.
    Relayed,
    /// The complete file's path relative to the shared directory (in its
    /// temporary area).
    Stored(String),
}

impl<'a> Sink<'a> {
    /// A fresh sink for the attempt named `attempt`.
    pub(super) async fn open(
        context: &'a TaskContext,
        task: &DownloadTask,
        attempt: &str,
    ) -> Result<Sink<'a>, Failure> {
        match task.spec.delivery {
            FileRoute::Broker => Ok(Sink::Relay(RelaySink::new(context, task, attempt))),
            FileRoute::Shared => FileSink::open(context, task, attempt).await.map(Sink::File),
        }
    }

    pub(super) async fn write(&mut self, data: Bytes) -> Result<(), Failure> {
        match self {
            Sink::Relay(relay) => relay.write(&data).await,
            Sink::File(file) => file.write(data).await,
        }
    }

    /// Completes the body: the last chunks confirmed, or the file written
    /// (and synced under `--fsync`).
    pub(super) async fn finish(self) -> Result<Finished, Failure> {
        match self {
            Sink::Relay(relay) => relay.finish().await.map(|()| Finished::Relayed),
            Sink::File(file) => file.finish().await.map(Finished::Stored),
        }
    }

    /// Discards a failed attempt (a file sink removes its temporary file
    /// when dropped).
    pub(super) fn abort(self) {
        drop(self);
    }
}
