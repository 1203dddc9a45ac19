//! Queue and exchange names, their arguments, and declaring them.
//!
//! Every name is built here from the queue prefix `P` and nowhere else:
//!
//! | name | what |
//! | --- | --- |
//! | `P.tasks` | durable quorum queue all workers consume |
//! | `P.dead-letter` | headers exchange that dead-lettered tasks go to |
//! | `P.dead` | durable quorum queue bound to `P.dead-letter`: keeps the latest dead letters (100,000 messages, 1 GiB at most) |
//! | `P.reply.<job>` | one job's results: a durable quorum queue (an auto-delete classic one for downloads), also bound to `P.dead-letter` for that job's tasks |
//! | `P.job.<job>` | one job's record (what it is and its latest checkpoint): a durable quorum queue holding one message |
//! | `P.attached.<job>` | exclusive to the producer attached to the job: a second one cannot attach |
//!
//! A job is alive exactly as long as its reply queue exists. The producer
//! deletes it when the job ends or is cancelled; if the producer dies, the
//! queue and the job's record stay, so another producer can attach, until
//! nobody has consumed the queue for the job's TTL (`x-expires`). Workers
//! drop tasks whose reply queue is gone. See
//! <https://www.rabbitmq.com/docs/quorum-queues> for the task queue's
//! semantics and <https://www.rabbitmq.com/docs/dlx> for dead-lettering.

use lapin::Channel;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::config::QueuePrefix;
use crate::error::{Error, Result};
use crate::protocol::{JobId, header};

/// After this many deliveries of one task (crashed or requeueing workers),
/// RabbitMQ dead-letters it instead of redelivering it forever.
pub const DELIVERY_LIMIT: i64 = 20;

/// The dead-letter queue keeps at most this many messages...
pub const DEAD_LETTER_MAX_MESSAGES: i64 = 100_000;
/// ...and at most this many bytes of them (1 GiB).
pub const DEAD_LETTER_MAX_BYTES: i64 = 1 << 30;

/// How long a job outlives its producer by default: its reply queue and
/// record expire after this long without a consumer.
pub const DEFAULT_JOB_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a job's reply queue lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobLifetime {
    /// A durable quorum queue: results survive a broker restart and the
    /// loss of a cluster node, and a producer that dies can be replaced by
    /// another (`producer attach`) until nobody has consumed the queue for
    /// `ttl`.
    Durable {
        /// How long the queue stays without a consumer.
        ttl: std::time::Duration,
    },
    /// A classic auto-delete queue, gone with its producer's consumer: for
    /// jobs that keep no checkpoints (downloads, for now).
    WithProducer,
}

/// A reply queue of [`JobLifetime::WithProducer`] that never got a
/// consumer (its producer died right after declaring it) is deleted after
/// this many milliseconds.
const UNCONSUMED_REPLY_QUEUE_EXPIRES_MS: i64 = 60_000;

/// The names and declarations of one queue prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: QueuePrefix,
}

impl Topology {
    /// The topology of one prefix.
    pub fn new(prefix: QueuePrefix) -> Self {
        Topology { prefix }
    }

    /// The prefix.
    pub fn prefix(&self) -> &QueuePrefix {
        &self.prefix
    }

    /// The task queue: `P.tasks`.
    pub fn task_queue(&self) -> String {
        format!("{}.tasks", self.prefix)
    }

    /// The dead-letter queue: `P.dead`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The dead-letter exchange: `P.dead-letter`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// A job's reply queue: `P.reply.<job>`.
    pub fn reply_queue(&self, job: &JobId) -> String {
        format!("{}.reply.{job}", self.prefix)
    }

    /// A job's record queue: `P.job.<job>`.
    pub fn job_queue(&self, job: &JobId) -> String {
        format!("{}.job.{job}", self.prefix)
    }

    /// The prefix of every job record queue's name, `P.job.`, for listing.
    pub fn job_queue_prefix(&self) -> String {
        format!("{}.job.", self.prefix)
    }

    /// The queue whose exclusive declaration marks a job as attached:
    /// `P.attached.<job>`.
    pub fn attach_lock(&self, job: &JobId) -> String {
        format!("{}.attached.{job}", self.prefix)
    }

    /// Declares the exchange and queues every job shares. Idempotent: the
    /// producer and every worker call it on connect.
    ///
    /// # Errors
    /// [`Error::Broker`]; [`Error::is_precondition_failed`] tells when a
    /// queue of the same name exists with other arguments.
    pub async fn declare_shared(&self, channel: &Channel) -> Result<()> {
        let exchange = self.dead_letter_exchange();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Headers,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker(format!("declare exchange {exchange}"), e))?;

        let dead = self.dead_letter_queue();
        let mut dead_args = quorum();
        // Dead letters keep whole task bodies: bound what they can hold; the
        // oldest go first.
        dead_args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(DEAD_LETTER_MAX_MESSAGES),
        );
        dead_args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(DEAD_LETTER_MAX_BYTES),
        );
        declare_queue(channel, &dead, QueueDeclareOptions::durable(), dead_args).await?;
        // x-match all with no other header: every dead letter matches.
        let mut match_all = FieldTable::default();
        match_all.insert("x-match".into(), string("all"));
        bind(channel, &dead, &exchange, match_all).await?;

        let mut task_args = quorum();
        task_args.insert("x-dead-letter-exchange".into(), string(&exchange));
        task_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        declare_queue(
            channel,
            &self.task_queue(),
            QueueDeclareOptions::durable(),
            task_args,
        )
        .await
    }

    /// Declares a job's reply queue and routes the job's dead-lettered tasks
    /// into it, so the producer hears at once when a task is given up on.
    /// See [`JobLifetime`] for the two kinds. Idempotent for the same
    /// lifetime.
    ///
    /// # Errors
    /// [`Error::Broker`].
    pub async fn declare_reply_queue(
        &self,
        channel: &Channel,
        job: &JobId,
        lifetime: JobLifetime,
    ) -> Result<String> {
        let name = self.reply_queue(job);
        match lifetime {
            JobLifetime::Durable { ttl } => {
                declare_queue(
                    channel,
                    &name,
                    QueueDeclareOptions::durable(),
                    expiring(ttl),
                )
                .await?;
            }
            JobLifetime::WithProducer => {
                let mut args = FieldTable::default();
                args.insert("x-queue-type".into(), string("classic"));
                args.insert(
                    "x-expires".into(),
                    AMQPValue::LongLongInt(UNCONSUMED_REPLY_QUEUE_EXPIRES_MS),
                );
                let options = QueueDeclareOptions {
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                };
                declare_queue(channel, &name, options, args).await?;
            }
        }
        let mut this_job = FieldTable::default();
        this_job.insert("x-match".into(), string("all"));
        this_job.insert(header::JOB.into(), string(job.as_str()));
        bind(channel, &name, &self.dead_letter_exchange(), this_job).await?;
        Ok(name)
    }

    /// Declares a job's record queue: it holds only the newest message
    /// (older ones are dropped) and expires with the reply queue.
    ///
    /// # Errors
    /// [`Error::Broker`].
    pub async fn declare_job_queue(
        &self,
        channel: &Channel,
        job: &JobId,
        ttl: std::time::Duration,
    ) -> Result<String> {
        let name = self.job_queue(job);
        let mut args = expiring(ttl);
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        declare_queue(channel, &name, QueueDeclareOptions::durable(), args).await?;
        Ok(name)
    }

    /// Declares the job's attach lock: an exclusive queue, so that while
    /// this connection lives no other producer can attach to the job.
    ///
    /// # Errors
    /// [`Error::Broker`]; [`Error::is_resource_locked`] when another
    /// producer holds the job.
    pub async fn lock_job(&self, channel: &Channel, job: &JobId) -> Result<()> {
        let name = self.attach_lock(job);
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("classic"));
        declare_queue(channel, &name, options, args).await
    }
}

/// Quorum queue arguments that expire the queue after `ttl` unused.
fn expiring(ttl: std::time::Duration) -> FieldTable {
    let mut args = quorum();
    let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
    args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    args
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args
}

fn string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> Result<()> {
    channel
        .queue_declare(name.into(), options, args)
        .await
        .map(drop)
        .map_err(|e| Error::broker(format!("declare queue {name}"), e))
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, args: FieldTable) -> Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            args,
        )
        .await
        .map_err(|e| Error::broker(format!("bind queue {queue} to {exchange}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_prefix() {
        let topology = Topology::new(QueuePrefix::new("t1").unwrap());
        let job = JobId::parse("abc").unwrap();
        assert_eq!(topology.task_queue(), "t1.tasks");
        assert_eq!(topology.dead_letter_queue(), "t1.dead");
        assert_eq!(topology.dead_letter_exchange(), "t1.dead-letter");
        assert_eq!(topology.reply_queue(&job), "t1.reply.abc");
        assert_eq!(topology.job_queue(&job), "t1.job.abc");
        assert_eq!(topology.job_queue_prefix(), "t1.job.");
        assert_eq!(topology.attach_lock(&job), "t1.attached.abc");
    }
}
