//! The wire protocol: what a task and a result look like on the broker.
//!
//! `docs/PROTOCOL.md` describes this in prose for clients in other languages;
//! the golden tests beside each type pin the exact headers and JSON, so the two cannot drift apart.
//!
//! A task is an AMQP message on the task queue: its metadata in `warren-*`
//! headers, its payload in the body (raw little-endian elements for a sum).
//! A result is a JSON message on the job's reply queue. Anything that does
//! not follow this format decodes to [`Error::Malformed`] or
//! [`Error::UnsupportedVersion`], which the worker dead-letters.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod download;
pub mod header;
mod job;
mod range;
mod result;
mod sum;

pub use download::{
    BodyChunk, DownloadBatch, DownloadError, DownloadErrorKind, DownloadLimits, DownloadReport,
    DownloadSpec, DownloadStatus, DownloadTask, FileRoute, check_sha256, check_url, marker_name,
};
pub(crate) use header::{int_header, long_string, non_negative, string_header};
pub use job::JobId;
pub use range::{ByteOrder, MAX_RANGE_TASK_BYTES, RangeSpec, RangeTask, SourceRef, VersionPin};
pub use result::{DeadLetter, FailureKind, Outcome, TaskFailure, TaskResult};
pub use sum::SumTask;

/// The protocol version this build speaks, sent in every task and result.
pub const PROTOCOL_VERSION: i64 = 1;

/// Content type of a sum task's body.
pub const CONTENT_TYPE_BINARY: &str = "application/octet-stream";
/// Content type of results.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// AMQP delivery mode 2: the broker writes the message to disk.
pub(crate) const PERSISTENT: u8 = 2;
/// AMQP delivery mode 1: results go to a non-durable queue anyway.
pub(crate) const TRANSIENT: u8 = 1;

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
            return Err(unsupported_version("task", version));
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

/// [`Error::UnsupportedVersion`] for a `what` message of version `found`.
pub(crate) fn unsupported_version(what: &'static str, found: i64) -> Error {
    Error::UnsupportedVersion {
        what,
        found,
        speaks: PROTOCOL_VERSION,
    }
}

pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;

    /// A job id as the producer makes them.
    pub(super) fn job() -> JobId {
        JobId::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    /// Task 7 of [`job`]: two float64 elements.
    pub(super) fn sum_task() -> SumTask {
        SumTask::single(job(), 7, Dtype::Float64, 2)
    }

    /// [`sum_task`]'s properties, replying to `r`, with one header set.
    pub(super) fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
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
}
