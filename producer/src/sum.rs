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

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren::exact::{Answer, PartialSum, Total};
use warren::protocol::{DeadLetter, Outcome, RangeTask, SumTask, TaskResult, VersionPin};
use warren::{BrokerConfig, Dtype, JobId};

use crate::durable::{JobRecord, JobSpec};
use crate::error::{Error, Result};
use crate::input::{self, InputSpec, Source};
use crate::job::{
    self, Accepted, Collector, Drive, JobSession, Opening, OutgoingTask, PublishCounts, Publishing,
    SharedRegistry, explain_dead_letter,
};
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

/// Tasks smaller than this are batched into messages of about this size
/// (four default chunks): each message, and its result, costs the broker
/// a fixed amount of work beyond its bytes (a result on a durable job's
/// quorum reply queue, about 0.35 ms of broker CPU more than on a classic
/// one, so that cost is what checkpointed jobs pay most). See
/// docs/BENCHMARKS.md for the measurements...
const BATCH_BYTES: usize = 4 << 20;
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
    /// How long the job outlives its producer (`--job-ttl`); zero: it
    /// ends with its producer and keeps no checkpoints.
    pub job_ttl: Duration,
    /// `--detach`: publish every task, then leave the job to `attach`.
    pub detach: bool,
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

/// The messages published and not answered yet (each kept as its
/// [`SumTask`], to check its result) and the tasks answered, shared by the
/// input reader and the collector under one lock, so that a message is
/// never recorded as out once it is answered (that would count its next
/// result twice).
type Outstanding = SharedRegistry<SumTask>;

/// Records `message`, about to be published, in `outstanding`; `false`
/// (and nothing recorded) when it is answered already and must not be
/// published.
fn record(outstanding: &Outstanding, message: SumTask) -> bool {
    let (first, tasks) = (message.index, message.tasks);
    outstanding.lock().publish(first, tasks, message)
}

/// What a sum job's record keeps: enough for another producer to publish
/// the rest of the tasks exactly as the first one would have.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "feed", rename_all = "lowercase")]
pub(crate) enum SumSpec {
    /// The input streams through the producer.
    Stream {
        /// The input, with an absolute path.
        input: InputSpec,
        /// Its element type.
        dtype: Dtype,
        /// Elements per task.
        chunk_size: usize,
        /// Tasks per message.
        tasks_per_message: usize,
        /// The in-flight window, in tasks.
        max_in_flight: usize,
        /// The file's size and modification time when the job started;
        /// `None` for stdin and generated input.
        pin: Option<VersionPin>,
    },
    /// The workers read ranges of a source.
    Ranges {
        /// The source, its version and its ranges.
        plan: RangePlan,
        /// The in-flight window, in tasks.
        max_in_flight: usize,
    },
}

impl SumSpec {
    /// The `--random` seed, to report it.
    pub(crate) fn seed(&self) -> Option<u32> {
        match self {
            SumSpec::Stream {
                input: InputSpec::Random { seed, .. },
                ..
            } => Some(*seed),
            _ => None,
        }
    }
}

/// How a job's settings for this run: the flags of the run that drives it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunLimits {
    /// `--timeout`.
    pub(crate) timeout: Option<Duration>,
    /// `--stall-timeout`.
    pub(crate) stall_timeout: Duration,
}

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
    let job = JobId::random();
    progress.set_job(&job);
    let session = open_job(broker, config, &feed, &job, local, &shutdown).await?;
    tracing::info!(job_id = %job, dtype = %feed.dtype(), "sum job started");
    if session.record().is_some() {
        progress.note(&format!(
            "job {job} started; if this producer stops, `producer attach {job}` carries it on"
        ));
    }
    let limits = RunLimits {
        timeout: config.timeout,
        stall_timeout: config.stall_timeout,
    };
    let collector = SumCollector::new(&session, feed.dtype());
    collect(
        session, feed, collector, limits, progress, shutdown, started,
    )
    .await
}

/// Opens a new job: one that outlives its producer, with its record,
/// unless `--job-ttl 0` says it ends with it.
async fn open_job(
    broker: &BrokerConfig,
    config: &SumConfig,
    feed: &Feed,
    job: &JobId,
    local: &LocalPlan,
    shutdown: &CancellationToken,
) -> Result<JobSession> {
    let opening = if config.job_ttl.is_zero() {
        Opening::WithProducer(job.clone())
    } else {
        let spec = JobSpec::Sum(feed.spec(config)?);
        Opening::New(Box::new(JobRecord::new(job.clone(), config.job_ttl, spec)))
    };
    JobSession::open(broker, opening, local, shutdown).await
}

/// `--detach`: publishes every task of a sum by reference, saves the job's
/// record and leaves the job to `producer attach`; returns its id.
///
/// # Errors
/// [`Error::Usage`] for an input that streams through the producer (it
/// needs its producer to the end), and what [`run`] may fail with before
/// its first reply.
pub(crate) async fn submit(
    broker: &BrokerConfig,
    config: &SumConfig,
    local: &LocalPlan,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<JobId> {
    let feed = Feed::open(config, &shutdown).await?;
    let Feed::Ranges { plan, .. } = &feed else {
        return Err(Error::Usage(
            "--detach needs an input that the workers read themselves (--shared, an http(s):// \
             or s3:// source): a streamed input needs its producer until the end"
                .into(),
        ));
    };
    if config.job_ttl.is_zero() {
        return Err(Error::Usage(
            "--detach needs a --job-ttl longer than 0".into(),
        ));
    }
    let tasks = plan.tasks();
    let job = JobId::random();
    progress.set_job(&job);
    let mut session = open_job(broker, config, &feed, &job, local, &shutdown).await?;
    let collector = SumCollector::new(&session, feed.dtype());
    // Every task at once: they are small control messages.
    let window = usize::try_from(tasks).unwrap_or(usize::MAX);
    let publishing = start_publishing(&session, feed, &collector, window, Skip::default());
    let saved = match publishing.all_published(&shutdown).await {
        Ok(total) => {
            let state = collector.checkpoint(total);
            session.checkpoint(state, 0, Some(total)).await
        }
        Err(e) => Err(e),
    };
    match saved {
        Ok(()) => {
            session.detach().await;
            Ok(job)
        }
        Err(e) => {
            session.close().await;
            Err(e)
        }
    }
}

/// Carries on a sum job another producer started, from its record; the
/// session has already taken the job's attach lock.
///
/// # Errors
/// As [`run`], and [`Error::CannotResume`] or [`Error::InputChanged`] when
/// the rest of the input cannot be published as the first run would have.
pub(crate) async fn resume(
    session: JobSession,
    record: &JobRecord,
    spec: &SumSpec,
    limits: RunLimits,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<SumReport> {
    let started = Instant::now()
        .checked_sub(record.age())
        .unwrap_or_else(Instant::now);
    progress.set_job(&record.job);
    let checkpoint = match &record.checkpoint {
        Some(state) => SumCheckpoint::parse(state, &session)?,
        None => SumCheckpoint::default(),
    };
    let feed = match Feed::resume(spec, &record.job, record.total, &shutdown).await {
        Ok(feed) => feed,
        Err(e) => {
            session.detach().await;
            return Err(e);
        }
    };
    let mut collector = SumCollector::new(&session, feed.dtype());
    collector.restore(checkpoint, feed.shape())?;
    tracing::info!(job_id = %record.job, "sum job resumed");
    collect(
        session, feed, collector, limits, progress, shutdown, started,
    )
    .await
}

/// Publishes the feed's tasks and gathers the results to the end.
async fn collect(
    mut session: JobSession,
    feed: Feed,
    mut collector: SumCollector,
    limits: RunLimits,
    progress: &Progress,
    shutdown: CancellationToken,
    started: Instant,
) -> Result<SumReport> {
    let job = session.job.clone();
    let answered_before = collector.answered_count();
    progress.start("chunks", feed.total_tasks());
    progress.advance(answered_before);
    // Tasks restored as outstanding were published by an earlier producer:
    // they count against the window already.
    let window = feed
        .max_in_flight()
        .saturating_sub(collector.outstanding_tasks() as usize);
    let source = feed.source_name();
    let skip = Skip {
        below: collector.through,
    };
    let Publishing {
        source: feeder,
        publisher,
        window,
        counts,
    } = start_publishing(&session, feed, &collector, window, skip);
    let drive = Drive {
        window: &window,
        counts: &counts,
        answered_before,
        timeout: limits.timeout,
        stall_timeout: limits.stall_timeout,
        progress,
        shutdown: &shutdown,
        started,
    };
    let outcome = job::drive(&mut session, &mut collector, publisher, drive).await;
    feeder.abort();
    progress.finish();
    // A job that outlives its producer outlives a lost connection too: the
    // caller connects again and carries it on from its record. Anything
    // else ends the job on the broker.
    if outcome.is_err() && !session.is_connected() && session.record().is_some() {
        session.detach().await;
        return Err(Error::BrokerLost { job });
    }
    session.close().await;

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

/// Starts reading `feed` into messages (leaving out what `skip` says) and
/// publishing them, `window` tasks in flight at most; the publisher ends
/// with the input's error if reading it fails.
fn start_publishing(
    session: &JobSession,
    feed: Feed,
    collector: &SumCollector,
    window: usize,
    skip: Skip,
) -> Publishing {
    let counts = PublishCounts::resuming_at(skip.below);
    let (tasks_tx, tasks_rx) = mpsc::channel(READ_AHEAD);
    let (failure_tx, failure_rx) = oneshot::channel();
    let end = Arc::new(AtomicU64::new(0));
    let target = FeedTarget {
        job: session.job.clone(),
        reply_queue: session.reply_queue.clone(),
        outstanding: collector.outstanding.clone(),
        skip,
        end: Arc::clone(&end),
    };
    let feeder = feed.spawn(target, tasks_tx, failure_tx);
    let mut publishing = Publishing::start(session, (feeder, tasks_rx), window, counts);
    publishing.publisher = fail_with_input(publishing.publisher, failure_rx, end);
    publishing
}

/// Where a job's tasks come from: the input streamed through the producer
/// in chunks, or ranges of a source the workers read themselves.
enum Feed {
    Stream {
        input: Box<dyn input::ChunkReader>,
        batch: Batching,
        max_in_flight: usize,
        first: Option<input::Chunk>,
        /// The file's version, checked again by a resuming producer.
        pin: Option<VersionPin>,
    },
    Ranges {
        plan: RangePlan,
        max_in_flight: usize,
    },
    /// Every task was published by an earlier producer.
    Published {
        dtype: Dtype,
        tasks: u64,
        max_in_flight: usize,
    },
}

/// Where the feed sends its tasks, and which it leaves out.
struct FeedTarget {
    job: JobId,
    reply_queue: String,
    outstanding: Outstanding,
    skip: Skip,
    /// Set to the number of tasks once the input is read to its end.
    end: Arc<AtomicU64>,
}

/// The messages a resumed job does not publish again: those below `below`,
/// published and confirmed by an earlier producer, or answered. (Answered
/// ones above are left out by [`record`].)
#[derive(Debug, Default)]
struct Skip {
    below: u64,
}

impl Skip {
    fn skips(&self, first: u64) -> bool {
        first < self.below
    }
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
            let pin = file_pin(&settings.input)?;
            let mut input = input::open(&settings.input)?;
            let (batch, max_in_flight) = settings.batching(input.dtype())?;
            let first = input.next_chunk(batch.max_elements())?;
            Ok(Feed::Stream {
                input,
                batch,
                max_in_flight,
                first,
                pin,
            })
        })
        .await
    }

    /// Opens the input of a job another producer started, as its record
    /// describes it, and checks that it is the same input.
    async fn resume(
        spec: &SumSpec,
        job: &JobId,
        published: Option<u64>,
        shutdown: &CancellationToken,
    ) -> Result<Feed> {
        match (spec, published) {
            (
                SumSpec::Ranges {
                    plan,
                    max_in_flight,
                },
                _,
            ) => Ok(Feed::Ranges {
                plan: plan.clone(),
                max_in_flight: *max_in_flight,
            }),
            (
                SumSpec::Stream {
                    dtype,
                    max_in_flight,
                    ..
                },
                Some(tasks),
            ) => Ok(Feed::Published {
                dtype: *dtype,
                tasks,
                max_in_flight: *max_in_flight,
            }),
            (SumSpec::Stream { input, .. }, None) if is_stdin(input) => Err(Error::CannotResume {
                job: job.to_string(),
                reason: "its input came from stdin and was not all published when its \
                         producer stopped; run the job again"
                    .into(),
            }),
            (stream, None) => {
                let stream = stream.clone();
                job::read_blocking(shutdown, move || Feed::reopen(stream)).await
            }
        }
    }

    /// Opens a streamed input again, as a record describes it, checking
    /// that the file is still the version the job started with. Blocking.
    fn reopen(spec: SumSpec) -> Result<Feed> {
        let SumSpec::Stream {
            input,
            chunk_size,
            tasks_per_message,
            max_in_flight,
            pin,
            ..
        } = spec
        else {
            unreachable!("only a streamed input is opened again"); // invariant: see resume
        };
        if file_pin(&input)? != pin {
            return Err(Error::InputChanged {
                input: input_name(&input),
            });
        }
        let mut reader = input::open(&input)?;
        let batch = Batching {
            chunk_size,
            tasks_per_message,
        };
        let first = reader.next_chunk(batch.max_elements())?;
        Ok(Feed::Stream {
            input: reader,
            batch,
            max_in_flight,
            first,
            pin,
        })
    }

    /// What the job's record keeps of this feed.
    fn spec(&self, config: &SumConfig) -> Result<SumSpec> {
        Ok(match self {
            Feed::Stream {
                input,
                batch,
                max_in_flight,
                pin,
                ..
            } => SumSpec::Stream {
                input: absolute(&config.input)?,
                dtype: input.dtype(),
                chunk_size: batch.chunk_size,
                tasks_per_message: batch.tasks_per_message,
                max_in_flight: *max_in_flight,
                pin: pin.clone(),
            },
            Feed::Ranges {
                plan,
                max_in_flight,
            } => SumSpec::Ranges {
                plan: plan.clone(),
                max_in_flight: *max_in_flight,
            },
            Feed::Published { .. } => unreachable!("a new job's feed publishes its tasks"),
        })
    }

    /// How the input is cut into messages; `None` when every message is
    /// published already.
    fn shape(&self) -> Option<Shape> {
        match self {
            Feed::Stream { input, batch, .. } => Some(Shape {
                chunk: batch.chunk_size as u64,
                tasks_per_message: batch.tasks_per_message as u64,
                elements: input.total_elements(),
            }),
            Feed::Ranges { plan, .. } => Some(Shape {
                chunk: plan.per_range,
                tasks_per_message: 1,
                elements: Some(plan.count),
            }),
            Feed::Published { .. } => None,
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            Feed::Stream { input, .. } => input.dtype(),
            Feed::Ranges { plan, .. } => plan.dtype,
            Feed::Published { dtype, .. } => *dtype,
        }
    }

    fn total_tasks(&self) -> Option<u64> {
        match self {
            Feed::Stream { input, batch, .. } => input
                .total_elements()
                .map(|n| n.div_ceil(batch.chunk_size as u64)),
            Feed::Ranges { plan, .. } => Some(plan.tasks()),
            Feed::Published { tasks, .. } => Some(*tasks),
        }
    }

    fn max_in_flight(&self) -> usize {
        match self {
            Feed::Stream { max_in_flight, .. }
            | Feed::Ranges { max_in_flight, .. }
            | Feed::Published { max_in_flight, .. } => *max_in_flight,
        }
    }

    /// The source a by-reference job reads, for the report.
    fn source_name(&self) -> Option<String> {
        match self {
            Feed::Stream { .. } | Feed::Published { .. } => None,
            Feed::Ranges { plan, .. } => Some(plan.source.to_string()),
        }
    }

    /// Feeds the publisher until the input ends. A stream is read on a
    /// blocking thread; its read error goes to `failure` (the publisher
    /// may be waiting for window permits that no worker will return).
    fn spawn(
        self,
        target: FeedTarget,
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
                    target: &target,
                };
                match reader.run(first, input, &tasks) {
                    Ok(end) => target.end.store(end, Ordering::Relaxed),
                    Err(e) => {
                        let _ = failure.send(e);
                    }
                }
            }),
            // Nothing to send: closing the channel ends the publisher.
            Feed::Published { tasks: count, .. } => {
                target.end.store(count, Ordering::Relaxed);
                tokio::spawn(async move { drop((tasks, failure)) })
            }
            Feed::Ranges { plan, .. } => tokio::spawn(async move {
                target.end.store(plan.tasks(), Ordering::Relaxed);
                for (index, spec) in plan.ranges() {
                    if target.skip.skips(index) {
                        continue;
                    }
                    let count = spec.count;
                    let task = RangeTask {
                        job: target.job.clone(),
                        index,
                        spec,
                    };
                    let message = OutgoingTask {
                        first: index,
                        body: task.body(),
                        properties: task.properties(&target.reply_queue),
                        tasks: 1,
                    };
                    // Recorded before the message can be published, so no
                    // result can arrive first.
                    let recorded = SumTask::single(target.job.clone(), index, plan.dtype, count);
                    if !record(&target.outstanding, recorded) {
                        continue;
                    }
                    if tasks.send(message).await.is_err() {
                        break;
                    }
                }
            }),
        }
    }
}

/// A streamed file's size and modification time; `None` for stdin and
/// generated input.
fn file_pin(input: &InputSpec) -> Result<Option<VersionPin>> {
    let InputSpec::Read {
        source: Source::File(path),
        ..
    } = input
    else {
        return Ok(None);
    };
    let open_error = |source| Error::Open {
        input: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(open_error)?;
    warren::source::file_pin(&file)
        .map(Some)
        .map_err(open_error)
}

/// The input with its file's path made absolute, for a record that another
/// producer may read from another directory.
fn absolute(input: &InputSpec) -> Result<InputSpec> {
    let mut input = input.clone();
    if let InputSpec::Read {
        source: Source::File(path),
        ..
    } = &mut input
    {
        *path = std::path::absolute(&*path).map_err(|source| Error::Open {
            input: path.display().to_string(),
            source,
        })?;
    }
    Ok(input)
}

fn is_stdin(input: &InputSpec) -> bool {
    matches!(
        input,
        InputSpec::Read {
            source: Source::Stdin,
            ..
        }
    )
}

fn input_name(input: &InputSpec) -> String {
    match input {
        InputSpec::Read { source, .. } => source.to_string(),
        InputSpec::Random { .. } => "--random".into(),
        InputSpec::Reference(_) => "the source".into(),
    }
}

/// How the input is cut into tasks and messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
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
    target: &'a FeedTarget,
}

impl TaskReader<'_> {
    /// Reads until the input ends, an error occurs or the publisher goes
    /// away; returns the number of tasks read.
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
    ) -> Result<u64> {
        let dtype = input.dtype();
        let target = self.target;
        let mut next_index = 0u64;
        let mut next = first;
        while let Some(chunk) = next {
            let message = SumTask::batch(
                target.job.clone(),
                next_index,
                dtype,
                chunk.count,
                self.batch.chunk_size as u64,
            );
            next_index += message.tasks;
            if !target.skip.skips(message.index) {
                let task = OutgoingTask {
                    first: message.index,
                    body: chunk.bytes,
                    properties: message.properties(&target.reply_queue),
                    tasks: message.tasks as u32,
                };
                // Recorded before the message can be published, so no
                // result can arrive first.
                if record(&target.outstanding, message) && tasks.blocking_send(task).is_err() {
                    return Ok(next_index);
                }
            }
            next = input.next_chunk(self.batch.max_elements())?;
        }
        Ok(next_index)
    }
}

/// The publisher's outcome, unless the input failed: then the input's
/// error, at once.
///
/// The reader sends its error before it closes the channel, and the
/// publisher only finishes after the channel closes, so a failed input can
/// never pass for a finished one: `biased` checks the failure first.
///
/// The job's task count is where the feed ended (`end`), not what this
/// producer published: a resumed job publishes only the rest.
fn fail_with_input(
    mut publisher: JoinHandle<Result<u64>>,
    mut failure: oneshot::Receiver<Error>,
    end: Arc<AtomicU64>,
) -> JoinHandle<Result<u64>> {
    tokio::spawn(async move {
        let outcome = tokio::select! {
            biased;
            Ok(error) = &mut failure => Err(error),
            joined = &mut publisher => match joined {
                Ok(outcome) => outcome.map(|_| end.load(Ordering::Relaxed)),
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
    duplicates: u64,
    workers: BTreeSet<String>,
    /// Shared with the input reader.
    outstanding: Outstanding,
    dead_letter_queue: String,
    /// Where publishing resumed (0 for a new job).
    through: u64,
    /// Whether the job keeps checkpoints (it outlives its producer).
    durable: bool,
    /// For a resumed job: how the input is cut, to check results for
    /// messages that the earlier producer published after its last
    /// checkpoint (they are in no record).
    shape: Option<Shape>,
}

/// How a job's input is cut into messages: `chunk` elements per task (the
/// last task may hold fewer), `tasks_per_message` tasks per message (the
/// last message may hold fewer), `elements` in all when known.
#[derive(Debug, Clone, Copy)]
struct Shape {
    chunk: u64,
    tasks_per_message: u64,
    elements: Option<u64>,
}

impl Shape {
    /// The message that starts at task `first` and is answered by `counts`
    /// (elements per task), if the input can hold such a message.
    fn message(&self, job: &JobId, dtype: Dtype, first: u64, counts: &[u64]) -> Option<SumTask> {
        let tasks = counts.len() as u64;
        if !first.is_multiple_of(self.tasks_per_message)
            || tasks == 0
            || tasks > self.tasks_per_message
        {
            return None;
        }
        let count: u64 = counts.iter().sum();
        let (last, before) = counts.split_last()?;
        // Every task but the last is whole; the last may be short.
        let cut_right = before.iter().all(|&c| c == self.chunk) && (1..=self.chunk).contains(last);
        let fits = match self.elements {
            // Known size: exactly the message the reader cuts there.
            Some(elements) => {
                let start = first.checked_mul(self.chunk)?;
                let expected = elements
                    .checked_sub(start)?
                    .min(self.chunk * self.tasks_per_message);
                count == expected
            }
            // Unknown size (text, stdin): a short message can only be the
            // last, which the final task count checks.
            None => true,
        };
        (cut_right && fits).then(|| SumTask {
            job: job.clone(),
            index: first,
            dtype,
            count,
            tasks,
            chunk: self.chunk,
        })
    }
}

/// A sum job's checkpoint, as its record keeps it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SumCheckpoint {
    /// The exact total of the answered tasks.
    total: Option<PartialSum>,
    /// The answered tasks, as `[start, end)` ranges.
    answered: Vec<(u64, u64)>,
    /// Messages published and confirmed but not answered yet, as
    /// `[first task, elements, tasks, elements per task]`.
    outstanding: Vec<[u64; 4]>,
    /// Every task below this is published and confirmed, or answered.
    through: u64,
    duplicates: u64,
    workers: BTreeSet<String>,
}

impl SumCheckpoint {
    fn parse(state: &serde_json::Value, session: &JobSession) -> Result<SumCheckpoint> {
        serde_json::from_value(state.clone()).map_err(|e| Error::BadRecord {
            queue: session.topology.job_queue(&session.job),
            reason: format!("its sum checkpoint: {e}"),
        })
    }
}

impl SumCollector {
    fn new(session: &JobSession, dtype: Dtype) -> Self {
        SumCollector {
            job: session.job.clone(),
            dtype,
            total: Total::new(dtype),
            duplicates: 0,
            workers: BTreeSet::new(),
            outstanding: Outstanding::default(),
            dead_letter_queue: session.topology.dead_letter_queue(),
            through: 0,
            shape: None,
            durable: session.record().is_some(),
        }
    }

    /// Takes up where a checkpoint left off.
    ///
    /// # Errors
    /// [`Error::Warren`] (malformed) when the saved total does not fit the
    /// job's dtype.
    fn restore(&mut self, checkpoint: SumCheckpoint, shape: Option<Shape>) -> Result<()> {
        if let Some(total) = &checkpoint.total {
            self.total.add(total)?;
        }
        let mut registry = self.outstanding.lock();
        for (start, end) in checkpoint.answered {
            registry.restore_answered(start..end);
        }
        for [index, count, tasks, chunk] in checkpoint.outstanding {
            let message = SumTask {
                job: self.job.clone(),
                index,
                dtype: self.dtype,
                count,
                tasks,
                chunk,
            };
            registry.publish(index, tasks, message);
        }
        drop(registry);
        self.through = checkpoint.through;
        self.duplicates = checkpoint.duplicates;
        self.workers = checkpoint.workers;
        self.shape = shape;
        Ok(())
    }

    /// Tasks answered so far.
    fn answered_count(&self) -> u64 {
        self.outstanding.lock().answered_count()
    }

    /// Tasks in the messages published and not answered yet.
    fn outstanding_tasks(&self) -> u64 {
        self.outstanding.lock().unanswered_count()
    }

    /// Adds the partial sums answering the message whose first task is
    /// `first`, unless it was answered before; returns how many tasks were
    /// new.
    ///
    /// A result must answer a whole message: one partial sum per task, each
    /// over that task's element count. Anything else is malformed, and ends
    /// the job rather than leaving tasks unanswered.
    fn add(&mut self, first: u64, partials: &[PartialSum], worker: &str) -> Result<u64> {
        let malformed = |reason: String| Error::from(warren::Error::malformed("result", reason));
        let mut registry = self.outstanding.lock();
        if registry.is_answered(first) {
            self.duplicates += 1;
            tracing::debug!(task = first, worker, "duplicate result ignored");
            return Ok(0);
        }
        let message = match registry.starting_at(first) {
            Some((_, message)) => message.clone(),
            None => self.unrecorded(first, partials).ok_or_else(|| {
                malformed(format!(
                    "worker {worker} answered task {first}, which no unanswered message starts with"
                ))
            })?,
        };
        check_answer(&message, partials, worker)?;
        for partial in partials {
            self.total.add(partial)?;
        }
        registry.answer(first..first + message.tasks);
        Ok(message.tasks)
    }

    /// The message a result answers that no record holds: one the earlier
    /// producer of a resumed job published after its last checkpoint, if
    /// the input can hold it.
    fn unrecorded(&self, first: u64, partials: &[PartialSum]) -> Option<SumTask> {
        if first < self.through {
            return None;
        }
        let counts: Vec<u64> = partials.iter().map(PartialSum::count).collect();
        self.shape?.message(&self.job, self.dtype, first, &counts)
    }
}

/// Checks that `partials` answer `message` whole: one partial sum per task,
/// each over that task's element count.
fn check_answer(message: &SumTask, partials: &[PartialSum], worker: &str) -> Result<()> {
    let malformed = |reason: String| Error::from(warren::Error::malformed("result", reason));
    let first = message.index;
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
    Ok(())
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

    fn keeps_checkpoints(&self) -> bool {
        self.durable
    }

    /// The total, the answered tasks and the messages that an earlier
    /// producer published and that are still to be answered: those below
    /// `through` (the ones above will be published again).
    fn checkpoint(&self, through: u64) -> serde_json::Value {
        let registry = self.outstanding.lock();
        let checkpoint = SumCheckpoint {
            total: Some(self.total.to_partial()),
            answered: registry
                .answered_ranges()
                .map(|r| (r.start, r.end))
                .collect(),
            outstanding: registry
                .open_messages()
                .take_while(|(tasks, _)| tasks.start < through)
                .map(|(_, m)| [m.index, m.count, m.tasks, m.chunk])
                .collect(),
            through,
            duplicates: self.duplicates,
            workers: self.workers.clone(),
        };
        serde_json::to_value(checkpoint).expect("a checkpoint always serializes") // invariant: plain data
    }

    fn unanswered(&self) -> Vec<u64> {
        self.outstanding.lock().unanswered()
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
