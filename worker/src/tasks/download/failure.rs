//! [`Failure`]: why one attempt at a download failed, and whether another
//! attempt may do better. The retry loop (`mod.rs`) decides on
//! [`Failure::transient`] and [`Failure::retry_after`]; the report carries
//! the kind, the message and the HTTP status.

use std::time::Duration;

use warren::protocol::DownloadErrorKind;

/// What one failed attempt tells the retry loop.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) kind: DownloadErrorKind,
    pub(super) message: String,
    pub(super) http_status: Option<u16>,
    /// Worth another attempt (a timeout, a broken connection, 408, 429, 5xx).
    pub(super) transient: bool,
    /// The server's `Retry-After`, which replaces the backoff.
    pub(super) retry_after: Option<Duration>,
}

impl Failure {
    /// A failure that another attempt would only repeat.
    pub(super) fn permanent(kind: DownloadErrorKind, message: String) -> Self {
        Failure {
            kind,
            message,
            http_status: None,
            transient: false,
            retry_after: None,
        }
    }

    /// The same failure, naming the response's status.
    pub(super) fn with_http_status(self, status: u16) -> Self {
        Failure {
            http_status: Some(status),
            ..self
        }
    }

    /// The last of several attempts: the message says how many were made.
    pub(super) fn after_attempts(self, attempts: u32) -> Self {
        if attempts <= 1 {
            return self;
        }
        let message = format!("{} (after {attempts} attempts)", self.message);
        Failure { message, ..self }
    }
}
