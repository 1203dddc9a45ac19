//! What every job shares, whatever its kind: the broker session (connection,
//! confirm-mode publisher, the job's reply queue and its consumer), the
//! publishing pipeline with its in-flight window, and the loop that gathers
//! replies until every task is answered or something ends the job.
//!
//! A job is alive exactly as long as its reply queue exists (see
//! `warren::topology`): [`JobSession::close`] deletes it with the job's
//! record, and that is what makes workers drop the job's remaining tasks
//! after a failure or a cancel. If the producer dies instead, both stay for
//! the job's TTL, and `producer attach` carries the job on from its record
//! (`crate::durable`): replies are acked only once a checkpoint that
//! covers them is saved.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::management::ManagementApi;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use rangemap::RangeSet;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren::broker::{
    self, Acks, PendingConfirm, Publisher, QueueProbe, REFUSED_PUBLISH_RETRY_FOR, Routed,
};
use warren::topology::JobLifetime;
use warren::{BrokerConfig, JobId, Topology};

use crate::durable::JobRecord;
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

/// Bound on opening a spare connection to delete a job's queues when its
/// own connection is blocked by a resource alarm.
const CLEANUP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the producer looks whether the broker blocks its connection.
const ALARM_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What the producer says while the broker blocks its connection.
const BLOCKED_BY_ALARM: &str = "the broker is blocking publishes: a resource alarm is in effect \
     (RabbitMQ stops every publisher while it runs low on memory or disk space), so no task \
     or result moves. The job waits until the alarm clears: free memory or disk space on the \
     broker, or raise its limits (rabbitmqctl set_vm_memory_high_watermark, \
     set_disk_free_limit); `rabbitmq-diagnostics alarms` shows which alarm is on";

/// Publishes whose confirms may be outstanding at once...
const CONFIRM_WINDOW: usize = 16;
/// ...holding at most about this many bytes: each is kept until its
/// confirm, to publish it again if the broker refuses it.
const CONFIRM_WINDOW_BYTES: usize = 16 << 20;

/// Unacknowledged reply messages the broker may push at once: bounds the
/// producer's memory when replies carry file data.
const REPLY_PREFETCH: u16 = 64;

/// A job that keeps checkpoints saves one once this many replies wait to
/// be acked (well under [`REPLY_PREFETCH`], so replies keep flowing)...
const CHECKPOINT_EVERY_REPLIES: u32 = 32;
/// ...or once the oldest has waited this long.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// The broker resources of one running job.
pub(crate) struct JobSession {
    pub(crate) job: JobId,
    pub(crate) topology: Topology,
    connection: Connection,
    pub(crate) publisher: Publisher,
    reply_channel: Channel,
    pub(crate) reply_queue: String,
    replies: Consumer,
    /// The job's record queue, and the record as last saved; `None` for
    /// a job that ends with its producer.
    record_queue: String,
    record: Option<KeptRecord>,
    probe: QueueProbe,
    /// Consumers on the task queue at the last check; `None` before one.
    consumers: Option<u32>,
    /// A "no worker" warning is showing.
    warned: bool,
    /// Where to connect to delete the job's queues when this connection
    /// is blocked.
    broker: BrokerConfig,
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

/// The record of a job that outlives its producer, as last saved, and the
/// publisher that saves it: a channel of its own, so that a checkpoint's
/// confirm never waits behind those of the tasks published before it.
struct KeptRecord {
    record: JobRecord,
    publisher: Publisher,
}

/// A checkpoint on its way: done once the broker holds it and the replies
/// it covers are acked.
pub(crate) type SavingCheckpoint =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// How a session starts.
#[derive(Debug)]
pub(crate) enum Opening {
    /// A new job that outlives its producer: its queues are declared and
    /// its first record saved.
    New(Box<JobRecord>),
    /// A job another producer started: its record is read.
    Attach(JobId),
    /// A new job that ends with its producer (it keeps no checkpoints).
    WithProducer(JobId),
}

impl JobSession {
    /// Connects, declares the shared topology, opens the job (see
    /// [`Opening`]) and starts consuming its reply queue, and starts the
    /// local workers, before any task is published. Gives up with
    /// [`Error::Cancelled`] when `shutdown` fires; once connected, only after
    /// cleaning up what it declared.
    pub(crate) async fn open(
        broker: &BrokerConfig,
        opening: Opening,
        local: &LocalPlan,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let job = match &opening {
            Opening::New(record) => record.job.clone(),
            Opening::Attach(job) | Opening::WithProducer(job) => job.clone(),
        };
        let name = format!("warren-producer {job}");
        let connection = tokio::select! {
            connection = broker::connect(broker, &name) => connection?,
            // Nothing is declared yet: abandoning the attempt leaves nothing.
            () = shutdown.cancelled() => return Err(Error::Cancelled),
        };
        tracing::debug!("connected");
        let attaching = matches!(opening, Opening::Attach(_));
        let declaring = Self::declare(broker, connection, opening);
        tokio::pin!(declaring);
        let mut session = tokio::select! {
            session = &mut declaring => session?,
            () = shutdown.cancelled() => {
                // Dropping `declaring` could leave a new job's queues
                // declared and never consumed until they expire: finish,
                // then delete them. An attached job is left as it was.
                match tokio::time::timeout(DECLARE_AFTER_CANCEL_TIMEOUT, declaring).await {
                    Ok(Ok(session)) if attaching => session.detach().await,
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
        let shared_dir = session.record().and_then(|r| r.spec.shared_dir());
        match local.sharing(shared_dir).start(shutdown) {
            Ok(workers) => session.local_workers = workers,
            Err(e) => {
                session.close().await;
                return Err(e);
            }
        }
        Ok(session)
    }

    /// Declares the shared topology, takes the job's attach lock, creates
    /// or reads the job's record, and starts consuming its reply queue.
    async fn declare(
        broker: &BrokerConfig,
        connection: Connection,
        opening: Opening,
    ) -> Result<Self> {
        let topology = Topology::new(broker.prefix.clone());
        let publisher = Publisher::open(&connection).await?;
        topology.declare_shared(publisher.channel()).await?;
        tracing::debug!("shared topology declared");
        let reply_channel = broker::open_channel(&connection).await?;
        let (job, record) = open_job(&topology, &connection, &reply_channel, opening).await?;
        let reply_queue = topology.reply_queue(&job);
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
            record_queue: topology.job_queue(&job),
            record,
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
            broker: broker.clone(),
            local_workers: LocalWorkers::none(),
            management: ManagementApi::for_broker(broker, None)
                .ok()
                .map(|api| (api, broker.tls.ca_pem().map(str::to_owned))),
        })
    }

    /// Whether `job` still exists (its reply queue does); `None` when the
    /// broker cannot tell.
    pub(crate) async fn job_exists(&mut self, job: &JobId) -> Option<bool> {
        let queue = self.topology.reply_queue(job);
        let inspect = self.probe.inspect(&self.connection, &queue);
        match tokio::time::timeout(BROKER_CALL_TIMEOUT, inspect).await {
            Ok(Ok(found)) => Some(found.is_some()),
            _ => None,
        }
    }

    /// Whether the connection to the broker is still open.
    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// The job's record as last saved; `None` for a job that ends with its
    /// producer.
    pub(crate) fn record(&self) -> Option<&JobRecord> {
        self.record.as_ref().map(|kept| &kept.record)
    }

    /// Saves a checkpoint in the job's record and waits until the broker
    /// holds it.
    pub(crate) async fn checkpoint(
        &mut self,
        state: serde_json::Value,
        done: u64,
        total: Option<u64>,
    ) -> Result<()> {
        self.start_checkpoint(state, done, total, None).await?.await
    }

    /// Publishes a checkpoint in the job's record; the returned future
    /// waits until the broker holds it, then acks every reply up to
    /// `last_reply`, which it covers. The caller goes on meanwhile: a
    /// checkpoint costs the job no round trip.
    pub(crate) async fn start_checkpoint(
        &mut self,
        state: serde_json::Value,
        done: u64,
        total: Option<u64>,
        last_reply: Option<u64>,
    ) -> Result<SavingCheckpoint> {
        let saved = match &mut self.record {
            Some(KeptRecord { record, publisher }) => {
                record.seq += 1;
                record.done = done;
                record.total = total;
                record.checkpoint = Some(state);
                Some(record.start_saving(publisher, &self.record_queue).await?)
            }
            None => None,
        };
        let channel = self.reply_channel.clone();
        let reply_queue = self.reply_queue.clone();
        Ok(Box::pin(async move {
            if let Some(saved) = saved {
                saved.await?;
            }
            let Some(last_reply) = last_reply else {
                return Ok(());
            };
            let ack_all = BasicAckOptions { multiple: true };
            channel
                .basic_ack(last_reply, ack_all)
                .await
                .map_err(|e| warren::Error::broker(format!("ack replies on {reply_queue}"), e))?;
            Ok(())
        }))
    }

    /// The next message on the reply queue.
    ///
    /// # Errors
    /// [`Error::CancelledElsewhere`] when someone deleted the queue,
    /// [`Error::ReplyQueueLost`] when the connection dropped.
    async fn next_reply(&mut self) -> Result<Delivery> {
        let ended = match self.replies.next().await {
            Some(Ok(delivery)) => return Ok(delivery),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reply consumer failed");
                false
            }
            None => true,
        };
        // The broker cancels the consumer of a deleted queue; the
        // connection stays.
        if ended && self.is_connected() {
            return Err(Error::CancelledElsewhere {
                job: self.job.clone(),
            });
        }
        Err(Error::ReplyQueueLost {
            queue: self.reply_queue.clone(),
        })
    }

    /// Whether the task queue holds nothing, ready or in work, by the
    /// management API; `None` when that cannot be told.
    async fn is_task_queue_idle(&self) -> Option<bool> {
        let (api, ca_pem) = self.management.as_ref()?;
        // Bounded like the worker check: the collector loop must keep
        // seeing Ctrl-C and the job's timeout.
        let listing = api.queues(ca_pem.as_deref());
        let queues = match tokio::time::timeout(STALL_CHECK_TIMEOUT, listing).await {
            Ok(Ok(listing)) => listing.queues,
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
        // A connection the broker blocked (a memory or disk alarm) sends
        // nothing, not even the probe below: `watch_for_alarms` says why
        // the job stands still, rather than guess at missing workers.
        if self.connection.status().blocked() {
            return;
        }
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

    /// Warns, from a task of its own, while the broker blocks this
    /// connection (connection.blocked: a memory or disk alarm), and when it
    /// stops: the job's own broker calls wait meanwhile, and the collector
    /// loop with them. Abort the task when the job ends.
    pub(crate) fn watch_for_alarms(&self, progress: &Progress) -> JoinHandle<()> {
        let status = self.connection.status().clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut warned = false;
            let mut check = tokio::time::interval(ALARM_CHECK_INTERVAL);
            loop {
                check.tick().await;
                let blocked = status.blocked();
                if blocked != warned {
                    warned = blocked;
                    progress.warn(if blocked {
                        BLOCKED_BY_ALARM
                    } else {
                        "the broker takes publishes again: the resource alarm cleared"
                    });
                }
            }
        })
    }

    /// Ends the job on the broker: deletes the reply queue (so workers drop
    /// any task of this job still queued) and the job's record, and closes
    /// the connection. Errors are logged, not returned: the job's outcome is
    /// already decided.
    pub(crate) async fn close(self) {
        tracing::debug!("closing the job");
        // A blocked connection sends nothing: delete through a spare one,
        // which publishes nothing and so is not blocked.
        let blocked = self.connection.status().blocked();
        let spare = if blocked {
            self.spare_channel().await
        } else {
            None
        };
        // Without a spare, a blocked connection would only wait out the
        // timeouts: the queues stay until the job's TTL ends them.
        if !blocked || spare.is_some() {
            self.delete_queues(spare.as_ref().map(|(_, channel)| channel))
                .await;
        }
        if let Some((connection, _)) = spare {
            broker::close_quietly(&connection).await;
        }
        self.detach().await;
    }

    /// Deletes the reply queue and the record queue at once on two
    /// channels (each waits for the broker's quorum log), or in turn on
    /// `spare`.
    async fn delete_queues(&self, spare: Option<&Channel>) {
        let record_channel = self
            .record
            .as_ref()
            .map(|kept| kept.publisher.channel())
            .filter(|channel| channel.status().connected());
        let (reply_channel, record_channel) = match spare {
            Some(channel) => (channel, channel),
            None => (
                &self.reply_channel,
                record_channel.unwrap_or(&self.reply_channel),
            ),
        };
        let record = async {
            if self.record.is_some() {
                delete_job_queue(record_channel, &self.record_queue).await;
            }
        };
        tokio::join!(delete_job_queue(reply_channel, &self.reply_queue), record);
    }

    /// A connection and channel beside the job's own, for deleting its
    /// queues while the broker blocks the job's connection; `None` when it
    /// cannot be opened within [`CLEANUP_CONNECT_TIMEOUT`].
    async fn spare_channel(&self) -> Option<(Connection, Channel)> {
        let name = format!("warren-producer {} cleanup", self.job);
        let opening = async {
            let connection = broker::connect(&self.broker, &name).await?;
            let channel = broker::open_channel(&connection).await?;
            Ok::<_, warren::Error>((connection, channel))
        };
        match tokio::time::timeout(CLEANUP_CONNECT_TIMEOUT, opening).await {
            Ok(Ok(spare)) => Some(spare),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "no connection to delete the job's queues");
                None
            }
            Err(_) => {
                tracing::warn!("no connection to delete the job's queues in time");
                None
            }
        }
    }

    /// Leaves the job on the broker for another producer to attach to:
    /// closes the connection (which releases the attach lock) and stops the
    /// local workers.
    pub(crate) async fn detach(self) {
        // A blocked connection cannot send its close: the broker drops it
        // when the process ends.
        if !self.connection.status().blocked() {
            broker::close_quietly(&self.connection).await;
        }
        self.local_workers.stop().await;
        tracing::debug!("closed");
    }
}

/// Deletes one of a job's queues at its end, logging (not returning) a
/// failure: the job's outcome is already decided.
async fn delete_job_queue(channel: &Channel, queue: &str) {
    let delete = broker::delete_queue(channel, queue);
    match tokio::time::timeout(Duration::from_secs(5), delete).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, %queue, "could not delete the job's queue"),
        Err(_) => tracing::warn!(%queue, "deleting the job's queue timed out"),
    }
}

/// Declares a new job's queues (and, for one that outlives its producer,
/// takes its attach lock and saves its first record), or attaches to an
/// existing one; returns the job and its record.
async fn open_job(
    topology: &Topology,
    connection: &Connection,
    channel: &Channel,
    opening: Opening,
) -> Result<(JobId, Option<KeptRecord>)> {
    match opening {
        Opening::New(record) => {
            let job = record.job.clone();
            let lifetime = JobLifetime::Durable { ttl: record.ttl() };
            let publisher = Publisher::open(connection).await?;
            // Three declares on three channels at once: a quorum queue's
            // declare waits for the broker's quorum log, which another
            // job's traffic can keep busy for a second (BENCHMARKS.md).
            let lock_channel = broker::open_channel(connection).await?;
            let (_, (), queue) = tokio::try_join!(
                topology.declare_reply_queue(channel, &job, lifetime),
                topology.lock_job(&lock_channel, &job),
                topology.declare_job_queue(publisher.channel(), &job, record.ttl()),
            )?;
            record.save(&publisher, &queue).await?;
            let record = *record;
            Ok((job, Some(KeptRecord { record, publisher })))
        }
        Opening::Attach(job) => {
            let record = attach(topology, connection, channel, &job).await?;
            let publisher = Publisher::open(connection).await?;
            Ok((job, Some(KeptRecord { record, publisher })))
        }
        Opening::WithProducer(job) => {
            let lifetime = JobLifetime::WithProducer;
            topology
                .declare_reply_queue(channel, &job, lifetime)
                .await?;
            Ok((job, None))
        }
    }
}

/// Takes the attach lock of an existing job and reads its record.
///
/// # Errors
/// [`Error::NoSuchJob`], [`Error::JobAttached`], a broker failure or
/// [`Error::BadRecord`].
async fn attach(
    topology: &Topology,
    connection: &Connection,
    channel: &Channel,
    job: &JobId,
) -> Result<JobRecord> {
    let no_such_job = || Error::NoSuchJob {
        job: job.to_string(),
        prefix: topology.prefix().to_string(),
    };
    match topology.lock_job(channel, job).await {
        Ok(()) => {}
        Err(e) if e.is_resource_locked() => {
            return Err(Error::JobAttached {
                job: job.to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    // A refused passive declare closes the channel: ask on a spare one.
    let probe = broker::open_channel(connection).await?;
    let exists = probe.queue_declare(
        topology.reply_queue(job).as_str().into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    );
    if exists.await.is_err() {
        return Err(no_such_job());
    }
    let record_queue = topology.job_queue(job);
    match JobRecord::load(&probe, &record_queue).await {
        Ok(Some(record)) if &record.job == job => Ok(record),
        Ok(Some(_)) => Err(Error::BadRecord {
            queue: record_queue,
            reason: "it belongs to another job".into(),
        }),
        Ok(None) => Err(no_such_job()),
        Err(Error::Warren(e)) if e.is_not_found() => Err(no_such_job()),
        Err(e) => Err(e),
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

/// The messages a job published and has not seen fully answered, and the
/// tasks answered: one registry for every kind of job (sum and download
/// collectors alike).
///
/// A message carries the consecutive tasks `first..first + tasks`; `M` is
/// what the job keeps of it (a sum: its element counts; a download:
/// nothing). It is recorded before it can be published, so every result
/// finds it. Tasks are answered one at a time or a message at a time, and
/// a message is forgotten as soon as all its tasks are answered: the
/// registry holds the messages in flight (the in-flight window bounds
/// them) and the answered tasks as ranges (results come roughly in order,
/// so there are few), so the producer's memory does not grow with the job.
#[derive(Debug)]
pub(crate) struct MessageRegistry<M> {
    /// Messages with a task not answered yet, by their first task.
    open: BTreeMap<u64, OpenMessage<M>>,
    /// Every task answered, published by this producer or an earlier one.
    answered: RangeSet<u64>,
}

#[derive(Debug)]
struct OpenMessage<M> {
    tasks: u64,
    /// Of `tasks`, how many are not answered yet.
    unanswered: u64,
    data: M,
}

impl<M> Default for MessageRegistry<M> {
    fn default() -> Self {
        MessageRegistry {
            open: BTreeMap::new(),
            answered: RangeSet::new(),
        }
    }
}

impl<M> MessageRegistry<M> {
    /// Records a message of `tasks` tasks from `first`, about to be
    /// published; `false` (and nothing recorded) when its first task is
    /// answered already: it must not be published again.
    pub(crate) fn publish(&mut self, first: u64, tasks: u64, data: M) -> bool {
        if tasks == 0 || self.answered.contains(&first) {
            return false;
        }
        let carried = first..first.saturating_add(tasks);
        let unanswered = self.answered.gaps(&carried).map(|g| g.end - g.start).sum();
        let message = OpenMessage {
            tasks,
            unanswered,
            data,
        };
        self.open.insert(first, message);
        true
    }

    /// The tasks and data of the open message that starts with task
    /// `first`.
    pub(crate) fn starting_at(&self, first: u64) -> Option<(Range<u64>, &M)> {
        let message = self.open.get(&first)?;
        Some((first..first + message.tasks, &message.data))
    }

    /// The first task of the open message that carries task `task`.
    pub(crate) fn carrying(&self, task: u64) -> Option<u64> {
        let (&first, message) = self.open.range(..=task).next_back()?;
        (task < first + message.tasks).then_some(first)
    }

    /// Whether task `task` is answered.
    pub(crate) fn is_answered(&self, task: u64) -> bool {
        self.answered.contains(&task)
    }

    /// Marks the tasks of `tasks` answered (a whole message, one of its
    /// tasks, or a message no record holds); returns how many were not
    /// before. Messages left with nothing to answer are forgotten.
    pub(crate) fn answer(&mut self, tasks: Range<u64>) -> u64 {
        let new: Vec<Range<u64>> = self.answered.gaps(&tasks).collect();
        let mut count = 0;
        for gap in new {
            count += gap.end - gap.start;
            self.settle(&gap);
            self.answered.insert(gap);
        }
        count
    }

    /// Takes the newly answered tasks of `gap` off the open messages that
    /// carry them.
    fn settle(&mut self, gap: &Range<u64>) {
        let from = self.carrying(gap.start).unwrap_or(gap.start);
        let mut done = Vec::new();
        for (&first, message) in self.open.range_mut(from..gap.end) {
            let overlap = (first + message.tasks).min(gap.end) - first.max(gap.start);
            message.unanswered = message.unanswered.saturating_sub(overlap);
            if message.unanswered == 0 {
                done.push(first);
            }
        }
        for first in done {
            self.open.remove(&first);
        }
    }

    /// Marks the tasks of `tasks` answered, as a checkpoint recorded them.
    pub(crate) fn restore_answered(&mut self, tasks: Range<u64>) {
        if tasks.start < tasks.end {
            self.answer(tasks);
        }
    }

    /// Tasks answered so far.
    pub(crate) fn answered_count(&self) -> u64 {
        self.answered.iter().map(|r| r.end - r.start).sum()
    }

    /// The answered tasks, as ranges in order.
    pub(crate) fn answered_ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.answered.iter().cloned()
    }

    /// The open messages in order: their tasks and data.
    pub(crate) fn open_messages(&self) -> impl Iterator<Item = (Range<u64>, &M)> {
        self.open
            .iter()
            .map(|(&first, m)| (first..first + m.tasks, &m.data))
    }

    /// Tasks published (recorded) and not answered yet.
    pub(crate) fn unanswered_count(&self) -> u64 {
        self.open.values().map(|m| m.unanswered).sum()
    }

    /// The tasks published (recorded) and not answered yet, in order.
    pub(crate) fn unanswered(&self) -> Vec<u64> {
        let mut tasks = Vec::new();
        for (&first, message) in &self.open {
            let carried = first..first + message.tasks;
            tasks.extend(self.answered.gaps(&carried).flatten());
        }
        tasks
    }
}

/// A [`MessageRegistry`] shared by the side that publishes (which records
/// each message before it goes out) and the collector.
#[derive(Debug)]
pub(crate) struct SharedRegistry<M>(Arc<Mutex<MessageRegistry<M>>>);

impl<M> Clone for SharedRegistry<M> {
    fn clone(&self) -> Self {
        SharedRegistry(Arc::clone(&self.0))
    }
}

impl<M> Default for SharedRegistry<M> {
    fn default() -> Self {
        SharedRegistry(Arc::default())
    }
}

impl<M> SharedRegistry<M> {
    /// The registry, locked. A poisoned lock still holds a consistent
    /// registry (no update panics halfway), so poisoning is ignored rather
    /// than turned into a panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, MessageRegistry<M>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One message ready to publish, carrying `tasks` tasks (batched sum
/// messages carry several).
#[derive(Debug)]
pub(crate) struct OutgoingTask {
    /// The index of the (first) task it carries.
    pub(crate) first: u64,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    pub(crate) tasks: u32,
}

/// How far publishing got, shared by the publisher with the collector.
#[derive(Debug, Default)]
pub(crate) struct PublishCounts {
    /// Tasks published so far.
    pub(crate) published: AtomicU64,
    /// Every task below this index is published and confirmed, or was
    /// answered before: where another producer resumes publishing. Messages
    /// must come in the order of their tasks.
    pub(crate) through: AtomicU64,
}

impl PublishCounts {
    /// Counts for a job whose publishing resumes at task `through`.
    pub(crate) fn resuming_at(through: u64) -> Self {
        PublishCounts {
            published: AtomicU64::new(0),
            through: AtomicU64::new(through),
        }
    }
}

/// A job's tasks being made into messages and published: the task that
/// makes the messages (a sum's feed, a download's task source) and the
/// publisher, with the in-flight window and counts they share with
/// [`drive`].
pub(crate) struct Publishing {
    /// Makes the messages; aborted when the job ends.
    pub(crate) source: JoinHandle<()>,
    /// Publishes them; returns the job's task count.
    pub(crate) publisher: JoinHandle<Result<u64>>,
    pub(crate) window: Arc<Semaphore>,
    pub(crate) counts: Arc<PublishCounts>,
}

impl Publishing {
    /// Starts publishing the messages `source` sends on `outgoing`, with
    /// `window` tasks in flight at most (at least one).
    pub(crate) fn start(
        session: &JobSession,
        (source, outgoing): (JoinHandle<()>, mpsc::Receiver<OutgoingTask>),
        window: usize,
        counts: PublishCounts,
    ) -> Publishing {
        let window = Arc::new(Semaphore::new(window.clamp(1, Semaphore::MAX_PERMITS)));
        let counts = Arc::new(counts);
        let publisher =
            spawn_publisher(session, outgoing, Arc::clone(&window), Arc::clone(&counts));
        Publishing {
            source,
            publisher,
            window,
            counts,
        }
    }

    /// Waits until every task is published and confirmed (`--detach`),
    /// or the job is cancelled; returns the number of tasks.
    ///
    /// # Errors
    /// The publisher's, or [`Error::Cancelled`].
    pub(crate) async fn all_published(self, shutdown: &CancellationToken) -> Result<u64> {
        let published = tokio::select! {
            published = self.publisher => match published {
                Ok(outcome) => outcome,
                Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
            },
            () = shutdown.cancelled() => Err(Error::Cancelled),
        };
        self.source.abort();
        published
    }
}

/// Publishes messages as they come, holding one window permit per task
/// they carry (the collector returns it when the task is answered) and
/// keeping up to [`CONFIRM_WINDOW`] confirms (and [`CONFIRM_WINDOW_BYTES`])
/// outstanding. Returns the number
/// of tasks once the source is exhausted and every publish is confirmed.
fn spawn_publisher(
    session: &JobSession,
    mut tasks: mpsc::Receiver<OutgoingTask>,
    window: Arc<Semaphore>,
    counts: Arc<PublishCounts>,
) -> JoinHandle<Result<u64>> {
    let publisher = session.publisher.clone();
    let task_queue = session.topology.task_queue();
    tokio::spawn(async move {
        // Each confirm waits with its message, kept to publish it again
        // if the broker refuses it.
        let mut confirms: VecDeque<(PendingConfirm, OutgoingTask)> =
            VecDeque::with_capacity(CONFIRM_WINDOW);
        let mut count = 0u64;
        let mut unconfirmed_bytes = 0usize;
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
                .publish(&task_queue, &task.body, task.properties.clone())
                .await?;
            if count == 0 {
                tracing::debug!("first task published");
            }
            count += u64::from(task.tasks);
            counts.published.store(count, Ordering::Relaxed);
            unconfirmed_bytes += task.body.len();
            confirms.push_back((pending, task));
            while confirms.len() >= CONFIRM_WINDOW || unconfirmed_bytes > CONFIRM_WINDOW_BYTES {
                let oldest = confirms.pop_front();
                unconfirmed_bytes -= oldest.as_ref().map_or(0, |(_, task)| task.body.len());
                await_confirm(&publisher, oldest, &task_queue, &counts).await?;
            }
        }
        while let Some(pending) = confirms.pop_front() {
            await_confirm(&publisher, Some(pending), &task_queue, &counts).await?;
        }
        tracing::debug!(tasks = count, "every task published and confirmed");
        Ok(count)
    })
}

/// Waits for a message's confirm; a message the broker refuses is
/// published again ([`Publisher::confirm_or_publish_again`]). Once it is
/// confirmed, its tasks count as published `through`.
async fn await_confirm(
    publisher: &Publisher,
    pending: Option<(PendingConfirm, OutgoingTask)>,
    task_queue: &str,
    counts: &PublishCounts,
) -> Result<()> {
    let Some((pending, task)) = pending else {
        return Ok(());
    };
    let routed = publisher
        .confirm_or_publish_again(
            pending,
            &task.body,
            &task.properties,
            REFUSED_PUBLISH_RETRY_FOR,
        )
        .await?;
    match routed {
        Routed::Queued => {
            let end = task.first + u64::from(task.tasks);
            counts.through.fetch_max(end, Ordering::Relaxed);
            Ok(())
        }
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

    /// Whether this kind of job saves checkpoints in its record, so that
    /// another producer can carry it on. Replies are then acked only once a
    /// checkpoint covering them is saved; otherwise as they come.
    fn keeps_checkpoints(&self) -> bool {
        false
    }

    /// The state to save in the job's record (see
    /// [`Collector::keeps_checkpoints`]); `through` is where publishing
    /// would resume (see [`PublishCounts::through`]).
    fn checkpoint(&self, through: u64) -> serde_json::Value {
        let _ = through;
        serde_json::Value::Null
    }
}

/// How to drive one job to its end.
pub(crate) struct Drive<'a> {
    pub(crate) window: &'a Semaphore,
    pub(crate) counts: &'a PublishCounts,
    /// Tasks answered before this producer took the job on (`attach`).
    pub(crate) answered_before: u64,
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
    let mut state = DriveState {
        total: None,
        answered: drive.answered_before,
        unacked: None,
        unacked_replies: 0,
        saving: None,
        last_reply: Instant::now(),
    };
    let mut timers = Timers::new(&drive);
    let alarms = session.watch_for_alarms(drive.progress);
    let result = loop {
        if state.total == Some(state.answered) {
            tracing::debug!(tasks = state.answered, "every task answered");
            break Ok(state.answered);
        }
        let step = state.step(session, collector, &mut publisher, &mut timers, &drive);
        if let Err(e) = step.await {
            break Err(e);
        }
    };
    alarms.abort();
    if result.is_err() {
        publisher.abort();
    }
    result
}

/// The clocks of [`drive`].
struct Timers {
    /// `--timeout`; `None`: none, or too far away to be a point in time.
    deadline: Option<tokio::time::Instant>,
    worker_check: tokio::time::Interval,
    checkpoint_due: tokio::time::Interval,
}

impl Timers {
    fn new(drive: &Drive<'_>) -> Self {
        let deadline = drive
            .timeout
            .and_then(|t| drive.started.checked_add(t))
            .map(tokio::time::Instant::from_std);
        // The first check waits a moment: workers starting with the job
        // (local ones, or a fleet coming up) are not "missing".
        let first_check = tokio::time::Instant::now() + WORKER_CHECK_GRACE;
        Timers {
            deadline,
            worker_check: tokio::time::interval_at(first_check, WORKER_CHECK_INTERVAL),
            checkpoint_due: tokio::time::interval(CHECKPOINT_INTERVAL),
        }
    }
}

/// What [`drive`] keeps track of.
struct DriveState {
    /// All tasks, once the publisher is done.
    total: Option<u64>,
    answered: u64,
    /// The newest reply not acked yet (jobs that keep checkpoints).
    unacked: Option<u64>,
    unacked_replies: u32,
    /// The checkpoint on its way, if one is: one at a time.
    saving: Option<SavingCheckpoint>,
    last_reply: Instant,
}

/// Waits for the checkpoint on its way (only polled while there is one).
async fn saved(saving: &mut Option<SavingCheckpoint>) -> Result<()> {
    match saving {
        Some(saving) => saving.await,
        None => std::future::pending().await,
    }
}

impl DriveState {
    /// Waits for the next thing that happens to the job and handles it.
    ///
    /// # Errors
    /// Whatever ends the job: a cancel, the timeout, a publishing error,
    /// an error from the collector or the broker.
    async fn step(
        &mut self,
        session: &mut JobSession,
        collector: &mut impl Collector,
        publisher: &mut JoinHandle<Result<u64>>,
        timers: &mut Timers,
        drive: &Drive<'_>,
    ) -> Result<()> {
        tokio::select! {
            () = drive.shutdown.cancelled() => Err(Error::Cancelled),
            () = sleep_until(timers.deadline) => {
                Err(timed_out(drive, self.answered, self.total, session))
            }
            joined = publisher, if self.total.is_none() => {
                let tasks = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
                self.published_all(tasks, drive);
                Ok(())
            }
            reply = session.next_reply() => self.take_reply(reply, session, collector, drive).await,
            completed = collector.completion(), if collector.has_pending() => {
                self.last_reply = Instant::now();
                self.count(completed?, drive);
                Ok(())
            }
            _ = timers.checkpoint_due.tick(), if self.unacked.is_some() => {
                self.save_checkpoint(session, collector, drive).await
            }
            saved = saved(&mut self.saving), if self.saving.is_some() => {
                self.saving = None;
                saved?;
                if self.unacked_replies >= CHECKPOINT_EVERY_REPLIES {
                    self.save_checkpoint(session, collector, drive).await?;
                }
                Ok(())
            }
            _ = timers.worker_check.tick() => self.check_progress(session, collector, drive).await,
        }
    }

    /// Hands one reply to the collector, and acks it: at once, or with the
    /// next checkpoint.
    async fn take_reply(
        &mut self,
        reply: Result<Delivery>,
        session: &mut JobSession,
        collector: &mut impl Collector,
        drive: &Drive<'_>,
    ) -> Result<()> {
        let delivery = reply?;
        self.last_reply = Instant::now();
        let accepted = collector.accept(&delivery).await?;
        if collector.keeps_checkpoints() {
            self.unacked = Some(delivery.delivery_tag);
            self.unacked_replies += 1;
        } else {
            let ack = delivery.acker.ack(BasicAckOptions::default());
            if let Ok(Err(e)) = tokio::time::timeout(BROKER_CALL_TIMEOUT, ack).await {
                tracing::debug!(error = %e, "acking a reply failed");
            }
        }
        self.count(accepted, drive);
        drive
            .progress
            .set_message(collector.progress_message(drive.started.elapsed()));
        if self.unacked_replies >= CHECKPOINT_EVERY_REPLIES {
            self.save_checkpoint(session, collector, drive).await?;
        }
        Ok(())
    }

    /// The publisher is done: the job has `tasks` tasks.
    fn published_all(&mut self, tasks: u64, drive: &Drive<'_>) {
        drive.progress.set_total(tasks);
        self.total = Some(tasks);
    }

    fn count(&mut self, accepted: Accepted, drive: &Drive<'_>) {
        if let Accepted::Answered(tasks) = accepted {
            self.answered += tasks;
            drive.window.add_permits(tasks as usize);
            drive.progress.advance(tasks);
        }
    }

    /// Starts saving the collector's state in the job's record; once the
    /// broker holds it, the replies it covers are acked (see [`saved`]).
    /// With one checkpoint already on its way, waits for it to land first
    /// (the next one covers these replies too). Gives way to Ctrl-C: a
    /// broker that stopped taking publishes (an alarm) must not hold the
    /// job.
    async fn save_checkpoint(
        &mut self,
        session: &mut JobSession,
        collector: &impl Collector,
        drive: &Drive<'_>,
    ) -> Result<()> {
        if self.saving.is_some() {
            return Ok(());
        }
        let Some(last_reply) = self.unacked.take() else {
            return Ok(());
        };
        self.unacked_replies = 0;
        let through = drive.counts.through.load(Ordering::Relaxed);
        let state = collector.checkpoint(through);
        let starting = session.start_checkpoint(state, self.answered, self.total, Some(last_reply));
        let saving = tokio::select! {
            saving = starting => saving?,
            () = drive.shutdown.cancelled() => return Err(Error::Cancelled),
        };
        self.saving = Some(saving);
        Ok(())
    }

    /// Warns while no worker consumes the task queue, and fails the job
    /// when every task is out, none has been answered for a while and the
    /// broker holds none of them: whoever took the rest acked them without
    /// answering, and no answer will ever come.
    async fn check_progress(
        &self,
        session: &mut JobSession,
        collector: &impl Collector,
        drive: &Drive<'_>,
    ) -> Result<()> {
        let published = drive.counts.published.load(Ordering::Relaxed);
        let waiting = published.saturating_sub(self.answered);
        session.check_workers(drive.progress, waiting).await;
        if self.total.is_some_and(|t| t > self.answered)
            && self.last_reply.elapsed() >= drive.stall_timeout
            && !collector.has_pending()
            && session.is_task_queue_idle().await == Some(true)
        {
            return Err(Error::Unanswered {
                after: drive.stall_timeout,
                tasks: describe_tasks(&collector.unanswered()),
            });
        }
        Ok(())
    }
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
        _ if session.connection.status().blocked() => {
            " (the broker is blocking publishes: a memory or disk alarm)".to_owned()
        }
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

    #[test]
    fn a_message_is_found_by_any_of_its_tasks_and_forgotten_once_all_are_answered() {
        let mut registry = MessageRegistry::default();
        assert!(registry.publish(0, 1, 'a'));
        assert!(registry.publish(1, 3, 'b'));
        assert_eq!(registry.starting_at(1), Some((1..4, &'b')));
        assert_eq!(registry.starting_at(2), None, "no message starts there");
        assert_eq!(registry.carrying(3), Some(1));
        assert_eq!(registry.carrying(4), None);
        assert_eq!(registry.unanswered(), [0, 1, 2, 3]);
        assert_eq!(registry.answer(2..3), 1);
        assert_eq!(registry.unanswered(), [0, 1, 3]);
        assert_eq!(registry.unanswered_count(), 3);
        assert!(registry.starting_at(1).is_some(), "tasks 1 and 3 are open");
        assert_eq!(registry.answer(1..2), 1);
        assert_eq!(registry.answer(3..4), 1);
        assert_eq!(registry.starting_at(1), None, "all its tasks answered");
        assert_eq!(registry.open_messages().count(), 1);
        assert!(registry.is_answered(2) && !registry.is_answered(0));
        assert_eq!(registry.answered_count(), 3);
    }

    #[test]
    fn answering_twice_counts_once_and_an_answered_message_is_not_published_again() {
        let mut registry = MessageRegistry::default();
        assert!(registry.publish(0, 4, ()));
        assert_eq!(registry.answer(0..4), 4);
        assert_eq!(registry.answer(0..4), 0, "a duplicate answers nothing");
        assert_eq!(registry.answer(2..6), 2, "only tasks 4 and 5 are new");
        assert_eq!(registry.open_messages().count(), 0);
        assert!(!registry.publish(0, 4, ()), "answered already");
        assert!(!registry.publish(4, 1, ()), "answered without a record");
        let answered: Vec<(u64, u64)> = registry
            .answered_ranges()
            .map(|r| (r.start, r.end))
            .collect();
        assert_eq!(answered, [(0, 6)]);
        // A message published after some of its tasks were answered (a
        // resumed job) waits only for the others.
        registry.restore_answered(7..8);
        assert!(registry.publish(6, 3, ()));
        assert_eq!(registry.unanswered(), [6, 8]);
        assert_eq!(registry.answer(6..9), 2);
        assert_eq!(registry.open_messages().count(), 0);
        assert_eq!(registry.answered_count(), 9);
    }

    #[test]
    fn many_answered_tasks_leave_nothing_open_and_one_range() {
        let mut registry = MessageRegistry::default();
        for first in (0..100_000u64).step_by(8) {
            assert!(registry.publish(first, 8, ()));
            // Out of order within the message, as files finish.
            for task in (first..first + 8).rev() {
                assert_eq!(registry.answer(task..task + 1), 1);
            }
        }
        assert_eq!(registry.open_messages().count(), 0);
        assert_eq!(registry.answered_ranges().count(), 1);
        assert_eq!(registry.answered_count(), 100_000);
    }
}
