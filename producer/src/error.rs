//! [`Error`], the producer's one error type, and its [`Result`] alias.

use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a producer run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The flags do not make sense, together or with the input.
    #[error("{0}")]
    Usage(String),

    /// A source to sum by reference is not one the workers can read.
    #[error("cannot sum {input} by reference")]
    Reference {
        /// The source as given.
        input: String,
        /// What is wrong with it.
        #[source]
        source: warren::Error,
    },

    /// A file to sum with `--shared` lies outside the shared directory.
    #[error(
        "{input} is outside the shared directory {} (--shared-dir / WARREN_SHARED_DIR): \
         workers read by-reference inputs only inside their shared directory; move the file \
         there, or sum it through the broker without --shared",
        dir.display()
    )]
    OutsideSharedDir {
        /// The file as given.
        input: String,
        /// The shared directory, canonical.
        dir: std::path::PathBuf,
    },

    /// An input summed by reference was handed to the streaming reader.
    #[error("an input summed by reference is read by the workers, not streamed")]
    ReadByWorkers,

    /// Work moved to a blocking thread ended without an answer (it
    /// panicked or was cancelled).
    #[error("{what} failed")]
    Blocking {
        /// What the thread was doing, e.g. "reading the header".
        what: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },

    /// The workers of `--workers N` could not be set up.
    #[error("cannot start the local workers")]
    LocalWorkers(#[source] worker::Error),

    /// The input could not be opened.
    #[error("cannot open {input}")]
    Open {
        /// The file name, or `stdin`.
        input: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// Reading the input failed midway.
    #[error("cannot read {input}")]
    Read {
        /// The file name, or `stdin`.
        input: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// An output file or directory could not be written.
    #[error("cannot write {output}")]
    Write {
        /// The path.
        output: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// The input is malformed; `reason` says where and how.
    #[error("{input}: {reason}")]
    BadInput {
        /// The file name, or `stdin`.
        input: String,
        /// What is wrong, with the line number where there is one.
        reason: String,
    },

    /// Broker, topology or protocol failure from the shared library.
    #[error(transparent)]
    Warren(#[from] warren::Error),

    /// A worker reported that it could not carry out a task.
    #[error("task {task} failed on worker {worker}: {message}")]
    TaskFailed {
        /// The task index, or `?` when the worker could not read it.
        task: String,
        /// The worker that reported it.
        worker: String,
        /// The worker's explanation.
        message: String,
    },

    /// In shared mode, a worker does not see the job's marker file: its
    /// `--shared-dir` is not the storage of `--out-dir`.
    #[error(
        "the workers do not store files where the producer looks (--out-dir {out_dir}): {reason}"
    )]
    SharedDirMismatch {
        /// The producer's output directory.
        out_dir: String,
        /// The worker's report.
        reason: String,
    },

    /// One downloaded file is refused: it differs from what the worker
    /// reported or the list expects, or its name is taken by other content.
    /// It fails that URL (the reason goes in the manifest), never the job.
    #[error("{reason}")]
    FileRejected {
        /// Why, naming the file.
        reason: String,
    },

    /// RabbitMQ gave up on a task and dead-lettered it.
    #[error("task {task} was dead-lettered by the broker ({reason}); it is kept in {queue}")]
    DeadLettered {
        /// The task index, or `?`.
        task: String,
        /// RabbitMQ's reason, with an explanation.
        reason: String,
        /// The dead-letter queue holding it.
        queue: String,
    },

    /// `--timeout` passed before the job finished.
    #[error("timed out after {}: {done} of {total} tasks done{hint}", humantime::format_duration(*.after))]
    TimedOut {
        /// The configured timeout.
        after: Duration,
        /// Results received.
        done: u64,
        /// Tasks published (`done` of `N` or `done of at least N`).
        total: String,
        /// Why it may have taken so long.
        hint: String,
    },

    /// Every task was published, but some went unanswered for
    /// `--stall-timeout` while the task queue held none of them, ready or
    /// in work: a consumer acked them without answering.
    #[error(
        "{tasks} left the task queue but no answer came: no reply for {} and nothing is \
         queued or in work (a consumer acked without answering)",
        humantime::format_duration(*.after)
    )]
    Unanswered {
        /// `--stall-timeout`.
        after: Duration,
        /// The unanswered tasks: "task 3" or "tasks 3, 7".
        tasks: String,
    },

    /// The broker connection or the reply queue went away mid-job.
    #[error(
        "lost the job's reply queue {queue}: the broker connection closed or the queue was deleted"
    )]
    ReplyQueueLost {
        /// The reply queue.
        queue: String,
    },

    /// Someone else ended the job (`producer cancel`): its reply queue was
    /// deleted.
    #[error("job {job} was cancelled: its reply queue was deleted (`producer cancel`)")]
    CancelledElsewhere {
        /// The job.
        job: warren::JobId,
    },

    /// The connection to the broker was lost mid-job; the job lives on.
    #[error("lost the connection to the broker during job {job}")]
    BrokerLost {
        /// The job, to attach to.
        job: warren::JobId,
    },

    /// A job's record on the broker cannot be read.
    #[error("the job record in {queue} is unreadable: {reason}")]
    BadRecord {
        /// The record queue.
        queue: String,
        /// What is wrong with it.
        reason: String,
    },

    /// `attach` or `cancel` named a job that is not there.
    #[error(
        "no job {job} under the queue prefix {prefix}: it finished, was cancelled, or expired \
         after its TTL"
    )]
    NoSuchJob {
        /// The job id as given.
        job: String,
        /// `--queue-prefix`.
        prefix: String,
    },

    /// `producer jobs` needs the management API, which did not answer.
    #[error("cannot list the jobs: the management API did not answer: {reason}")]
    NoJobList {
        /// What went wrong.
        reason: String,
    },

    /// Another producer is attached to the job.
    #[error("job {job} is attached to another producer")]
    JobAttached {
        /// The job.
        job: String,
    },

    /// The job's record does not allow carrying it on.
    #[error("job {job} cannot be resumed: {reason}")]
    CannotResume {
        /// The job.
        job: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// The input is not the one the job started with.
    #[error("the input changed since the job started: {input}")]
    InputChanged {
        /// The file.
        input: String,
    },

    /// Ctrl-C or SIGTERM cancelled the job.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// True when connecting again may carry the job on: the broker went
    /// away or could not be reached, or still holds the lost connection's
    /// attach lock.
    pub fn is_worth_reconnecting(&self) -> bool {
        match self {
            Error::BrokerLost { .. } | Error::JobAttached { .. } => true,
            Error::Warren(e) => e.is_transient(),
            _ => false,
        }
    }

    /// True when the user asked to stop.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled)
    }

    /// The exit status of a run that ended with this error: 130 after a
    /// cancel, 2 for everything else (usage, input, broker, task), as
    /// `--help` documents.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Cancelled | Error::CancelledElsewhere { .. } => 130,
            _ => 2,
        }
    }

    /// A hint that helps the user fix the problem, if there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Warren(e) => e.hint().map(str::to_owned),
            Error::SharedDirMismatch { .. } => Some(
                "start every worker of the queue with --shared-dir on the same storage as \
                 --out-dir (the same volume, mounted where the producer's --out-dir is), or \
                 download without --shared"
                    .to_owned(),
            ),
            Error::NoJobList { .. } => Some(
                "only RabbitMQ's management API can list queues: enable it with \
                 `rabbitmq-plugins enable rabbitmq_management`, or name it with \
                 --management-url"
                    .to_owned(),
            ),
            Error::BrokerLost { job } => Some(format!(
                "the job lives on for its --job-ttl: `producer attach {job}` carries it on once \
                 the broker is back"
            )),
            Error::JobAttached { .. } => Some(
                "stop that producer first (`producer jobs` lists the jobs and which are \
                 attached)"
                    .to_owned(),
            ),
            Error::ReplyQueueLost { .. } => Some(
                "the broker closed the connection (a restart, a lost network, or an operator's \
                 `rabbitmqctl close_connection`) or someone deleted the queue (`producer \
                 cancel`); a job that ends with its producer (a download, or --job-ttl 0) went \
                 with it: run it again"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}
