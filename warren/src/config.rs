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

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::AMQPUri;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};
use crate::{DEFAULT_AMQP_URL, DEFAULT_QUEUE_PREFIX};

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
    /// AMQP URL of the RabbitMQ broker; env AMQP_URL
    /// [default: amqp://guest:***@127.0.0.1:5672/%2f]
    // AMQP_URL and AMQP_URL_FILE are read by `to_config`, not by clap, so
    // that a flag beats either variable and both variables together are an
    // error (clap would count a variable as a conflicting flag).
    #[arg(long, global = true, value_name = "URL")]
    pub amqp_url: Option<String>,

    /// Read the AMQP URL from this file instead (a container secret, say);
    /// env AMQP_URL_FILE
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
    /// As [`BrokerArgs::to_config`], and [`Error::ConflictingUrls`].
    pub fn to_config_with_env(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<BrokerConfig> {
        let mut url = self.resolve_url(&env)?;
        if let Some(password) = self.resolve_password(&env)? {
            url = url.with_password(&password)?;
        }
        let tls = TlsFiles::load(
            self.tls_ca_file.as_deref(),
            self.tls_cert_file.as_deref(),
            self.tls_key_file.as_deref(),
        )?;
        if !url.is_tls() && !tls.is_empty() {
            return Err(Error::InvalidTls {
                reason: format!(
                    "TLS files are set but the broker URL {url} is not amqps://; \
                     use amqps:// (port 5671 by default) or drop the --tls-* flags"
                ),
            });
        }
        Ok(BrokerConfig {
            url,
            prefix: QueuePrefix::new(&self.queue_prefix)?,
            connect_timeout: self.connect_timeout,
            broker_wait: self.broker_wait,
            tls,
        })
    }
}

impl BrokerArgs {
    /// Where the URL comes from: a flag beats the environment; two sources
    /// at the same level are an error rather than a guess. Empty variables
    /// count as unset.
    fn resolve_url(&self, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<RedactedUrl> {
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        match (&self.amqp_url, &self.amqp_url_file) {
            (Some(_), Some(_)) => Err(Error::ConflictingUrls {
                first: "--amqp-url",
                second: "--amqp-url-file",
            }),
            (Some(url), None) => RedactedUrl::parse(url),
            (None, Some(path)) => RedactedUrl::from_file(path),
            (None, None) => match (env("AMQP_URL"), env("AMQP_URL_FILE")) {
                (Some(_), Some(_)) => Err(Error::ConflictingUrls {
                    first: "AMQP_URL",
                    second: "AMQP_URL_FILE",
                }),
                (Some(url), None) => RedactedUrl::parse(&url.to_string_lossy()),
                (None, Some(path)) => RedactedUrl::from_file(Path::new(&path)),
                (None, None) => RedactedUrl::parse(DEFAULT_AMQP_URL),
            },
        }
    }
}

impl BrokerArgs {
    /// A password given apart from the URL, raw: `--amqp-password-file`,
    /// else `AMQP_PASSWORD` or `AMQP_PASSWORD_FILE` (both is an error).
    /// A URL cannot carry every password as it is (`/`, `#`, `%` and the
    /// like need percent-encoding), while the broker's own setting
    /// (`RABBITMQ_DEFAULT_PASS`) takes it raw: this way one value serves
    /// both.
    fn resolve_password(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Option<String>> {
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        if let Some(path) = &self.amqp_password_file {
            return read_password(path).map(Some);
        }
        match (env("AMQP_PASSWORD"), env("AMQP_PASSWORD_FILE")) {
            (Some(_), Some(_)) => Err(Error::ConflictingUrls {
                first: "AMQP_PASSWORD",
                second: "AMQP_PASSWORD_FILE",
            }),
            (Some(password), None) => {
                password
                    .into_string()
                    .map(Some)
                    .map_err(|_| Error::InvalidPassword {
                        source_name: "AMQP_PASSWORD".to_owned(),
                        reason: "it is not UTF-8",
                    })
            }
            (None, Some(path)) => read_password(Path::new(&path)).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Reads a password file: its text as it is, less one final line ending.
fn read_password(path: &Path) -> Result<String> {
    let bytes = read_file("AMQP password file", path)?;
    let invalid = |reason| Error::InvalidPassword {
        source_name: path.display().to_string(),
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8"))?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(invalid("the file is empty"));
    }
    Ok(password.to_owned())
}

/// The TLS material for `amqps://` connections, read from the files named
/// by the `--tls-*` flags. `Debug` shows the paths, never the key.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// The files it was read from, for `Debug`.
    paths: Vec<PathBuf>,
    /// What the client library takes: extra trusted roots and an identity.
    config: OwnedTLSConfig,
}

impl TlsFiles {
    /// Reads and checks the files: the CA file must hold at least one
    /// certificate, the client certificate file a certificate and the key
    /// file a private key.
    ///
    /// # Errors
    /// [`Error::ReadFile`] or [`Error::InvalidTls`] naming the file.
    pub fn load(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self> {
        let mut files = TlsFiles::default();
        if let Some(path) = ca {
            let pem = read_file("TLS CA file", path)?;
            check_certificates(path, &pem)?;
            files.config.cert_chain = Some(String::from_utf8_lossy(&pem).into_owned());
            files.paths.push(path.to_owned());
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read_file("TLS client certificate file", cert)?;
                check_certificates(cert, &cert_pem)?;
                let key_pem = read_file("TLS client key file", key)?;
                if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                    return Err(Error::InvalidTls {
                        reason: format!("{} holds no PEM private key", key.display()),
                    });
                }
                files.config.identity = Some(OwnedIdentity::PKCS8 {
                    pem: cert_pem,
                    key: key_pem,
                });
                files.paths.extend([cert.to_owned(), key.to_owned()]);
            }
            (None, None) => {}
            _ => {
                return Err(Error::InvalidTls {
                    reason: "a client certificate needs both --tls-cert-file and --tls-key-file"
                        .to_owned(),
                });
            }
        }
        Ok(files)
    }

    /// True when no TLS file was given.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The CA certificates of `--tls-ca-file`, PEM, if given (the
    /// management API over https trusts them too).
    pub fn ca_pem(&self) -> Option<&str> {
        self.config.cert_chain.as_deref()
    }

    /// The configuration handed to the client library.
    pub(crate) fn to_lapin(&self) -> OwnedTLSConfig {
        self.config.clone()
    }
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn check_certificates(path: &Path, pem: &[u8]) -> Result<()> {
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::InvalidTls {
            reason: format!("{} is not valid PEM: {e}", path.display()),
        })?;
    if certificates.is_empty() {
        return Err(Error::InvalidTls {
            reason: format!("{} holds no PEM certificate", path.display()),
        });
    }
    Ok(())
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
    /// How long to keep trying a broker that cannot be reached yet.
    pub broker_wait: Duration,
    /// Extra roots and client identity for `amqps://` (empty for none).
    pub tls: TlsFiles,
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
            // Tests and benchmarks want a missing broker reported at once.
            broker_wait: Duration::ZERO,
            tls: TlsFiles::default(),
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
    /// A password given apart from the URL, raw (not percent-encoded); it
    /// replaces the URL's own.
    password: Option<String>,
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
            password: None,
        };
        url.to_uri()?;
        Ok(url)
    }

    /// Reads the URL from a file, as a container secret provides it.
    ///
    /// # Errors
    /// [`Error::ReadFile`], or [`Error::InvalidUrl`] (which never shows the
    /// password) when the file is empty or the URL is invalid.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = read_file("AMQP URL file", path)?;
        let text = String::from_utf8(bytes).map_err(|_| Error::InvalidUrl {
            url: format!("(from {})", path.display()),
            reason: "the file is not UTF-8 text".to_owned(),
        })?;
        if text.trim().is_empty() {
            return Err(Error::InvalidUrl {
                url: format!("(from {})", path.display()),
                reason: "the file is empty".to_owned(),
            });
        }
        Self::parse(&text)
    }

    /// The same URL with `password` in place of its own. The password is
    /// taken as it is: no character needs percent-encoding.
    ///
    /// # Errors
    /// [`Error::InvalidPassword`] for an empty password.
    pub fn with_password(mut self, password: &str) -> Result<Self> {
        if password.is_empty() {
            return Err(Error::InvalidPassword {
                source_name: "the password".to_owned(),
                reason: "it is empty",
            });
        }
        // `parse` checked the URL, so this parse succeeds; the redacted
        // form shows where the password goes.
        let mut parsed = url::Url::parse(&self.raw).map_err(|e| Error::InvalidUrl {
            url: self.redacted.clone(),
            reason: e.to_string(),
        })?;
        // The URL's own password must not reach the redacted form either.
        let _ = parsed.set_password(Some("***"));
        self.redacted = redact(parsed.as_str());
        self.password = Some(password.to_owned());
        Ok(self)
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
        // A password holding an unencoded '/', '?' or '#' would end the
        // authority early, and the URL parse with the password's tail as
        // its host.
        if let Some((_, after_scheme)) = self.raw.split_once("://")
            && let Some(at) = after_scheme.rfind('@')
            && after_scheme[..at].contains(['/', '?', '#'])
        {
            return Err(invalid(
                "the user name or password holds '/', '?' or '#': percent-encode them \
                 (%2F, %3F, %23)"
                    .to_owned(),
            ));
        }
        // Without it, `127.0.0.1:5672` is "a relative URL" and `localhost:5672`
        // has the scheme "localhost": neither says what to write.
        if !self.raw.contains("://") {
            return Err(invalid(
                "it has no scheme: write amqp://HOST:PORT/%2f (amqps:// for TLS)".to_owned(),
            ));
        }
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
        // lapin's parser percent-decodes the user name and password, so an
        // encoded password in the URL reaches the broker decoded.
        let mut uri = AMQPUri::from_str(&self.raw).map_err(invalid)?;
        // A path of just '/' names the virtual host "", which RabbitMQ never
        // has: the broker would answer only "vhost  not found".
        if uri.vhost.is_empty() {
            return Err(invalid(
                "the virtual host is empty (the URL ends in '/'): end it in /%2f for the \
                 default virtual host \"/\", or leave the path out"
                    .to_owned(),
            ));
        }
        uri.authority.host = host.to_owned();
        if let Some(password) = &self.password {
            uri.authority.userinfo.password.clone_from(password);
        }
        Ok(uri)
    }

    /// True for `amqps://` URLs.
    pub fn is_tls(&self) -> bool {
        self.raw
            .get(..6)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("amqps:"))
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
pub(crate) fn redact(raw: &str) -> String {
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
    // The user-info ends at the last '@', not at the first '/', '?' or '#':
    // a password may hold those characters unencoded. Should a path hold an
    // '@', this hides more than the password, never less.
    let Some(at) = rest.rfind('@') else {
        return raw.to_owned();
    };
    let userinfo = &rest[..at];
    let Some(colon) = userinfo.find(':') else {
        return raw.to_owned();
    };
    format!(
        "{}{}:***{}",
        &raw[..authority_start],
        &userinfo[..colon],
        &rest[at..]
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
    fn redacts_passwords_that_hold_url_delimiters() {
        for raw in [
            "amqp://alice:ab#cd@host/%2f",
            "amqp://alice:p/w@host/",
            "amqp://alice:12345#x@host/%2f",
            "amqp://alice:a?b@host:5672/%2f",
        ] {
            let secret = &raw[raw.find("alice:").unwrap() + 6..raw.rfind('@').unwrap()];
            assert!(!redact(raw).contains(secret), "{raw} -> {}", redact(raw));
            let err = RedactedUrl::parse(raw).unwrap_err().to_string();
            assert!(!err.contains(secret), "{err}");
            assert!(err.contains("percent-encode"), "{err}");
        }
        // Encoded, they are fine.
        let url = RedactedUrl::parse("amqp://alice:ab%23cd%2F@host/%2f").unwrap();
        assert_eq!(url.to_string(), "amqp://alice:***@host/%2f");
    }

    #[test]
    fn a_url_without_a_scheme_gets_a_hint() {
        for raw in [
            "127.0.0.1:5672",
            "localhost:5672",
            "guest:s3cret@broker:5672/%2f",
        ] {
            let err = RedactedUrl::parse(raw).unwrap_err().to_string();
            assert!(
                err.contains("it has no scheme: write amqp://HOST:PORT/%2f"),
                "{err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn a_trailing_slash_is_an_empty_vhost_and_gets_a_hint() {
        let err = RedactedUrl::parse("amqp://u:pw@broker:5672/")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid AMQP URL amqp://u:***@broker:5672/: the virtual host is empty (the URL \
             ends in '/'): end it in /%2f for the default virtual host \"/\", or leave the \
             path out"
        );
        let default = RedactedUrl::parse("amqp://broker:5672").unwrap();
        assert_eq!(default.to_uri().unwrap().vhost, "/");
        assert!(RedactedUrl::parse("amqp://broker:5672/%2f").is_ok());
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

    fn args(url: Option<&str>, file: Option<&Path>) -> BrokerArgs {
        BrokerArgs {
            amqp_url: url.map(str::to_owned),
            amqp_url_file: file.map(Path::to_owned),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            queue_prefix: "warren".into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            broker_wait: DEFAULT_BROKER_WAIT,
            amqp_password_file: None,
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.into())
        }
    }

    #[test]
    fn the_url_comes_from_a_flag_then_the_environment_then_the_default() {
        let dir = std::env::temp_dir().join(format!("warren-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("url");
        std::fs::write(&file, "  amqp://f:filepw@from-file/%2f\n").unwrap();
        let file_env = file.to_str().unwrap();
        let url = |args: BrokerArgs, vars: &[(&str, &str)]| {
            args.to_config_with_env(env(vars))
                .map(|config| config.url.to_string())
                .map_err(|e| e.to_string())
        };
        let from_env = [("AMQP_URL", "amqp://e:envpw@from-env/%2f")];
        assert_eq!(
            url(args(None, None), &[]).unwrap(),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            url(args(None, None), &from_env).unwrap(),
            "amqp://e:***@from-env/%2f"
        );
        assert_eq!(
            url(args(None, None), &[("AMQP_URL_FILE", file_env)]).unwrap(),
            "amqp://f:***@from-file/%2f"
        );
        // Empty variables count as unset.
        assert_eq!(
            url(
                args(None, None),
                &[("AMQP_URL", ""), ("AMQP_URL_FILE", file_env)]
            )
            .unwrap(),
            "amqp://f:***@from-file/%2f"
        );
        // Flags beat variables, whichever they are.
        assert_eq!(
            url(
                args(Some("amqp://a:b@flag/%2f"), None),
                &[("AMQP_URL_FILE", file_env)]
            )
            .unwrap(),
            "amqp://a:***@flag/%2f"
        );
        assert_eq!(
            url(args(None, Some(&file)), &from_env).unwrap(),
            "amqp://f:***@from-file/%2f"
        );
        // Two at the same level: an error, not a guess.
        assert_eq!(
            url(args(Some("amqp://flag/%2f"), Some(&file)), &[]).unwrap_err(),
            "both --amqp-url and --amqp-url-file are set: keep one"
        );
        assert_eq!(
            url(
                args(None, None),
                &[("AMQP_URL", "amqp://e@x/%2f"), ("AMQP_URL_FILE", file_env)]
            )
            .unwrap_err(),
            "both AMQP_URL and AMQP_URL_FILE are set: keep one"
        );
        // File problems name the file, never its contents.
        std::fs::write(&file, "amqp://f:filepw@from-file:notaport/").unwrap();
        let error = url(args(None, Some(&file)), &[]).unwrap_err();
        assert!(error.contains("f:***@from-file"), "{error}");
        assert!(!error.contains("filepw"), "{error}");
        std::fs::write(&file, " \n").unwrap();
        let error = url(args(None, Some(&file)), &[]).unwrap_err();
        assert!(error.contains("the file is empty"), "{error}");
        let missing = dir.join("missing");
        let error = url(args(None, Some(&missing)), &[]).unwrap_err();
        assert!(
            error.starts_with("cannot read the AMQP URL file"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every character a URL treats specially, and a `%` that looks like
    /// an escape.
    const AWKWARD_PASSWORD: &str = "p@ss:w/rd%41#?x&y=z [é]";

    #[test]
    fn an_encoded_password_in_the_url_reaches_the_broker_decoded() {
        let encoded: String = percent_encoding::utf8_percent_encode(
            AWKWARD_PASSWORD,
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let url = RedactedUrl::parse(&format!("amqp://u:{encoded}@h:5672/%2f")).unwrap();
        let uri = url.to_uri().unwrap();
        assert_eq!(uri.authority.userinfo.password, AWKWARD_PASSWORD);
        assert_eq!(uri.authority.userinfo.username, "u");
        assert_eq!(url.to_string(), "amqp://u:***@h:5672/%2f");
    }

    #[test]
    fn a_password_given_apart_is_taken_as_it_is() {
        let with_password = |vars: &[(&str, &str)], file: Option<&Path>| {
            let mut args = args(Some("amqp://warren@rabbitmq:5672/%2f"), None);
            args.amqp_password_file = file.map(Path::to_owned);
            args.to_config_with_env(env(vars))
                .map_err(|e| e.to_string())
        };
        let config = with_password(&[("AMQP_PASSWORD", AWKWARD_PASSWORD)], None).unwrap();
        let uri = config.url.to_uri().unwrap();
        assert_eq!(uri.authority.userinfo.password, AWKWARD_PASSWORD);
        assert_eq!(uri.authority.userinfo.username, "warren");
        assert_eq!(uri.authority.host, "rabbitmq");
        assert_eq!(
            config.url.to_string(),
            "amqp://warren:***@rabbitmq:5672/%2f"
        );
        assert!(!format!("{:?}", config.url).contains("p@ss"));

        // It replaces a password the URL holds, which then shows nowhere.
        let mut args = args(Some("amqp://warren:old-secret@rabbitmq/%2f"), None);
        args.amqp_password_file = None;
        let config = args
            .to_config_with_env(env(&[("AMQP_PASSWORD", "new")]))
            .unwrap();
        assert_eq!(
            config.url.to_uri().unwrap().authority.userinfo.password,
            "new"
        );
        assert_eq!(config.url.to_string(), "amqp://warren:***@rabbitmq/%2f");

        // From a file (a container secret): as it is, less one final newline.
        let dir = tempfile_dir("password");
        let file = dir.join("password");
        std::fs::write(&file, format!("{AWKWARD_PASSWORD}\n")).unwrap();
        let file_env = file.to_str().unwrap();
        for config in [
            with_password(&[("AMQP_PASSWORD_FILE", file_env)], None).unwrap(),
            // The flag beats both variables.
            with_password(&[("AMQP_PASSWORD", "other")], Some(&file)).unwrap(),
        ] {
            let uri = config.url.to_uri().unwrap();
            assert_eq!(uri.authority.userinfo.password, AWKWARD_PASSWORD);
        }
        // A password that ends in spaces keeps them.
        std::fs::write(&file, " pw \n").unwrap();
        let config = with_password(&[], Some(&file)).unwrap();
        assert_eq!(
            config.url.to_uri().unwrap().authority.userinfo.password,
            " pw "
        );

        assert_eq!(
            with_password(
                &[("AMQP_PASSWORD", "a"), ("AMQP_PASSWORD_FILE", file_env)],
                None
            )
            .unwrap_err(),
            "both AMQP_PASSWORD and AMQP_PASSWORD_FILE are set: keep one"
        );
        std::fs::write(&file, "\n").unwrap();
        let error = with_password(&[], Some(&file)).unwrap_err();
        assert!(error.contains("the file is empty"), "{error}");
        let error = with_password(&[], Some(&dir.join("missing"))).unwrap_err();
        assert!(
            error.starts_with("cannot read the AMQP password file"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tls_files_are_checked_before_connecting() {
        let dir = std::env::temp_dir().join(format!("warren-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = TlsFiles::load(Some(&not_pem), None, None).unwrap_err();
        assert!(
            error.to_string().contains("holds no PEM certificate"),
            "{error}"
        );
        let error = TlsFiles::load(None, Some(&not_pem), None).unwrap_err();
        assert!(error.to_string().contains("--tls-key-file"), "{error}");
        let error = TlsFiles::load(Some(&dir.join("missing.pem")), None, None).unwrap_err();
        assert!(
            error.to_string().starts_with("cannot read the TLS CA file"),
            "{error}"
        );
        assert!(TlsFiles::load(None, None, None).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
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
