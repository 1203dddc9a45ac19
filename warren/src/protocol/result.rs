//! What comes back on a job's reply queue: [`TaskResult`], the JSON result
//! of a task, and [`DeadLetter`], a task the broker gave up on.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};

use super::{
    CONTENT_TYPE_JSON, DownloadReport, JobId, PROTOCOL_VERSION, TRANSIENT, header, int_header,
    string_header, unix_seconds, unsupported_version,
};
use crate::error::{Error, Result};
use crate::exact::PartialSum;

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
            return Err(unsupported_version("result", version));
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

#[cfg(test)]
mod tests {
    use num_bigint::BigInt;

    use super::*;
    use crate::protocol::long_string;
    use crate::protocol::tests::{job, sum_task, with_header};

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
