//! Talking to RabbitMQ: connecting, publishing with confirms, consuming,
//! and checking whether a queue exists.
//!
//! Habits kept here so no caller has to remember them: every connection is
//! named (so `rabbitmqctl list_connections` tells processes apart); publishing
//! and consuming use separate channels; every publishing channel is in
//! confirm mode and every publish is mandatory, so a message is either
//! confirmed into a queue, reported as unroutable, or an error; prefetch is
//! set per consumer, never globally (quorum queues reject global QoS).

use std::time::{Duration, Instant};

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    DefaultConnectionBuilder,
};

use crate::backoff::{ExponentialBackoff, Jitter};
use crate::config::{BrokerConfig, RedactedUrl};
use crate::error::{Error, Result};

/// First pause between attempts to reach the broker; it doubles up to
/// [`MAX_RETRY_DELAY`].
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest pause between attempts: a broker that comes up is found within
/// this long.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// The shortest bound on an attempt made while waiting, so that the last
/// one, at the end of `--broker-wait`, still has time to connect.
const LAST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a wait for the broker says it is still waiting.
const WAITING_NOTE_EVERY: Duration = Duration::from_secs(10);

/// A connection, and which of the configured broker URLs answered.
#[derive(Debug)]
pub struct Connected {
    /// The open connection.
    pub connection: Connection,
    /// The URL's place in [`BrokerConfig::urls`]: a later walk that starts
    /// after it moves on to the next broker.
    pub index: usize,
    /// The URL that answered, password hidden.
    pub url: RedactedUrl,
}

/// Opens a named connection to the first broker of `config.urls()` that
/// answers; see [`connect_from`].
///
/// # Errors
/// As [`connect_from`].
pub async fn connect(config: &BrokerConfig, connection_name: &str) -> Result<Connection> {
    Ok(connect_from(config, connection_name, 0).await?.connection)
}

/// Opens a named connection, trying the broker URLs in turn from the one
/// at `start` (wrapping around), like Celery's failover list: a client
/// that lost its broker passes the index after the lost one's to move on.
/// While none answers (nothing listens, the handshake times out, the host
/// does not resolve yet), the list is tried again with backoff for up to
/// `config.broker_wait`, saying so on stderr (`waiting for the broker at
/// ...`) so that a wait is never silent. Failures that other settings must
/// fix (credentials, vhost, TLS) return at once: the brokers of one list
/// share those settings.
///
/// # Errors
/// [`Error::Connect`] naming the redacted URLs tried; after retries it
/// also says how long we kept trying.
pub async fn connect_from(
    config: &BrokerConfig,
    connection_name: &str,
    start: usize,
) -> Result<Connected> {
    let started = Instant::now();
    let mut backoff = ExponentialBackoff::new(MIN_RETRY_DELAY, MAX_RETRY_DELAY, Jitter::Equal);
    let mut noted: Option<Instant> = None;
    let mut attempt_timeout = config.connect_timeout;
    loop {
        let failures = match connect_round(config, connection_name, start, attempt_timeout).await {
            Ok(connected) => {
                if noted.is_some() {
                    tracing::info!(
                        "connected to the broker at {} after {:.1}s",
                        connected.url,
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(connected);
            }
            Err(Round::Refused(error)) => return Err(error),
            Err(Round::Unreachable(failures)) => failures,
        };
        let elapsed = started.elapsed();
        let remaining = config.broker_wait.saturating_sub(elapsed);
        if remaining.is_zero() {
            return Err(unreachable(failures, noted.map(|_| elapsed)));
        }
        // The last pause ends at the bound, for one last attempt there.
        let delay = backoff.next_delay().min(remaining);
        if noted.is_none_or(|at| at.elapsed() >= WAITING_NOTE_EVERY) {
            let last = failures.last().expect("a round tries at least one URL");
            note_waiting(config, last, elapsed, delay, noted.is_some());
            noted = Some(Instant::now());
        }
        // Attempts must not run far past the bound either.
        attempt_timeout = config
            .connect_timeout
            .min((remaining - delay).max(LAST_ATTEMPT_TIMEOUT));
        tokio::time::sleep(delay).await;
    }
}

/// Why a round over the URL list found no broker.
enum Round {
    /// A broker refused us for a reason other settings must fix.
    Refused(Error),
    /// None answered: each URL's [`Error::Connect`], in the order tried.
    Unreachable(Vec<Error>),
}

/// One attempt on each URL, from `start`, until one answers.
async fn connect_round(
    config: &BrokerConfig,
    connection_name: &str,
    start: usize,
    timeout: Duration,
) -> std::result::Result<Connected, Round> {
    let urls: Vec<&RedactedUrl> = config.urls().collect();
    let mut failures = Vec::new();
    for offset in 0..urls.len() {
        let index = (start + offset) % urls.len();
        let url = urls[index];
        match connect_once(config, url, connection_name, timeout).await {
            Ok(connection) => {
                return Ok(Connected {
                    connection,
                    index,
                    url: url.clone(),
                });
            }
            Err(error)
                if !error.is_unreachable()
                    || error.needs_other_settings()
                    || error.is_tls_reset() =>
            {
                return Err(Round::Refused(error));
            }
            Err(error) => {
                if urls.len() > 1 {
                    tracing::debug!("no answer from the broker at {url}: {}", chain_of(&error));
                }
                failures.push(error);
            }
        }
    }
    Err(Round::Unreachable(failures))
}

/// The error for a round in which no broker answered: the last one's,
/// naming the others and how long we kept trying.
fn unreachable(mut failures: Vec<Error>, waited: Option<Duration>) -> Error {
    let last = failures.pop().expect("a round tries at least one URL");
    let tried_before = failures
        .iter()
        .filter_map(|error| match error {
            Error::Connect { url, .. } => Some((url.clone(), chain_of(error))),
            _ => None,
        })
        .collect();
    match last {
        Error::Connect {
            url, tls, source, ..
        } => Error::Connect {
            url,
            tls,
            waited,
            tried_before,
            source,
        },
        error => error,
    }
}

/// What went wrong under a connection failure, without its own message.
fn chain_of(error: &Error) -> String {
    std::error::Error::source(error).map_or_else(|| error.to_string(), crate::error::display_chain)
}

/// Says on stderr that we are waiting for the broker, and why.
fn note_waiting(
    config: &BrokerConfig,
    error: &Error,
    elapsed: Duration,
    delay: Duration,
    again: bool,
) {
    let cause = chain_of(error);
    let bound = humantime::format_duration(config.broker_wait);
    let brokers = config.urls_display();
    if again {
        tracing::warn!(
            "still waiting for the broker at {brokers} after {:.0}s ({cause}); retrying in {:.1}s, for up to {bound} in all",
            elapsed.as_secs_f64(),
            delay.as_secs_f64()
        );
    } else {
        tracing::warn!(
            "waiting for the broker at {brokers} ({cause}); retrying in {:.1}s, for up to {bound} (--broker-wait)",
            delay.as_secs_f64()
        );
    }
}

/// One connection attempt to `url`, bounded by `timeout`.
async fn connect_once(
    config: &BrokerConfig,
    url: &RedactedUrl,
    connection_name: &str,
    timeout: Duration,
) -> Result<Connection> {
    let uri = url.to_uri()?;
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let connect_error = |source| Error::Connect {
        url: url.to_string(),
        tls: url.is_tls(),
        waited: None,
        tried_before: Vec::new(),
        source: Box::new(source),
    };
    // With amqps://, lapin verifies the broker's certificate against the
    // system's roots plus the configured CA file, and presents the client
    // certificate if one is configured.
    let builder = DefaultConnectionBuilder::new()
        .map_err(connect_error)?
        .with_uri(uri)
        .with_properties(properties)
        .with_tls_config(config.tls.to_lapin());
    match tokio::time::timeout(timeout, builder.connect()).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(connect_error(source)),
        Err(_) => Err(connect_error(lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}", humantime::format_duration(timeout)),
        )))),
    }
}

/// Opens a channel.
///
/// # Errors
/// [`Error::Broker`].
pub async fn open_channel(connection: &Connection) -> Result<Channel> {
    connection
        .create_channel()
        .await
        .map_err(|e| Error::broker("open a channel", e))
}

/// Closes a connection politely, ignoring failures: used on the way out,
/// when the connection may already be gone.
pub async fn close_quietly(connection: &Connection) {
    let closing = connection.close(200, "bye".into());
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
}

/// What the broker did with a mandatory publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Routed {
    /// The message is in a queue (and on disk, for persistent messages to
    /// durable queues).
    Queued,
    /// No queue has that name; the message was dropped.
    Returned,
}

/// A channel in confirm mode.
#[derive(Clone, Debug)]
pub struct Publisher {
    channel: Channel,
}

/// A publish whose confirm has not arrived yet.
#[derive(Debug)]
#[must_use = "a publish is only safe once its confirm has been awaited"]
pub struct PendingConfirm {
    confirm: lapin::PublisherConfirm,
    routing_key: String,
}

impl PendingConfirm {
    /// Waits for the broker's confirm.
    ///
    /// # Errors
    /// [`Error::Nacked`] when the broker refused the message,
    /// [`Error::Broker`] when the channel failed first.
    pub async fn wait(self) -> Result<Routed> {
        let confirmation = self
            .confirm
            .await
            .map_err(|e| Error::broker(format!("confirm a publish to {}", self.routing_key), e))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(Routed::Queued),
            Confirmation::Ack(Some(_returned)) => Ok(Routed::Returned),
            Confirmation::Nack(_) => Err(Error::Nacked {
                queue: self.routing_key,
            }),
            // Unreachable with confirm_select; treat as the unsafe case it is.
            Confirmation::NotRequested => Err(Error::Nacked {
                queue: self.routing_key,
            }),
        }
    }
}

impl Publisher {
    /// Opens a channel and puts it in confirm mode.
    ///
    /// # Errors
    /// [`Error::Broker`].
    pub async fn open(connection: &Connection) -> Result<Self> {
        let channel = open_channel(connection).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::broker("enable publisher confirms", e))?;
        Ok(Publisher { channel })
    }

    /// The underlying channel (for declares).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a mandatory message to a queue through the default exchange
    /// and returns its pending confirm. Callers keep several pending to
    /// pipeline publishes; awaiting each in turn is far slower.
    ///
    /// # Errors
    /// [`Error::Broker`] when the channel is unusable.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(|e| Error::broker(format!("publish to {queue}"), e))?;
        Ok(PendingConfirm {
            confirm,
            routing_key: queue.to_owned(),
        })
    }

    /// Publishes and waits for the confirm.
    ///
    /// # Errors
    /// As [`Publisher::publish`] and [`PendingConfirm::wait`].
    pub async fn publish_confirmed(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Routed> {
        self.publish(queue, body, properties).await?.wait().await
    }

    /// Publishes and waits for the confirm, publishing the message again
    /// while the broker refuses it; see [`Publisher::confirm_or_publish_again`].
    ///
    /// # Errors
    /// As [`Publisher::confirm_or_publish_again`].
    pub async fn publish_until_taken(
        &self,
        queue: &str,
        body: &[u8],
        properties: &BasicProperties,
        retry_for: Duration,
    ) -> Result<Routed> {
        let pending = self.publish(queue, body, properties.clone()).await?;
        self.confirm_or_publish_again(pending, body, properties, retry_for)
            .await
    }

    /// Waits for `pending`'s confirm. While the broker refuses the message
    /// (a quorum queue electing a leader, or without a majority of its
    /// nodes), publishes `body` with `properties` to the same queue again,
    /// with backoff, for up to `retry_for` (callers pass
    /// [`REFUSED_PUBLISH_RETRY_FOR`] unless a test needs less).
    ///
    /// # Errors
    /// [`Error::Nacked`] once the broker has refused it for `retry_for`;
    /// otherwise as [`Publisher::publish`] and [`PendingConfirm::wait`].
    pub async fn confirm_or_publish_again(
        &self,
        mut pending: PendingConfirm,
        body: &[u8],
        properties: &BasicProperties,
        retry_for: Duration,
    ) -> Result<Routed> {
        let deadline = Instant::now() + retry_for;
        let mut backoff = ExponentialBackoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            Jitter::Equal,
        );
        loop {
            let queue = pending.routing_key.clone();
            match pending.wait().await {
                Err(Error::Nacked { .. }) if Instant::now() < deadline => {
                    tracing::debug!(%queue, "the broker refused a message; publishing it again");
                    tokio::time::sleep(backoff.next_delay()).await;
                    pending = self.publish(&queue, body, properties.clone()).await?;
                }
                outcome => return outcome,
            }
        }
    }
}

/// How long a publisher keeps publishing a message the broker refuses
/// ([`Publisher::confirm_or_publish_again`]). A quorum queue refuses
/// messages while it elects a new leader after a node loss, and while a
/// majority of its nodes is down (a restarted node still catching up): over
/// 30 s was seen in CI. Tasks, results and checkpoints wait that out as
/// they wait out a lost connection; giving up sooner would fail a job (or
/// spend a task's deliveries) over what a cluster is built to survive.
pub const REFUSED_PUBLISH_RETRY_FOR: Duration = Duration::from_secs(120);

/// How a consumer acknowledges deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// The consumer acks each delivery itself; at most `prefetch`
    /// unacknowledged deliveries are outstanding for this consumer.
    Manual {
        /// The per-consumer prefetch limit.
        prefetch: u16,
    },
    /// The broker forgets a message as soon as it is sent. Only for the
    /// producer's results: once the producer holds a result it is safe, and
    /// if the producer dies its job dies with it.
    Automatic,
}

/// Starts consuming a queue.
///
/// # Errors
/// [`Error::Broker`].
pub async fn consume(
    channel: &Channel,
    queue: &str,
    consumer_tag: &str,
    acks: Acks,
) -> Result<Consumer> {
    if let Acks::Manual { prefetch } = acks {
        // global = false: a per-consumer limit. Quorum queues refuse global QoS.
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| Error::broker(format!("set prefetch {prefetch}"), e))?;
    }
    channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: acks == Acks::Automatic,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::broker(format!("consume from {queue}"), e))
}

/// Deletes a queue; a queue that is already gone counts as deleted.
///
/// # Errors
/// [`Error::Broker`] for other failures.
pub async fn delete_queue(channel: &Channel, queue: &str) -> Result<()> {
    match channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let error = Error::broker(format!("delete queue {queue}"), e);
            if error.is_not_found() {
                Ok(())
            } else {
                Err(error)
            }
        }
    }
}

/// What a passive declare found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery (not counting unacknowledged ones).
    pub ready: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// Bound on one [`QueueProbe::inspect`].
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks a queue up without creating it, on a channel of its own: a
/// passive declare of a missing queue makes the broker close the channel,
/// so the probe reopens it when needed.
#[derive(Debug)]
pub struct QueueProbe {
    channel: Option<Channel>,
}

impl QueueProbe {
    /// A probe; its channel opens on first use.
    pub fn new() -> Self {
        QueueProbe { channel: None }
    }

    /// The queue's counters, or `None` if it does not exist.
    ///
    /// # Errors
    /// [`Error::Broker`] for failures other than "not found".
    pub async fn inspect(
        &mut self,
        connection: &Connection,
        queue: &str,
    ) -> Result<Option<QueueStats>> {
        // Bounded: a request caught by a connection as it closes may never
        // be answered, and callers (a worker's tasks, the producer's loop)
        // must not wait on it forever.
        match tokio::time::timeout(PROBE_TIMEOUT, self.declare_passive(connection, queue)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.channel = None;
                Err(Error::broker(
                    format!("look up queue {queue}"),
                    lapin::Error::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no answer within {}",
                            humantime::format_duration(PROBE_TIMEOUT)
                        ),
                    )),
                ))
            }
        }
    }

    async fn declare_passive(
        &mut self,
        connection: &Connection,
        queue: &str,
    ) -> Result<Option<QueueStats>> {
        let channel = match &self.channel {
            Some(channel) if channel.status().connected() => channel.clone(),
            _ => {
                let channel = open_channel(connection).await?;
                self.channel = Some(channel.clone());
                channel
            }
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(found) => Ok(Some(QueueStats {
                ready: found.message_count(),
                consumers: found.consumer_count(),
            })),
            Err(e) => {
                self.channel = None;
                let error = Error::broker(format!("look up queue {queue}"), e);
                if error.is_not_found() {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }
}

impl Default for QueueProbe {
    fn default() -> Self {
        Self::new()
    }
}
