//! Names of the AMQP headers warren sets, and reading them as clients
//! send them.

use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::error::{Error, Result};

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

pub(crate) fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
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
