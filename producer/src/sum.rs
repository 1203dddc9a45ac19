//! A sum job: stream the input as chunk tasks, gather the workers' exact
//! partial sums, and round once.
//!
//! A blocking thread reads the input into chunk tasks (two ahead of the
//! publisher); the shared publishing pipeline (`job.rs`) takes one permit of
//! the in-flight window per task, so at most `max_in_flight` tasks are
//! queued or in work and memory stays bounded; the [`SumCollector`]
//! de-duplicates results by task index (a redelivered task may be answered
//! twice), adds them to the exact total, and so returns a window permit.
//!
//! The job ends when the input is exhausted and every task is answered, or
//! on the first failure, timeout or cancel; whichever it is, the reply
//! queue is deleted on the way out.

// A poisoned lock still holds a consistent Vec (every update is one push),
// so poisoning is ignored rather than turned into a panic.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rangemap::RangeSet;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren::exact::{Answer, PartialSum, Total};
use warren::protocol::{DeadLetter, Outcome, RangeTask, SumTask, TaskResult};
use warren::{BrokerConfig, Dtype, JobId};

use crate::error::{Error, Result};
use crate::input::{self, InputSpec};
use crate::job::{self, Accepted, Collector, Drive, JobSession, OutgoingTask, explain_dead_letter};
use crate::local::LocalPlan;
use crate::progress::Progress;
use crate::reference::{self, DEFAULT_RANGES_IN_FLIGHT, RangePlan};

/// Elements per task unless `--chunk-size` says otherwise: 1 MiB of
/// float64 per message. See docs/BENCHMARKS.md for the measurements.
pub const DEFAULT_CHUNK_SIZE: usize = 131_072;

/// Unless `--max-in-flight` says otherwise, as many tasks may be queued or
/// in work as fit in this many bytes...
pub const DEFAULT_IN_FLIGHT_BYTES: usize = 64 << 20;
/// ...but at least this many...
pub const MIN_DEFAULT_IN_FLIGHT: usize = 64;
/// ...and at most this many.
pub const MAX_DEFAULT_IN_FLIGHT: usize = 16_384;

/// Tasks smaller than this are batched into messages of about this size...
const BATCH_BYTES: usize = 256 << 10;
/// ...of at most this many tasks.
const MAX_BATCH_TASKS: usize = 256;

/// The largest task message: RabbitMQ 4 refuses messages over 16 MiB by
/// default (3.x: 128 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Checks that a message of `tasks` chunks of `chunk_size` elements of
/// `dtype` stays under [`MAX_MESSAGE_BYTES`].
///
/// # Errors
/// [`Error::Usage`] naming the flags to change.
pub fn check_message_size(chunk_size: usize, tasks: usize, dtype: Dtype) -> Result<()> {
    let bytes = chunk_size
        .saturating_mul(tasks)
        .saturating_mul(dtype.itemsize());
    if bytes > MAX_MESSAGE_BYTES {
        return Err(Error::Usage(format!(
            "--chunk-size {chunk_size} × --tasks-per-message {tasks} of {dtype} makes messages \
             over {} MiB, which RabbitMQ refuses; make one of them smaller",
            MAX_MESSAGE_BYTES >> 20
        )));
    }
    Ok(())
}

/// Messages the reader thread prepares ahead of the publisher.
const READ_AHEAD: usize = 2;

/// The default in-flight window for a chunk of `chunk_bytes` bytes.
pub fn default_max_in_flight(chunk_bytes: usize) -> usize {
    (DEFAULT_IN_FLIGHT_BYTES / chunk_bytes.max(1))
        .clamp(MIN_DEFAULT_IN_FLIGHT, MAX_DEFAULT_IN_FLIGHT)
}

/// Tasks per message: small chunks travel together, so that the broker
/// handles a few large messages instead of many tiny ones; never so many
/// that fewer than eight messages fit in the in-flight window.
fn tasks_per_message(chunk_bytes: usize, max_in_flight: usize) -> usize {
    (BATCH_BYTES / chunk_bytes.max(1))
        .min(MAX_BATCH_TASKS)
        .min(max_in_flight / 8)
        .max(1)
}

/// A sum job's settings.
#[derive(Debug, Clone)]
pub struct SumConfig {
    /// What to sum.
    pub input: InputSpec,
    /// Elements per task.
    pub chunk_size: usize,
    /// Tasks queued or in work at once; `None`: as many as fit in
    /// [`DEFAULT_IN_FLIGHT_BYTES`].
    pub max_in_flight: Option<usize>,
    /// Tasks per message; `None`: small chunks are batched.
    pub tasks_per_message: Option<usize>,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Fail the job after this long without a reply while the task queue
    /// holds none of its tasks (see `--stall-timeout`).
    pub stall_timeout: Duration,
}

/// What a finished sum job reports.
#[derive(Debug, Clone)]
pub struct SumReport {
    /// The job's id.
    pub job_id: JobId,
    /// The exact answer.
    pub answer: Answer,
    /// Tasks the input was split into.
    pub chunks: u64,
    /// Names of the workers that answered.
    pub workers: BTreeSet<String>,
    /// Results ignored because their task had already been answered.
    pub duplicates: u64,
    /// Wall time from start to answer.
    pub elapsed: Duration,
    /// The source a by-reference job read (`shared:PATH`, a URL, or
    /// `s3://BUCKET/KEY`); `None` when the input went through the broker.
    pub source: Option<String>,
}

/// The messages published and not yet answered, by the index of their first
/// task: the reader records each before it can be published, the collector
/// takes it out when its result arrives. The in-flight window bounds it, so
/// the producer's memory does not grow with the number of tasks.
type Outstanding = Arc<Mutex<BTreeMap<u64, SumTask>>>;

/// Runs a sum job to its end.
///
/// # Errors
/// Any [`Error`]: bad input (before or after publishing started), broker
/// failures, a task that failed or was dead-lettered, `--timeout`, or
/// [`Error::Cancelled`] when `shutdown` fires.
pub(crate) async fn run(
    broker: &BrokerConfig,
    config: &SumConfig,
    local: &LocalPlan,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<SumReport> {
    let started = Instant::now();
    // Everything that can be checked before the job starts is: bad input
    // leaves no trace on the broker.
    let feed = Feed::open(config, &shutdown).await?;
    let dtype = feed.dtype();

    let job = JobId::random();
    progress.set_job(&job);
    let mut session = JobSession::open(broker, job.clone(), local, &shutdown).await?;
    tracing::info!(job_id = %job, dtype = %dtype, "sum job started");
    progress.start("chunks", feed.total_tasks());

    let outstanding = Outstanding::default();
    let (tasks_tx, tasks_rx) = mpsc::channel(READ_AHEAD);
    let (failure_tx, failure_rx) = oneshot::channel();
    let max_in_flight = feed.max_in_flight();
    let source = feed.source_name();
    let feeder = feed.spawn(
        job.clone(),
        session.reply_queue.clone(),
        Arc::clone(&outstanding),
        tasks_tx,
        failure_tx,
    );
    let window = Arc::new(Semaphore::new(max_in_flight));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = job::spawn_publisher(
        &session,
        tasks_rx,
        Arc::clone(&window),
        Arc::clone(&published),
    );
    let publisher = fail_with_input(publisher, failure_rx);

    let mut collector = SumCollector {
        job: job.clone(),
        dtype,
        total: Total::new(dtype),
        answered: RangeSet::new(),
        duplicates: 0,
        workers: BTreeSet::new(),
        outstanding,
        dead_letter_queue: session.topology.dead_letter_queue(),
    };
    let drive = Drive {
        window: &window,
        published: &published,
        timeout: config.timeout,
        stall_timeout: config.stall_timeout,
        progress,
        shutdown: &shutdown,
        started,
    };
    let outcome = job::drive(&mut session, &mut collector, publisher, drive).await;
    // Whatever happened, stop feeding and end the job on the broker.
    feeder.abort();
    session.close().await;
    progress.finish();

    let chunks = outcome?;
    Ok(SumReport {
        job_id: job,
        answer: collector.total.answer(),
        chunks,
        workers: collector.workers,
        duplicates: collector.duplicates,
        elapsed: started.elapsed(),
        source,
    })
}

/// Where a job's tasks come from: the input streamed through the producer
/// in chunks, or ranges of a source the workers read themselves.
enum Feed {
    Stream {
        input: Box<dyn input::ChunkReader>,
        batch: Batching,
        max_in_flight: usize,
        first: Option<input::Chunk>,
    },
    Ranges {
        plan: RangePlan,
        max_in_flight: usize,
    },
}

impl Feed {
    /// Opens the input and checks what can be checked up front: a stream's
    /// header and first message, a reference's source, header and version.
    async fn open(config: &SumConfig, shutdown: &CancellationToken) -> Result<Feed> {
        if let InputSpec::Reference(spec) = &config.input {
            let plan = tokio::select! {
                plan = reference::plan(spec) => plan?,
                () = shutdown.cancelled() => return Err(Error::Cancelled),
            };
            return Ok(Feed::Ranges {
                plan,
                max_in_flight: config.max_in_flight.unwrap_or(DEFAULT_RANGES_IN_FLIGHT),
            });
        }
        // Opening may block (stdin).
        let settings = config.clone();
        job::read_blocking(shutdown, move || {
            let mut input = input::open(&settings.input)?;
            let (batch, max_in_flight) = settings.batching(input.dtype())?;
            let first = input.next_chunk(batch.max_elements())?;
            Ok(Feed::Stream {
                input,
                batch,
                max_in_flight,
                first,
            })
        })
        .await
    }

    fn dtype(&self) -> Dtype {
        match self {
            Feed::Stream { input, .. } => input.dtype(),
            Feed::Ranges { plan, .. } => plan.dtype,
        }
    }

    fn total_tasks(&self) -> Option<u64> {
        match self {
            Feed::Stream { input, batch, .. } => input
                .total_elements()
                .map(|n| n.div_ceil(batch.chunk_size as u64)),
            Feed::Ranges { plan, .. } => Some(plan.tasks()),
        }
    }

    fn max_in_flight(&self) -> usize {
        match self {
            Feed::Stream { max_in_flight, .. } | Feed::Ranges { max_in_flight, .. } => {
                *max_in_flight
            }
        }
    }

    /// The source a by-reference job reads, for the report.
    fn source_name(&self) -> Option<String> {
        match self {
            Feed::Stream { .. } => None,
            Feed::Ranges { plan, .. } => Some(plan.source.to_string()),
        }
    }

    /// Feeds the publisher until the input ends. A stream is read on a
    /// blocking thread; its read error goes to `failure` (the publisher
    /// may be waiting for window permits that no worker will return).
    fn spawn(
        self,
        job: JobId,
        reply_queue: String,
        outstanding: Outstanding,
        tasks: mpsc::Sender<OutgoingTask>,
        failure: oneshot::Sender<Error>,
    ) -> JoinHandle<()> {
        match self {
            Feed::Stream {
                input,
                batch,
                first,
                ..
            } => tokio::task::spawn_blocking(move || {
                let reader = TaskReader {
                    batch,
                    job: &job,
                    reply_queue: &reply_queue,
                    outstanding: &outstanding,
                };
                if let Err(e) = reader.run(first, input, &tasks) {
                    let _ = failure.send(e);
                }
            }),
            Feed::Ranges { plan, .. } => tokio::spawn(async move {
                for (index, spec) in plan.ranges() {
                    let count = spec.count;
                    let task = RangeTask {
                        job: job.clone(),
                        index,
                        spec,
                    };
                    let message = OutgoingTask {
                        body: task.body(),
                        properties: task.properties(&reply_queue),
                        tasks: 1,
                    };
                    // Recorded before the message can be published, so no
                    // result can arrive first.
                    outstanding
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(
                            index,
                            SumTask::single(job.clone(), index, plan.dtype, count),
                        );
                    if tasks.send(message).await.is_err() {
                        break;
                    }
                }
            }),
        }
    }
}

/// How the input is cut into tasks and messages.
#[derive(Debug, Clone, Copy)]
struct Batching {
    /// Elements per task.
    chunk_size: usize,
    /// Tasks per message (the last message may hold fewer).
    tasks_per_message: usize,
}

impl Batching {
    /// Elements per message.
    fn max_elements(self) -> usize {
        self.chunk_size * self.tasks_per_message
    }
}

impl SumConfig {
    /// How messages are cut for `dtype`, and the in-flight window.
    ///
    /// # Errors
    /// [`Error::Usage`] when messages would be too large for the broker.
    fn batching(&self, dtype: Dtype) -> Result<(Batching, usize)> {
        let chunk_bytes = self.chunk_size * dtype.itemsize();
        if let Some(tasks) = self.tasks_per_message {
            check_message_size(self.chunk_size, tasks, dtype)?;
        }
        let max_in_flight = self
            .max_in_flight
            .unwrap_or_else(|| default_max_in_flight(chunk_bytes));
        let batch = Batching {
            chunk_size: self.chunk_size,
            tasks_per_message: self
                .tasks_per_message
                .unwrap_or_else(|| tasks_per_message(chunk_bytes, max_in_flight))
                .min(max_in_flight),
        };
        Ok((batch, max_in_flight))
    }
}

/// Cuts the input into messages of tasks, on a blocking thread.
struct TaskReader<'a> {
    batch: Batching,
    job: &'a JobId,
    reply_queue: &'a str,
    outstanding: &'a Outstanding,
}

impl TaskReader<'_> {
    /// Reads until the input ends, an error occurs or the publisher goes
    /// away.
    ///
    /// # Errors
    /// A read error or malformed input. The channel to the publisher is
    /// then closed without a last message, so the error must reach the job
    /// another way (see [`fail_with_input`]).
    fn run(
        &self,
        first: Option<input::Chunk>,
        mut input: Box<dyn input::ChunkReader>,
        tasks: &mpsc::Sender<OutgoingTask>,
    ) -> Result<()> {
        let dtype = input.dtype();
        let mut next_index = 0u64;
        let mut next = first;
        while let Some(chunk) = next {
            let message = SumTask::batch(
                self.job.clone(),
                next_index,
                dtype,
                chunk.count,
                self.batch.chunk_size as u64,
            );
            next_index += message.tasks;
            let task = OutgoingTask {
                body: chunk.bytes,
                properties: message.properties(self.reply_queue),
                tasks: message.tasks as u32,
            };
            // Recorded before the message can be published, so no result
            // can arrive first.
            self.outstanding
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(message.index, message);
            if tasks.blocking_send(task).is_err() {
                break;
            }
            next = input.next_chunk(self.batch.max_elements())?;
        }
        Ok(())
    }
}

/// The publisher's outcome, unless the input failed: then the input's
/// error, at once.
///
/// The reader sends its error before it closes the channel, and the
/// publisher only finishes after the channel closes, so a failed input can
/// never pass for a finished one: `biased` checks the failure first.
fn fail_with_input(
    mut publisher: JoinHandle<Result<u64>>,
    mut failure: oneshot::Receiver<Error>,
) -> JoinHandle<Result<u64>> {
    tokio::spawn(async move {
        let outcome = tokio::select! {
            biased;
            Ok(error) = &mut failure => Err(error),
            joined = &mut publisher => match joined {
                Ok(outcome) => outcome,
                Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
            },
        };
        if outcome.is_err() {
            publisher.abort();
        }
        outcome
    })
}

/// The collector's state: the exact total and which tasks are answered.
struct SumCollector {
    job: JobId,
    dtype: Dtype,
    total: Total,
    /// The tasks whose results have been counted, as ranges: results arrive
    /// roughly in order, so this stays small.
    answered: RangeSet<u64>,
    duplicates: u64,
    workers: BTreeSet<String>,
    outstanding: Outstanding,
    dead_letter_queue: String,
}

impl SumCollector {
    /// Adds the partial sums answering the message whose first task is
    /// `first`, unless it was answered before; returns how many tasks were
    /// new.
    ///
    /// A result must answer a whole message: one partial sum per task, each
    /// over that task's element count. Anything else is malformed, and ends
    /// the job rather than leaving tasks unanswered.
    fn add(&mut self, first: u64, partials: &[PartialSum], worker: &str) -> Result<u64> {
        let malformed = |reason: String| Error::from(warren::Error::malformed("result", reason));
        let mut outstanding = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(message) = outstanding.get(&first) else {
            if self.answered.contains(&first) {
                self.duplicates += 1;
                tracing::debug!(task = first, worker, "duplicate result ignored");
                return Ok(0);
            }
            return Err(malformed(format!(
                "worker {worker} answered task {first}, which no unanswered message starts with"
            )));
        };
        if partials.len() as u64 != message.tasks {
            return Err(malformed(format!(
                "worker {worker} answered the {} task(s) from {first} with {} partial sum(s)",
                message.tasks,
                partials.len()
            )));
        }
        for ((index, expected), partial) in message.task_counts().zip(partials) {
            if partial.count() != expected {
                return Err(malformed(format!(
                    "task {index} has {expected} elements but worker {worker} summed {}",
                    partial.count()
                )));
            }
        }
        let tasks = message.tasks;
        for partial in partials {
            self.total.add(partial)?;
        }
        outstanding.remove(&first);
        self.answered.insert(first..first + tasks);
        Ok(tasks)
    }
}

impl Collector for SumCollector {
    /// A new result is added to the total; a duplicate is ignored; anything
    /// that makes the exact answer impossible (a failed or dead-lettered
    /// task, a malformed result, one naming another job) ends the job.
    async fn accept(&mut self, delivery: &lapin::message::Delivery) -> Result<Accepted> {
        if let Some(dead) = DeadLetter::of(&delivery.properties) {
            return Err(Error::DeadLettered {
                task: dead.task.map_or("?".into(), |t| t.to_string()),
                reason: explain_dead_letter(&dead.reason),
                queue: self.dead_letter_queue.clone(),
            });
        }
        let result = TaskResult::decode(&delivery.data)?;
        self.job.check_reply("result", &result.job_id)?;
        let partials = match result.outcome {
            Outcome::Sum(partials) => partials,
            Outcome::Error(failure) => {
                return Err(Error::TaskFailed {
                    task: result.task.map_or("?".into(), |t| t.to_string()),
                    worker: result.worker,
                    message: failure.message,
                });
            }
            Outcome::Download(_) => {
                return Err(
                    warren::Error::malformed("result", "a download report for a sum job").into(),
                );
            }
        };
        let first = result.task.ok_or_else(|| {
            warren::Error::malformed("result", "a sum result without a task index")
        })?;
        let answered = self.add(first, &partials, &result.worker)?;
        if answered == 0 {
            return Ok(Accepted::Other);
        }
        self.workers.insert(result.worker);
        Ok(Accepted::Answered(answered))
    }

    fn unanswered(&self) -> Vec<u64> {
        let outstanding = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        outstanding
            .iter()
            .flat_map(|(first, message)| *first..first + message.tasks)
            .collect()
    }

    fn progress_message(&self, elapsed: Duration) -> String {
        let bytes = self.total.count() as f64 * self.dtype.itemsize() as f64;
        format!(
            "{:.1} MB/s, {} worker(s)",
            bytes / elapsed.as_secs_f64().max(1e-3) / 1e6,
            self.workers.len()
        )
    }
}
