//! Broker configuration shared by both binaries: the [`BrokerArgs`] flags
//! that `producer` and `worker` flatten into their CLIs (so the two can never
//! disagree on a flag name), and the validated [`BrokerConfig`] built from
//! them.
//!
//! The broker URL lives in a [`RedactedUrl`], whose `Display` and `Debug`
//! hide the password: no raw URL reaches a log line, an error or `--help`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::AMQPUri;

use crate::error::{Error, Result};
use crate::{DEFAULT_AMQP_URL, DEFAULT_QUEUE_PREFIX};

/// How long a connection attempt may take before it counts as failed.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Broker flags common to `producer` and `worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// AMQP URL of the RabbitMQ broker [default: amqp://guest:***@127.0.0.1:5672/%2f]
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_default_value = true,
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub amqp_url: String,

    /// Prefix of every queue and exchange name, so that tenants and test runs
    /// never see each other's messages
    #[arg(
        long,
        env = "WARREN_QUEUE_PREFIX",
        default_value = DEFAULT_QUEUE_PREFIX,
        global = true,
        value_name = "PREFIX"
    )]
    pub queue_prefix: String,

    /// Give up on a connection attempt after this long (e.g. 500ms, 10s)
    #[arg(
        long,
        env = "WARREN_CONNECT_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration,
        global = true,
        value_name = "DURATION"
    )]
    pub connect_timeout: Duration,
}

impl BrokerArgs {
    /// Validates the flags.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] or [`Error::InvalidPrefix`].
    pub fn to_config(&self) -> Result<BrokerConfig> {
        Ok(BrokerConfig {
            url: RedactedUrl::parse(&self.amqp_url)?,
            prefix: QueuePrefix::new(&self.queue_prefix)?,
            connect_timeout: self.connect_timeout,
        })
    }
}

/// Validated broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where the broker is.
    pub url: RedactedUrl,
    /// The prefix of every queue name.
    pub prefix: QueuePrefix,
    /// The bound on one connection attempt.
    pub connect_timeout: Duration,
}

impl BrokerConfig {
    /// The local default broker with the given prefix (used by tests and
    /// benchmarks).
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`].
    pub fn local(url: &str, prefix: &str) -> Result<Self> {
        Ok(BrokerConfig {
            url: RedactedUrl::parse(url)?,
            prefix: QueuePrefix::new(prefix)?,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }
}

/// Parses a human duration such as `500ms`, `30s` or `2m`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (expected a duration such as 500ms, 30s, 2m or 1h)"))
}

/// An AMQP URL whose password never shows: `Display` and `Debug` print
/// `amqp://user:***@host:port/vhost`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl {
    /// The URL as given, password included. Only [`RedactedUrl::to_uri`]
    /// reads it.
    raw: String,
    /// The same URL with the password replaced by `***`.
    redacted: String,
}

impl RedactedUrl {
    /// Parses and checks an `amqp://` or `amqps://` URL.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], whose text carries only the redacted URL.
    pub fn parse(raw: &str) -> Result<Self> {
        let url = RedactedUrl {
            raw: raw.trim().to_owned(),
            redacted: redact(raw.trim()),
        };
        url.to_uri()?;
        Ok(url)
    }

    /// The parsed URI handed to the client library.
    ///
    /// `lapin`'s own parser takes the host from `Url::domain`, which is empty
    /// for IP literals, so `amqp://10.0.0.5` would silently connect to
    /// `localhost`. We take the host from `Url::host_str` instead.
    pub(crate) fn to_uri(&self) -> Result<AMQPUri> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: self.redacted.clone(),
            reason: reason.replace(&self.raw, &self.redacted),
        };
        let parsed = url::Url::parse(&self.raw).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(invalid(format!(
                "the scheme must be amqp or amqps, not {:?}",
                parsed.scheme()
            )));
        }
        let host = match parsed.host_str() {
            Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']'),
            _ => return Err(invalid("the URL names no host".to_owned())),
        };
        let mut uri = AMQPUri::from_str(&self.raw).map_err(invalid)?;
        uri.authority.host = host.to_owned();
        Ok(uri)
    }

    /// True for `amqps://` URLs.
    pub fn is_tls(&self) -> bool {
        self.raw.starts_with("amqps:")
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedactedUrl({:?})", self.redacted)
    }
}

/// Replaces the password in a URL's user-info with `***`, textually, so that
/// even an unparseable URL can be shown safely.
fn redact(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        // Without a scheme we cannot tell user-info from path: hide it all
        // after the first ':' if an '@' follows.
        return match (raw.find(':'), raw.rfind('@')) {
            (Some(colon), Some(at)) if colon < at => format!("{}:***{}", &raw[..colon], &raw[at..]),
            _ => raw.to_owned(),
        };
    };
    let authority_start = scheme_end + 3;
    let rest = &raw[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return raw.to_owned();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => &userinfo[..colon],
        None => return raw.to_owned(),
    };
    format!(
        "{}{}:***{}",
        &raw[..authority_start],
        user,
        &raw[authority_start + at..]
    )
}

/// A validated queue-name prefix: 1 to 100 characters from
/// `[A-Za-z0-9._:-]`, not starting with `amq.` (reserved by the broker).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueuePrefix(String);

impl QueuePrefix {
    /// Checks a prefix.
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`] saying which rule it breaks.
    pub fn new(prefix: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        };
        if prefix.is_empty() {
            return Err(invalid("it is empty"));
        }
        if prefix.len() > 100 {
            return Err(invalid("it is longer than 100 characters"));
        }
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        {
            return Err(invalid(
                "only letters, digits and . _ - : are allowed in queue names",
            ));
        }
        if prefix.starts_with("amq.") {
            return Err(invalid("names starting with amq. are reserved by RabbitMQ"));
        }
        Ok(QueuePrefix(prefix.to_owned()))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueuePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_in_display_and_debug() {
        let url = RedactedUrl::parse("amqp://alice:s3cret@broker:5672/%2f").unwrap();
        assert_eq!(url.to_string(), "amqp://alice:***@broker:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn keeps_urls_without_password_unchanged() {
        assert_eq!(redact("amqp://broker:5672/%2f"), "amqp://broker:5672/%2f");
        assert_eq!(redact("amqp://bob@broker/"), "amqp://bob@broker/");
    }

    #[test]
    fn redacts_even_unparseable_urls() {
        let err = RedactedUrl::parse("amqp://alice:s3cret@broker:notaport/").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("alice:***@broker"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let err = RedactedUrl::parse("http://alice:s3cret@broker/").unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
        assert!(err.to_string().contains("amqp or amqps"), "{err}");
    }

    #[test]
    fn ip_literal_hosts_are_kept() {
        let url = RedactedUrl::parse("amqp://u:p@10.1.2.3:5673/vh").unwrap();
        let uri = url.to_uri().unwrap();
        assert_eq!(uri.authority.host, "10.1.2.3");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.vhost, "vh");
        let v6 = RedactedUrl::parse("amqp://[::1]:5672/%2f").unwrap();
        assert_eq!(v6.to_uri().unwrap().authority.host, "::1");
    }

    #[test]
    fn prefix_rules() {
        assert!(QueuePrefix::new("warren").is_ok());
        assert!(QueuePrefix::new("t-1.run_2:x").is_ok());
        assert!(QueuePrefix::new("").is_err());
        assert!(QueuePrefix::new("has space").is_err());
        assert!(QueuePrefix::new("amq.mine").is_err());
        assert!(QueuePrefix::new(&"x".repeat(101)).is_err());
    }

    #[test]
    fn durations_parse_in_human_form() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").unwrap_err().contains("30s"));
    }
}
