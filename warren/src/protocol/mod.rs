//! The wire protocol: what a task and a result look like on the broker.
//!
//! `docs/PROTOCOL.md` describes this in prose for clients in other languages;
//! the golden tests at the bottom of this file pin the exact headers and
//! JSON, so the two cannot drift apart.
//!
//! A task is an AMQP message on the task queue: its metadata in `warren-*`
//! headers, its payload in the body (raw little-endian elements for a sum).
//! A result is a JSON message on the job's reply queue. Anything that does
//! not follow this format decodes to [`Error::Malformed`] or
//! [`Error::UnsupportedVersion`], which the worker dead-letters.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::{Deserialize, Serialize};

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::exact::PartialSum;

mod download;
mod range;

pub use download::{
    BodyChunk, Delivery, DownloadBatch, DownloadError, DownloadErrorKind, DownloadLimits,
    DownloadReport, DownloadSpec, DownloadStatus, DownloadTask, check_sha256, check_url,
    marker_name,
};
pub use range::{ByteOrder, MAX_RANGE_TASK_BYTES, RangeSpec, RangeTask, SourceRef, VersionPin};

/// The protocol version this build speaks, sent in every task and result.
pub const PROTOCOL_VERSION: i64 = 1;

/// Names of the AMQP headers warren sets.
pub mod header {
    /// Protocol version (integer).
    pub const VERSION: &str = "warren-version";
    /// Task kind: `sum` (string).
    pub const KIND: &str = "warren-kind";
    /// Job id (string).
    pub const JOB: &str = "warren-job";
    /// Index of the task within its job, from 0 (integer).
    pub const TASK: &str = "warren-task";
    /// Element type of a sum task (string, a numpy name).
    pub const DTYPE: &str = "warren-dtype";
    /// Number of elements in a sum message (integer).
    pub const COUNT: &str = "warren-count";
    /// Tasks in a sum or download message, when more than one (integer).
    pub const TASKS: &str = "warren-tasks";
    /// Elements of each task but the last in a batched sum message
    /// (integer).
    pub const CHUNK: &str = "warren-chunk";
    /// Download body chunks: the attempt they belong to (string).
    pub const ATTEMPT: &str = "warren-attempt";
    /// Download body chunks: byte offset of the chunk in the file (integer).
    pub const OFFSET: &str = "warren-offset";
    /// Set by RabbitMQ on dead-lettered messages: why (`rejected`,
    /// `delivery_limit`, `expired`, `maxlen`).
    pub const FIRST_DEATH_REASON: &str = "x-first-death-reason";
}

/// Content type of a sum task's body.
pub const CONTENT_TYPE_BINARY: &str = "application/octet-stream";
/// Content type of results.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// AMQP delivery mode 2: the broker writes the message to disk.
pub(crate) const PERSISTENT: u8 = 2;
/// AMQP delivery mode 1: results go to a non-durable queue anyway.
pub(crate) const TRANSIENT: u8 = 1;

/// Identifies one job: 1 to 64 characters from `[A-Za-z0-9_-]`. The producer
/// generates a random UUID in simple form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A fresh random id.
    pub fn random() -> Self {
        JobId(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Checks an id received from the wire.
    ///
    /// # Errors
    /// [`Error::Malformed`] when it is empty, too long or has other characters.
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty()
            || text.len() > 64
            || !text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::malformed(
                "message",
                format!("invalid job id {text:?} (expected 1 to 64 of [A-Za-z0-9_-])"),
            ));
        }
        Ok(JobId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `message_id` of this job's task `index`: `<job>:<index>`.
    pub fn task_message_id(&self, index: u64) -> String {
        format!("{}:{index}", self.0)
    }

    /// Checks that a message (`what`: "result", "body chunk") that came
    /// through this job's reply queue names this job. One that names another
    /// job was published into the wrong queue by some client; ignoring it
    /// could leave this job waiting for an answer that went astray.
    ///
    /// # Errors
    /// [`Error::Malformed`] naming both jobs.
    pub fn check_reply(&self, what: &'static str, named: &JobId) -> Result<()> {
        if named == self {
            return Ok(());
        }
        Err(Error::malformed(
            what,
            format!(
                "it names job {named} but came through the reply queue of job {self} \
                 (a client published it to the wrong queue)"
            ),
        ))
    }
}

impl TryFrom<String> for JobId {
    type Error = Error;
    fn try_from(text: String) -> Result<Self> {
        JobId::parse(&text)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a task asks a worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Sum a chunk of numbers exactly.
    Sum,
    /// Sum a byte range of a source the worker reads itself.
    SumRange,
    /// Download one URL.
    Download,
}

impl TaskKind {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Sum => "sum",
            TaskKind::SumRange => "sum-range",
            TaskKind::Download => "download",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "sum" => Ok(TaskKind::Sum),
            "sum-range" => Ok(TaskKind::SumRange),
            "download" => Ok(TaskKind::Download),
            other => Err(Error::malformed(
                "task",
                format!("unknown task kind {other:?}"),
            )),
        }
    }
}

/// Where a task came from: enough to send an error result back even when
/// the rest of the task is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOrigin {
    /// The job the task belongs to.
    pub job: JobId,
    /// The task's index, if its header could be read.
    pub index: Option<u64>,
    /// The job's reply queue.
    pub reply_to: String,
}

impl TaskOrigin {
    /// Reads the job id and reply queue of any message claiming to be a
    /// task; `None` when the sender cannot be identified.
    pub fn of(properties: &BasicProperties) -> Option<TaskOrigin> {
        let headers = properties.headers().as_ref()?;
        let job = JobId::parse(&string_header(headers, header::JOB).ok()?).ok()?;
        let reply_to = properties.reply_to().as_ref()?.as_str().to_owned();
        if reply_to.is_empty() {
            return None;
        }
        Some(TaskOrigin {
            job,
            index: int_header(headers, header::TASK)
                .ok()
                .and_then(|i| u64::try_from(i).ok()),
            reply_to,
        })
    }
}

/// Most tasks one message (sum or download) may carry.
pub const MAX_TASKS_PER_MESSAGE: u64 = 65_536;

/// The metadata of a sum message; the elements themselves are the body.
///
/// One message carries one task, or, when chunks are small, a batch of
/// consecutive tasks (`tasks > 1`): task `index + i` is the `i`-th run of
/// `chunk` elements of the body, the last one taking what is left. Batching
/// saves the broker two messages per task; each task still gets its own
/// partial sum and is counted once by its own index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumTask {
    /// The job.
    pub job: JobId,
    /// Index of the (first) task within the job.
    pub index: u64,
    /// Element type.
    pub dtype: Dtype,
    /// Number of elements in the body.
    pub count: u64,
    /// Tasks in this message, at least 1.
    pub tasks: u64,
    /// Elements of each task but the last; equal to `count` for one task.
    pub chunk: u64,
}

impl SumTask {
    /// A message holding one task of `count` elements.
    pub fn single(job: JobId, index: u64, dtype: Dtype, count: u64) -> Self {
        SumTask {
            job,
            index,
            dtype,
            count,
            tasks: 1,
            chunk: count,
        }
    }

    /// A message holding `count` elements split into tasks of `chunk`
    /// elements (the last may be shorter), starting at task `first`.
    pub fn batch(job: JobId, first: u64, dtype: Dtype, count: u64, chunk: u64) -> Self {
        let chunk = chunk.max(1);
        let tasks = count.div_ceil(chunk).max(1);
        if tasks == 1 {
            return Self::single(job, first, dtype, count);
        }
        SumTask {
            job,
            index: first,
            dtype,
            count,
            tasks,
            chunk,
        }
    }

    /// Each task of the message: its index within the job and its number of
    /// elements.
    pub fn task_counts(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.tasks).map(move |i| {
            let start = i * self.chunk;
            (self.index + i, (self.count - start).min(self.chunk))
        })
    }

    /// The AMQP properties of this message, replying to `reply_to`.
    pub fn properties(&self, reply_to: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(header::DTYPE.into(), long_string(self.dtype.name()));
        headers.insert(
            header::COUNT.into(),
            AMQPValue::LongLongInt(self.count as i64),
        );
        if self.tasks > 1 {
            headers.insert(
                header::TASKS.into(),
                AMQPValue::LongLongInt(self.tasks as i64),
            );
            headers.insert(
                header::CHUNK.into(),
                AMQPValue::LongLongInt(self.chunk as i64),
            );
        }
        task_properties(
            &self.job,
            self.index,
            TaskKind::Sum,
            CONTENT_TYPE_BINARY,
            reply_to,
            headers,
        )
    }

    fn decode(job: JobId, index: u64, headers: &FieldTable, body: &[u8]) -> Result<SumTask> {
        let dtype = Dtype::from_wire(&string_header(headers, header::DTYPE)?)
            .map_err(|e| Error::malformed("task", e))?;
        let count = non_negative(int_header(headers, header::COUNT)?, header::COUNT)?;
        let expected = count.checked_mul(dtype.itemsize() as u64);
        if expected != Some(body.len() as u64) {
            return Err(Error::malformed(
                "task",
                format!(
                    "header {} says {count} {dtype} elements but the body has {} bytes",
                    header::COUNT,
                    body.len()
                ),
            ));
        }
        let tasks = match headers.inner().get(header::TASKS) {
            None => 1,
            Some(_) => non_negative(int_header(headers, header::TASKS)?, header::TASKS)?,
        };
        if !(1..=MAX_TASKS_PER_MESSAGE).contains(&tasks) {
            return Err(Error::malformed(
                "task",
                format!(
                    "header {} is {tasks}: a message carries 1 to {MAX_TASKS_PER_MESSAGE} tasks",
                    header::TASKS
                ),
            ));
        }
        if tasks == 1 {
            return Ok(SumTask::single(job, index, dtype, count));
        }
        let chunk = non_negative(int_header(headers, header::CHUNK)?, header::CHUNK)?;
        let fits = chunk > 0
            && (1..=MAX_TASKS_PER_MESSAGE).contains(&tasks)
            && (tasks - 1)
                .checked_mul(chunk)
                .is_some_and(|full| full < count)
            && tasks.checked_mul(chunk).is_some_and(|all| count <= all);
        if !fits {
            return Err(Error::malformed(
                "task",
                format!(
                    "{count} elements cannot be {tasks} tasks of {chunk} (headers {} and {})",
                    header::TASKS,
                    header::CHUNK
                ),
            ));
        }
        if index.checked_add(tasks).is_none() {
            return Err(Error::malformed("task", "task indices overflow"));
        }
        Ok(SumTask {
            job,
            index,
            dtype,
            count,
            tasks,
            chunk,
        })
    }
}

/// The properties every task message has: persistent, its ids, where to
/// reply, and the common `warren-*` headers added to the kind's own.
pub(crate) fn task_properties(
    job: &JobId,
    index: u64,
    kind: TaskKind,
    content_type: &str,
    reply_to: &str,
    mut headers: FieldTable,
) -> BasicProperties {
    headers.insert(
        header::VERSION.into(),
        AMQPValue::LongLongInt(PROTOCOL_VERSION),
    );
    headers.insert(header::KIND.into(), long_string(kind.name()));
    headers.insert(header::JOB.into(), long_string(job.as_str()));
    headers.insert(header::TASK.into(), AMQPValue::LongLongInt(index as i64));
    BasicProperties::default()
        .with_content_type(content_type.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(job.task_message_id(index).into())
        .with_correlation_id(job.as_str().into())
        .with_reply_to(reply_to.into())
        .with_timestamp(unix_seconds())
        .with_headers(headers)
}

/// A decoded task.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Sum the body.
    Sum(SumTask),
    /// Sum a range of a source by reference.
    SumRange(RangeTask),
    /// Download one URL per task.
    Download(Box<DownloadBatch>),
}

impl Task {
    /// The job the task belongs to.
    pub fn job(&self) -> &JobId {
        match self {
            Task::Sum(task) => &task.job,
            Task::SumRange(task) => &task.job,
            Task::Download(batch) => batch.job(),
        }
    }

    /// The (first) task's index within its job.
    pub fn index(&self) -> u64 {
        match self {
            Task::Sum(task) => task.index,
            Task::SumRange(task) => task.index,
            Task::Download(batch) => batch.index(),
        }
    }

    /// How many tasks the message carries.
    pub fn tasks(&self) -> u64 {
        match self {
            Task::Sum(task) => task.tasks,
            Task::SumRange(_) => 1,
            Task::Download(batch) => batch.tasks().len() as u64,
        }
    }

    /// Decodes a task from its properties and checks the body's size.
    ///
    /// # Errors
    /// [`Error::UnsupportedVersion`] for another protocol version,
    /// [`Error::Malformed`] for anything else that is off.
    pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<Task> {
        let headers = properties
            .headers()
            .as_ref()
            .ok_or_else(|| Error::malformed("task", "it has no headers"))?;
        let version = int_header(headers, header::VERSION)?;
        if version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "task",
                found: version,
            });
        }
        let job = JobId::parse(&string_header(headers, header::JOB)?)?;
        if properties
            .reply_to()
            .as_ref()
            .is_none_or(|r| r.as_str().is_empty())
        {
            return Err(Error::malformed("task", "it has no reply_to"));
        }
        let index = non_negative(int_header(headers, header::TASK)?, header::TASK)?;
        match TaskKind::parse(&string_header(headers, header::KIND)?)? {
            TaskKind::Sum => Ok(Task::Sum(SumTask::decode(job, index, headers, body)?)),
            TaskKind::SumRange => Ok(Task::SumRange(RangeTask::decode(job, index, body)?)),
            TaskKind::Download => Ok(Task::Download(Box::new(DownloadBatch::decode(
                job, index, headers, body,
            )?))),
        }
    }
}

/// Why a worker could not produce a task's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// A closed set: `malformed`, `unsupported_version`, `failed`.
    pub kind: FailureKind,
    /// A one-line human explanation.
    pub message: String,
}

/// The closed set of [`TaskFailure`] kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The task did not follow the protocol; it was dead-lettered.
    Malformed,
    /// The task spoke another protocol version; it was dead-lettered.
    UnsupportedVersion,
    /// The task was well-formed but could not be carried out.
    Failed,
}

/// What a task produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A sum message's exact partial sums, one per task, in task order.
    Sum(Vec<PartialSum>),
    /// A download message's reports (success or failure of each download),
    /// one per task, in task order.
    Download(Vec<DownloadReport>),
    /// The task could not be carried out.
    Error(TaskFailure),
}

/// A result message: the JSON body sent to the job's reply queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Always [`PROTOCOL_VERSION`].
    pub version: i64,
    /// The job.
    pub job_id: JobId,
    /// The task's index; `null` when a malformed task had none.
    pub task: Option<u64>,
    /// The worker that produced it (`host:pid` unless named otherwise).
    pub worker: String,
    /// Seconds the worker spent on the task.
    pub elapsed_s: f64,
    /// Exactly one of `sum`, `download` or `error`.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl TaskResult {
    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a TaskResult always serializes") // invariant: plain data, string keys
    }

    /// The AMQP properties of a result message.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            header::VERSION.into(),
            AMQPValue::LongLongInt(PROTOCOL_VERSION),
        );
        let message_id = match self.task {
            Some(index) => self.job_id.task_message_id(index),
            None => format!("{}:?", self.job_id),
        };
        BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_delivery_mode(TRANSIENT)
            .with_message_id(message_id.into())
            .with_correlation_id(self.job_id.as_str().into())
            .with_timestamp(unix_seconds())
            .with_headers(headers)
    }

    /// Decodes a result body.
    ///
    /// # Errors
    /// [`Error::Malformed`] for invalid JSON or fields,
    /// [`Error::UnsupportedVersion`] for another version.
    pub fn decode(body: &[u8]) -> Result<TaskResult> {
        /// The envelope: the version and which outcome keys are present.
        #[derive(Deserialize)]
        struct Envelope {
            version: i64,
            sum: Option<serde::de::IgnoredAny>,
            download: Option<serde::de::IgnoredAny>,
            error: Option<serde::de::IgnoredAny>,
        }
        let envelope = serde_json::from_slice::<Envelope>(body)
            .map_err(|e| Error::malformed("result", e.to_string()))?;
        let version = envelope.version;
        if version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "result",
                found: version,
            });
        }
        let outcomes = [
            envelope.sum.is_some(),
            envelope.download.is_some(),
            envelope.error.is_some(),
        ];
        if outcomes.iter().filter(|present| **present).count() != 1 {
            return Err(Error::malformed(
                "result",
                "it must have exactly one of sum, download and error",
            ));
        }
        serde_json::from_slice(body).map_err(|e| Error::malformed("result", e.to_string()))
    }
}

/// A task that RabbitMQ dead-lettered, as it reaches the job's reply queue
/// through the dead-letter exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The task's index, if its header was readable.
    pub task: Option<u64>,
    /// RabbitMQ's reason: `rejected` (a worker refused it as malformed),
    /// `delivery_limit` (workers kept failing on it), `expired`, `maxlen`.
    pub reason: String,
}

impl DeadLetter {
    /// Recognizes a dead-lettered task by RabbitMQ's `x-first-death-reason`
    /// header.
    pub fn of(properties: &BasicProperties) -> Option<DeadLetter> {
        let headers = properties.headers().as_ref()?;
        let reason = string_header(headers, header::FIRST_DEATH_REASON).ok()?;
        Some(DeadLetter {
            task: int_header(headers, header::TASK)
                .ok()
                .and_then(|i| u64::try_from(i).ok()),
            reason,
        })
    }
}

pub(crate) fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a string header, accepting both AMQP string types.
pub(crate) fn string_header(headers: &FieldTable, name: &str) -> Result<String> {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec())
            .map_err(|_| Error::malformed("task", format!("header {name} is not UTF-8"))),
        Some(AMQPValue::ShortString(s)) => Ok(s.as_str().to_owned()),
        Some(other) => Err(Error::malformed(
            "task",
            format!("header {name} must be a string, not {:?}", other.get_type()),
        )),
        None => Err(Error::malformed(
            "task",
            format!("header {name} is missing"),
        )),
    }
}

/// Reads an integer header of any AMQP integer width (clients differ: pika
/// sends `I` for values that fit 32 bits, `l` above; warren sends `l`).
pub(crate) fn int_header(headers: &FieldTable, name: &str) -> Result<i64> {
    let value = match headers.inner().get(name) {
        Some(AMQPValue::ShortShortInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortShortUInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortUInt(v)) => i64::from(*v),
        Some(AMQPValue::LongInt(v)) => i64::from(*v),
        Some(AMQPValue::LongUInt(v)) => i64::from(*v),
        Some(AMQPValue::LongLongInt(v)) => *v,
        Some(other) => {
            return Err(Error::malformed(
                "task",
                format!(
                    "header {name} must be an integer, not {:?}",
                    other.get_type()
                ),
            ));
        }
        None => {
            return Err(Error::malformed(
                "task",
                format!("header {name} is missing"),
            ));
        }
    };
    Ok(value)
}

pub(crate) fn non_negative(value: i64, name: &str) -> Result<u64> {
    u64::try_from(value)
        .map_err(|_| Error::malformed("task", format!("header {name} is negative ({value})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint::BigInt;

    fn job() -> JobId {
        JobId::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn sum_task() -> SumTask {
        SumTask::single(job(), 7, Dtype::Float64, 2)
    }

    #[test]
    fn a_reply_naming_another_job_is_malformed() {
        let job = JobId::parse("j1").unwrap();
        assert!(job.check_reply("result", &job.clone()).is_ok());
        let err = job
            .check_reply("result", &JobId::parse("j2").unwrap())
            .unwrap_err();
        assert!(err.is_poison());
        assert_eq!(
            err.to_string(),
            "malformed result: it names job j2 but came through the reply queue of job j1 \
             (a client published it to the wrong queue)"
        );
    }

    #[test]
    fn sum_task_properties_are_pinned() {
        let props = sum_task().properties("warren.reply.0123456789abcdef0123456789abcdef");
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/octet-stream"
        );
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            "0123456789abcdef0123456789abcdef:7"
        );
        assert_eq!(
            props.correlation_id().as_ref().unwrap().as_str(),
            "0123456789abcdef0123456789abcdef"
        );
        let headers = props.headers().as_ref().unwrap().inner();
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "warren-count",
                "warren-dtype",
                "warren-job",
                "warren-kind",
                "warren-task",
                "warren-version"
            ]
        );
        assert_eq!(headers["warren-version"], AMQPValue::LongLongInt(1));
        assert_eq!(headers["warren-kind"], long_string("sum"));
        assert_eq!(headers["warren-dtype"], long_string("float64"));
        assert_eq!(headers["warren-task"], AMQPValue::LongLongInt(7));
        assert_eq!(headers["warren-count"], AMQPValue::LongLongInt(2));
    }

    #[test]
    fn batched_sum_tasks_split_into_their_tasks() {
        let batch = SumTask::batch(job(), 10, Dtype::Int32, 10, 4);
        assert_eq!(batch.tasks, 3);
        assert_eq!(
            batch.task_counts().collect::<Vec<_>>(),
            [(10, 4), (11, 4), (12, 2)]
        );
        let props = batch.properties("r");
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(headers["warren-tasks"], AMQPValue::LongLongInt(3));
        assert_eq!(headers["warren-chunk"], AMQPValue::LongLongInt(4));
        assert_eq!(Task::decode(&props, &[0u8; 40]).unwrap(), Task::Sum(batch));
        assert_eq!(
            SumTask::batch(job(), 0, Dtype::Int32, 3, 4),
            SumTask::single(job(), 0, Dtype::Int32, 3)
        );
        // Headers that do not add up are malformed.
        for (tasks, chunk) in [(3, 5), (3, 3), (2, 0), (0, 4), (70_000, 1)] {
            let mut headers = props.headers().clone().unwrap();
            headers.insert("warren-tasks".into(), AMQPValue::LongLongInt(tasks));
            headers.insert("warren-chunk".into(), AMQPValue::LongLongInt(chunk));
            let bad = props.clone().with_headers(headers);
            assert!(
                Task::decode(&bad, &[0u8; 40]).unwrap_err().is_poison(),
                "{tasks} × {chunk}"
            );
        }
    }

    #[test]
    fn sum_task_round_trips() {
        let props = sum_task().properties("r");
        assert_eq!(
            Task::decode(&props, &[0u8; 16]).unwrap(),
            Task::Sum(sum_task())
        );
    }

    fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
        let props = sum_task().properties("r");
        let mut headers = props.headers().clone().unwrap();
        headers.insert(name.into(), value);
        props.with_headers(headers)
    }

    #[test]
    fn malformed_tasks_say_what_is_wrong() {
        let cases = [
            (
                with_header("warren-kind", long_string("paint")),
                "unknown task kind \"paint\"",
            ),
            (
                with_header("warren-dtype", long_string("complex64")),
                "unsupported dtype",
            ),
            (
                with_header("warren-count", AMQPValue::LongLongInt(3)),
                "says 3 float64 elements but the body has 16 bytes",
            ),
            (
                with_header("warren-task", AMQPValue::LongLongInt(-1)),
                "negative",
            ),
            (
                with_header("warren-job", long_string("../x")),
                "invalid job id",
            ),
            (
                with_header("warren-count", long_string("2")),
                "must be an integer",
            ),
            (BasicProperties::default(), "no headers"),
        ];
        for (props, expected) in cases {
            let err = Task::decode(&props, &[0u8; 16]).unwrap_err();
            assert!(err.is_poison(), "{err}");
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
        let future = with_header("warren-version", AMQPValue::LongLongInt(2));
        assert!(matches!(
            Task::decode(&future, &[0u8; 16]),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
    }

    /// Issue 12: 65537 tasks that add up otherwise were reported as
    /// elements that "cannot be 65537 tasks of 1".
    #[test]
    fn too_many_tasks_in_one_message_names_the_limit_issue_12() {
        let tasks = MAX_TASKS_PER_MESSAGE + 1;
        let props = with_header("warren-tasks", AMQPValue::LongLongInt(tasks as i64));
        let mut headers = props.headers().clone().unwrap();
        headers.insert("warren-chunk".into(), AMQPValue::LongLongInt(1));
        headers.insert("warren-count".into(), AMQPValue::LongLongInt(tasks as i64));
        let props = props.with_headers(headers);
        let body = vec![0u8; tasks as usize * 8];
        let err = Task::decode(&props, &body).unwrap_err();
        assert!(err.is_poison(), "{err}");
        assert!(
            err.to_string()
                .contains("header warren-tasks is 65537: a message carries 1 to 65536 tasks"),
            "{err}"
        );
    }

    #[test]
    fn integer_headers_of_any_width_are_accepted() {
        let props = with_header("warren-task", AMQPValue::LongUInt(7));
        let props = {
            let mut headers = props.headers().clone().unwrap();
            headers.insert("warren-version".into(), AMQPValue::ShortShortUInt(1));
            headers.insert("warren-count".into(), AMQPValue::ShortInt(2));
            props.with_headers(headers)
        };
        assert_eq!(
            Task::decode(&props, &[0u8; 16]).unwrap(),
            Task::Sum(sum_task())
        );
    }

    #[test]
    fn origin_is_found_even_for_malformed_tasks() {
        let props = with_header("warren-kind", long_string("paint"));
        let origin = TaskOrigin::of(&props).unwrap();
        assert_eq!(origin.job, job());
        assert_eq!(origin.index, Some(7));
        assert_eq!(origin.reply_to, "r");
        assert_eq!(TaskOrigin::of(&BasicProperties::default()), None);
    }

    #[test]
    fn result_json_is_pinned() {
        let result = TaskResult {
            version: 1,
            job_id: job(),
            task: Some(3),
            worker: "host:42".into(),
            elapsed_s: 0.5,
            outcome: Outcome::Sum(vec![PartialSum::Int {
                count: 2,
                sum: BigInt::from(-7),
            }]),
        };
        let json = String::from_utf8(result.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"job_id":"0123456789abcdef0123456789abcdef","task":3,"worker":"host:42","elapsed_s":0.5,"sum":[{"type":"int","count":2,"sum":"-7"}]}"#
        );
        assert_eq!(TaskResult::decode(json.as_bytes()).unwrap(), result);

        let failure = TaskResult {
            task: None,
            outcome: Outcome::Error(TaskFailure {
                kind: FailureKind::Malformed,
                message: "malformed task: header warren-dtype is missing".into(),
            }),
            ..result
        };
        let json = String::from_utf8(failure.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"job_id":"0123456789abcdef0123456789abcdef","task":null,"worker":"host:42","elapsed_s":0.5,"error":{"kind":"malformed","message":"malformed task: header warren-dtype is missing"}}"#
        );
        assert_eq!(TaskResult::decode(json.as_bytes()).unwrap(), failure);
        let props = failure.properties();
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*props.delivery_mode(), Some(1));
    }

    #[test]
    fn bad_results_are_rejected() {
        assert!(TaskResult::decode(b"not json").unwrap_err().is_poison());
        assert!(matches!(
            TaskResult::decode(br#"{"version":2}"#),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        let no_outcome = br#"{"version":1,"job_id":"j","task":0,"worker":"w","elapsed_s":0}"#;
        assert!(TaskResult::decode(no_outcome).is_err());
        let two = br#"{"version":1,"job_id":"j","task":0,"worker":"w","elapsed_s":0,"sum":[{"type":"int","count":1,"sum":"1"}],"error":{"kind":"failed","message":"x"}}"#;
        assert!(
            TaskResult::decode(two)
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
    }

    #[test]
    fn dead_letters_are_recognized() {
        let props = with_header(header::FIRST_DEATH_REASON, long_string("delivery_limit"));
        assert_eq!(
            DeadLetter::of(&props),
            Some(DeadLetter {
                task: Some(7),
                reason: "delivery_limit".into()
            })
        );
        assert_eq!(DeadLetter::of(&sum_task().properties("r")), None);
    }
}
