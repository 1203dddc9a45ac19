//! One HTTP attempt at a download: the pooled clients ([`HttpClients`]),
//! the redirect policy, the request with its size and time limits, the
//! body streamed into a sink and hashed, and the sorting of what went
//! wrong into a [`Failure`]: transient (retried, honouring `Retry-After`)
//! or permanent. Retrying itself is the caller's (`mod.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use warren::protocol::{DownloadErrorKind, DownloadLimits, DownloadTask};

use super::failure::Failure;
use super::sink::Sink;

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// HTTP clients, one per distinct pair of connect and idle timeouts (in
/// practice one per job), so connections are pooled across tasks.
#[derive(Debug, Default)]
pub(crate) struct HttpClients {
    clients: Mutex<HashMap<(u64, u64), reqwest::Client>>,
}

impl HttpClients {
    /// The client for these limits' timeouts, built on first use.
    pub(super) fn client(&self, limits: &DownloadLimits) -> Result<reqwest::Client, Failure> {
        let connect = timeout(limits.connect_timeout_s)?;
        let idle = timeout(limits.idle_timeout_s)?;
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
            .map_err(|e| {
                Failure::permanent(
                    DownloadErrorKind::Connection,
                    format!("cannot build an HTTP client: {e}"),
                )
            })?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// A client timeout from a task, refused as a connection failure when
/// unusable.
fn timeout(value: f64) -> Result<Duration, Failure> {
    seconds(value).ok_or_else(|| {
        Failure::permanent(
            DownloadErrorKind::Connection,
            format!("unusable timeout of {value} seconds"),
        )
    })
}

/// A timeout from a task as a `Duration`. Decoding already bounds them
/// (`DownloadLimits::MAX_TIMEOUT`); this refuses instead of panicking
/// should an unchecked value ever get here.
fn seconds(value: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| *d <= DownloadLimits::MAX_TIMEOUT)
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

/// A complete body.
pub(super) struct Fetched {
    pub(super) http_status: u16,
    pub(super) bytes: u64,
    pub(super) sha256: String,
    pub(super) content_type: Option<String>,
}

/// One attempt: request, check the status and size, stream the body into
/// `sink`, all within the task's total timeout.
pub(super) async fn fetch(
    client: &reqwest::Client,
    task: &DownloadTask,
    sink: &mut Sink<'_>,
) -> Result<Fetched, Failure> {
    let limits = &task.spec.limits;
    let deadline = seconds(limits.total_timeout_s)
        .and_then(|total| Instant::now().checked_add(total))
        .ok_or_else(|| {
            Failure::permanent(
                DownloadErrorKind::Timeout,
                format!("unusable total timeout of {}s", limits.total_timeout_s),
            )
        })?;
    let response = request(client, task, deadline).await?;
    let http_status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (bytes, sha256) = stream_body(response, limits, deadline, sink).await?;
    Ok(Fetched {
        http_status,
        bytes,
        sha256,
        content_type,
    })
}

/// Sends the request and accepts the response only with a success status
/// and no announced size over the limit.
async fn request(
    client: &reqwest::Client,
    task: &DownloadTask,
    deadline: Instant,
) -> Result<Response, Failure> {
    let limits = &task.spec.limits;
    let response =
        match tokio::time::timeout_at(deadline, client.get(task.url.clone()).send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(classify(&e, limits, 0)),
            Err(_) => return Err(past_total_timeout(limits)),
        };
    let status = response.status();
    if !status.is_success() {
        return Err(status_failure(status, response.headers()));
    }
    if let Some(announced) = response.content_length()
        && announced > limits.max_bytes
    {
        return Err(Failure::permanent(
            DownloadErrorKind::TooLarge,
            format!(
                "the body is {announced} bytes, over the limit of {} bytes; not downloaded",
                limits.max_bytes
            ),
        )
        .with_http_status(status.as_u16()));
    }
    Ok(response)
}

/// Streams the body into `sink`, hashing it; returns its size and sha256
/// (lowercase hex).
async fn stream_body(
    mut response: Response,
    limits: &DownloadLimits,
    deadline: Instant,
    sink: &mut Sink<'_>,
) -> Result<(u64, String), Failure> {
    let status = response.status().as_u16();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(classify(&e, limits, bytes)),
            Err(_) => return Err(past_total_timeout(limits)),
        };
        bytes += chunk.len() as u64;
        if bytes > limits.max_bytes {
            return Err(Failure::permanent(
                DownloadErrorKind::TooLarge,
                format!(
                    "the body exceeds the limit of {} bytes; cut off and not written",
                    limits.max_bytes
                ),
            )
            .with_http_status(status));
        }
        hasher.update(&chunk);
        sink.write(chunk).await?;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// The whole attempt took too long: transient, another may be quicker.
fn past_total_timeout(limits: &DownloadLimits) -> Failure {
    Failure {
        transient: true,
        ..Failure::permanent(
            DownloadErrorKind::Timeout,
            format!(
                "not complete within the total timeout of {}s",
                limits.total_timeout_s
            ),
        )
    }
}

/// 408, 429 and 5xx are worth retrying; other error statuses are not.
fn status_failure(status: StatusCode, headers: &HeaderMap) -> Failure {
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
fn unfollowed_redirect(status: StatusCode, headers: &HeaderMap) -> Option<Failure> {
    if !status.is_redirection() {
        return None;
    }
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let scheme = reqwest::Url::parse(location).ok()?.scheme().to_owned();
    if matches!(scheme.as_str(), "http" | "https") {
        return None;
    }
    Some(
        Failure::permanent(
            DownloadErrorKind::Redirect,
            format!("HTTP {status}: redirect to a {scheme}: URL; only http and https are followed"),
        )
        .with_http_status(status.as_u16()),
    )
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
    fn timeouts_out_of_range_are_refused_not_panicked_on() {
        assert_eq!(seconds(1.5), Some(Duration::from_millis(1500)));
        for bad in [1e300, f64::INFINITY, f64::NAN, -1.0, 86_401.0] {
            assert!(seconds(bad).is_none(), "{bad}");
            assert_eq!(
                timeout(bad).unwrap_err().kind,
                DownloadErrorKind::Connection
            );
        }
    }

    #[test]
    fn statuses_are_sorted_into_transient_and_permanent() {
        let headers = HeaderMap::new();
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
