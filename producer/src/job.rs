//! The broker side of one job, whatever its kind: the connection, the
//! confirm-mode publisher, the job's reply queue and its consumer, the
//! watch for workers, and the cleanup that ends every job.
//!
//! A job is alive exactly as long as its reply queue exists (see
//! `warren::topology`): [`JobSession::close`] deletes it, and that is what
//! makes workers drop the job's remaining tasks after a failure or a
//! cancel. If the producer dies instead, the queue is auto-deleted with its
//! consumer, to the same effect.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::{Channel, Connection, Consumer};
use warren::broker::{self, Acks, Publisher, QueueProbe};
use warren::{BrokerConfig, JobId, Topology};

use crate::error::{Error, Result};
use crate::progress::Progress;

/// How often the producer checks that some worker consumes the task queue.
pub(crate) const WORKER_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The broker resources of one running job.
pub(crate) struct JobSession {
    pub(crate) job: JobId,
    pub(crate) topology: Topology,
    pub(crate) connection: Connection,
    pub(crate) publisher: Publisher,
    reply_channel: Channel,
    pub(crate) reply_queue: String,
    replies: Consumer,
    probe: QueueProbe,
    /// What the last worker check found, for the warning and timeout hints.
    pub(crate) workers: WorkerWatch,
}

impl std::fmt::Debug for JobSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSession")
            .field("job", &self.job)
            .field("reply_queue", &self.reply_queue)
            .finish_non_exhaustive()
    }
}

/// What the producer knows about workers on the task queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WorkerWatch {
    /// Consumers on the task queue at the last check; `None` before one.
    pub(crate) consumers: Option<u32>,
    /// A "no worker" warning is showing.
    pub(crate) warned: bool,
}

impl JobSession {
    /// Connects, declares the shared topology and the job's reply queue, and
    /// starts consuming it, before any task is published.
    pub(crate) async fn open(broker: &BrokerConfig, job: JobId) -> Result<Self> {
        let topology = Topology::new(broker.prefix.clone());
        let connection = broker::connect(broker, &format!("warren-producer {job}")).await?;
        let publisher = Publisher::open(&connection).await?;
        topology.declare_shared(publisher.channel()).await?;
        let reply_channel = broker::open_channel(&connection).await?;
        let reply_queue = topology.declare_reply_queue(&reply_channel, &job).await?;
        let replies =
            broker::consume(&reply_channel, &reply_queue, "producer", Acks::Automatic).await?;
        Ok(JobSession {
            job,
            topology,
            connection,
            publisher,
            reply_channel,
            reply_queue,
            replies,
            probe: QueueProbe::new(),
            workers: WorkerWatch::default(),
        })
    }

    /// The next message on the reply queue.
    ///
    /// # Errors
    /// [`Error::ReplyQueueLost`] when the consumer ends: the connection
    /// dropped or someone deleted the queue.
    pub(crate) async fn next_reply(&mut self) -> Result<Delivery> {
        match self.replies.next().await {
            Some(Ok(delivery)) => Ok(delivery),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reply consumer failed");
                Err(Error::ReplyQueueLost {
                    queue: self.reply_queue.clone(),
                })
            }
            None => Err(Error::ReplyQueueLost {
                queue: self.reply_queue.clone(),
            }),
        }
    }

    /// Checks whether any worker consumes the task queue and warns (once,
    /// until one appears) while none does and `waiting` tasks are pending.
    pub(crate) async fn check_workers(&mut self, progress: &Progress, waiting: u64) {
        let queue = self.topology.task_queue();
        let consumers = match self.probe.inspect(&self.connection, &queue).await {
            Ok(Some(stats)) => stats.consumers,
            Ok(None) => 0,
            Err(e) => {
                tracing::debug!(error = %e, "worker check failed");
                return;
            }
        };
        self.workers.consumers = Some(consumers);
        if consumers == 0 && waiting > 0 && !self.workers.warned {
            self.workers.warned = true;
            progress.warn(&format!(
                "no worker is consuming {queue}: {waiting} task(s) are waiting. \
                 Start one with `worker --queue-prefix {}`",
                self.topology.prefix()
            ));
        } else if consumers > 0 && self.workers.warned {
            self.workers.warned = false;
            progress.warn(&format!("{consumers} worker(s) now consuming {queue}"));
        }
    }

    /// Ends the job on the broker: deletes the reply queue (so workers drop
    /// any task of this job still queued) and closes the connection. Errors
    /// are logged, not returned: the job's outcome is already decided.
    pub(crate) async fn close(self) {
        let delete = broker::delete_queue(&self.reply_channel, &self.reply_queue);
        match tokio::time::timeout(Duration::from_secs(5), delete).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, queue = %self.reply_queue, "could not delete the reply queue")
            }
            Err(_) => {
                tracing::warn!(queue = %self.reply_queue, "deleting the reply queue timed out")
            }
        }
        broker::close_quietly(&self.connection).await;
    }
}

/// Explains RabbitMQ's dead-letter reason in the user's terms.
pub(crate) fn explain_dead_letter(reason: &str) -> String {
    match reason {
        "rejected" => "a worker rejected it as malformed".into(),
        "delivery_limit" => format!(
            "it was delivered {} times without being acknowledged: workers keep crashing or \
             disconnecting while working on it",
            warren::topology::DELIVERY_LIMIT
        ),
        other => other.to_owned(),
    }
}
