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
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use warren::exact::{Answer, PartialSum, Total};
use warren::protocol::{DeadLetter, Outcome, SumTask, TaskResult};
use warren::{BrokerConfig, Dtype, JobId};

use crate::error::{Error, Result};
use crate::input::{self, InputSpec};
use crate::job::{self, Accepted, Collector, Drive, JobSession, OutgoingTask, explain_dead_letter};
use crate::local::LocalPlan;
use crate::progress::Progress;

/// Elements per task unless `--chunk-size` says otherwise: 1 MiB of
/// float64 per message. See the README's benchmarks for the measurements.
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
}

/// Element counts of the published tasks, by index, shared by the reader
/// (which records each before the task can be published) and the collector.
type ExpectedCounts = Arc<Mutex<Vec<u64>>>;

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
    // Opening may block (stdin), and validates headers before any broker work.
    let spec = config.input.clone();
    let opening = tokio::task::spawn_blocking(move || input::open(&spec));
    let reader = tokio::select! {
        opened = opening => opened.expect("opening the input does not panic")?, // invariant: input::open returns errors
        () = shutdown.cancelled() => return Err(Error::Cancelled),
    };
    let dtype = reader.dtype();
    let total_elements = reader.total_elements();

    let job = JobId::random();
    let mut session = JobSession::open(broker, job.clone(), local, &shutdown).await?;
    tracing::info!(job_id = %job, dtype = %dtype, "sum job started");

    let chunk_size = config.chunk_size;
    progress.start(
        "chunks",
        total_elements.map(|n| n.div_ceil(chunk_size as u64)),
    );

    let chunk_bytes = chunk_size * dtype.itemsize();
    let max_in_flight = config
        .max_in_flight
        .unwrap_or_else(|| default_max_in_flight(chunk_bytes));
    let batch = Batching {
        chunk_size,
        tasks_per_message: config
            .tasks_per_message
            .unwrap_or_else(|| tasks_per_message(chunk_bytes, max_in_flight))
            .min(max_in_flight),
    };
    let expected_counts = ExpectedCounts::default();
    let (tasks_tx, tasks_rx) = mpsc::channel(READ_AHEAD);
    let reply_queue = session.reply_queue.clone();
    let counts = Arc::clone(&expected_counts);
    let job_id = job.clone();
    let reader_thread = tokio::task::spawn_blocking(move || {
        read_tasks(reader, batch, &job_id, &reply_queue, &counts, &tasks_tx);
    });
    let window = Arc::new(Semaphore::new(max_in_flight));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = job::spawn_publisher(
        &session,
        tasks_rx,
        Arc::clone(&window),
        Arc::clone(&published),
    );

    let mut collector = SumCollector {
        job: job.clone(),
        dtype,
        total: Total::new(dtype),
        answered: Vec::new(),
        duplicates: 0,
        workers: BTreeSet::new(),
        expected_counts,
        dead_letter_queue: session.topology.dead_letter_queue(),
    };
    let drive = Drive {
        window: &window,
        published: &published,
        timeout: config.timeout,
        progress,
        shutdown: &shutdown,
        started,
    };
    let outcome = job::drive(&mut session, &mut collector, publisher, drive).await;
    // Whatever happened, stop reading and end the job on the broker.
    reader_thread.abort();
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
    })
}

/// How the input is cut into tasks and messages.
#[derive(Debug, Clone, Copy)]
struct Batching {
    /// Elements per task.
    chunk_size: usize,
    /// Tasks per message (the last message may hold fewer).
    tasks_per_message: usize,
}

/// Reads the input into messages of tasks on a blocking thread until it
/// ends, an error occurs or the publisher goes away.
fn read_tasks(
    mut reader: Box<dyn input::ChunkReader>,
    batch: Batching,
    job: &JobId,
    reply_queue: &str,
    expected_counts: &ExpectedCounts,
    tasks: &mpsc::Sender<Result<OutgoingTask>>,
) {
    let dtype = reader.dtype();
    let mut next_index = 0u64;
    loop {
        let item = match reader.next_chunk(batch.chunk_size * batch.tasks_per_message) {
            Ok(Some(chunk)) => {
                let message = SumTask::batch(
                    job.clone(),
                    next_index,
                    dtype,
                    chunk.count,
                    batch.chunk_size as u64,
                );
                // Recorded before the message can be published, so no
                // result can arrive first.
                expected_counts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(message.task_counts().map(|(_, count)| count));
                next_index += message.tasks;
                Ok(OutgoingTask {
                    body: chunk.bytes,
                    properties: message.properties(reply_queue),
                    tasks: message.tasks as u32,
                })
            }
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tasks.blocking_send(item).is_err() || failed {
            return;
        }
    }
}

/// The collector's state: the exact total and which tasks are answered.
struct SumCollector {
    job: JobId,
    dtype: Dtype,
    total: Total,
    /// `answered[i]`: task `i`'s result has been counted.
    answered: Vec<bool>,
    duplicates: u64,
    workers: BTreeSet<String>,
    expected_counts: ExpectedCounts,
    dead_letter_queue: String,
}

impl SumCollector {
    /// Adds task `index`'s partial sum unless the task was answered before;
    /// returns whether it was new.
    fn add(&mut self, index: u64, partial: &PartialSum, worker: &str) -> Result<bool> {
        let expected = self
            .expected_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .copied();
        let Some(expected) = expected else {
            return Err(warren::Error::malformed(
                "result",
                format!("task {index} was never published"),
            )
            .into());
        };
        if partial.count() != expected {
            return Err(warren::Error::malformed(
                "result",
                format!(
                    "task {index} has {expected} elements but worker {worker} summed {}",
                    partial.count()
                ),
            )
            .into());
        }
        let slot = index as usize;
        if self.answered.len() <= slot {
            self.answered.resize(slot + 1, false);
        }
        if self.answered[slot] {
            self.duplicates += 1;
            tracing::debug!(task = index, worker, "duplicate result ignored");
            return Ok(false);
        }
        self.total.add(partial)?;
        self.answered[slot] = true;
        Ok(true)
    }
}

impl Collector for SumCollector {
    /// A new result is added to the total; a duplicate or another job's
    /// message is ignored; anything that makes the exact answer impossible
    /// (a failed or dead-lettered task, a malformed result) ends the job.
    async fn accept(&mut self, delivery: &lapin::message::Delivery) -> Result<Accepted> {
        if let Some(dead) = DeadLetter::of(&delivery.properties) {
            return Err(Error::DeadLettered {
                task: dead.task.map_or("?".into(), |t| t.to_string()),
                reason: explain_dead_letter(&dead.reason),
                queue: self.dead_letter_queue.clone(),
            });
        }
        let result = TaskResult::decode(&delivery.data)?;
        if result.job_id != self.job {
            tracing::warn!(job_id = %result.job_id, "ignoring a result of another job");
            return Ok(Accepted::Other);
        }
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
        let mut answered = 0;
        for (offset, partial) in partials.iter().enumerate() {
            let index = first + offset as u64;
            if self.add(index, partial, &result.worker)? {
                answered += 1;
            }
        }
        if answered == 0 {
            return Ok(Accepted::Other);
        }
        self.workers.insert(result.worker);
        Ok(Accepted::Answered(answered))
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
