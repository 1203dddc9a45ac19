//! Download tasks, their reports, and the body chunks that carry a file
//! back through the broker.
//!
//! A download message's body is a JSON [`DownloadSpec`], or, when it carries
//! several consecutive tasks (a [`DownloadBatch`] with `warren-tasks`), a
//! JSON array of them; its result holds one [`DownloadReport`] per task. With
//! [`FileRoute::Broker`] the worker sends the file to the job's reply queue
//! as [`BodyChunk`] messages (raw bytes, at most `chunk_bytes` each, tagged
//! with an attempt id and offset) and then a JSON result whose
//! [`DownloadReport::attempt`] names the attempt whose chunks make the
//! file. With [`FileRoute::Shared`] the worker writes the file into the
//! temporary area of its `--shared-dir` and the report carries its relative
//! path; the producer verifies it and moves it under its final name.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};

use super::{
    CONTENT_TYPE_BINARY, CONTENT_TYPE_JSON, JobId, MAX_TASKS_PER_MESSAGE, PROTOCOL_VERSION,
    TRANSIENT, TaskKind, header, int_header, long_string, non_negative, string_header,
    task_properties,
};
use crate::error::{Error, Result};
use crate::filename::RelativePath;

/// Where the downloaded file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileRoute {
    /// Back through the broker to the producer, which writes it.
    Broker,
    /// Straight into the directory all workers mount (`worker --shared-dir`).
    Shared,
}

/// Bounds a worker keeps to while downloading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadLimits {
    /// Largest body accepted; a larger one is cut off and reported.
    pub max_bytes: u64,
    /// Seconds to establish a connection.
    pub connect_timeout_s: f64,
    /// Seconds without receiving any byte.
    pub idle_timeout_s: f64,
    /// Seconds for one whole attempt, headers and body.
    pub total_timeout_s: f64,
    /// Attempts in all, retries included (transient failures only).
    pub max_attempts: u32,
    /// Largest body chunk message, in bytes ([`FileRoute::Broker`]).
    pub chunk_bytes: u32,
}

impl DownloadLimits {
    /// Chunk messages are kept between 4 KiB and 64 MiB.
    pub const CHUNK_BYTES_RANGE: std::ops::RangeInclusive<u32> = 4096..=(64 << 20);
    /// At most this many attempts.
    pub const MAX_ATTEMPTS: u32 = 20;
    /// Longest timeout accepted: no download should need more, and a bound
    /// keeps every deadline a worker computes far from overflowing.
    pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    fn check(&self) -> std::result::Result<(), String> {
        let timeouts = [
            ("connect_timeout_s", self.connect_timeout_s),
            ("idle_timeout_s", self.idle_timeout_s),
            ("total_timeout_s", self.total_timeout_s),
        ];
        let max = Self::MAX_TIMEOUT.as_secs_f64();
        for (key, seconds) in timeouts {
            // Written so that NaN fails too.
            if !(seconds > 0.0 && seconds <= max) {
                return Err(format!(
                    "{key} must be more than 0 and at most {max} seconds (1 day), not {seconds}"
                ));
            }
        }
        if !(1..=Self::MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!("max_attempts must be 1 to {}", Self::MAX_ATTEMPTS));
        }
        if !Self::CHUNK_BYTES_RANGE.contains(&self.chunk_bytes) {
            return Err("chunk_bytes must be between 4 KiB and 64 MiB".into());
        }
        Ok(())
    }
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            max_bytes: 2 << 30,
            connect_timeout_s: 10.0,
            idle_timeout_s: 30.0,
            total_timeout_s: 600.0,
            max_attempts: 4,
            chunk_bytes: 1 << 20,
        }
    }
}

/// The JSON body of a download task. Unknown keys are refused: a
/// misspelt `sha256` must not turn into a download nobody checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadSpec {
    /// An `http` or `https` URL.
    pub url: String,
    /// Where the file goes, relative to the output (or shared) directory.
    pub name: String,
    /// Expected SHA-256 of the body, lowercase hex, if the user gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the file goes.
    pub delivery: FileRoute,
    /// Bounds on the download.
    pub limits: DownloadLimits,
    /// `producer --fsync`: with [`FileRoute::Shared`], the worker syncs the
    /// file before it reports it. Without it the producer makes the job's
    /// files durable once, at the end (see docs/DOWNLOADS.md). Absent means
    /// `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fsync: bool,
    /// [`FileRoute::Shared`]: the name of the job's marker file, which the
    /// producer creates in `<out-dir>/.warren-tmp/` before publishing. A
    /// worker that cannot find it in its own `<shared-dir>/.warren-tmp/`
    /// is not looking at the producer's directory, and fails the task at
    /// once with [`DownloadErrorKind::SharedDirMismatch`] instead of
    /// downloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

/// A decoded download task.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadTask {
    /// The job.
    pub job: JobId,
    /// Index of this URL within the job.
    pub index: u64,
    /// What to fetch and where it goes.
    pub spec: DownloadSpec,
    /// `spec.name`, validated.
    pub name: RelativePath,
    /// `spec.url`, parsed.
    pub url: url::Url,
}

/// Checks that a URL can be downloaded: it parses, is `http` or `https`
/// and names a host.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_url(text: &str) -> std::result::Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("invalid URL {text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported scheme {:?} in {text:?}: only http and https are downloaded",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the URL {text:?} names no host"));
    }
    Ok(url)
}

/// Checks a `sha256` value: 64 hex digits, returned lowercase.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_sha256(text: &str) -> std::result::Result<String, String> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!("{text:?} is not a SHA-256 digest (64 hex digits)"))
    }
}

/// The name of a shared-delivery job's marker file in the temporary area
/// (`.warren-tmp/<job>-marker`): it starts with `<job>-` so that the
/// producer's clean-up of the job's temporary files removes it too, and no
/// worker's temporary file (`<job>-<task>-<tag>`) can take it.
pub fn marker_name(job: &JobId) -> String {
    format!("{job}-marker")
}

/// A worker accepts only its job's marker name: the name is joined to a
/// directory, so nothing else (a path, `..`) may come through.
fn is_marker_name(job: &JobId, marker: &str) -> bool {
    marker == marker_name(job)
}

impl DownloadTask {
    /// Validates a spec into a task; an expected `sha256` is kept lowercase.
    ///
    /// # Errors
    /// [`Error::Malformed`] for an unusable URL, an unsafe name, a bad
    /// checksum or limits out of range.
    pub fn new(job: JobId, index: u64, mut spec: DownloadSpec) -> Result<Self> {
        let bad = |reason: String| Error::malformed("task", reason);
        let url = check_url(&spec.url).map_err(bad)?;
        let name = RelativePath::parse(&spec.name)
            .map_err(|e| bad(format!("unsafe file name {:?}: {e}", spec.name)))?;
        // Hex digits are compared without regard to case: the worker checks
        // the body against the lowercase form it computes.
        spec.sha256 = spec
            .sha256
            .as_deref()
            .map(check_sha256)
            .transpose()
            .map_err(bad)?;
        spec.limits.check().map_err(bad)?;
        if let Some(marker) = &spec.marker
            && !is_marker_name(&job, marker)
        {
            return Err(bad(format!(
                "marker {marker:?} is not the job's marker file name {:?}",
                marker_name(&job)
            )));
        }
        Ok(DownloadTask {
            job,
            index,
            spec,
            name,
            url,
        })
    }

    /// The JSON body of a message carrying this task alone.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.spec).expect("a DownloadSpec always serializes") // invariant: plain data
    }
}

/// A download message: one task, or several consecutive ones (with
/// `warren-tasks` above 1) whose specs travel as a JSON array, so that the
/// broker moves one
/// message, and one result, for many small files. Each task is still its
/// own download with its own index and its own report.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadBatch {
    /// The tasks, in index order: task `i` has index `tasks[0].index + i`.
    tasks: Vec<DownloadTask>,
}

impl DownloadBatch {
    /// A message of consecutive tasks of one job.
    ///
    /// # Errors
    /// [`Error::Malformed`] when `tasks` is empty, too long, or not
    /// consecutive tasks of one job.
    pub fn new(tasks: Vec<DownloadTask>) -> Result<Self> {
        let bad = |reason: &str| Error::malformed("task", reason.to_owned());
        let Some(first) = tasks.first() else {
            return Err(bad("a download message carries at least one task"));
        };
        if tasks.len() as u64 > MAX_TASKS_PER_MESSAGE {
            return Err(bad("a download message carries at most 65536 tasks"));
        }
        let consecutive = tasks.iter().enumerate().all(|(i, task)| {
            task.job == first.job && first.index.checked_add(i as u64) == Some(task.index)
        });
        if !consecutive {
            return Err(bad(
                "a download message carries consecutive tasks of one job",
            ));
        }
        Ok(DownloadBatch { tasks })
    }

    /// The job.
    pub fn job(&self) -> &JobId {
        &self.tasks[0].job // invariant: never empty (see `new`)
    }

    /// Index of the first task.
    pub fn index(&self) -> u64 {
        self.tasks[0].index // invariant: never empty (see `new`)
    }

    /// The tasks, in index order.
    pub fn tasks(&self) -> &[DownloadTask] {
        &self.tasks
    }

    /// The JSON body: one spec, or an array of them for several tasks.
    pub fn body(&self) -> Vec<u8> {
        match self.tasks.as_slice() {
            [task] => task.body(),
            tasks => {
                let specs: Vec<&DownloadSpec> = tasks.iter().map(|t| &t.spec).collect();
                serde_json::to_vec(&specs).expect("DownloadSpecs always serialize") // invariant: plain data
            }
        }
    }

    /// The AMQP properties of this message, replying to `reply_to`.
    pub fn properties(&self, reply_to: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        if self.tasks.len() > 1 {
            headers.insert(
                header::TASKS.into(),
                AMQPValue::LongLongInt(self.tasks.len() as i64),
            );
        }
        task_properties(
            self.job(),
            self.index(),
            TaskKind::Download,
            CONTENT_TYPE_JSON,
            reply_to,
            headers,
        )
    }

    pub(super) fn decode(
        job: JobId,
        index: u64,
        headers: &FieldTable,
        body: &[u8],
    ) -> Result<Self> {
        let count = match headers.inner().get(header::TASKS) {
            None => 1,
            Some(_) => non_negative(int_header(headers, header::TASKS)?, header::TASKS)?,
        };
        if !(1..=MAX_TASKS_PER_MESSAGE).contains(&count) {
            return Err(Error::malformed(
                "task",
                format!(
                    "header {} must be 1 to {MAX_TASKS_PER_MESSAGE}",
                    header::TASKS
                ),
            ));
        }
        if index.checked_add(count).is_none() {
            return Err(Error::malformed("task", "task indices overflow"));
        }
        let invalid =
            |e: serde_json::Error| Error::malformed("task", format!("invalid download spec: {e}"));
        let specs: Vec<DownloadSpec> = if count == 1 {
            vec![serde_json::from_slice(body).map_err(invalid)?]
        } else {
            serde_json::from_slice(body).map_err(invalid)?
        };
        if specs.len() as u64 != count {
            return Err(Error::malformed(
                "task",
                format!(
                    "header {} says {count} tasks but the body has {} download specs",
                    header::TASKS,
                    specs.len()
                ),
            ));
        }
        let tasks = specs
            .into_iter()
            .zip(index..)
            .map(|(spec, index)| DownloadTask::new(job.clone(), index, spec))
            .collect::<Result<Vec<_>>>()?;
        Self::new(tasks)
    }
}

/// Whether a download succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadStatus {
    /// The file was fetched completely (and matched its checksum).
    Ok,
    /// It was not; `error` says why.
    Failed,
}

/// The closed set of download failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadErrorKind {
    /// The server answered with an error status.
    HttpStatus,
    /// The body is larger than `max_bytes`.
    TooLarge,
    /// The body's SHA-256 differs from the expected one.
    ChecksumMismatch,
    /// A connect, idle or total timeout passed.
    Timeout,
    /// The connection failed or broke.
    Connection,
    /// Too many redirects, a redirect loop, or a redirect to another scheme.
    Redirect,
    /// The worker could not write the file (shared directory).
    Storage,
    /// The worker's `--shared-dir` is not the producer's `--out-dir`: the
    /// job's marker file is not there. Nothing was downloaded; the whole
    /// job is misconfigured, not this one file.
    SharedDirMismatch,
}

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadError {
    /// What kind of failure.
    pub kind: DownloadErrorKind,
    /// One line for humans.
    pub message: String,
}

/// What a worker reports about one download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadReport {
    /// The URL as requested.
    pub url: String,
    /// `ok` or `failed`.
    pub status: DownloadStatus,
    /// The final HTTP status, if a response arrived.
    pub http_status: Option<u16>,
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// Bytes of the body (of the last attempt).
    pub bytes: u64,
    /// SHA-256 of the body, lowercase hex, when complete.
    pub sha256: Option<String>,
    /// The response's `Content-Type`.
    pub content_type: Option<String>,
    /// [`FileRoute::Broker`]: the attempt whose body chunks form the file.
    pub attempt: Option<String>,
    /// [`FileRoute::Shared`]: the complete file's path relative to the
    /// shared directory, `.warren-tmp/<job>-<task>-<tag>` (the tag letters
    /// and digits); the producer moves it under its final name.
    pub path: Option<String>,
    /// Why it failed, when it did.
    pub error: Option<DownloadError>,
}

/// The header part of one body chunk message ([`FileRoute::Broker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyChunk {
    /// The job.
    pub job: JobId,
    /// The download task.
    pub task: u64,
    /// Which attempt of the download this belongs to; a new attempt starts
    /// the file over.
    pub attempt: String,
    /// Byte offset of this chunk in the file.
    pub offset: u64,
}

impl BodyChunk {
    /// The AMQP properties of the chunk message.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            header::VERSION.into(),
            AMQPValue::LongLongInt(PROTOCOL_VERSION),
        );
        headers.insert(header::JOB.into(), long_string(self.job.as_str()));
        headers.insert(
            header::TASK.into(),
            AMQPValue::LongLongInt(self.task as i64),
        );
        headers.insert(header::ATTEMPT.into(), long_string(&self.attempt));
        headers.insert(
            header::OFFSET.into(),
            AMQPValue::LongLongInt(self.offset as i64),
        );
        BasicProperties::default()
            .with_content_type(CONTENT_TYPE_BINARY.into())
            .with_delivery_mode(TRANSIENT)
            .with_correlation_id(self.job.as_str().into())
            .with_headers(headers)
    }

    /// Recognizes a chunk message by its `warren-attempt` header; `None`
    /// for other messages.
    pub fn of(properties: &BasicProperties) -> Option<Result<BodyChunk>> {
        let headers = properties.headers().as_ref()?;
        if !headers.contains_key(header::ATTEMPT) {
            return None;
        }
        let parse = || -> Result<BodyChunk> {
            Ok(BodyChunk {
                job: JobId::parse(&string_header(headers, header::JOB)?)?,
                task: non_negative(int_header(headers, header::TASK)?, header::TASK)?,
                attempt: string_header(headers, header::ATTEMPT)?,
                offset: non_negative(int_header(headers, header::OFFSET)?, header::OFFSET)?,
            })
        };
        Some(parse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Outcome, Task, TaskResult};

    fn spec() -> DownloadSpec {
        DownloadSpec {
            url: "https://example.com/cat.jpg".into(),
            name: "cats/cat.jpg".into(),
            sha256: None,
            delivery: FileRoute::Broker,
            limits: DownloadLimits::default(),
            fsync: false,
            marker: None,
        }
    }

    const SPEC_JSON: &str = r#"{"url":"https://example.com/cat.jpg","name":"cats/cat.jpg","delivery":"broker","limits":{"max_bytes":2147483648,"connect_timeout_s":10.0,"idle_timeout_s":30.0,"total_timeout_s":600.0,"max_attempts":4,"chunk_bytes":1048576}}"#;

    fn batch(first: u64, count: u64) -> DownloadBatch {
        let job = JobId::parse("j1").unwrap();
        let tasks = (first..first + count)
            .map(|index| DownloadTask::new(job.clone(), index, spec()).unwrap())
            .collect();
        DownloadBatch::new(tasks).unwrap()
    }

    fn tasks_header(props: &BasicProperties) -> Option<&AMQPValue> {
        props.headers().as_ref()?.inner().get(header::TASKS)
    }

    #[test]
    fn download_task_round_trips_and_its_json_is_pinned() {
        let single = batch(4, 1);
        assert_eq!(String::from_utf8(single.body()).unwrap(), SPEC_JSON);
        let props = single.properties("q");
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(tasks_header(&props), None, "one task: no warren-tasks");
        let decoded = Task::decode(&props, &single.body()).unwrap();
        assert_eq!(decoded, Task::Download(Box::new(single)));
    }

    #[test]
    fn a_shared_task_carries_fsync_and_the_job_marker_and_its_json_is_pinned() {
        let job = JobId::parse("j1").unwrap();
        let shared = DownloadSpec {
            delivery: FileRoute::Shared,
            fsync: true,
            marker: Some(marker_name(&job)),
            ..spec()
        };
        let task = DownloadTask::new(job.clone(), 0, shared).unwrap();
        assert_eq!(
            String::from_utf8(task.body()).unwrap(),
            r#"{"url":"https://example.com/cat.jpg","name":"cats/cat.jpg","delivery":"shared","limits":{"max_bytes":2147483648,"connect_timeout_s":10.0,"idle_timeout_s":30.0,"total_timeout_s":600.0,"max_attempts":4,"chunk_bytes":1048576},"fsync":true,"marker":"j1-marker"}"#
        );
        let batch = DownloadBatch::new(vec![task]).unwrap();
        let decoded = Task::decode(&batch.properties("q"), &batch.body()).unwrap();
        assert_eq!(decoded, Task::Download(Box::new(batch)));
        // Absent keys mean no per-file sync and no marker (older producers).
        let old: DownloadSpec = serde_json::from_str(SPEC_JSON).unwrap();
        assert_eq!((old.fsync, old.marker), (false, None));
        // The marker is joined to a directory: only the job's own name.
        for bad in ["../x", "j2-marker", "j1-marker/../../etc"] {
            let hostile = DownloadSpec {
                marker: Some(bad.into()),
                ..spec()
            };
            let err = DownloadTask::new(job.clone(), 0, hostile).unwrap_err();
            assert!(err.is_poison(), "{bad}");
            assert!(err.to_string().contains("marker"), "{err}");
        }
    }

    #[test]
    fn batched_download_tasks_travel_as_an_array() {
        let three = batch(7, 3);
        assert_eq!(
            String::from_utf8(three.body()).unwrap(),
            format!("[{SPEC_JSON},{SPEC_JSON},{SPEC_JSON}]")
        );
        let props = three.properties("q");
        assert_eq!(tasks_header(&props), Some(&AMQPValue::LongLongInt(3)));
        let Task::Download(decoded) = Task::decode(&props, &three.body()).unwrap() else {
            panic!("a download message");
        };
        assert_eq!(decoded.index(), 7);
        let indices: Vec<u64> = decoded.tasks().iter().map(|t| t.index).collect();
        assert_eq!(indices, [7, 8, 9]);
        assert_eq!(*decoded, three);
    }

    #[test]
    fn a_batch_whose_header_and_body_disagree_is_malformed() {
        let three = batch(0, 3);
        let mut props = three.properties("q");
        let mut headers = props.headers().clone().unwrap();
        headers.insert(header::TASKS.into(), AMQPValue::LongLongInt(2));
        props = props.with_headers(headers);
        let err = Task::decode(&props, &three.body()).unwrap_err();
        assert!(err.is_poison());
        assert!(
            err.to_string().contains("says 2 tasks but the body has 3"),
            "{err}"
        );
        // One task announced, an array sent.
        let err = Task::decode(&batch(0, 1).properties("q"), &three.body()).unwrap_err();
        assert!(err.to_string().contains("invalid download spec"), "{err}");
        // Batches are non-empty runs of consecutive tasks of one job.
        assert!(DownloadBatch::new(Vec::new()).is_err());
        let job = JobId::parse("j1").unwrap();
        let gap = vec![
            DownloadTask::new(job.clone(), 0, spec()).unwrap(),
            DownloadTask::new(job, 2, spec()).unwrap(),
        ];
        assert!(DownloadBatch::new(gap).is_err());
    }

    #[test]
    fn download_bodies_with_unknown_keys_are_malformed() {
        let misspelt = SPEC_JSON.replace(r#""name""#, r#""sha265":"00","name""#);
        let extra_limit =
            SPEC_JSON.replace(r#""max_attempts""#, r#""max_retries":1,"max_attempts""#);
        for body in [misspelt, extra_limit] {
            let err = serde_json::from_str::<DownloadSpec>(&body).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
        let batch = DownloadBatch::new(vec![
            DownloadTask::new(JobId::parse("j1").unwrap(), 0, spec()).unwrap(),
        ])
        .unwrap();
        let body = SPEC_JSON.replace(r#""name""#, r#""sha265":"00","name""#);
        let err = Task::decode(&batch.properties("q"), body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn uppercase_sha256_on_the_wire_is_accepted_as_lowercase() {
        let upper = "AB".repeat(32);
        let task = DownloadTask::new(
            JobId::parse("j1").unwrap(),
            0,
            DownloadSpec {
                sha256: Some(upper.clone()),
                ..spec()
            },
        )
        .unwrap();
        assert_eq!(task.spec.sha256, Some(upper.to_ascii_lowercase()));
        assert_eq!(check_sha256(&"aB".repeat(32)), Ok("ab".repeat(32)));
    }

    #[test]
    fn hostile_download_tasks_are_malformed() {
        let cases = [
            (
                DownloadSpec {
                    name: "../../etc/passwd".into(),
                    ..spec()
                },
                "unsafe file name",
            ),
            (
                DownloadSpec {
                    name: "/abs".into(),
                    ..spec()
                },
                "absolute path",
            ),
            (
                DownloadSpec {
                    url: "file:///etc/passwd".into(),
                    ..spec()
                },
                "only http and https",
            ),
            (
                DownloadSpec {
                    sha256: Some("abc".into()),
                    ..spec()
                },
                "not a SHA-256",
            ),
            (
                DownloadSpec {
                    limits: DownloadLimits {
                        total_timeout_s: 1e300,
                        ..DownloadLimits::default()
                    },
                    ..spec()
                },
                "total_timeout_s must be more than 0 and at most 86400 seconds",
            ),
            (
                DownloadSpec {
                    limits: DownloadLimits {
                        connect_timeout_s: 86400.5,
                        ..DownloadLimits::default()
                    },
                    ..spec()
                },
                "connect_timeout_s must be",
            ),
            (
                DownloadSpec {
                    limits: DownloadLimits {
                        idle_timeout_s: 0.0,
                        ..DownloadLimits::default()
                    },
                    ..spec()
                },
                "idle_timeout_s must be",
            ),
            (
                DownloadSpec {
                    limits: DownloadLimits {
                        max_attempts: 0,
                        ..DownloadLimits::default()
                    },
                    ..spec()
                },
                "max_attempts",
            ),
        ];
        let decode = |body: &[u8]| {
            DownloadBatch::decode(JobId::parse("j").unwrap(), 0, &FieldTable::default(), body)
        };
        for (spec, expected) in cases {
            let body = serde_json::to_vec(&spec).unwrap();
            let err = decode(&body).unwrap_err();
            assert!(err.is_poison());
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
        let err = decode(b"{").unwrap_err();
        assert!(err.to_string().contains("invalid download spec"));
    }

    #[test]
    fn download_report_json_is_pinned() {
        let result = TaskResult {
            version: 1,
            job_id: JobId::parse("j1").unwrap(),
            task: Some(2),
            worker: "w".into(),
            elapsed_s: 1.5,
            outcome: Outcome::Download(vec![DownloadReport {
                url: "http://h/x".into(),
                status: DownloadStatus::Failed,
                http_status: Some(404),
                attempts: 1,
                bytes: 0,
                sha256: None,
                content_type: None,
                attempt: None,
                path: None,
                error: Some(DownloadError {
                    kind: DownloadErrorKind::HttpStatus,
                    message: "HTTP 404 Not Found".into(),
                }),
            }]),
        };
        let json = String::from_utf8(result.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"job_id":"j1","task":2,"worker":"w","elapsed_s":1.5,"download":[{"url":"http://h/x","status":"failed","http_status":404,"attempts":1,"bytes":0,"sha256":null,"content_type":null,"attempt":null,"path":null,"error":{"kind":"http_status","message":"HTTP 404 Not Found"}}]}"#
        );
        assert_eq!(TaskResult::decode(json.as_bytes()).unwrap(), result);
    }

    #[test]
    fn body_chunks_are_recognized() {
        let chunk = BodyChunk {
            job: JobId::parse("j1").unwrap(),
            task: 3,
            attempt: "w-1".into(),
            offset: 1 << 20,
        };
        let props = chunk.properties();
        assert_eq!(BodyChunk::of(&props).unwrap().unwrap(), chunk);
        assert!(BodyChunk::of(&BasicProperties::default()).is_none());
    }
}
