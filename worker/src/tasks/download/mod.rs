//! Download tasks: fetch each URL of a message with retries, stream the
//! body to its destination, and report what happened to each.
//!
//! This module runs a message's downloads and holds the retry loop; the
//! rest, in the order an attempt goes:
//! - `fetch.rs`: the HTTP clients, redirects, one request and its body,
//!   `Retry-After`, and sorting failures into transient and permanent;
//! - `sink.rs`: where the body goes, `relay.rs` (back through the broker)
//!   or `shared.rs` (a file in the shared directory);
//! - `failure.rs`: what a failed attempt tells the retry loop.
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
//! (synced too under `--fsync`) for the producer to verify and move under
//! its final name. Memory stays bounded by one chunk plus the confirm
//! window, whatever the file size.
//!
//! Transient failures (connection errors, timeouts, 408, 429, 5xx) are
//! retried with exponential backoff and equal jitter, honouring
//! `Retry-After`; permanent ones (other statuses, too large, checksum
//! mismatch, redirect trouble) are reported at once.

mod failure;
mod fetch;
mod relay;
mod shared;
mod sink;

use std::time::Duration;

use warren::protocol::{
    DownloadBatch, DownloadError, DownloadErrorKind, DownloadReport, DownloadStatus, DownloadTask,
    FileRoute, Outcome,
};
use warren::{ExponentialBackoff, Jitter};

pub(crate) use fetch::HttpClients;

use super::TaskContext;
use failure::Failure;
use fetch::{Fetched, fetch};
use sink::{Finished, Sink};

/// First retry delay; doubles per attempt up to [`LONGEST_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const LONGEST_RETRY_DELAY: Duration = Duration::from_secs(30);
/// A `Retry-After` longer than this is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Runs every download of a message to its report, concurrently.
pub(crate) async fn run(context: &TaskContext, batch: &DownloadBatch) -> Outcome {
    let downloads = batch.tasks().iter().map(|task| download(context, task));
    Outcome::Download(futures_util::future::join_all(downloads).await)
}

/// One download to its report: fetched, or why not.
async fn download(context: &TaskContext, task: &DownloadTask) -> DownloadReport {
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
    if let Err(failure) = download_with_retries(context, task, &mut report).await {
        report.http_status = failure.http_status.or(report.http_status);
        report.error = Some(DownloadError {
            kind: failure.kind,
            message: failure.message,
        });
    }
    report
}

/// Attempts the download until one attempt succeeds, a failure is
/// permanent, or the task's attempts are used up; fills in `report` as it
/// goes.
async fn download_with_retries(
    context: &TaskContext,
    task: &DownloadTask,
    report: &mut DownloadReport,
) -> Result<(), Failure> {
    let client = context.http.client(&task.spec.limits)?;
    let mut backoff =
        ExponentialBackoff::new(FIRST_RETRY_DELAY, LONGEST_RETRY_DELAY, Jitter::Equal);
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
        let mut sink = Sink::open(context, task, &attempt_id).await?;
        let fetched = fetch(&client, task, &mut sink)
            .await
            .and_then(|fetched| check_sha256(task, fetched));
        drop(slot);
        let failure = match fetched {
            Ok(fetched) => return hand_over(sink, fetched, attempt_id, report).await,
            Err(failure) => failure,
        };
        sink.abort();
        if !failure.transient {
            return Err(failure);
        }
        if report.attempts >= task.spec.limits.max_attempts {
            return Err(failure.after_attempts(report.attempts));
        }
        let wait = retry_wait(&mut backoff, failure.retry_after);
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

/// The wait before the next attempt: the server's `Retry-After` (capped at
/// [`MAX_RETRY_AFTER`]) if it sent one, else the backoff's next delay. The
/// backoff is drawn from either way, so it keeps doubling per attempt.
fn retry_wait(backoff: &mut ExponentialBackoff, retry_after: Option<Duration>) -> Duration {
    let backoff_delay = backoff.next_delay();
    retry_after.map_or(backoff_delay, |wait| wait.min(MAX_RETRY_AFTER))
}

/// A body whose sha256 differs from the task's is refused.
fn check_sha256(task: &DownloadTask, fetched: Fetched) -> Result<Fetched, Failure> {
    match &task.spec.sha256 {
        Some(expected) if *expected != fetched.sha256 => Err(Failure::permanent(
            DownloadErrorKind::ChecksumMismatch,
            format!(
                "checksum mismatch: expected sha256 {expected}, got {} ({} bytes)",
                fetched.sha256, fetched.bytes
            ),
        )
        .with_http_status(fetched.http_status)),
        _ => Ok(fetched),
    }
}

/// Completes the sink of a fetched body and reports the download done:
/// relayed under `attempt_id`, or stored at a path in the shared directory.
async fn hand_over(
    sink: Sink<'_>,
    fetched: Fetched,
    attempt_id: String,
    report: &mut DownloadReport,
) -> Result<(), Failure> {
    report.http_status = Some(fetched.http_status);
    report.bytes = fetched.bytes;
    report.content_type = fetched.content_type;
    match sink.finish().await? {
        Finished::Relayed => report.attempt = Some(attempt_id),
        Finished::Stored(path) => report.path = Some(path),
    }
    report.sha256 = Some(fetched.sha256);
    report.status = DownloadStatus::Ok;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_double_from_half_a_second_to_30s_unless_the_server_names_one() {
        let mut backoff =
            ExponentialBackoff::new(FIRST_RETRY_DELAY, LONGEST_RETRY_DELAY, Jitter::Equal);
        for attempt in 1..10 {
            let wait = retry_wait(&mut backoff, None);
            let ceiling = FIRST_RETRY_DELAY
                .saturating_mul(1 << (attempt - 1))
                .min(LONGEST_RETRY_DELAY);
            assert!(
                wait <= ceiling && wait >= ceiling / 2,
                "attempt {attempt}: {wait:?}"
            );
        }
        let two = Duration::from_secs(2);
        assert_eq!(retry_wait(&mut backoff, Some(two)), two);
        let long = Some(Duration::from_secs(9999));
        assert_eq!(retry_wait(&mut backoff, long), MAX_RETRY_AFTER);
    }
}
