//! [`RelaySink`]: a download's body sent back through the broker, as
//! `BodyChunk` messages on the job's reply queue, with a bounded number of
//! chunks awaiting their confirms, so memory stays at one chunk plus that
//! window whatever the file size.

use std::collections::VecDeque;

use warren::broker::{PendingConfirm, Routed};
use warren::protocol::{BodyChunk, DownloadErrorKind, DownloadTask};

use super::failure::Failure;
use crate::tasks::TaskContext;

/// Body chunks of one download published but not yet confirmed by the
/// broker; the next chunk waits for the oldest confirm beyond this.
pub(super) const MAX_UNCONFIRMED_CHUNKS: usize = 8;

/// Sends the body through the broker in chunk messages, keeping at most
/// [`MAX_UNCONFIRMED_CHUNKS`] confirms outstanding.
pub(super) struct RelaySink<'a> {
    context: &'a TaskContext,
    reply_queue: String,
    /// The next chunk's headers; its offset advances as chunks go out.
    chunk: BodyChunk,
    buffer: Vec<u8>,
    chunk_bytes: usize,
    pending: VecDeque<PendingConfirm>,
}

impl<'a> RelaySink<'a> {
    /// A sink for one attempt: `attempt` names it to the producer, which
    /// starts the file over when a new attempt's chunks arrive.
    pub(super) fn new(context: &'a TaskContext, task: &DownloadTask, attempt: &str) -> Self {
        let chunk_bytes = task.spec.limits.chunk_bytes as usize;
        RelaySink {
            context,
            reply_queue: context.topology.reply_queue(&task.job),
            chunk: BodyChunk {
                job: task.job.clone(),
                task: task.index,
                attempt: attempt.to_owned(),
                offset: 0,
            },
            buffer: Vec::with_capacity(chunk_bytes),
            chunk_bytes,
            pending: VecDeque::with_capacity(MAX_UNCONFIRMED_CHUNKS),
        }
    }

    pub(super) async fn write(&mut self, mut data: &[u8]) -> Result<(), Failure> {
        while !data.is_empty() {
            let take = (self.chunk_bytes - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == self.chunk_bytes {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        let pending = self
            .context
            .publisher
            .publish(&self.reply_queue, &self.buffer, self.chunk.properties())
            .await
            .map_err(relay_failure)?;
        self.chunk.offset += self.buffer.len() as u64;
        self.buffer.clear();
        self.pending.push_back(pending);
        while self.pending.len() > MAX_UNCONFIRMED_CHUNKS {
            self.confirm_oldest().await?;
        }
        Ok(())
    }

    async fn confirm_oldest(&mut self) -> Result<(), Failure> {
        let Some(pending) = self.pending.pop_front() else {
            return Ok(());
        };
        match pending.wait().await.map_err(relay_failure)? {
            Routed::Queued => Ok(()),
            Routed::Returned => Err(Failure::permanent(
                DownloadErrorKind::Storage,
                "the job ended while its file was being sent".into(),
            )),
        }
    }

    /// Sends what is left and waits until every chunk is in the reply
    /// queue, so the result that follows is read after all of them.
    pub(super) async fn finish(mut self) -> Result<(), Failure> {
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        while !self.pending.is_empty() {
            self.confirm_oldest().await?;
        }
        Ok(())
    }
}

/// Not retried here: a broken channel is the session's problem (the final
/// result cannot go out either, so the task is redelivered after the worker
/// reconnects), and a refused chunk would be refused again.
fn relay_failure(error: warren::Error) -> Failure {
    Failure::permanent(
        DownloadErrorKind::Storage,
        format!(
            "cannot send the file through the broker: {}",
            warren::display_chain(&error)
        ),
    )
}
