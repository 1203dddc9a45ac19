//! Where RabbitMQ's management HTTP API is, for the numbers AMQP does not
//! give (unacknowledged messages, the list of a prefix's queues): by
//! default the broker's host on port 15672 (15671 for `amqps`), with the
//! broker URL's credentials and virtual host.

use std::fmt;

use warren::RedactedUrl;

use crate::error::Result;

/// The management API of one broker and virtual host.
#[derive(Clone)]
pub(crate) struct ManagementApi {
    /// `http://host:15672`, no trailing slash.
    base: String,
    user: String,
    /// Only ever sent in an `Authorization` header.
    password: String,
    vhost: String,
}

impl fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementApi")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

impl ManagementApi {
    /// The API of the broker at `url`, or at `base` when given.
    ///
    /// # Errors
    /// [`warren::Error::InvalidUrl`] when `base` is not an http(s) URL.
    pub(crate) fn for_broker(url: &RedactedUrl, base: Option<&str>) -> Result<Self> {
        let uri = url.to_uri()?;
        let mut user = uri.authority.userinfo.username;
        let mut password = uri.authority.userinfo.password;
        let base = match base {
            Some(base) => {
                let redacted = warren::config::redact(base);
                let mut parsed = url::Url::parse(base).map_err(|e| warren::Error::InvalidUrl {
                    url: redacted.clone(),
                    reason: e.to_string().replace(base, &redacted),
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(warren::Error::InvalidUrl {
                        url: redacted,
                        reason: "the management API is reached over http or https".into(),
                    }
                    .into());
                }
                // Credentials in the management URL win over the broker's;
                // they travel in the Authorization header, never in the
                // URL that messages show.
                if !parsed.username().is_empty() {
                    user = percent_decode(parsed.username());
                    password = percent_decode(parsed.password().unwrap_or_default());
                    let _ = parsed.set_username("");
                    let _ = parsed.set_password(None);
                }
                parsed.as_str().trim_end_matches('/').to_owned()
            }
            None => {
                let host = if uri.authority.host.contains(':') {
                    format!("[{}]", uri.authority.host)
                } else {
                    uri.authority.host.clone()
                };
                if url.is_tls() {
                    format!("https://{host}:15671")
                } else {
                    format!("http://{host}:15672")
                }
            }
        };
        Ok(ManagementApi {
            base,
            user,
            password,
            vhost: uri.vhost,
        })
    }

    /// The base URL, for messages.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The URL listing the virtual host's queues with the given columns.
    pub(crate) fn queues_url(&self, columns: &[&str]) -> String {
        let vhost =
            percent_encoding::utf8_percent_encode(&self.vhost, percent_encoding::NON_ALPHANUMERIC);
        format!(
            "{}/api/queues/{vhost}?columns={}",
            self.base,
            columns.join(",")
        )
    }

    /// User and password for HTTP basic authentication. Never print them.
    pub(crate) fn credentials(&self) -> (&str, &str) {
        (&self.user, &self.password)
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_broker_url() {
        let url = RedactedUrl::parse("amqp://alice:pw@broker.local:5672/tenant%2Fa").unwrap();
        let api = ManagementApi::for_broker(&url, None).unwrap();
        assert_eq!(api.base(), "http://broker.local:15672");
        assert_eq!(api.credentials(), ("alice", "pw"));
        assert_eq!(
            api.queues_url(&["name", "consumers"]),
            "http://broker.local:15672/api/queues/tenant%2Fa?columns=name,consumers"
        );
        assert!(!format!("{api:?}").contains("pw"));
        let tls = RedactedUrl::parse("amqps://u:p@h/%2f").unwrap();
        assert_eq!(
            ManagementApi::for_broker(&tls, None).unwrap().base(),
            "https://h:15671"
        );
        let explicit = ManagementApi::for_broker(&url, Some("http://mgmt:8080/")).unwrap();
        assert_eq!(explicit.base(), "http://mgmt:8080");
        assert!(ManagementApi::for_broker(&url, Some("ftp://x")).is_err());
    }

    #[test]
    fn credentials_in_the_management_url_are_used_and_never_shown() {
        let url = RedactedUrl::parse("amqp://alice:pw@broker/%2f").unwrap();
        let api =
            ManagementApi::for_broker(&url, Some("https://admin:s%23cret@mgmt:15671/")).unwrap();
        assert_eq!(api.base(), "https://mgmt:15671");
        assert_eq!(api.credentials(), ("admin", "s#cret"));
        assert!(!api.queues_url(&["name"]).contains("cret"));
        let error = ManagementApi::for_broker(&url, Some("ftp://admin:s3cret@x"))
            .unwrap_err()
            .to_string();
        assert!(!error.contains("s3cret"), "{error}");
    }
}
