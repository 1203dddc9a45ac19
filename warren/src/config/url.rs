//! [`RedactedUrl`], the broker URL whose password never shows, and where
//! the URL and the password come from: flags, environment variables or
//! files.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use lapin::uri::AMQPUri;

use super::{BrokerArgs, read_file};
use crate::DEFAULT_AMQP_URL;
use crate::error::{Error, Result};

impl BrokerArgs {
    /// Where the URLs come from: a flag beats the environment; two sources
    /// at the same level are an error rather than a guess. Empty variables
    /// count as unset. Each source may hold a failover list (see
    /// [`RedactedUrl::parse_list`]).
    pub(super) fn resolve_urls(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Vec<RedactedUrl>> {
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        match (&self.amqp_url, &self.amqp_url_file) {
            (Some(_), Some(_)) => Err(Error::ConflictingSources {
                first: "--amqp-url",
                second: "--amqp-url-file",
            }),
            (Some(urls), None) => RedactedUrl::parse_list(urls),
            (None, Some(path)) => RedactedUrl::list_from_file(path),
            (None, None) => match (env("AMQP_URL"), env("AMQP_URL_FILE")) {
                (Some(_), Some(_)) => Err(Error::ConflictingSources {
                    first: "AMQP_URL",
                    second: "AMQP_URL_FILE",
                }),
                (Some(urls), None) => RedactedUrl::parse_list(&urls.to_string_lossy()),
                (None, Some(path)) => RedactedUrl::list_from_file(Path::new(&path)),
                (None, None) => Ok(vec![RedactedUrl::parse(DEFAULT_AMQP_URL)?]),
            },
        }
    }

    /// A password given apart from the URL, raw: `--amqp-password-file`,
    /// else `AMQP_PASSWORD` or `AMQP_PASSWORD_FILE` (both is an error).
    /// A URL cannot carry every password as it is (`/`, `#`, `%` and the
    /// like need percent-encoding), while the broker's own setting
    /// (`RABBITMQ_DEFAULT_PASS`) takes it raw: this way one value serves
    /// both.
    pub(super) fn resolve_password(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Option<String>> {
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        if let Some(path) = &self.amqp_password_file {
            return read_password(path).map(Some);
        }
        match (env("AMQP_PASSWORD"), env("AMQP_PASSWORD_FILE")) {
            (Some(_), Some(_)) => Err(Error::ConflictingSources {
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

    /// Parses a failover list: URLs separated by commas (a single URL is a
    /// list of one). A piece without a scheme most often means a comma in a
    /// password: the error then names the piece's place, never its text,
    /// which could be part of the password.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], whose text carries only redacted URLs.
    pub fn parse_list(text: &str) -> Result<Vec<Self>> {
        let pieces: Vec<&str> = text.trim().split(',').map(str::trim).collect();
        if pieces.len() == 1 {
            return Ok(vec![Self::parse(text)?]);
        }
        let invalid = |n: usize, problem: &str| Error::InvalidUrl {
            // Hides everything up to the last '@': more than the
            // passwords, never less.
            url: redact(text.trim()),
            reason: format!("URL {n} of the {} in the list {problem}", pieces.len()),
        };
        for (i, piece) in pieces.iter().enumerate() {
            if piece.is_empty() {
                return Err(invalid(i + 1, "is empty: separate URLs with single commas"));
            }
            if !piece.contains("://") {
                return Err(invalid(
                    i + 1,
                    "has no scheme: write amqp://HOST:PORT/%2f for each; a comma in a user \
                     name or password must be percent-encoded as %2C",
                ));
            }
        }
        pieces.into_iter().map(Self::parse).collect()
    }

    /// Reads the URL, or a failover list, from a file, as a container
    /// secret provides it; commas or lines separate the URLs.
    ///
    /// # Errors
    /// [`Error::ReadFile`], or [`Error::InvalidUrl`] (which never shows the
    /// password) when the file is empty or a URL is invalid.
    pub fn list_from_file(path: &Path) -> Result<Vec<Self>> {
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
        let lines: Vec<&str> = text.trim().lines().map(str::trim).collect();
        Self::parse_list(&lines.join(","))
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
    ///
    /// The URI holds the password: never show it.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], whose text carries only the redacted URL.
    pub fn to_uri(&self) -> Result<AMQPUri> {
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
pub fn redact(raw: &str) -> String {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{DEFAULT_BROKER_WAIT, DEFAULT_CONNECT_TIMEOUT};

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

    /// The redacted URLs of a config, in order, or its error.
    fn urls_of(
        args: &BrokerArgs,
        vars: &[(&str, &str)],
    ) -> std::result::Result<Vec<String>, String> {
        args.to_config_with_env(env(vars))
            .map(|config| config.urls().map(ToString::to_string).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_failover_list_comes_from_the_flag_the_variable_or_the_file() {
        let list = "amqp://u:pw1@a:5672/%2f, amqp://u:pw2@b:5673/%2f ,amqp://c";
        let expected = [
            "amqp://u:***@a:5672/%2f",
            "amqp://u:***@b:5673/%2f",
            "amqp://c",
        ];
        assert_eq!(urls_of(&args(Some(list), None), &[]).unwrap(), expected);
        assert_eq!(
            urls_of(&args(None, None), &[("AMQP_URL", list)]).unwrap(),
            expected
        );
        let dir = tempfile_dir("url-list");
        let file = dir.join("urls");
        // In a file, lines separate URLs too.
        std::fs::write(
            &file,
            "amqp://u:pw1@a:5672/%2f\n amqp://u:pw2@b:5673/%2f,amqp://c\n",
        )
        .unwrap();
        assert_eq!(urls_of(&args(None, Some(&file)), &[]).unwrap(), expected);
        std::fs::remove_dir_all(&dir).unwrap();

        let config = args(Some(list), None).to_config_with_env(env(&[])).unwrap();
        assert_eq!(config.url.to_string(), expected[0]);
        assert_eq!(config.failover_urls.len(), 2);
        assert_eq!(config.urls_display(), expected.join(", "));
        // One URL is a list of one.
        let single = args(Some("amqp://a/%2f"), None)
            .to_config_with_env(env(&[]))
            .unwrap();
        assert_eq!(single.urls().count(), 1);
    }

    #[test]
    fn a_password_given_apart_goes_to_every_url_of_the_list() {
        let config = args(Some("amqp://u@a/%2f,amqp://u:old@b/%2f"), None)
            .to_config_with_env(env(&[("AMQP_PASSWORD", AWKWARD_PASSWORD)]))
            .unwrap();
        for url in config.urls() {
            let uri = url.to_uri().unwrap();
            assert_eq!(uri.authority.userinfo.password, AWKWARD_PASSWORD);
            assert!(!url.to_string().contains("old"), "{url}");
        }
    }

    #[test]
    fn a_bad_failover_list_is_refused_without_showing_a_password() {
        let refused = |list: &str| urls_of(&args(Some(list), None), &[]).unwrap_err();
        // A comma inside a password splits it: neither half may show.
        let error = refused("amqp://u:se,cret@a/%2f");
        assert!(
            error.contains("URL 2 of the 2 in the list has no scheme"),
            "{error}"
        );
        assert!(error.contains("%2C"), "{error}");
        assert!(!error.contains("cret"), "{error}");
        let error = refused("amqp://u:pw@a/%2f,,amqp://b/%2f");
        assert!(
            error.contains("URL 2 of the 3 in the list is empty"),
            "{error}"
        );
        assert!(!error.contains("pw"), "{error}");
        let error = refused("amqp://u:pw@a/%2f,");
        assert!(
            error.contains("URL 2 of the 2 in the list is empty"),
            "{error}"
        );
        // A bad URL in the list is named, redacted.
        let error = refused("amqp://u:pw@a/%2f,http://v:secret@b/");
        assert!(error.contains("http://v:***@b/"), "{error}");
        assert!(error.contains("amqp or amqps"), "{error}");
        assert!(!error.contains("secret"), "{error}");
        // TLS files need every URL to be amqps://.
        let dir = tempfile_dir("tls-list");
        let ca = dir.join("ca.pem");
        // Read as PEM, never parsed further before connecting.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut tls_args = args(Some("amqps://a/%2f,amqp://u:pw@b/%2f"), None);
        tls_args.tls_ca_file = Some(ca);
        let error = urls_of(&tls_args, &[]).unwrap_err();
        assert!(
            error.contains("amqp://u:***@b/%2f is not amqps://"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
}
