//! What every job shares, whatever its kind: the broker session (connection,
//! confirm-mode publisher, the job's reply queue and its consumer), the
//! publishing pipeline with its in-flight window, and the loop that gathers
//! replies until every task is answered or something ends the job.
//!
//! A job is alive exactly as long as its reply queue exists (see
//! `warren::topology`): [`JobSession::close`] deletes it, and that is what
//! makes workers drop the job's remaining tasks after a failure or a
//! cancel. If the producer dies instead, the queue is auto-deleted with its
//! consumer, to the same effect.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::management::ManagementApi;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren::broker::{self, Acks, PendingConfirm, Publisher, QueueProbe, Routed};
use warren::{BrokerConfig, JobId, Topology};

use crate::error::{Error, Result};
use crate::local::{LocalPlan, LocalWorkers};
use crate::progress::Progress;

/// How often the producer checks that some worker consumes the task queue.
const WORKER_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// When the first check for workers happens.
const WORKER_CHECK_GRACE: Duration = Duration::from_secs(1);

/// Bound on broker calls made inside the collector loop, so that it keeps
/// answering Ctrl-C and `--timeout` whatever the broker does.
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on asking the management API whether the task queue is idle.
const STALL_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a job being opened when Ctrl-C comes may still take to finish
/// declaring and consuming its reply queue, so that it can be deleted.
const DECLARE_AFTER_CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes whose confirms may be outstanding at once.
const CONFIRM_WINDOW: usize = 16;

/// Unacknowledged reply messages the broker may push at once: bounds the
/// producer's memory when replies carry file data.
const REPLY_PREFETCH: u16 = 64;

/// The broker resources of one running job.
pub(crate) struct JobSession {
    pub(crate) job: JobId,
    pub(crate) topology: Topology,
    connection: Connection,
    pub(crate) publisher: Publisher,
    reply_channel: Channel,
    pub(crate) reply_queue: String,
    replies: Consumer,
    probe: QueueProbe,
    /// Consumers on the task queue at the last check; `None` before one.
    consumers: Option<u32>,
    /// A "no worker" warning is showing.
    warned: bool,
    /// Workers running inside the producer for this job (`--workers`).
    local_workers: LocalWorkers,
    /// Where to ask for the task queue's in-work count (AMQP gives only
    /// the ready count), and the CA that its TLS certificate needs.
    management: Option<(ManagementApi, Option<String>)>,
}

impl std::fmt::Debug for JobSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSession")
            .field("job", &self.job)
            .field("reply_queue", &self.reply_queue)
            .finish_non_exhaustive()
    }
}

impl JobSession {
    /// Connects, declares the shared topology and the job's reply queue,
    /// starts consuming it, and starts the local workers, before any task is
    /// published. Gives up with [`Error::Cancelled`] when `shutdown` fires;
    /// once connected, only after cleaning up what it declared.
    pub(crate) async fn open(
        broker: &BrokerConfig,
        job: JobId,
        local: &LocalPlan,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let name = format!("warren-producer {job}");
        let connection = tokio::select! {
            connection = broker::connect(broker, &name) => connection?,
            // Nothing is declared yet: abandoning the attempt leaves nothing.
            () = shutdown.cancelled() => return Err(Error::Cancelled),
        };
        tracing::debug!("connected");
        let declaring = Self::declare(broker, connection, job);
        tokio::pin!(declaring);
        let mut session = tokio::select! {
            session = &mut declaring => session?,
            () = shutdown.cancelled() => {
                // Dropping `declaring` could leave the reply queue declared
                // and never consumed, and RabbitMQ auto-deletes a queue only
                // when its last consumer goes: it would stay until it
                // expires. Finish, then delete it.
                match tokio::time::timeout(DECLARE_AFTER_CANCEL_TIMEOUT, declaring).await {
                    Ok(Ok(session)) => session.close().await,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "opening the job failed after a cancel");
                    }
                    Err(_) => tracing::warn!(
                        "opening the job did not finish after a cancel; \
                         its reply queue may stay until it expires"
                    ),
                }
                return Err(Error::Cancelled);
            }
        };
        match local.start(shutdown) {
            Ok(workers) => session.local_workers = workers,
            Err(e) => {
                session.close().await;
                return Err(e);
            }
        }
        Ok(session)
    }

    /// Declares the shared topology and the job's reply queue on a new
    /// connection, and starts consuming the reply queue.
    async fn declare(broker: &BrokerConfig, connection: Connection, job: JobId) -> Result<Self> {
        let topology = Topology::new(broker.prefix.clone());
        let publisher = Publisher::open(&connection).await?;
        topology.declare_shared(publisher.channel()).await?;
        tracing::debug!("shared topology declared");
        let reply_channel = broker::open_channel(&connection).await?;
        let reply_queue = topology.declare_reply_queue(&reply_channel, &job).await?;
        let replies = broker::consume(
            &reply_channel,
            &reply_queue,
            "producer",
            Acks::Manual {
                prefetch: REPLY_PREFETCH,
            },
        )
        .await?;
        tracing::debug!(queue = %reply_queue, "consuming the reply queue");
        Ok(JobSession {
            job,
            topology,
            connection,
            publisher,
            reply_channel,
            reply_queue,
            replies,
            probe: QueueProbe::new(),
            consumers: None,
            warned: false,
            local_workers: LocalWorkers::none(),
            management: ManagementApi::for_broker(&broker.url, None)
                .ok()
                .map(|api| (api, broker.tls.ca_pem().map(str::to_owned))),
        })
    }

    /// The next message on the reply queue.
    ///
    /// # Errors
    /// [`Error::ReplyQueueLost`] when the consumer ends: the connection
    /// dropped or someone deleted the queue.
    async fn next_reply(&mut self) -> Result<Delivery> {
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

    /// Whether the task queue holds nothing, ready or in work, by the
    /// management API; `None` when that cannot be told.
    async fn is_task_queue_idle(&self) -> Option<bool> {
        let (api, ca_pem) = self.management.as_ref()?;
        // Bounded like the worker check: the collector loop must keep
        // seeing Ctrl-C and the job's timeout.
        let listing = crate::status::managed_queues(api, ca_pem.as_deref());
        let queues = match tokio::time::timeout(STALL_CHECK_TIMEOUT, listing).await {
            Ok(Ok(queues)) => queues,
            Ok(Err(reason)) => {
                tracing::debug!(%reason, "no in-work count from the management API");
                return None;
            }
            Err(_) => {
                tracing::debug!("the management API did not answer in time");
                return None;
            }
        };
        let name = self.topology.task_queue();
        let queue = queues.into_iter().find(|q| q.name == name)?;
        Some(queue.messages_ready? == 0 && queue.messages_unacknowledged? == 0)
    }

    /// Checks whether any worker consumes the task queue and warns (once,
    /// until one appears) while none does and `waiting` tasks are pending.
    async fn check_workers(&mut self, progress: &Progress, waiting: u64) {
        let queue = self.topology.task_queue();
        // Bounded: a broker that stopped answering (a memory or disk alarm
        // blocks publishing connections) must not keep the collector loop
        // from seeing Ctrl-C or the job's timeout.
        let inspect = self.probe.inspect(&self.connection, &queue);
        let consumers = match tokio::time::timeout(BROKER_CALL_TIMEOUT, inspect).await {
            Ok(Ok(Some(stats))) => stats.consumers,
            Ok(Ok(None)) => 0,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "worker check failed");
                return;
            }
            Err(_) => {
                tracing::debug!("worker check timed out");
                return;
            }
        };
        self.consumers = Some(consumers);
        if consumers == 0 && waiting > 0 && !self.warned {
            self.warned = true;
            progress.warn(&format!(
                "no worker is consuming {queue}: {waiting} task(s) are waiting. \
                 Start one with `worker --queue-prefix {}`",
                self.topology.prefix()
            ));
        } else if consumers > 0 && self.warned {
            self.warned = false;
            progress.warn(&format!("{consumers} worker(s) now consuming {queue}"));
        }
    }

    /// Ends the job on the broker: deletes the reply queue (so workers drop
    /// any task of this job still queued) and closes the connection. Errors
    /// are logged, not returned: the job's outcome is already decided.
    pub(crate) async fn close(self) {
        tracing::debug!("closing the job");
        let delete = broker::delete_queue(&self.reply_channel, &self.reply_queue);
        match tokio::time::timeout(Duration::from_secs(5), delete).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, queue = %self.reply_queue, "could not delete the reply queue");
            }
            Err(_) => {
                tracing::warn!(queue = %self.reply_queue, "deleting the reply queue timed out")
            }
        }
        broker::close_quietly(&self.connection).await;
        self.local_workers.stop().await;
        tracing::debug!("closed");
    }
}

/// Runs `work` (reading input, which may block on stdin or a slow disk)
/// on a blocking thread, unless `shutdown` fires first.
///
/// # Errors
/// What `work` returns, or [`Error::Cancelled`].
pub(crate) async fn read_blocking<T: Send + 'static>(
    shutdown: &CancellationToken,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let reading = tokio::task::spawn_blocking(work);
    tokio::select! {
        read = reading => match read {
            Ok(outcome) => outcome,
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        },
        () = shutdown.cancelled() => Err(Error::Cancelled),
    }
}

/// One message ready to publish, carrying `tasks` tasks (batched sum
/// messages carry several).
#[derive(Debug)]
pub(crate) struct OutgoingTask {
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    pub(crate) tasks: u32,
}

/// Publishes messages as they come, holding one window permit per task
/// they carry (the collector returns it when the task is answered) and
/// keeping up to [`CONFIRM_WINDOW`] confirms outstanding. Returns the number
/// of tasks once the source is exhausted and every publish is confirmed.
pub(crate) fn spawn_publisher(
    session: &JobSession,
    mut tasks: mpsc::Receiver<OutgoingTask>,
    window: Arc<Semaphore>,
    published: Arc<AtomicU64>,
) -> JoinHandle<Result<u64>> {
    let publisher = session.publisher.clone();
    let task_queue = session.topology.task_queue();
    tokio::spawn(async move {
        let mut confirms: VecDeque<PendingConfirm> = VecDeque::with_capacity(CONFIRM_WINDOW);
        let mut count = 0u64;
        loop {
            let Some(task) = tasks.recv().await else {
                break;
            };
            window
                .acquire_many(task.tasks)
                .await
                .expect("the window semaphore is never closed") // invariant: nobody calls close()
                .forget();
            let pending = publisher
                .publish(&task_queue, &task.body, task.properties)
                .await?;
            confirms.push_back(pending);
            if count == 0 {
                tracing::debug!("first task published");
            }
            count += u64::from(task.tasks);
            published.store(count, Ordering::Relaxed);
            if confirms.len() >= CONFIRM_WINDOW {
                await_confirm(confirms.pop_front(), &task_queue).await?;
            }
        }
        while let Some(pending) = confirms.pop_front() {
            await_confirm(Some(pending), &task_queue).await?;
        }
        tracing::debug!(tasks = count, "every task published and confirmed");
        Ok(count)
    })
}

async fn await_confirm(pending: Option<PendingConfirm>, task_queue: &str) -> Result<()> {
    let Some(pending) = pending else {
        return Ok(());
    };
    match pending.wait().await? {
        Routed::Queued => Ok(()),
        Routed::Returned => Err(warren::Error::Unroutable {
            queue: task_queue.to_owned(),
        }
        .into()),
    }
}

/// What a collector made of one reply message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// This many tasks got their (first) answer: their window permits are
    /// returned.
    Answered(u64),
    /// Part of an answer (a file chunk), a duplicate, or a stray message.
    Other,
}

impl Accepted {
    /// `tasks` tasks answered: [`Accepted::Other`] when none.
    pub(crate) fn answered(tasks: u64) -> Accepted {
        if tasks == 0 {
            Accepted::Other
        } else {
            Accepted::Answered(tasks)
        }
    }

    /// How many tasks this answered.
    pub(crate) fn tasks(self) -> u64 {
        match self {
            Accepted::Answered(tasks) => tasks,
            Accepted::Other => 0,
        }
    }
}

/// The job-specific side of gathering replies.
pub(crate) trait Collector {
    /// Takes one message from the reply queue.
    ///
    /// # Errors
    /// Anything that must end the job.
    async fn accept(&mut self, delivery: &Delivery) -> Result<Accepted>;

    /// Whether work started by `accept` is still running in the
    /// background (files being placed or checked).
    fn has_pending(&self) -> bool {
        false
    }

    /// The outcome of the next piece of background work; only awaited
    /// while [`Collector::has_pending`].
    ///
    /// # Errors
    /// Anything that must end the job.
    async fn completion(&mut self) -> Result<Accepted> {
        std::future::pending().await
    }

    /// The progress bar's message (throughput, failures, workers).
    fn progress_message(&self, elapsed: Duration) -> String;

    /// The indexes of the published tasks not answered yet, in order.
    fn unanswered(&self) -> Vec<u64>;
}

/// How to drive one job to its end.
pub(crate) struct Drive<'a> {
    pub(crate) window: &'a Semaphore,
    pub(crate) published: &'a AtomicU64,
    pub(crate) timeout: Option<Duration>,
    /// `--stall-timeout`: how long the job may go without any reply while
    /// the task queue holds nothing, ready or in work.
    pub(crate) stall_timeout: Duration,
    pub(crate) progress: &'a Progress,
    pub(crate) shutdown: &'a CancellationToken,
    pub(crate) started: Instant,
}

/// Gathers replies until the publisher is done and every task is answered;
/// returns the number of tasks. Ends early on a cancel, the timeout, a
/// publishing error or an error from the collector.
pub(crate) async fn drive(
    session: &mut JobSession,
    collector: &mut impl Collector,
    mut publisher: JoinHandle<Result<u64>>,
    drive: Drive<'_>,
) -> Result<u64> {
    // A timeout too far away to be a point in time is no timeout.
    let deadline = drive
        .timeout
        .and_then(|t| drive.started.checked_add(t))
        .map(tokio::time::Instant::from_std);
    let mut total: Option<u64> = None;
    let mut answered = 0u64;
    // The first check waits a moment: workers starting with the job (local
    // ones, or a fleet coming up) are not "missing".
    let mut worker_check = tokio::time::interval_at(
        tokio::time::Instant::now() + WORKER_CHECK_GRACE,
        WORKER_CHECK_INTERVAL,
    );
    let mut last_reply = Instant::now();
    let result = loop {
        if total == Some(answered) {
            tracing::debug!(tasks = answered, "every task answered");
            break Ok(answered);
        }
        tokio::select! {
            () = drive.shutdown.cancelled() => break Err(Error::Cancelled),
            () = sleep_until(deadline) => {
                break Err(timed_out(&drive, answered, total, session));
            }
            joined = &mut publisher, if total.is_none() => match joined {
                Ok(Ok(tasks)) => {
                    drive.progress.set_total(tasks);
                    total = Some(tasks);
                }
                Ok(Err(e)) => break Err(e),
                Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
            },
            reply = session.next_reply() => {
                let delivery = match reply {
                    Ok(delivery) => delivery,
                    Err(e) => break Err(e),
                };
                last_reply = Instant::now();
                let accepted = match collector.accept(&delivery).await {
                    Ok(accepted) => accepted,
                    Err(e) => break Err(e),
                };
                let ack = delivery.acker.ack(BasicAckOptions::default());
                if let Ok(Err(e)) = tokio::time::timeout(BROKER_CALL_TIMEOUT, ack).await {
                    tracing::debug!(error = %e, "acking a reply failed");
                }
                if let Accepted::Answered(tasks) = accepted {
                    answered += tasks;
                    drive.window.add_permits(tasks as usize);
                    drive.progress.advance(tasks);
                }
                drive.progress.set_message(collector.progress_message(drive.started.elapsed()));
            }
            completed = collector.completion(), if collector.has_pending() => {
                last_reply = Instant::now();
                match completed {
                    Ok(Accepted::Answered(tasks)) => {
                        answered += tasks;
                        drive.window.add_permits(tasks as usize);
                        drive.progress.advance(tasks);
                    }
                    Ok(Accepted::Other) => {}
                    Err(e) => break Err(e),
                }
            }
            _ = worker_check.tick() => {
                let waiting = drive.published.load(Ordering::Relaxed).saturating_sub(answered);
                session.check_workers(drive.progress, waiting).await;
                // Every task is out, none has been answered for a while and
                // the broker holds none of them: whoever took the rest acked
                // them without answering, and no answer will ever come.
                if total.is_some_and(|t| t > answered)
                    && last_reply.elapsed() >= drive.stall_timeout
                    && !collector.has_pending()
                    && session.is_task_queue_idle().await == Some(true)
                {
                    break Err(Error::Unanswered {
                        after: drive.stall_timeout,
                        tasks: describe_tasks(&collector.unanswered()),
                    });
                }
            }
        }
    };
    if result.is_err() {
        publisher.abort();
    }
    result
}

/// Names tasks for a message ("task 3", "tasks 3, 7"): the first 20, then
/// how many more.
fn describe_tasks(tasks: &[u64]) -> String {
    const SHOWN: usize = 20;
    let noun = if tasks.len() == 1 { "task " } else { "tasks " };
    let mut text = noun.to_owned();
    text += &tasks
        .iter()
        .take(SHOWN)
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if tasks.len() > SHOWN {
        text.push_str(&format!(" and {} more", tasks.len() - SHOWN));
    }
    text
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn timed_out(drive: &Drive<'_>, done: u64, total: Option<u64>, session: &JobSession) -> Error {
    let task_queue = session.topology.task_queue();
    let hint = match session.consumers {
        Some(0) | None => format!(" (no worker is consuming {task_queue})"),
        Some(n) => format!(" ({n} worker(s) consuming {task_queue})"),
    };
    Error::TimedOut {
        after: drive.timeout.unwrap_or_default(),
        done,
        total: total.map_or_else(|| "?".to_owned(), |t| t.to_string()),
        hint,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_tasks_are_named_up_to_twenty() {
        assert_eq!(describe_tasks(&[3]), "task 3");
        assert_eq!(describe_tasks(&[3, 7]), "tasks 3, 7");
        let many: Vec<u64> = (0..25).collect();
        let text = describe_tasks(&many);
        assert!(text.starts_with("tasks 0, 1, 2,"), "{text}");
        assert!(text.ends_with("18, 19 and 5 more"), "{text}");
    }
}
