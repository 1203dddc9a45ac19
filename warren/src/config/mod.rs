//! Broker configuration shared by both binaries: the [`BrokerArgs`] flags
//! that `producer` and `worker` flatten into their CLIs (so the two can never
//! disagree on a flag name), and the validated [`BrokerConfig`] built from
//! them.
//!
//! The broker URL lives in a [`RedactedUrl`], whose `Display` and `Debug`
//! hide the password: no raw URL reaches a log line, an error or `--help`.
//! It comes from `--amqp-url`/`AMQP_URL` or, as a container secret would
//! provide it, from a file named by `--amqp-url-file`/`AMQP_URL_FILE`.
//!
//! `amqps://` URLs verify the broker's certificate against the system's
//! roots plus any `--tls-ca-file`; a client certificate is optional. The
//! files are read and checked here, so a bad path or a file without a
//! certificate is reported before anything connects.
//!
//! One concept a file: `url.rs` ([`RedactedUrl`] and where the URL and the
//! password come from), `tls.rs` ([`TlsFiles`]), `prefix.rs`
//! ([`QueuePrefix`]); this file holds the flags and their validation.

mod prefix;
mod tls;
mod url;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::DEFAULT_QUEUE_PREFIX;
use crate::error::{Error, Result};

pub use prefix::QueuePrefix;
pub use tls::TlsFiles;
pub use url::{RedactedUrl, redact};

/// How long a connection attempt may take before it counts as failed.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long both binaries keep trying a broker that does not accept
/// connections yet (one that is starting, say) before giving up.
pub const DEFAULT_BROKER_WAIT: Duration = Duration::from_secs(60);

/// Broker flags common to `producer` and `worker`.
// Under their own heading, so that each command's own flags come first in
// its `--help` and these follow together. The heading stays set for flags
// declared after a flatten: flatten this last, or set the next heading.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Broker options")]
pub struct BrokerArgs {
    /// AMQP URL of the RabbitMQ broker, or several separated by commas (a
    /// failover list: the first that answers is used, the next after a
    /// loss); env AMQP_URL [default: amqp://guest:***@127.0.0.1:5672/%2f]
    // AMQP_URL and AMQP_URL_FILE are read by `to_config`, not by clap, so
    // that a flag beats either variable and both variables together are an
    // error (clap would count a variable as a conflicting flag).
    #[arg(long, global = true, value_name = "URL")]
    pub amqp_url: Option<String>,

    /// Read the AMQP URL (or several, one a line or separated by commas)
    /// from this file instead (a container secret, say); env AMQP_URL_FILE
    #[arg(long, global = true, value_name = "PATH")]
    pub amqp_url_file: Option<PathBuf>,

    /// For amqps:// URLs: PEM file of CA certificates to trust besides the
    /// system's roots (the broker's certificate is always verified)
    #[arg(long, env = "WARREN_TLS_CA_FILE", global = true, value_name = "PATH")]
    pub tls_ca_file: Option<PathBuf>,

    /// For amqps:// URLs: PEM client certificate (chain) to present to a
    /// broker that asks for one; needs --tls-key-file
    #[arg(
        long,
        env = "WARREN_TLS_CERT_FILE",
        requires = "tls_key_file",
        global = true,
        value_name = "PATH"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// For amqps:// URLs: PEM private key of --tls-cert-file
    #[arg(
        long,
        env = "WARREN_TLS_KEY_FILE",
        requires = "tls_cert_file",
        global = true,
        value_name = "PATH"
    )]
    pub tls_key_file: Option<PathBuf>,

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

    /// Keep trying a broker that does not accept connections yet (one that
    /// is starting or restarting) for this long before giving up; 0 tries
    /// once. Refused credentials, vhost or TLS fail at once
    #[arg(
        long,
        env = "WARREN_BROKER_WAIT",
        default_value = "60s",
        value_parser = parse_duration,
        global = true,
        value_name = "DURATION"
    )]
    pub broker_wait: Duration,

    /// Read the broker password from this file, as it is (any character,
    /// no percent-encoding; one final newline is dropped): it replaces the
    /// URL's password. env AMQP_PASSWORD_FILE; AMQP_PASSWORD gives the
    /// password itself
    // Read by `to_config`, as the URL variables are, so that the flag beats
    // both variables and two variables together are an error.
    #[arg(long, global = true, value_name = "PATH")]
    pub amqp_password_file: Option<PathBuf>,
}

impl BrokerArgs {
    /// Validates the flags, reading the URL file and the TLS files.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], [`Error::InvalidPrefix`], [`Error::ReadFile`]
    /// or [`Error::InvalidTls`].
    pub fn to_config(&self) -> Result<BrokerConfig> {
        self.to_config_with_env(|name| std::env::var_os(name))
    }

    /// [`BrokerArgs::to_config`] with the environment given as a function.
    ///
    /// # Errors
    /// As [`BrokerArgs::to_config`], and [`Error::ConflictingSources`].
    pub fn to_config_with_env(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<BrokerConfig> {
        let mut urls = self.resolve_urls(&env)?;
        if let Some(password) = self.resolve_password(&env)? {
            // The brokers of one list share their users.
            urls = urls
                .into_iter()
                .map(|url| url.with_password(&password))
                .collect::<Result<_>>()?;
        }
        let tls = TlsFiles::load(
            self.tls_ca_file.as_deref(),
            self.tls_cert_file.as_deref(),
            self.tls_key_file.as_deref(),
        )?;
        if let Some(url) = urls.iter().find(|url| !url.is_tls())
            && !tls.is_empty()
        {
            return Err(Error::InvalidTls {
                reason: format!(
                    "TLS files are set but the broker URL {url} is not amqps://; \
                     use amqps:// (port 5671 by default) or drop the --tls-* flags"
                ),
            });
        }
        // `parse_list` returns at least one URL.
        let url = urls.remove(0);
        Ok(BrokerConfig {
            url,
            failover_urls: urls,
            prefix: QueuePrefix::new(&self.queue_prefix)?,
            connect_timeout: self.connect_timeout,
            broker_wait: self.broker_wait,
            tls,
        })
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Validated broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where the broker is: the first URL of a failover list, where
    /// connections go first (and the management API is by default).
    pub url: RedactedUrl,
    /// The other URLs of a failover list, in order (empty for one broker).
    /// See [`BrokerConfig::urls`].
    pub failover_urls: Vec<RedactedUrl>,
    /// The prefix of every queue name.
    pub prefix: QueuePrefix,
    /// The bound on one connection attempt.
    pub connect_timeout: Duration,
    /// How long to keep trying a broker that cannot be reached yet.
    pub broker_wait: Duration,
    /// Extra roots and client identity for `amqps://` (empty for none).
    pub tls: TlsFiles,
}

impl BrokerConfig {
    /// The local default broker (or a failover list) with the given
    /// prefix (used by tests and benchmarks).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] or [`Error::InvalidPrefix`].
    pub fn local(urls: &str, prefix: &str) -> Result<Self> {
        // `parse_list` returns at least one URL.
        let mut urls = RedactedUrl::parse_list(urls)?;
        Ok(BrokerConfig {
            url: urls.remove(0),
            failover_urls: urls,
            prefix: QueuePrefix::new(prefix)?,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            // Tests and benchmarks want a missing broker reported at once.
            broker_wait: Duration::ZERO,
            tls: TlsFiles::default(),
        })
    }

    /// Every broker URL, in the order connections try them: [`url`]
    /// first, then the failover list.
    ///
    /// [`url`]: BrokerConfig::url
    pub fn urls(&self) -> impl Iterator<Item = &RedactedUrl> {
        std::iter::once(&self.url).chain(&self.failover_urls)
    }

    /// The URLs for messages, redacted and separated by commas.
    pub fn urls_display(&self) -> String {
        let urls: Vec<String> = self.urls().map(ToString::to_string).collect();
        urls.join(", ")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_human_form() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").unwrap_err().contains("30s"));
    }
}
