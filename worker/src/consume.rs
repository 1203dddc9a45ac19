//! The worker's life: connect, consume, run tasks, reconnect after broker
//! failures, and shut down gracefully.
//!
//! Delivery guarantees, in the order things happen to a task:
//! 1. A malformed task (or one in another protocol version) is rejected
//!    without requeue, so RabbitMQ dead-letters it; if its job can be
//!    identified, an error result goes to the job first, so the producer
//!    fails fast with the worker's explanation.
//! 2. A task whose job is gone (reply queue deleted) is acked and dropped.
//! 3. Otherwise the task runs, its result is published with a confirm, and
//!    only then is the task acked. If the worker dies before the ack, the
//!    broker redelivers the task and the producer ignores the duplicate
//!    result. A result returned as unroutable means the job ended meanwhile:
//!    the task is acked and dropped.
//!
//! Prefetch equals `--concurrency`, and each delivery gets its own task, so
//! at most that many tasks are in hand. After a lost connection the worker
//! reconnects, to the next URL of a failover list first (waiting up to
//! `--broker-wait` for a broker that does not answer, see
//! `warren::broker::connect_from`), and declares the topology again;
//! deliveries of the old connection are abandoned (the broker requeues
//! them). See <https://www.rabbitmq.com/docs/confirms>.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Channel, Connection, Consumer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use warren::broker::{self, Acks, Publisher, REFUSED_PUBLISH_RETRY_FOR, Routed};
use warren::protocol::{
    DownloadStatus, FailureKind, Outcome, Task, TaskFailure, TaskOrigin, TaskResult,
};
use warren::{ExponentialBackoff, Jitter, JobId, PROTOCOL_VERSION, Topology};

use crate::cli::Config;
use crate::error::Result;
use crate::liveness::JobLiveness;
use crate::metrics::{Kind, Metrics, TaskOutcome};
use crate::tasks::{self, HttpClients, TaskContext};

/// How often a running task's job is checked: a cancelled job's tasks stop
/// within about this long (plus the liveness cache's second).
const JOB_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// After the shutdown timeout, how long abandoned tasks get to return their
/// deliveries to the queue.
const ABANDON_GRACE: Duration = Duration::from_secs(5);
const CONSUMER_TAG: &str = "warren-worker";

/// Runs the worker until `shutdown` is cancelled, then drains.
///
/// # Errors
/// Only failures that retrying with the same settings cannot fix (see
/// [`warren::Error::needs_other_settings`]): refused credentials or vhost,
/// a TLS certificate problem, or a topology that conflicts with existing
/// queues; and a broker that stayed unreachable for `--broker-wait`.
pub(crate) async fn run(
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let topology = Topology::new(config.broker.prefix.clone());
    let lasting = Lasting::new(config, Arc::clone(&metrics));
    let mut backoff = ExponentialBackoff::new(
        broker::MIN_RETRY_DELAY,
        broker::MAX_RETRY_DELAY,
        Jitter::Equal,
    );
    let mut sessions = 0u64;
    // Where the next connection starts in the broker URL list: after a
    // loss, at the URL after the lost one (failover).
    let mut first_url = 0;
    loop {
        let opening = open_session(config, &topology, first_url, &mut backoff, &shutdown);
        let Some(session) = opening.await? else {
            return Ok(());
        };
        backoff.reset();
        first_url = session.url_index + 1;
        sessions += 1;
        if sessions > 1 {
            metrics.reconnected();
        }
        tracing::info!(
            worker = %config.name,
            broker = %session.url,
            queue = %topology.task_queue(),
            concurrency = config.concurrency,
            "consuming"
        );
        let context = Arc::new(lasting.context(config, &topology, &session));
        metrics.set_ready(true);
        match session
            .serve(context, &shutdown, config.shutdown_timeout)
            .await
        {
            Served::ShutDown => return Ok(()),
            Served::ConnectionLost(reason) => {
                tracing::warn!("lost the broker connection ({reason}); reconnecting");
            }
        }
    }
}

/// Opens a session, retrying with `backoff` what is worth retrying;
/// `None` when `shutdown` came first.
///
/// # Errors
/// As [`run`].
async fn open_session(
    config: &Config,
    topology: &Topology,
    first_url: usize,
    backoff: &mut ExponentialBackoff,
    shutdown: &CancellationToken,
) -> Result<Option<Session>> {
    loop {
        let session = tokio::select! {
            session = Session::open(config, topology, first_url) => session,
            () = shutdown.cancelled() => return Ok(None),
        };
        let e = match session {
            Ok(session) => return Ok(Some(session)),
            // `broker::connect` has already waited `--broker-wait` for an
            // unreachable broker: exit, and let a supervisor (compose's
            // restart policy, systemd) take over.
            Err(e) if e.needs_other_settings() || e.is_unreachable() => return Err(e.into()),
            Err(e) => e,
        };
        let wait = backoff.next_delay();
        tracing::warn!(
            hint = e.hint().unwrap_or_default(),
            "{}; retrying in {}",
            warren::display_chain(&e),
            format_seconds(wait)
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// What the worker keeps across broker sessions: caches, pools and limits
/// that do not depend on the connection.
struct Lasting {
    liveness: Arc<JobLiveness>,
    http: Arc<HttpClients>,
    stores: Arc<warren::source::Stores>,
    cpu: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Lasting {
    fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        Lasting {
            liveness: Arc::new(JobLiveness::default()),
            http: Arc::new(HttpClients::default()),
            stores: Arc::new(warren::source::Stores::default()),
            cpu: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            downloads: Arc::new(Semaphore::new(usize::from(config.concurrency))),
            metrics,
        }
    }

    /// What the tasks of `session` share.
    fn context(&self, config: &Config, topology: &Topology, session: &Session) -> TaskContext {
        TaskContext {
            worker: config.name.clone(),
            topology: topology.clone(),
            publisher: session.publisher.clone(),
            connection: Arc::clone(&session.connection),
            liveness: Arc::clone(&self.liveness),
            shared_dir: config.shared_dir.clone(),
            http: Arc::clone(&self.http),
            stores: Arc::clone(&self.stores),
            cpu: Arc::clone(&self.cpu),
            downloads: Arc::clone(&self.downloads),
            session_broken: CancellationToken::new(),
            metrics: Arc::clone(&self.metrics),
            max_task_size: config.max_task_size,
        }
    }
}

/// How long tasks of a lost connection get to notice before the worker
/// reconnects without them.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(5);

/// How this worker shows in `rabbitmqctl list_connections`: its name and
/// the prefix it serves.
pub(crate) fn connection_name(config: &Config) -> String {
    format!("warren-worker {} ({})", config.name, config.broker.prefix)
}

/// `1.5s`: a delay as a log line shows it.
fn format_seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// One connection's worth of consuming.
struct Session {
    connection: Arc<Connection>,
    /// The broker URL this session is on, and its place in the list.
    url: warren::RedactedUrl,
    url_index: usize,
    publisher: Publisher,
    consume_channel: Channel,
    consumer: Consumer,
}

enum Served {
    ShutDown,
    ConnectionLost(String),
}

impl Session {
    async fn open(
        config: &Config,
        topology: &Topology,
        first_url: usize,
    ) -> warren::Result<Session> {
        let broker::Connected {
            connection,
            index: url_index,
            url,
        } = broker::connect_from(&config.broker, &connection_name(config), first_url).await?;
        let publisher = Publisher::open(&connection).await?;
        topology.declare_shared(publisher.channel()).await?;
        let consume_channel = broker::open_channel(&connection).await?;
        let consumer = broker::consume(
            &consume_channel,
            &topology.task_queue(),
            CONSUMER_TAG,
            Acks::Manual {
                prefetch: config.concurrency,
            },
        )
        .await?;
        Ok(Session {
            connection: Arc::new(connection),
            url,
            url_index,
            publisher,
            consume_channel,
            consumer,
        })
    }

    /// Hands each delivery to its own task until shutdown or connection
    /// loss, then lets the tasks in hand finish or give up.
    async fn serve(
        mut self,
        context: Arc<TaskContext>,
        shutdown: &CancellationToken,
        shutdown_timeout: Duration,
    ) -> Served {
        let tracker = TaskTracker::new();
        // Fired when tasks in hand must give up: the connection is gone, or
        // the shutdown timeout passed.
        let abandon = CancellationToken::new();
        let lost = self
            .take_deliveries(&context, &tracker, &abandon, shutdown)
            .await;
        tracker.close();
        // No longer taking tasks, whatever happens next: orchestrators stop
        // counting on this worker while it drains or reconnects.
        context.metrics.set_ready(false);
        if let Some(reason) = lost {
            self.abandon_lost(&tracker, &abandon).await;
            return Served::ConnectionLost(reason);
        }
        self.drain(&tracker, &abandon, shutdown_timeout).await;
        Served::ShutDown
    }

    /// Spawns a handler per delivery until shutdown (`None`) or until the
    /// connection is lost (`Some` reason).
    async fn take_deliveries(
        &mut self,
        context: &Arc<TaskContext>,
        tracker: &TaskTracker,
        abandon: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = context.session_broken.cancelled() => {
                    return Some("publishing results failed".to_owned());
                }
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        tracker.spawn(handle(Arc::clone(context), delivery, abandon.clone()));
                    }
                    Some(Err(e)) => return Some(warren::display_chain(&e)),
                    None => return Some("the broker cancelled the consumer".to_owned()),
                },
            }
        }
    }

    /// After a lost connection: tells the tasks in hand to give up, and
    /// waits for them only briefly.
    async fn abandon_lost(self, tracker: &TaskTracker, abandon: &CancellationToken) {
        abandon.cancel();
        // Without a connection the handlers' broker calls fail and they
        // end at once; still, a call that never returns must not keep
        // the worker from reconnecting. The broker requeues whatever
        // the old connection held.
        if tokio::time::timeout(ABANDON_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_hand = tracker.len(),
                "tasks of the lost connection are still stuck; reconnecting anyway"
            );
        }
        broker::close_quietly(&self.connection).await;
    }

    /// The graceful shutdown: no new deliveries, the tasks in hand get
    /// `shutdown_timeout` to finish, the rest go back to the queue.
    async fn drain(
        self,
        tracker: &TaskTracker,
        abandon: &CancellationToken,
        shutdown_timeout: Duration,
    ) {
        tracing::info!(in_hand = tracker.len(), "shutting down: no new tasks");
        // Stop deliveries first; anything prefetched but not started goes
        // back to the queue when the channel closes.
        if let Err(e) = self
            .consume_channel
            .basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!(error = %e, "cancelling the consumer failed");
        }
        if tokio::time::timeout(shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_hand = tracker.len(),
                "shutdown timeout passed; returning unfinished tasks to the queue"
            );
            abandon.cancel();
            let _ = tokio::time::timeout(ABANDON_GRACE, tracker.wait()).await;
        }
        broker::close_quietly(&self.connection).await;
        tracing::info!("stopped");
    }
}

/// Handles one delivery from decoding to ack; see the module docs for the
/// order of events.
async fn handle(context: Arc<TaskContext>, mut delivery: Delivery, abandon: CancellationToken) {
    let started = Instant::now();
    let _in_hand = context.metrics.in_hand();
    // Size and kind are checked before anything else is done with a task.
    let size = delivery.data.len() as u64;
    let task = if size > context.max_task_size {
        Err(warren::Error::malformed(
            "task",
            format!(
                "the message is {size} bytes, over this worker's limit of {} (--max-task-size)",
                context.max_task_size
            ),
        ))
    } else {
        Task::decode(&delivery.properties, &delivery.data)
    };
    let task = task.and_then(|task| {
        let expected = context.topology.reply_queue(task.job());
        match delivery.properties.reply_to() {
            Some(reply_to) if reply_to.as_str() == expected => Ok(task),
            _ => Err(warren::Error::malformed(
                "task",
                format!("reply_to must be the job's reply queue {expected}"),
            )),
        }
    });
    let task = match task {
        Ok(task) => task,
        Err(e) if e.is_poison() => return reject_poison(&context, delivery, &e, started).await,
        // Not the message's fault (decoding yields only poison today):
        // another worker, or this one later, may take it.
        Err(e) => {
            tracing::warn!(
                "cannot read a task, returning it to the queue: {}",
                warren::display_chain(&e)
            );
            requeue(&delivery).await;
            context
                .metrics
                .tasks(Kind::Unknown, TaskOutcome::Requeued, 1);
            return;
        }
    };
    // The body moves to the task: no copy of what may be megabytes.
    let body = std::mem::take(&mut delivery.data);
    let span = tracing::info_span!("task", job_id = %task.job(), task = task.index());
    run_task(&context, &delivery, task, body, &abandon, started)
        .instrument(span)
        .await;
}

/// Runs a well-formed task and acks it once its result is confirmed.
async fn run_task(
    context: &TaskContext,
    delivery: &Delivery,
    task: Task,
    body: Vec<u8>,
    abandon: &CancellationToken,
    started: Instant,
) {
    let kind = match &task {
        Task::Sum(_) | Task::SumRange(_) => Kind::Sum,
        Task::Download(_) => Kind::Download,
    };
    // Bytes a sum covers: its body, or the range it read by reference.
    let sum_bytes = match &task {
        Task::SumRange(range) => range.spec.len(),
        _ => body.len() as u64,
    };
    let tasks = task.tasks();
    let job = task.job();
    let reply_to = context.topology.reply_queue(job);
    if !context
        .liveness
        .is_alive(&context.connection, job, &reply_to)
        .await
    {
        tracing::debug!("job is gone; dropping its task");
        ack(delivery).await;
        context.metrics.tasks(kind, TaskOutcome::Dropped, tasks);
        return;
    }
    let outcome = tokio::select! {
        outcome = tasks::run(context, &task, body) => outcome,
        () = abandon.cancelled() => {
            requeue(delivery).await;
            context.metrics.tasks(kind, TaskOutcome::Requeued, tasks);
            return;
        }
        // Dropping the work stops it: reads and downloads end at their
        // next await, and a download's temporary file is removed.
        () = job_gone(context, job, &reply_to) => {
            tracing::info!("job is gone (cancelled or ended); stopped its task");
            ack(delivery).await;
            context.metrics.tasks(kind, TaskOutcome::Dropped, tasks);
            return;
        }
    };
    let counts = Counts::of(kind, tasks, sum_bytes, &outcome);
    let result = TaskResult {
        version: PROTOCOL_VERSION,
        job_id: job.clone(),
        task: Some(task.index()),
        worker: context.worker.clone(),
        elapsed_s: started.elapsed().as_secs_f64(),
        outcome,
    };
    publish_then_ack(context, delivery, &task, &result, &counts, started).await;
}

/// Completes once the job's reply queue is gone: the job was cancelled
/// (`producer cancel`, Ctrl-C), ended, or expired. Checked every
/// [`JOB_WATCH_INTERVAL`] while a task runs.
async fn job_gone(context: &TaskContext, job: &JobId, reply_to: &str) {
    let first = tokio::time::Instant::now() + JOB_WATCH_INTERVAL;
    let mut checks = tokio::time::interval_at(first, JOB_WATCH_INTERVAL);
    loop {
        checks.tick().await;
        if !context
            .liveness
            .is_alive(&context.connection, job, reply_to)
            .await
        {
            return;
        }
    }
}

/// What a carried-out message adds to the metrics.
struct Counts {
    kind: Kind,
    /// Tasks in the message.
    tasks: u64,
    ok: u64,
    failed: u64,
    summed_bytes: u64,
    downloaded_bytes: u64,
}

impl Counts {
    fn of(kind: Kind, tasks: u64, sum_bytes: u64, outcome: &Outcome) -> Self {
        let (ok, summed_bytes, downloaded_bytes) = match outcome {
            Outcome::Sum(_) => (tasks, sum_bytes, 0),
            Outcome::Download(reports) => {
                let fetched = reports.iter().filter(|r| r.status == DownloadStatus::Ok);
                let ok = fetched.clone().count() as u64;
                (ok, 0, fetched.map(|r| r.bytes).sum())
            }
            Outcome::Error(_) => (0, 0, 0),
        };
        Counts {
            kind,
            tasks,
            ok,
            failed: tasks.saturating_sub(ok),
            summed_bytes,
            downloaded_bytes,
        }
    }

    /// Counts the message as carried out, its result delivered.
    fn record_done(&self, metrics: &Metrics, started: Instant) {
        metrics.tasks(self.kind, TaskOutcome::Ok, self.ok);
        metrics.tasks(self.kind, TaskOutcome::Failed, self.failed);
        metrics.took(self.kind, started.elapsed());
        metrics.summed(self.summed_bytes);
        metrics.downloaded(self.downloaded_bytes);
    }
}

/// Publishes the result to the job, then acks the task; a job that ended
/// meanwhile drops it, and a result that cannot go out returns the task to
/// the queue.
async fn publish_then_ack(
    context: &TaskContext,
    delivery: &Delivery,
    task: &Task,
    result: &TaskResult,
    counts: &Counts,
    started: Instant,
) {
    let metrics = &context.metrics;
    // Ack only after the result's confirm: acking first would lose the task
    // if this worker died between the two.
    match publish_result(context, result).await {
        Ok(Routed::Queued) => {
            // Failures are logged once their job is known to be alive: a
            // job that ended (a file chunk returned, say) fails its tasks,
            // and that is no news for the operator.
            log_failures(task, &result.outcome);
            tracing::debug!(elapsed_s = result.elapsed_s, "done");
            ack(delivery).await;
            counts.record_done(metrics, started);
        }
        Ok(Routed::Returned) => {
            tracing::debug!("job ended while the task ran; dropping its result");
            // Nobody will move a stored file now, nor clean it up: the
            // producer removed the job's temporary files when it ended.
            tasks::discard_stored(context, &result.outcome);
            context.liveness.mark_gone(&result.job_id);
            ack(delivery).await;
            metrics.tasks(counts.kind, TaskOutcome::Dropped, counts.tasks);
        }
        Err(e) => {
            log_failures(task, &result.outcome);
            // A transient error: the channel or connection is gone. Return
            // the task (if the connection still carries the nack;
            // otherwise the broker requeues it when the connection closes)
            // and reconnect.
            let transient = e.is_transient();
            let next = if transient {
                "reconnecting"
            } else {
                "returning the task to the queue"
            };
            tracing::warn!(
                "cannot publish the result, {next}: {}",
                warren::display_chain(&e)
            );
            requeue(delivery).await;
            metrics.tasks(counts.kind, TaskOutcome::Requeued, counts.tasks);
            if transient {
                context.session_broken.cancel();
            }
        }
    }
}

/// Publishes a task's result to its job's reply queue and waits for the
/// confirm; a result the broker refuses (a quorum reply queue electing a
/// new leader) is published again for [`REFUSED_PUBLISH_RETRY_FOR`]:
/// giving the task back at once would spend its deliveries (20, then it is
/// dead-lettered and its job fails) in milliseconds.
async fn publish_result(context: &TaskContext, result: &TaskResult) -> warren::Result<Routed> {
    let reply_to = context.topology.reply_queue(&result.job_id);
    context
        .publisher
        .publish_until_taken(
            &reply_to,
            &result.to_json(),
            &result.properties(),
            REFUSED_PUBLISH_RETRY_FOR,
        )
        .await
}

/// One warning per failed task with its reason, so that an operator sees
/// failures without debug logs; the task's span adds the job and task ids.
/// Never the body, nor a URL: either may carry data or credentials.
fn log_failures(task: &Task, outcome: &Outcome) {
    match (task, outcome) {
        (_, Outcome::Error(failure)) => {
            tracing::warn!(reason = %failure.message, "task failed");
        }
        (Task::Download(batch), Outcome::Download(reports)) => {
            // A message may carry several downloads: name the failed one.
            for (spec, report) in batch.tasks().iter().zip(reports) {
                if let Some(error) = &report.error {
                    tracing::warn!(task = spec.index, reason = %error.message, "download failed");
                }
            }
        }
        (Task::Sum(_) | Task::SumRange(_), _) | (Task::Download(_), Outcome::Sum(_)) => {}
    }
}

/// Dead-letters a task that can never succeed, telling its job first when
/// the job can be identified.
async fn reject_poison(
    context: &TaskContext,
    delivery: Delivery,
    error: &warren::Error,
    started: Instant,
) {
    let message = warren::display_chain(error);
    tracing::warn!(message_id = ?delivery.properties.message_id(), "dead-lettering a task: {message}");
    context
        .metrics
        .tasks(Kind::Unknown, TaskOutcome::Malformed, 1);
    if let Some(origin) = TaskOrigin::of(&delivery.properties)
        && origin.reply_to == context.topology.reply_queue(&origin.job)
    {
        let result = TaskResult {
            version: PROTOCOL_VERSION,
            job_id: origin.job,
            task: origin.index,
            worker: context.worker.clone(),
            elapsed_s: started.elapsed().as_secs_f64(),
            outcome: Outcome::Error(TaskFailure {
                kind: match error {
                    warren::Error::UnsupportedVersion { .. } => FailureKind::UnsupportedVersion,
                    _ => FailureKind::Malformed,
                },
                message,
            }),
        };
        if let Err(e) = context
            .publisher
            .publish_confirmed(&origin.reply_to, &result.to_json(), result.properties())
            .await
        {
            tracing::debug!(error = %e, "could not report the malformed task to its job");
        }
    }
    let rejected = delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await;
    if let Err(e) = rejected {
        tracing::warn!(error = %e, "could not reject the task; the broker will redeliver it");
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "could not ack the task; the broker will redeliver it");
    }
}

async fn requeue(delivery: &Delivery) {
    let nack = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.acker.nack(nack).await {
        tracing::debug!(error = %e, "could not requeue the task; the broker will when the channel closes");
    }
}
