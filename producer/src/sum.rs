//! A sum job: stream the input as chunk tasks, gather the workers' exact
//! partial sums, and round once.
//!
//! Three activities run at once:
//! - a blocking thread reads the input into chunks (two buffered ahead);
//! - the publisher task publishes them with pipelined confirms, taking one
//!   permit of the in-flight window per task, so at most `max_in_flight`
//!   tasks are queued or in work and memory stays bounded;
//! - the collector (this module's main loop) consumes results,
//!   de-duplicates them by task index (a redelivered task may be answered
//!   twice), adds them to the exact total and returns a window permit.
//!
//! The job ends when the input is exhausted and every published task has
//! been answered, or on the first failure, timeout or cancel; whichever it
//! is, the reply queue is deleted on the way out.

use std::collections::{BTreeSet, VecDeque};
// A poisoned lock still holds a consistent Vec (every update is one push),
// so poisoning is ignored rather than turned into a panic.
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use warren::broker::Routed;
use warren::exact::{Answer, Total};
use warren::protocol::{DeadLetter, Outcome, SumTask, TaskResult};
use warren::{BrokerConfig, Dtype, JobId};

use crate::error::{Error, Result};
use crate::input::{self, Chunk, InputSpec};
use crate::job::{JobSession, WORKER_CHECK_INTERVAL, explain_dead_letter};
use crate::progress::Progress;

/// Elements per task unless `--chunk-size` says otherwise: 1 MiB of
/// float64 per message. See the README's benchmarks for the measurements.
pub const DEFAULT_CHUNK_SIZE: usize = 131_072;

/// Tasks queued or in work at once unless `--max-in-flight` says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Publishes whose confirms may be outstanding at once.
const CONFIRM_WINDOW: usize = 16;

/// Chunks the reader thread prepares ahead of the publisher.
const READ_AHEAD: usize = 2;

/// A sum job's settings.
#[derive(Debug, Clone)]
pub struct SumConfig {
    /// What to sum.
    pub input: InputSpec,
    /// Elements per task.
    pub chunk_size: usize,
    /// Tasks queued or in work at once.
    pub max_in_flight: usize,
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

/// What the publisher task hands back when the input is exhausted.
#[derive(Debug, Clone, Copy)]
struct Published {
    tasks: u64,
}

/// Runs a sum job to its end.
///
/// # Errors
/// Any [`Error`]: bad input (before or after publishing started), broker
/// failures, a task that failed or was dead-lettered, `--timeout`, or
/// [`Error::Cancelled`] when `shutdown` fires.
pub async fn run(
    broker: &BrokerConfig,
    config: &SumConfig,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<SumReport> {
    let started = Instant::now();
    // Opening may block (stdin), and validates headers before any broker work.
    let spec = config.input.clone();
    let reader = tokio::task::spawn_blocking(move || input::open(&spec))
        .await
        .expect("opening the input does not panic")?; // invariant: input::open returns errors, never panics
    let dtype = reader.dtype();
    let total_elements = reader.total_elements();

    let job = JobId::random();
    let mut session = tokio::select! {
        session = JobSession::open(broker, job.clone()) => session?,
        () = shutdown.cancelled() => return Err(Error::Cancelled),
    };
    tracing::info!(job_id = %job, dtype = %dtype, "sum job started");

    let chunk_size = config.chunk_size;
    progress.start(
        "chunks",
        total_elements.map(|n| n.div_ceil(chunk_size as u64)),
    );

    let (chunks_tx, chunks_rx) = mpsc::channel(READ_AHEAD);
    let reader_thread =
        tokio::task::spawn_blocking(move || read_chunks(reader, chunk_size, chunks_tx));
    let window = Arc::new(Semaphore::new(config.max_in_flight));
    let expected_counts = Arc::new(Mutex::new(Vec::new()));
    let publisher = tokio::spawn(publish_chunks(
        session.publisher.clone(),
        session.topology.task_queue(),
        session.reply_queue.clone(),
        SumTask {
            job: job.clone(),
            index: 0,
            dtype,
            count: 0,
        },
        chunks_rx,
        Arc::clone(&window),
        Arc::clone(&expected_counts),
    ));

    let mut collector = Collector {
        job: job.clone(),
        dtype,
        total: Total::new(dtype),
        answered: Vec::new(),
        answered_count: 0,
        duplicates: 0,
        workers: BTreeSet::new(),
        expected_counts,
        dead_letter_queue: session.topology.dead_letter_queue(),
    };
    let outcome = collect(
        &mut session,
        &mut collector,
        publisher,
        &window,
        config.timeout,
        progress,
        &shutdown,
        started,
    )
    .await;
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

/// Reads chunks on a blocking thread until the input ends, an error occurs
/// or the receiver goes away.
fn read_chunks(
    mut reader: Box<dyn input::ChunkReader>,
    chunk_size: usize,
    chunks: mpsc::Sender<Result<Chunk>>,
) {
    loop {
        let next = reader.next_chunk(chunk_size);
        let last = !matches!(next, Ok(Some(_)));
        let item = match next {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if chunks.blocking_send(item).is_err() || last {
            return;
        }
    }
}

/// Publishes each chunk as a task, holding a window permit per task and
/// keeping up to [`CONFIRM_WINDOW`] confirms outstanding.
async fn publish_chunks(
    publisher: warren::broker::Publisher,
    task_queue: String,
    reply_queue: String,
    template: SumTask,
    mut chunks: mpsc::Receiver<Result<Chunk>>,
    window: Arc<Semaphore>,
    expected_counts: Arc<Mutex<Vec<u64>>>,
) -> Result<Published> {
    let mut confirms = VecDeque::with_capacity(CONFIRM_WINDOW);
    let mut index = 0u64;
    loop {
        let permit = window
            .acquire()
            .await
            .expect("the window semaphore is never closed"); // invariant: nobody calls close()
        let Some(chunk) = chunks.recv().await else {
            break;
        };
        let chunk = chunk?;
        // The collector returns the permit when this task's result arrives.
        permit.forget();
        // Recorded before publishing, so the result can never arrive first.
        expected_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(chunk.count);
        let task = SumTask {
            index,
            count: chunk.count,
            ..template.clone()
        };
        let pending = publisher
            .publish(&task_queue, &chunk.bytes, task.properties(&reply_queue))
            .await?;
        drop(chunk);
        confirms.push_back(pending);
        if confirms.len() >= CONFIRM_WINDOW {
            await_confirm(confirms.pop_front(), &task_queue).await?;
        }
        index += 1;
    }
    while let Some(pending) = confirms.pop_front() {
        await_confirm(Some(pending), &task_queue).await?;
    }
    Ok(Published { tasks: index })
}

async fn await_confirm(
    pending: Option<warren::broker::PendingConfirm>,
    task_queue: &str,
) -> Result<()> {
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

/// The collector's state: the exact total and which tasks are answered.
struct Collector {
    job: JobId,
    dtype: Dtype,
    total: Total,
    /// `answered[i]`: task `i`'s result has been counted.
    answered: Vec<bool>,
    answered_count: u64,
    duplicates: u64,
    workers: BTreeSet<String>,
    /// Element count of each published task, by index.
    expected_counts: Arc<Mutex<Vec<u64>>>,
    dead_letter_queue: String,
}

/// The collector loop; returns the number of tasks once all are answered.
#[allow(clippy::too_many_arguments)]
async fn collect(
    session: &mut JobSession,
    collector: &mut Collector,
    mut publisher: tokio::task::JoinHandle<Result<Published>>,
    window: &Semaphore,
    timeout: Option<Duration>,
    progress: &Progress,
    shutdown: &CancellationToken,
    started: Instant,
) -> Result<u64> {
    let deadline = timeout.map(|t| tokio::time::Instant::from_std(started + t));
    let mut published: Option<Published> = None;
    let mut worker_check = tokio::time::interval(WORKER_CHECK_INTERVAL);
    let result = loop {
        if let Some(p) = published
            && collector.answered_count == p.tasks
        {
            break Ok(p.tasks);
        }
        tokio::select! {
            () = shutdown.cancelled() => break Err(Error::Cancelled),
            () = sleep_until(deadline) => {
                let after = timeout.unwrap_or_default();
                break Err(timed_out(after, collector.answered_count, published, &session.workers.consumers, &session.topology.task_queue()));
            }
            joined = &mut publisher, if published.is_none() => {
                match joined {
                    Ok(Ok(p)) => {
                        progress.set_total(p.tasks);
                        published = Some(p);
                    }
                    Ok(Err(e)) => break Err(e),
                    Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
                }
            }
            reply = session.next_reply() => {
                let delivery = match reply {
                    Ok(delivery) => delivery,
                    Err(e) => break Err(e),
                };
                match collector.accept(&delivery) {
                    Ok(true) => {
                        window.add_permits(1);
                        progress.advance(1);
                        progress.set_message(throughput(collector, started));
                    }
                    Ok(false) => {}
                    Err(e) => break Err(e),
                }
            }
            _ = worker_check.tick() => {
                let waiting = collector.expected_len() - collector.answered_count;
                session.check_workers(progress, waiting).await;
            }
        }
    };
    if result.is_err() {
        publisher.abort();
    }
    result
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn timed_out(
    after: Duration,
    done: u64,
    published: Option<Published>,
    consumers: &Option<u32>,
    task_queue: &str,
) -> Error {
    let total = match published {
        Some(p) => p.tasks.to_string(),
        None => "?".to_owned(),
    };
    let hint = match consumers {
        Some(0) | None => format!(" (no worker is consuming {task_queue})"),
        Some(n) => format!(" ({n} worker(s) consuming {task_queue})"),
    };
    Error::TimedOut {
        after,
        done,
        total,
        hint,
    }
}

fn throughput(collector: &Collector, started: Instant) -> String {
    let bytes = collector.total.count() as f64 * collector.dtype.itemsize() as f64;
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    format!(
        "{:.1} MB/s, {} worker(s)",
        bytes / seconds / 1e6,
        collector.workers.len()
    )
}

impl Collector {
    fn expected_len(&self) -> u64 {
        self.expected_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }

    /// Takes one reply message. `Ok(true)`: a new task was answered;
    /// `Ok(false)`: a duplicate or another job's message, ignored.
    fn accept(&mut self, delivery: &lapin::message::Delivery) -> Result<bool> {
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
            return Ok(false);
        }
        let partial = match result.outcome {
            Outcome::Sum(partial) => partial,
            Outcome::Error(failure) => {
                return Err(Error::TaskFailed {
                    task: result.task.map_or("?".into(), |t| t.to_string()),
                    worker: result.worker,
                    message: failure.message,
                });
            }
        };
        let index = result.task.ok_or_else(|| {
            warren::Error::malformed("result", "a sum result without a task index")
        })?;
        let expected = {
            let counts = self
                .expected_counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            counts.get(index as usize).copied()
        };
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
                    "task {index} has {expected} elements but worker {} summed {}",
                    result.worker,
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
            tracing::debug!(task = index, worker = %result.worker, "duplicate result ignored");
            return Ok(false);
        }
        self.total.add(&partial)?;
        self.answered[slot] = true;
        self.answered_count += 1;
        self.workers.insert(result.worker);
        Ok(true)
    }
}
