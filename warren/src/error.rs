//! [`Error`], the one error type of the `warren` crate, and its [`Result`]
//! alias.
//!
//! Messages describe this layer only (which queue, which URL, which header);
//! the cause sits in `source()`. Callers branch on the classifier methods
//! ([`Error::is_poison`], [`Error::is_transient`]), never on message text.
//!
//! The variants hold plain values (a URL's redacted text, version numbers),
//! so that this module depends on no other module of the crate: every
//! module can return an [`Error`] without an import loop.

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the shared warren code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker URL could not be parsed. `url` is already redacted.
    #[error("invalid AMQP URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with its password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The queue prefix cannot be used in queue names.
    #[error("invalid queue prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// One setting (the broker URL, its password) is given by two sources
    /// at the same level: two flags, or two environment variables.
    #[error("both {first} and {second} are set: keep one")]
    ConflictingSources {
        /// The first source, e.g. "--amqp-url".
        first: &'static str,
        /// The second source, e.g. "--amqp-url-file".
        second: &'static str,
    },

    /// A password given apart from the URL is unusable.
    #[error("invalid AMQP password from {source_name}: {reason}")]
    InvalidPassword {
        /// Where it came from: a variable or a file's path.
        source_name: String,
        /// What is wrong with it (never the password itself).
        reason: &'static str,
    },

    /// A file named by a flag could not be read.
    #[error("cannot read the {what} {}", path.display())]
    ReadFile {
        /// What the file is for ("TLS CA file").
        what: &'static str,
        /// The path as given.
        path: std::path::PathBuf,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },

    /// The TLS settings are unusable.
    #[error("invalid TLS settings: {reason}")]
    InvalidTls {
        /// What is wrong, naming the file.
        reason: String,
    },

    /// The TCP or AMQP connection to the broker could not be opened.
    #[error(
        "cannot connect to {}{url}{}",
        tried_before_note(.tried_before),
        waited_note(.waited)
    )]
    Connect {
        /// The broker URL, password hidden (a `RedactedUrl`'s text): the
        /// last one tried.
        url: String,
        /// True for an `amqps://` URL.
        tls: bool,
        /// How long we kept trying before giving up (`--broker-wait`), if
        /// we retried at all.
        waited: Option<std::time::Duration>,
        /// The other URLs of a failover list, tried before `url` in the
        /// last round, each with why it failed (empty for a single URL).
        tried_before: Vec<(String, String)>,
        /// What the client library reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// A broker operation (declare, publish, consume, ack, delete) failed.
    #[error("cannot {operation}")]
    Broker {
        /// What we were doing, e.g. "declare queue warren.tasks".
        operation: String,
        /// What the client library reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// The broker answered a publish with a negative confirm.
    #[error("the broker refused a message published to {queue}")]
    Nacked {
        /// The routing key of the message.
        queue: String,
    },

    /// A mandatory publish was returned: no queue of that name exists.
    #[error("a message published to {queue} was returned: no such queue")]
    Unroutable {
        /// The routing key of the message.
        queue: String,
    },

    /// A message does not follow the wire protocol.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What kind of message ("task", "result").
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A source of a sum by reference is no longer the version the job
    /// pinned: summing it would mix two versions of the input.
    #[error("the input changed while it was being summed: {input} {detail}")]
    SourceChanged {
        /// The source, as shown to users.
        input: String,
        /// What differs, e.g. "was 800 bytes, now 900".
        detail: String,
    },

    /// A source of a sum by reference cannot be used as asked, and
    /// retrying cannot help: a path outside the shared directory, a server
    /// without Range support, a worker without a shared directory.
    #[error("cannot sum {input} by reference: {reason}")]
    SourceRefused {
        /// The source, as shown to users.
        input: String,
        /// Why, with what to do where there is a fix.
        reason: String,
    },

    /// Reading a byte range of a source failed (I/O, HTTP or S3 error, a
    /// short read); another attempt may succeed.
    #[error("cannot read bytes {start}..{end} of {input}")]
    SourceRead {
        /// The source, as shown to users.
        input: String,
        /// First byte of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
        /// What the storage reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A message carries a protocol version this build does not speak.
    #[error("unsupported protocol version {found} in {what} (this build speaks version {speaks})")]
    UnsupportedVersion {
        /// What kind of message ("task", "result").
        what: &'static str,
        /// The version the message declared.
        found: i64,
        /// The version this build speaks (`PROTOCOL_VERSION`).
        speaks: i64,
    },
}

impl Error {
    /// Wraps a client-library error with a description of the operation.
    pub fn broker(operation: impl Into<String>, source: lapin::Error) -> Self {
        Error::Broker {
            operation: operation.into(),
            source: Box::new(source),
        }
    }

    /// Builds [`Error::Malformed`].
    pub fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Malformed {
            what,
            reason: reason.into(),
        }
    }

    /// True when retrying the same message can never succeed: the message is
    /// malformed or speaks another protocol version. Such a task is
    /// dead-lettered, never requeued.
    pub fn is_poison(&self) -> bool {
        matches!(
            self,
            Error::Malformed { .. } | Error::UnsupportedVersion { .. }
        )
    }

    /// True when the failure comes from the connection (I/O, a closed
    /// channel or connection, a missed heartbeat): the operation may succeed
    /// after reconnecting.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { source, .. } | Error::Broker { source, .. } => {
                is_connection_failure(source)
            }
            _ => false,
        }
    }

    /// True when the broker could not be reached at all (nothing listens,
    /// the host is unknown, the handshake failed or was refused).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Connect { .. })
    }

    /// True when the broker refused a declare because an entity of that name
    /// already exists with other arguments or another type.
    pub fn is_precondition_failed(&self) -> bool {
        self.amqp_reply_code() == Some(406)
    }

    /// True when another connection holds the queue exclusively (AMQP 405
    /// RESOURCE_LOCKED).
    pub fn is_resource_locked(&self) -> bool {
        self.amqp_reply_code() == Some(405)
    }

    /// True when the broker refused our credentials or the virtual host:
    /// retrying with the same settings cannot help.
    pub fn is_access_refused(&self) -> bool {
        matches!(self.amqp_reply_code(), Some(403 | 530))
    }

    /// True when the broker reported that the queue or exchange does not
    /// exist.
    pub fn is_not_found(&self) -> bool {
        self.amqp_reply_code() == Some(404)
    }

    /// True when we refused the broker's TLS certificate: it is not signed
    /// by a trusted CA, has expired, or names another host.
    pub fn is_untrusted_certificate(&self) -> bool {
        matches!(
            self.tls_error(),
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        )
    }

    /// True when the broker ended the TLS handshake with an alert: most
    /// often it wants a client certificate we did not send or it does not
    /// trust.
    pub fn is_tls_refused_by_broker(&self) -> bool {
        matches!(self.tls_error(), Some(rustls::Error::AlertReceived(_)))
    }

    /// True when a TLS connection was accepted and then reset: a broker
    /// that wants a client certificate may hang up before its alert is
    /// read. A broker that is still starting refuses the connection
    /// instead, so this is not worth waiting for.
    pub fn is_tls_reset(&self) -> bool {
        let Error::Connect { tls, source, .. } = self else {
            return false;
        };
        *tls && matches!(
            source.kind(),
            lapin::ErrorKind::IOError(io)
                if matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted)
        )
    }

    /// True when retrying with the same settings cannot help: the broker
    /// refused our credentials or vhost, the TLS handshake failed on a
    /// certificate, or a queue exists with other arguments.
    pub fn needs_other_settings(&self) -> bool {
        self.is_access_refused()
            || self.is_untrusted_certificate()
            || self.is_tls_refused_by_broker()
            || self.is_precondition_failed()
    }

    /// What the user can do about a connection failure, if we can tell.
    /// Both binaries print it under the error.
    pub fn hint(&self) -> Option<&'static str> {
        if self.is_access_refused() {
            Some(
                "check the user name, password and virtual host in --amqp-url / AMQP_URL \
                 (the guest user may only connect from localhost)",
            )
        } else if self.is_untrusted_certificate() {
            Some(
                "the broker's TLS certificate was not accepted: pass the CA that signed it \
                 with --tls-ca-file, and connect to a host name the certificate names",
            )
        } else if self.is_tls_refused_by_broker() {
            Some(
                "the broker refused the TLS handshake: if it asks for client certificates, \
                 pass one signed by a CA it trusts with --tls-cert-file and --tls-key-file",
            )
        } else if self.is_precondition_failed() {
            Some(
                "a queue or exchange of that name exists with other settings; \
                 use another --queue-prefix or delete it",
            )
        } else if matches!(self, Error::Connect { tls: true, .. }) {
            // A broker that wants a client certificate may hang up before
            // its alert is read: the failure is then a plain reset.
            Some(
                "is RabbitMQ listening for TLS there? If it asks for client certificates, \
                 pass one with --tls-cert-file and --tls-key-file; a private CA goes in \
                 --tls-ca-file",
            )
        } else if self.is_unreachable() {
            Some(
                "is RabbitMQ running there? Start one with `rabbitmq-server -detached` or \
                 `docker compose up -d rabbitmq` (its user is warren, see the README), \
                 or point --amqp-url / AMQP_URL at yours",
            )
        } else {
            None
        }
    }

    /// The rustls error under a connection failure, if there is one.
    fn tls_error(&self) -> Option<&rustls::Error> {
        let Error::Connect { source, .. } = self else {
            return None;
        };
        let lapin::ErrorKind::IOError(io) = source.kind() else {
            return None;
        };
        io.get_ref()?.downcast_ref::<rustls::Error>()
    }

    fn amqp_reply_code(&self) -> Option<u16> {
        match self {
            Error::Connect { source, .. } | Error::Broker { source, .. } => match source.kind() {
                lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// "the broker at " for one URL; for a failover list, "any broker of
/// the list: URL (why), URL (why), nor " before the last one.
fn tried_before_note(tried_before: &[(String, String)]) -> String {
    if tried_before.is_empty() {
        return "the broker at ".to_owned();
    }
    let tried: Vec<String> = tried_before
        .iter()
        .map(|(url, why)| format!("{url} ({why})"))
        .collect();
    format!("any broker of the list: {}, nor ", tried.join(", "))
}

/// " (kept trying for 1m)" for a connection failure after retries.
fn waited_note(waited: &Option<std::time::Duration>) -> String {
    match *waited {
        Some(waited) => format!(
            " (kept trying for {})",
            humantime::format_duration(std::time::Duration::from_secs(waited.as_secs()))
        ),
        None => String::new(),
    }
}

/// Formats an error and its chain of causes on one line, joined with ": ".
/// A cause whose text the previous message already contains is skipped
/// (some libraries repeat their source in their own message).
pub fn display_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Prints an error for the user on stderr: `error: ` and its chain on one
/// line, then `hint: ` and the hint, if there is one.
pub fn print_error(error: &dyn std::error::Error, hint: Option<&str>) {
    eprintln!("error: {}", display_chain(error));
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
}

/// Whether a client-library error means the connection or channel is gone
/// (as opposed to the broker refusing one operation).
pub(crate) fn is_connection_failure(error: &lapin::Error) -> bool {
    use lapin::ErrorKind::*;
    match error.kind() {
        IOError(_)
        | InvalidChannelState(..)
        | InvalidConnectionState(_)
        | InvalidChannel(_)
        | MissingHeartbeatError => true,
        ProtocolError(_) => error.is_amqp_hard_error(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_version_errors_are_poison_not_transient() {
        let malformed = Error::malformed("task", "missing header warren-job");
        assert!(malformed.is_poison());
        assert!(!malformed.is_transient());
        assert_eq!(
            malformed.to_string(),
            "malformed task: missing header warren-job"
        );
        let version = Error::UnsupportedVersion {
            what: "task",
            found: 9,
            speaks: 1,
        };
        assert!(version.is_poison());
        assert_eq!(
            version.to_string(),
            "unsupported protocol version 9 in task (this build speaks version 1)"
        );
    }

    #[test]
    fn chains_are_joined_without_repeats() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = Error::Connect {
            url: "amqp://u:***@127.0.0.1:1/%2f".to_owned(),
            tls: false,
            waited: None,
            tried_before: Vec::new(),
            source: Box::new(lapin::Error::from(io)),
        };
        assert_eq!(
            display_chain(&error),
            "cannot connect to the broker at amqp://u:***@127.0.0.1:1/%2f: IO error: connection refused"
        );
    }

    #[test]
    fn a_failover_list_that_failed_names_every_url_tried() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let url = |port| format!("amqp://u:***@127.0.0.1:{port}/%2f");
        let error = Error::Connect {
            url: url(3),
            tls: false,
            waited: Some(std::time::Duration::from_millis(5300)),
            tried_before: vec![
                (url(1), "connection refused".to_owned()),
                (url(2), "no answer within 10s".to_owned()),
            ],
            source: Box::new(lapin::Error::from(io)),
        };
        assert_eq!(
            display_chain(&error),
            "cannot connect to any broker of the list: amqp://u:***@127.0.0.1:1/%2f (connection \
             refused), amqp://u:***@127.0.0.1:2/%2f (no answer within 10s), nor \
             amqp://u:***@127.0.0.1:3/%2f (kept trying for 5s): IO error: connection refused"
        );
        assert!(error.is_unreachable());
    }

    #[test]
    fn io_failures_are_transient() {
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let error = Error::broker("publish to warren.tasks", io);
        assert!(error.is_transient());
        assert!(!error.is_poison());
        assert_eq!(error.to_string(), "cannot publish to warren.tasks");
    }
}
