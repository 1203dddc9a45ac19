//! Where RabbitMQ's management API is, for the numbers AMQP does not give
//! (unacknowledged messages, the list of a prefix's queues), and asking it.
//!
//! By default there is one API per broker URL of the failover list: that
//! URL's host on port 15672 (15671 for `amqps`), with its credentials and
//! virtual host. `--management-url` replaces them with its own list. Either
//! way the APIs are asked in order until one answers, so that a cluster
//! whose first node is down still answers.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use warren::{BrokerConfig, RedactedUrl};

use crate::error::{Error, Result};

/// How long one management API may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one may take: a node that is down should not
/// hold up asking the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The management APIs of a broker or cluster, asked in order.
#[derive(Clone, Debug)]
pub(crate) struct ManagementApi {
    /// Never empty; no two with the same base.
    endpoints: Vec<Endpoint>,
}

/// One queue as the management API lists it.
#[derive(Debug, Deserialize)]
pub(crate) struct ManagedQueue {
    pub(crate) name: String,
    pub(crate) messages_ready: Option<u64>,
    pub(crate) messages_unacknowledged: Option<u64>,
    pub(crate) consumers: Option<u64>,
}

/// The queues of the virtual host, and which API listed them.
#[derive(Debug)]
pub(crate) struct QueueListing {
    pub(crate) queues: Vec<ManagedQueue>,
    /// The base URL of the API that answered.
    pub(crate) base: String,
}

impl ManagementApi {
    /// The APIs of `broker`: one per URL of its failover list, or one per
    /// URL of `bases` (comma-separated, `--management-url`) when given,
    /// with the first broker URL's credentials unless it names its own.
    ///
    /// # Errors
    /// [`warren::Error::InvalidUrl`] when an entry of `bases` is not an
    /// http(s) URL.
    pub(crate) fn for_broker(broker: &BrokerConfig, bases: Option<&str>) -> Result<Self> {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let candidates: Vec<Endpoint> = match bases {
            Some(bases) => bases
                .split(',')
                .map(str::trim)
                .filter(|base| !base.is_empty())
                .map(|base| Endpoint::for_broker(&broker.url, Some(base)))
                .collect::<Result<_>>()?,
            None => broker
                .urls()
                .map(|url| Endpoint::for_broker(url, None))
                .collect::<Result<_>>()?,
        };
        // Nodes of one host share its API: ask it once.
        for endpoint in candidates {
            if !endpoints.iter().any(|e| e.base == endpoint.base) {
                endpoints.push(endpoint);
            }
        }
        if endpoints.is_empty() {
            return Err(Error::Usage(
                "--management-url names no URL: give one, or several separated by commas".into(),
            ));
        }
        Ok(ManagementApi { endpoints })
    }

    /// Lists the virtual host's queues, asking each API in turn until one
    /// answers; `ca_pem` is the CA that https endpoints need.
    ///
    /// # Errors
    /// When none answered: each API with its reason, "http://a:15672
    /// (connection refused), nor http://b:15672 (HTTP 401 Unauthorized)".
    pub(crate) async fn queues(
        &self,
        ca_pem: Option<&str>,
    ) -> std::result::Result<QueueListing, String> {
        let client = http_client(ca_pem)?;
        let mut reasons = Vec::new();
        for endpoint in &self.endpoints {
            match endpoint.queues(&client).await {
                Ok(queues) => {
                    return Ok(QueueListing {
                        queues,
                        base: endpoint.base.clone(),
                    });
                }
                Err(reason) => {
                    tracing::debug!(base = %endpoint.base, %reason, "management API did not answer");
                    reasons.push(format!("{} ({reason})", endpoint.base));
                }
            }
        }
        Err(reasons.join(", nor "))
    }
}

fn http_client(ca_pem: Option<&str>) -> std::result::Result<reqwest::Client, String> {
    let mut client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(pem) = ca_pem {
        for certificate in
            reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| e.to_string())?
        {
            client = client.add_root_certificate(certificate);
        }
    }
    client.build().map_err(|e| e.to_string())
}

/// The gist of a failed request, for one short line: "connection refused"
/// rather than the whole chain from the HTTP client down to the socket.
fn short_reason(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return format!("no answer within {}s", REQUEST_TIMEOUT.as_secs());
    }
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    if let Some(io) = innermost.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::ConnectionRefused
    {
        return "connection refused".to_owned();
    }
    innermost.to_string()
}

/// The management API of one node and virtual host.
#[derive(Clone)]
struct Endpoint {
    /// `http://host:15672`, no trailing slash.
    base: String,
    user: String,
    /// Only ever sent in an `Authorization` header.
    password: String,
    vhost: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The API of the broker at `url`, or at `base` when given.
    ///
    /// # Errors
    /// [`warren::Error::InvalidUrl`] when `base` is not an http(s) URL.
    fn for_broker(url: &RedactedUrl, base: Option<&str>) -> Result<Self> {
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
        Ok(Endpoint {
            base,
            user,
            password,
            vhost: uri.vhost,
        })
    }

    /// The URL listing the virtual host's queues with the given columns.
    fn queues_url(&self, columns: &[&str]) -> String {
        let vhost =
            percent_encoding::utf8_percent_encode(&self.vhost, percent_encoding::NON_ALPHANUMERIC);
        format!(
            "{}/api/queues/{vhost}?columns={}",
            self.base,
            columns.join(",")
        )
    }

    /// Lists the virtual host's queues.
    async fn queues(
        &self,
        client: &reqwest::Client,
    ) -> std::result::Result<Vec<ManagedQueue>, String> {
        let columns = [
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ];
        let response = client
            .get(self.queues_url(&columns))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| short_reason(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
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

    fn broker(urls: &str) -> BrokerConfig {
        BrokerConfig::local(urls, "t").unwrap()
    }

    fn bases(api: &ManagementApi) -> Vec<&str> {
        api.endpoints.iter().map(|e| e.base.as_str()).collect()
    }

    #[test]
    fn defaults_follow_the_broker_url() {
        let url = RedactedUrl::parse("amqp://alice:pw@broker.local:5672/tenant%2Fa").unwrap();
        let api = Endpoint::for_broker(&url, None).unwrap();
        assert_eq!(api.base, "http://broker.local:15672");
        assert_eq!((api.user.as_str(), api.password.as_str()), ("alice", "pw"));
        assert_eq!(
            api.queues_url(&["name", "consumers"]),
            "http://broker.local:15672/api/queues/tenant%2Fa?columns=name,consumers"
        );
        assert!(!format!("{api:?}").contains("pw"));
        let tls = RedactedUrl::parse("amqps://u:p@h/%2f").unwrap();
        assert_eq!(
            Endpoint::for_broker(&tls, None).unwrap().base,
            "https://h:15671"
        );
        let explicit = Endpoint::for_broker(&url, Some("http://mgmt:8080/")).unwrap();
        assert_eq!(explicit.base, "http://mgmt:8080");
        assert!(Endpoint::for_broker(&url, Some("ftp://x")).is_err());
    }

    #[test]
    fn every_url_of_a_failover_list_has_its_api_in_order_each_host_once() {
        let api = ManagementApi::for_broker(
            &broker("amqp://a:pa@n1:5672/v,amqp://b:pb@n2:5673/v,amqp://b:pb@n2:5674/v"),
            None,
        )
        .unwrap();
        assert_eq!(bases(&api), ["http://n1:15672", "http://n2:15672"]);
        assert_eq!(api.endpoints[1].user, "b");
    }

    #[test]
    fn a_management_url_list_replaces_the_derived_ones() {
        let config = broker("amqp://a:pa@n1/%2f,amqp://a:pa@n2/%2f");
        let api = ManagementApi::for_broker(
            &config,
            Some("http://m1:1/, https://admin:x@m2:2 ,http://m1:1"),
        )
        .unwrap();
        assert_eq!(bases(&api), ["http://m1:1", "https://m2:2"]);
        assert_eq!(api.endpoints[0].user, "a");
        assert_eq!(api.endpoints[1].user, "admin");
        assert!(ManagementApi::for_broker(&config, Some(" , ")).is_err());
        assert!(ManagementApi::for_broker(&config, Some("http://m1,ftp://m2")).is_err());
    }

    #[test]
    fn credentials_in_the_management_url_are_used_and_never_shown() {
        let url = RedactedUrl::parse("amqp://alice:pw@broker/%2f").unwrap();
        let api = Endpoint::for_broker(&url, Some("https://admin:s%23cret@mgmt:15671/")).unwrap();
        assert_eq!(api.base, "https://mgmt:15671");
        assert_eq!(
            (api.user.as_str(), api.password.as_str()),
            ("admin", "s#cret")
        );
        assert!(!api.queues_url(&["name"]).contains("cret"));
        let error = Endpoint::for_broker(&url, Some("ftp://admin:s3cret@x"))
            .unwrap_err()
            .to_string();
        assert!(!error.contains("s3cret"), "{error}");
    }
}
