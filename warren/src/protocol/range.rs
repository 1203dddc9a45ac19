//! Sums by reference: a task that names a byte range of a source the worker
//! reads itself (a file in the shared directory, an HTTP URL, an S3 object)
//! instead of carrying the elements. The broker carries only this control
//! message; the data goes from storage straight to the worker.
//!
//! The task pins the version of the source the producer saw (size plus
//! modification time, ETag or Last-Modified), so a worker that finds another
//! version fails the task instead of summing a mix of two files.

use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};

use super::{CONTENT_TYPE_JSON, JobId, TaskKind, task_properties};
use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// Longest body a range task may have: a source URL and a few numbers.
pub const MAX_RANGE_TASK_BYTES: usize = 64 << 10;

/// Where the bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceRef {
    /// A file under the worker's `--shared-dir`, by a relative path with `/`
    /// separators and no `.` or `..` components.
    Shared {
        /// The path relative to the shared directory.
        path: String,
    },
    /// An `http://` or `https://` URL served with Range support.
    Http {
        /// The URL, without a query string.
        url: String,
    },
    /// An object of S3 or an S3-compatible store; credentials, region and
    /// endpoint come from the worker's `AWS_*` environment.
    S3 {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
    },
}

impl SourceRef {
    /// Checks what the wire allows: a shared path must be relative and stay
    /// inside the shared directory by its components alone; URLs must be
    /// http(s) without a query; S3 names must not be empty.
    ///
    /// # Errors
    /// [`Error::Malformed`] saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::malformed("task", reason));
        match self {
            SourceRef::Shared { path } => check_relative_path(path),
            SourceRef::Http { url } => match url::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                    if parsed.query().is_some() {
                        bad(format!("source URL {url} has a query string"))
                    } else {
                        Ok(())
                    }
                }
                Ok(_) => bad(format!("source URL {url} is not http or https")),
                Err(e) => bad(format!("source URL {url:?} is invalid: {e}")),
            },
            SourceRef::S3 { bucket, key } => {
                if bucket.is_empty() || key.is_empty() {
                    bad("an s3 source needs a bucket and a key".into())
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Shared paths are relative, `/`-separated, and have no empty, `.` or `..`
/// component, so no spelling of a path leads out of the shared directory
/// (symbolic links are the worker's to refuse when it opens the file).
fn check_relative_path(path: &str) -> Result<()> {
    let fine = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if fine {
        Ok(())
    } else {
        Err(Error::malformed(
            "task",
            format!("shared path {path:?} must be relative, without empty, . or .. components"),
        ))
    }
}

/// For display: `shared:PATH`, the URL, or `s3://bucket/key`.
impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceRef::Shared { path } => write!(f, "shared:{path}"),
            SourceRef::Http { url } => f.write_str(url),
            SourceRef::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// The version of the source the producer saw. `size` always; for a file
/// its modification time, for HTTP and S3 the ETag when the server gives
/// one, else its Last-Modified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionPin {
    /// Size of the whole source in bytes.
    pub size: u64,
    /// A shared file's modification time, in nanoseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// The HTTP ETag, quotes included, as the server sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The HTTP Last-Modified date, as the server sent it (RFC 7231 form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

/// Byte order of the elements in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    /// Least significant byte first (x86, ARM, numpy's `<`).
    #[default]
    Little,
    /// Most significant byte first (numpy's `>`).
    Big,
}

/// What a sum task by reference asks for, the JSON body of its message:
/// `count` elements of `dtype` starting at byte `offset` of `source`, which
/// must still be the version `pin` describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    /// Where to read.
    pub source: SourceRef,
    /// The version the producer pinned.
    pub pin: VersionPin,
    /// Element type.
    pub dtype: Dtype,
    /// Byte order of the elements in the source.
    pub byte_order: ByteOrder,
    /// Byte offset of the first element.
    pub offset: u64,
    /// Number of elements.
    pub count: u64,
}

impl RangeSpec {
    /// Byte length of the range.
    pub fn len(&self) -> u64 {
        self.count * self.dtype.itemsize() as u64
    }

    /// Whether the range holds no element.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes of the source the range covers.
    pub fn bytes(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.len()
    }
}

/// A sum task by reference: one task per message, answered by a `sum`
/// result with one partial sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeTask {
    /// The job.
    pub job: JobId,
    /// The task's index within the job.
    pub index: u64,
    /// The range to sum.
    pub spec: RangeSpec,
}

impl RangeTask {
    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.spec).expect("a RangeSpec always serializes") // invariant: plain data, string keys
    }

    /// The AMQP properties of this task, replying to `reply_to`.
    pub fn properties(&self, reply_to: &str) -> BasicProperties {
        task_properties(
            &self.job,
            self.index,
            TaskKind::SumRange,
            CONTENT_TYPE_JSON,
            reply_to,
            FieldTable::default(),
        )
    }

    pub(super) fn decode(job: JobId, index: u64, body: &[u8]) -> Result<RangeTask> {
        if body.len() > MAX_RANGE_TASK_BYTES {
            return Err(Error::malformed(
                "task",
                format!("a sum-range body of {} bytes is too long", body.len()),
            ));
        }
        let spec: RangeSpec = serde_json::from_slice(body)
            .map_err(|e| Error::malformed("task", format!("sum-range body: {e}")))?;
        spec.source.validate()?;
        let end = spec
            .count
            .checked_mul(spec.dtype.itemsize() as u64)
            .and_then(|len| len.checked_add(spec.offset));
        if end.is_none_or(|end| end > spec.pin.size) {
            return Err(Error::malformed(
                "task",
                format!(
                    "{} {} elements from byte {} do not fit in a source of {} bytes",
                    spec.count, spec.dtype, spec.offset, spec.pin.size
                ),
            ));
        }
        Ok(RangeTask { job, index, spec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Task, header, long_string};
    use lapin::types::AMQPValue;

    fn job() -> JobId {
        JobId::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn task() -> RangeTask {
        RangeTask {
            job: job(),
            index: 3,
            spec: spec(),
        }
    }

    fn spec() -> RangeSpec {
        RangeSpec {
            source: SourceRef::Shared {
                path: "data/x.npy".into(),
            },
            pin: VersionPin {
                size: 800_000_128,
                mtime_ns: Some(1_764_000_000_123_456_789),
                etag: None,
                last_modified: None,
            },
            dtype: Dtype::Float64,
            byte_order: ByteOrder::Little,
            offset: 128,
            count: 8_388_608,
        }
    }

    #[test]
    fn range_task_wire_form_is_pinned() {
        let props = task().properties("warren.reply.j");
        let headers = props.headers().as_ref().unwrap().inner();
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["warren-job", "warren-kind", "warren-task", "warren-version"]
        );
        assert_eq!(headers[header::KIND], long_string("sum-range"));
        assert_eq!(headers[header::TASK], AMQPValue::LongLongInt(3));
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(
            String::from_utf8(task().body()).unwrap(),
            r#"{"source":{"type":"shared","path":"data/x.npy"},"pin":{"size":800000128,"mtime_ns":1764000000123456789},"dtype":"float64","byte_order":"little","offset":128,"count":8388608}"#
        );
        assert_eq!(
            Task::decode(&props, &task().body()).unwrap(),
            Task::SumRange(task())
        );
    }

    #[test]
    fn http_and_s3_sources_round_trip() {
        for source in [
            SourceRef::Http {
                url: "https://example.com/a/x.npy".into(),
            },
            SourceRef::S3 {
                bucket: "b".into(),
                key: "k/x.npy".into(),
            },
        ] {
            let mut t = task();
            t.spec.source = source;
            t.spec.pin = VersionPin {
                size: 800_000_128,
                mtime_ns: None,
                etag: Some("\"abc\"".into()),
                last_modified: None,
            };
            let props = t.properties("r");
            assert_eq!(Task::decode(&props, &t.body()).unwrap(), Task::SumRange(t));
        }
        let mut t = task();
        t.spec.source = SourceRef::S3 {
            bucket: "b".into(),
            key: "k".into(),
        };
        assert_eq!(
            String::from_utf8(t.body()).unwrap()[..45].to_owned(),
            r#"{"source":{"type":"s3","bucket":"b","key":"k"}"#
        );
    }

    #[test]
    fn range_tasks_that_could_escape_or_overrun_are_malformed() {
        let props = task().properties("r");
        let mut bad_bodies = Vec::new();
        for path in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./x", "a/."] {
            let mut t = task();
            t.spec.source = SourceRef::Shared { path: path.into() };
            bad_bodies.push((t.body(), "must be relative"));
        }
        let mut t = task();
        t.spec.source = SourceRef::Http {
            url: "file:///etc/passwd".into(),
        };
        bad_bodies.push((t.body(), "not http or https"));
        let mut t = task();
        t.spec.source = SourceRef::Http {
            url: "http://h/x?sig=1".into(),
        };
        bad_bodies.push((t.body(), "query string"));
        let mut t = task();
        t.spec.count = 100_000_000;
        bad_bodies.push((t.body(), "do not fit"));
        let mut t = task();
        t.spec.offset = u64::MAX;
        bad_bodies.push((t.body(), "do not fit"));
        bad_bodies.push((
            br#"{"source":{"type":"shared","path":"x"},"pin":{"size":8},"dtype":"f8","byte_order":"little","offset":0,"count":1}"#.to_vec(),
            "unknown variant",
        ));
        bad_bodies.push((b"{}".to_vec(), "missing field"));
        for (body, expected) in bad_bodies {
            let err = Task::decode(&props, &body).unwrap_err();
            assert!(err.is_poison(), "{err}");
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
    }
}
