//! Download tasks: fetch each URL of a message with retries, stream the
//! body to its destination, and report what happened to each.
//!
//! The downloads of one message run concurrently, and every download of
//! the worker shares `--concurrency` fetch slots. A slot is held only while
//! fetching: not while backing off before a retry, and not while a file is
//! synced to disk or its last chunks confirmed, so a slow disk delays its
//! own file without idling the network.
//!
//! Each attempt streams into a fresh sink: back through the broker as body
//! chunks (a new attempt id tells the producer to start the file over), or
//! into a temporary file in the shared directory, left there complete
//! (synced too under `--fsync`) for the producer to verify and move under its final name. Memory
//! stays bounded by one chunk plus the confirm window, whatever the file
//! size.
//!
//! Transient failures (connection errors, timeouts, 408, 429, 5xx) are
//! retried with exponential backoff and jitter, honouring `Retry-After`;
//! permanent ones (other statuses, too large, checksum mismatch, redirect
//! trouble) are reported at once.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use warren::broker::{PendingConfirm, Routed};
use warren::filename::TEMP_DIR;
use warren::protocol::{
    BodyChunk, DownloadBatch, DownloadError, DownloadErrorKind, DownloadLimits, DownloadReport,
    DownloadStatus, DownloadTask, FileRoute, Outcome,
};

use super::TaskContext;

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;
/// Body chunk confirms outstanding at once per download.
const CONFIRM_WINDOW: usize = 8;
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A `Retry-After` longer than this is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// HTTP clients, one per distinct pair of connect and idle timeouts (in
/// practice one per job), so connections are pooled across tasks.
#[derive(Debug, Default)]
pub(crate) struct HttpClients {
    clients: Mutex<HashMap<(u64, u64), reqwest::Client>>,
}

impl HttpClients {
    fn client(&self, limits: &DownloadLimits) -> Result<reqwest::Client, String> {
        let connect = seconds(limits.connect_timeout_s)?;
        let idle = seconds(limits.idle_timeout_s)?;
        let key = (connect.as_millis() as u64, idle.as_millis() as u64);
        // A poisoned lock still holds a consistent map; ignore the poison.
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .read_timeout(idle)
            .redirect(redirect_policy())
            .user_agent(concat!("warren-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// A timeout from a task as a `Duration`. Decoding already bounds them
/// (`DownloadLimits::MAX_TIMEOUT`); this refuses instead of panicking
/// should an unchecked value ever get here.
fn seconds(value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| *d <= DownloadLimits::MAX_TIMEOUT)
        .ok_or_else(|| format!("unusable timeout of {value} seconds"))
}

/// At most [`MAX_REDIRECTS`] redirects, no loops, http and https only.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            let error = format!("more than {MAX_REDIRECTS} redirects");
            attempt.error(error)
        } else if attempt.previous().contains(attempt.url()) {
            let error = format!("redirect loop back to {}", attempt.url());
            attempt.error(error)
        } else if !matches!(attempt.url().scheme(), "http" | "https") {
            let error = format!("redirect to a non-HTTP URL {}", attempt.url());
            attempt.error(error)
        } else {
            attempt.follow()
        }
    })
}

/// Runs every download of a message to its report, concurrently.
pub(crate) async fn run(context: &TaskContext, batch: &DownloadBatch) -> Outcome {
    let downloads = batch.tasks().iter().map(|task| download(context, task));
    Outcome::Download(futures_util::future::join_all(downloads).await)
}

/// What one failed attempt tells the retry loop.
#[derive(Debug)]
struct Failure {
    kind: DownloadErrorKind,
    message: String,
    http_status: Option<u16>,
    transient: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn permanent(kind: DownloadErrorKind, message: String) -> Self {
        Failure {
            kind,
            message,
            http_status: None,
            transient: false,
            retry_after: None,
        }
    }
}

/// A complete body.
struct Fetched {
    http_status: u16,
    bytes: u64,
    sha256: String,
    content_type: Option<String>,
}

async fn download(context: &TaskContext, task: &DownloadTask) -> DownloadReport {
    let limits = task.spec.limits;
    let mut report = DownloadReport {
        url: task.spec.url.clone(),
        status: DownloadStatus::Failed,
        http_status: None,
        attempts: 0,
        bytes: 0,
        sha256: None,
        content_type: None,
        attempt: None,
        path: None,
        error: None,
    };
    let failed = |mut report: DownloadReport, failure: Failure| {
        report.http_status = failure.http_status.or(report.http_status);
        report.error = Some(DownloadError {
            kind: failure.kind,
            message: failure.message,
        });
        report
    };
    let client = match context.http.client(&limits) {
        Ok(client) => client,
        Err(message) => {
            return failed(
                report,
                Failure::permanent(DownloadErrorKind::Connection, message),
            );
        }
    };
    loop {
        report.attempts += 1;
        let attempt_id = format!("{}-{}", task.index, fastrand::u64(..));
        // Named on failures too: the producer ignores the failure of an
        // attempt that a newer one (a redelivery) replaced.
        if task.spec.delivery == FileRoute::Broker {
            report.attempt = Some(attempt_id.clone());
        }
        let slot = context
            .downloads
            .acquire()
            .await
            .expect("the download semaphore is never closed"); // invariant: nobody calls close()
        let mut sink = match Sink::open(context, task, &attempt_id).await {
            Ok(sink) => sink,
            Err(failure) => return failed(report, failure),
        };
        let outcome = match fetch(&client, task, &limits, &mut sink).await {
            Ok(fetched) => match &task.spec.sha256 {
                Some(expected) if *expected != fetched.sha256 => Err(Failure {
                    http_status: Some(fetched.http_status),
                    ..Failure::permanent(
                        DownloadErrorKind::ChecksumMismatch,
                        format!(
                            "checksum mismatch: expected sha256 {expected}, got {} ({} bytes)",
                            fetched.sha256, fetched.bytes
                        ),
                    )
                }),
                _ => Ok(fetched),
            },
            Err(failure) => Err(failure),
        };
        drop(slot);
        match outcome {
            Ok(fetched) => {
                report.http_status = Some(fetched.http_status);
                report.bytes = fetched.bytes;
                report.content_type = fetched.content_type;
                match sink.finish().await {
                    Ok(Finished::Relayed) => report.attempt = Some(attempt_id),
                    Ok(Finished::Stored(path)) => report.path = Some(path),
                    Err(failure) => return failed(report, failure),
                }
                report.sha256 = Some(fetched.sha256);
                report.status = DownloadStatus::Ok;
                return report;
            }
            Err(failure) => {
                sink.abort();
                if !failure.transient || report.attempts >= limits.max_attempts {
                    if failure.transient && report.attempts > 1 {
                        let message =
                            format!("{} (after {} attempts)", failure.message, report.attempts);
                        return failed(report, Failure { message, ..failure });
                    }
                    return failed(report, failure);
                }
                let wait = backoff(report.attempts, failure.retry_after);
                tracing::debug!(
                    attempt = report.attempts,
                    error = %failure.message,
                    "retrying in {:.1}s",
                    wait.as_secs_f64()
                );
                report.http_status = failure.http_status;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Removes the files a message's downloads stored in the shared
/// directory's temporary area, once their reports can no longer reach the
/// producer.
pub(crate) fn discard_stored(context: &TaskContext, outcome: &Outcome) {
    let (Outcome::Download(reports), Some(shared)) = (outcome, &context.shared_dir) else {
        return;
    };
    for path in reports.iter().filter_map(|report| report.path.as_ref()) {
        // Our own path, `.warren-tmp/<job>-<attempt>`, made by FileSink.
        let _ = std::fs::remove_file(shared.join(path));
    }
}

/// Exponential backoff with jitter in [d/2, d); a `Retry-After` from the
/// server replaces it.
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(MAX_RETRY_AFTER);
    }
    let exponential = BASE_BACKOFF
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(MAX_BACKOFF);
    exponential.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// One attempt: request, check the status and size, stream the body.
async fn fetch(
    client: &reqwest::Client,
    task: &DownloadTask,
    limits: &DownloadLimits,
    sink: &mut Sink<'_>,
) -> Result<Fetched, Failure> {
    let deadline = seconds(limits.total_timeout_s)
        .ok()
        .and_then(|total| Instant::now().checked_add(total))
        .ok_or_else(|| {
            Failure::permanent(
                DownloadErrorKind::Timeout,
                format!("unusable total timeout of {}s", limits.total_timeout_s),
            )
        })?;
    let total_timeout = || Failure {
        transient: true,
        ..Failure::permanent(
            DownloadErrorKind::Timeout,
            format!(
                "not complete within the total timeout of {}s",
                limits.total_timeout_s
            ),
        )
    };
    let mut response =
        match tokio::time::timeout_at(deadline, client.get(task.url.clone()).send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(classify(&e, limits, 0)),
            Err(_) => return Err(total_timeout()),
        };
    let status = response.status();
    if !status.is_success() {
        return Err(status_failure(status, response.headers()));
    }
    if let Some(announced) = response.content_length()
        && announced > limits.max_bytes
    {
        return Err(Failure {
            http_status: Some(status.as_u16()),
            ..Failure::permanent(
                DownloadErrorKind::TooLarge,
                format!(
                    "the body is {announced} bytes, over the limit of {} bytes; not downloaded",
                    limits.max_bytes
                ),
            )
        });
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(classify(&e, limits, bytes)),
            Err(_) => return Err(total_timeout()),
        };
        bytes += chunk.len() as u64;
        if bytes > limits.max_bytes {
            return Err(Failure {
                http_status: Some(status.as_u16()),
                ..Failure::permanent(
                    DownloadErrorKind::TooLarge,
                    format!(
                        "the body exceeds the limit of {} bytes; cut off and not written",
                        limits.max_bytes
                    ),
                )
            });
        }
        hasher.update(&chunk);
        sink.write(chunk).await?;
    }
    Ok(Fetched {
        http_status: status.as_u16(),
        bytes,
        sha256: hex::encode(hasher.finalize()),
        content_type,
    })
}

/// 408, 429 and 5xx are worth retrying; other error statuses are not.
fn status_failure(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Failure {
    if let Some(failure) = unfollowed_redirect(status, headers) {
        return failure;
    }
    let transient = matches!(status.as_u16(), 408 | 429) || status.is_server_error();
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    Failure {
        kind: DownloadErrorKind::HttpStatus,
        message: format!("HTTP {status}"),
        http_status: Some(status.as_u16()),
        transient,
        retry_after: if transient { retry_after } else { None },
    }
}

/// A redirect that reaches us unfollowed: the client hands back a redirect
/// to a scheme it cannot request (`file:`, `ftp:`) as the response itself,
/// without asking [`redirect_policy`]. Named as a redirect, not as a bare
/// "HTTP 302". Only the scheme is shown: the rest may name local files.
fn unfollowed_redirect(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> Option<Failure> {
    if !status.is_redirection() {
        return None;
    }
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let scheme = reqwest::Url::parse(location).ok()?.scheme().to_owned();
    if matches!(scheme.as_str(), "http" | "https") {
        return None;
    }
    Some(Failure {
        http_status: Some(status.as_u16()),
        ..Failure::permanent(
            DownloadErrorKind::Redirect,
            format!("HTTP {status}: redirect to a {scheme}: URL; only http and https are followed"),
        )
    })
}

/// `Retry-After` is either delay-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Sorts a client error into the closed set of failure kinds.
fn classify(error: &reqwest::Error, limits: &DownloadLimits, received: u64) -> Failure {
    let detail = warren::display_chain(error);
    let (kind, transient, message) = if error.is_redirect() {
        (DownloadErrorKind::Redirect, false, detail)
    } else if error.is_timeout() {
        let message = if error.is_connect() {
            format!("could not connect within {}s", limits.connect_timeout_s)
        } else if received > 0 {
            format!(
                "no data for {}s after {received} bytes",
                limits.idle_timeout_s
            )
        } else {
            format!("no response within {}s", limits.idle_timeout_s)
        };
        (DownloadErrorKind::Timeout, true, message)
    } else if error.is_builder() {
        (DownloadErrorKind::Connection, false, detail)
    } else {
        let message = if received > 0 {
            format!("the connection broke after {received} bytes: {detail}")
        } else {
            detail
        };
        (DownloadErrorKind::Connection, true, message)
    };
    Failure {
        kind,
        message,
        http_status: None,
        transient,
        retry_after: None,
    }
}

/// Where an attempt's body goes.
enum Sink<'a> {
    Relay(RelaySink<'a>),
    File(FileSink),
}

enum Finished {
    Relayed,
    /// The complete file's path relative to the shared directory (in its
    /// temporary area).
    Stored(String),
}

impl<'a> Sink<'a> {
    async fn open(
        context: &'a TaskContext,
        task: &DownloadTask,
        attempt: &str,
    ) -> Result<Sink<'a>, Failure> {
        match task.spec.delivery {
            FileRoute::Broker => Ok(Sink::Relay(RelaySink {
                context,
                reply_queue: context.topology.reply_queue(&task.job),
                chunk: BodyChunk {
                    job: task.job.clone(),
                    task: task.index,
                    attempt: attempt.to_owned(),
                    offset: 0,
                },
                buffer: Vec::with_capacity(task.spec.limits.chunk_bytes as usize),
                chunk_bytes: task.spec.limits.chunk_bytes as usize,
                pending: VecDeque::with_capacity(CONFIRM_WINDOW),
            })),
            FileRoute::Shared => {
                // Permanent, not requeued: requeuing would bounce the task
                // between workers (and back to this one) until the delivery
                // limit dead-letters it, and the fix is in the deployment.
                let Some(shared) = &context.shared_dir else {
                    return Err(Failure::permanent(
                        DownloadErrorKind::Storage,
                        format!(
                            "worker {} has no --shared-dir, so it cannot store files for a --shared \
                             job: start every worker of the queue with --shared-dir on the storage \
                             of the producer's --out-dir, or download without --shared",
                            context.worker
                        ),
                    ));
                };
                check_marker(context, shared, task).await?;
                FileSink::create(shared, task, attempt)
                    .await
                    .map(Sink::File)
            }
        }
    }

    async fn write(&mut self, data: bytes::Bytes) -> Result<(), Failure> {
        match self {
            Sink::Relay(relay) => relay.write(&data).await,
            Sink::File(file) => file.write(data).await,
        }
    }

    async fn finish(self) -> Result<Finished, Failure> {
        match self {
            Sink::Relay(relay) => relay.finish().await.map(|()| Finished::Relayed),
            Sink::File(file) => file.finish().await.map(Finished::Stored),
        }
    }

    /// Discards a failed attempt (a file sink removes its temporary file
    /// when dropped).
    fn abort(self) {
        drop(self);
    }
}

/// Checks, before anything is fetched, that this worker's shared
/// directory is the producer's output directory: the job's marker file,
/// which the producer made there before publishing, must be in its
/// temporary area. Otherwise every download would land where the producer
/// never looks.
async fn check_marker(
    context: &TaskContext,
    shared: &Path,
    task: &DownloadTask,
) -> Result<(), Failure> {
    // A producer older than the marker sends none: nothing to check.
    let Some(marker) = &task.spec.marker else {
        return Ok(());
    };
    let path = shared.join(TEMP_DIR).join(marker);
    match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) if meta.is_file() => Ok(()),
        found => {
            let why = match found {
                Ok(_) => "not a regular file".to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "not found".to_owned(),
                Err(e) => e.to_string(),
            };
            Err(Failure::permanent(
                DownloadErrorKind::SharedDirMismatch,
                format!(
                    "worker {} cannot see this job's marker {} ({why}): its --shared-dir {} is \
                     not the storage of the producer's --out-dir; nothing was downloaded",
                    context.worker,
                    path.display(),
                    shared.display()
                ),
            ))
        }
    }
}

/// Sends the body through the broker in chunk messages, keeping at most
/// [`CONFIRM_WINDOW`] confirms outstanding.
struct RelaySink<'a> {
    context: &'a TaskContext,
    reply_queue: String,
    chunk: BodyChunk,
    buffer: Vec<u8>,
    chunk_bytes: usize,
    pending: VecDeque<PendingConfirm>,
}

impl RelaySink<'_> {
    async fn write(&mut self, mut data: &[u8]) -> Result<(), Failure> {
        while !data.is_empty() {
            let take = (self.chunk_bytes - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == self.chunk_bytes {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        let pending = self
            .context
            .publisher
            .publish(&self.reply_queue, &self.buffer, self.chunk.properties())
            .await
            .map_err(relay_failure)?;
        self.chunk.offset += self.buffer.len() as u64;
        self.buffer.clear();
        self.pending.push_back(pending);
        while self.pending.len() > CONFIRM_WINDOW {
            self.confirm_oldest().await?;
        }
        Ok(())
    }

    async fn confirm_oldest(&mut self) -> Result<(), Failure> {
        let Some(pending) = self.pending.pop_front() else {
            return Ok(());
        };
        match pending.wait().await.map_err(relay_failure)? {
            Routed::Queued => Ok(()),
            Routed::Returned => Err(Failure::permanent(
                DownloadErrorKind::Storage,
                "the job ended while its file was being sent".into(),
            )),
        }
    }

    /// Sends what is left and waits until every chunk is in the reply
    /// queue, so the result that follows is read after all of them.
    async fn finish(mut self) -> Result<(), Failure> {
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        while !self.pending.is_empty() {
            self.confirm_oldest().await?;
        }
        Ok(())
    }
}

/// Not retried here: a broken channel is the session's problem (the final
/// result cannot go out either, so the task is redelivered after the worker
/// reconnects), and a refused chunk would be refused again.
fn relay_failure(error: warren::Error) -> Failure {
    Failure {
        ..Failure::permanent(
            DownloadErrorKind::Storage,
            format!(
                "cannot send the file through the broker: {}",
                warren::display_chain(&error)
            ),
        )
    }
}

/// Writes the body to a temporary file in the shared directory's
/// temporary area, where it stays, complete (and synced under `--fsync`),
/// for the producer:
/// the producer verifies it and moves it under its final name, so nothing
/// a worker writes ever sits under a final name unverified, and workers
/// never create directories (or follow links) among the final names.
///
/// The writing happens on a blocking thread fed through a small bounded
/// channel: a slow disk (or a network filesystem under a shared volume)
/// then slows this download down instead of stalling the async runtime
/// that all the worker's tasks share.
struct FileSink {
    temp: PathBuf,
    /// `temp` relative to the shared directory, as reported.
    relative: String,
    /// Set once the file is complete: it is the producer's from then on.
    keep: bool,
    chunks: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    writer: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Body pieces queued for the writer thread of one download.
const WRITE_QUEUE: usize = 16;

/// Creates the temporary area if needed and checks that it is a real
/// directory: through a symbolic link, files would land elsewhere.
fn make_temp_dir(temp_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(temp_dir)?;
    let meta = std::fs::symlink_metadata(temp_dir)?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{} is not a directory (a symbolic link?)",
            temp_dir.display()
        )))
    }
}

impl FileSink {
    async fn create(
        shared: &Path,
        task: &DownloadTask,
        attempt: &str,
    ) -> Result<FileSink, Failure> {
        let temp_dir = shared.join(TEMP_DIR);
        // Unique per attempt (the attempt id starts with the task index),
        // so two workers holding the same task never share a file.
        let file_name = format!("{}-{attempt}", task.job);
        let temp = temp_dir.join(&file_name);
        let (chunks, mut received) = tokio::sync::mpsc::channel::<bytes::Bytes>(WRITE_QUEUE);
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let path = temp.clone();
        let fsync = task.spec.fsync;
        let writer = tokio::task::spawn_blocking(move || {
            // create_new: never opens (or follows) something already there.
            let open = || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
            };
            let create = || {
                make_temp_dir(&temp_dir)?;
                open().or_else(|e| {
                    // A producer finishing another job may have just
                    // removed the (empty) temporary directory.
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(e);
                    }
                    make_temp_dir(&temp_dir)?;
                    open()
                })
            };
            let file = match create() {
                Ok(file) => {
                    let _ = opened_tx.send(Ok(()));
                    file
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return Ok(());
                }
            };
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            while let Some(chunk) = received.blocking_recv() {
                std::io::Write::write_all(&mut out, &chunk)?;
            }
            let file = out
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            // `--fsync`: synced before it is reported, so the file is on
            // disk when the producer hears of it. Otherwise closing it
            // hands the data to the file system (on NFS, to the server),
            // and the producer's one `syncfs` at the end of the job makes
            // it durable with all the others.
            if fsync { file.sync_all() } else { Ok(()) }
        });
        match opened.await {
            Ok(Ok(())) => Ok(FileSink {
                temp,
                relative: format!("{TEMP_DIR}/{file_name}"),
                keep: false,
                chunks: Some(chunks),
                writer: Some(writer),
            }),
            Ok(Err(e)) => Err(storage_failure(
                &format!("cannot create {}", temp.display()),
                &e,
            )),
            Err(_) => Err(Failure::permanent(
                DownloadErrorKind::Storage,
                "the file writer thread failed".into(),
            )),
        }
    }

    async fn write(&mut self, data: bytes::Bytes) -> Result<(), Failure> {
        let sent = match &self.chunks {
            Some(chunks) => chunks.send(data).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped early: its error says why.
        Err(self.writer_error().await)
    }

    async fn writer_error(&mut self) -> Failure {
        self.chunks = None;
        let reason = match self.writer.take() {
            Some(writer) => match writer.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "the writer stopped".into(),
                Err(e) => e.to_string(),
            },
            None => "the writer stopped".into(),
        };
        Failure::permanent(
            DownloadErrorKind::Storage,
            format!("cannot write {}: {reason}", self.temp.display()),
        )
    }

    /// Waits for the writer (flush, and sync under `--fsync`) and hands the file over:
    /// returns its path relative to the shared directory.
    async fn finish(mut self) -> Result<String, Failure> {
        self.chunks = None;
        let written = match self.writer.take() {
            Some(writer) => writer.await,
            None => Ok(Ok(())),
        };
        match written {
            Ok(Ok(())) => {
                self.keep = true;
                Ok(std::mem::take(&mut self.relative))
            }
            Ok(Err(e)) => Err(storage_failure(
                &format!("cannot write {}", self.temp.display()),
                &e,
            )),
            Err(e) => Err(Failure::permanent(
                DownloadErrorKind::Storage,
                format!("the file writer thread failed: {e}"),
            )),
        }
    }
}

impl Drop for FileSink {
    /// An attempt that failed or was abandoned leaves no temporary file; a
    /// finished one is left for the producer. (A writer still running sees
    /// its channel close and stops by itself.)
    fn drop(&mut self) {
        self.chunks = None;
        if !self.keep {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

fn storage_failure(what: &str, error: &std::io::Error) -> Failure {
    Failure::permanent(DownloadErrorKind::Storage, format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(
            parsed <= Duration::from_secs(30) && parsed >= Duration::from_secs(28),
            "{parsed:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..10 {
            let wait = backoff(attempt, None);
            let ceiling = BASE_BACKOFF
                .saturating_mul(1 << (attempt - 1))
                .min(MAX_BACKOFF);
            assert!(
                wait <= ceiling && wait >= ceiling / 2,
                "attempt {attempt}: {wait:?}"
            );
        }
        assert_eq!(
            backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(backoff(1, Some(Duration::from_secs(9999))), MAX_RETRY_AFTER);
    }

    #[test]
    fn timeouts_out_of_range_are_refused_not_panicked_on() {
        assert_eq!(seconds(1.5), Ok(Duration::from_millis(1500)));
        for bad in [1e300, f64::INFINITY, f64::NAN, -1.0, 86_401.0] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_are_sorted_into_transient_and_permanent() {
        let headers = reqwest::header::HeaderMap::new();
        for (code, transient) in [
            (404, false),
            (403, false),
            (408, true),
            (429, true),
            (500, true),
            (503, true),
            (400, false),
        ] {
            let failure = status_failure(StatusCode::from_u16(code).unwrap(), &headers);
            assert_eq!(failure.transient, transient, "{code}");
            assert_eq!(failure.http_status, Some(code));
        }
        let failure = status_failure(StatusCode::NOT_FOUND, &headers);
        assert_eq!(failure.message, "HTTP 404 Not Found");
    }

    /// Issue 12: a redirect to `file://` failed as a bare "HTTP 302". The
    /// real client against a real server on 127.0.0.1: the client returns
    /// such a redirect unfollowed, and the failure must say why.
    #[tokio::test]
    async fn a_redirect_to_a_file_url_says_so_issue_12() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let response = "HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\n\
                            Content-Length: 0\r\nConnection: close\r\n\r\n";
            stream.write_all(response.as_bytes()).unwrap();
        });
        let limits = DownloadLimits::default();
        let client = HttpClients::default().client(&limits).unwrap();
        let response = client
            .get(format!("http://{address}/file"))
            .send()
            .await
            .unwrap();
        server.join().unwrap();
        let failure = status_failure(response.status(), response.headers());
        assert_eq!(
            failure.message,
            "HTTP 302 Found: redirect to a file: URL; only http and https are followed"
        );
        assert_eq!(failure.kind, DownloadErrorKind::Redirect);
        assert!(!failure.transient);
        assert!(!failure.message.contains("passwd"));
    }
}
