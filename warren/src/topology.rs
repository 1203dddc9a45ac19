//! Queue and exchange names, their arguments, and declaring them.
//!
//! Every name is built here from the queue prefix `P` and nowhere else:
//!
//! | name | what |
//! | --- | --- |
//! | `P.tasks` | durable quorum queue all workers consume |
//! | `P.dead-letter` | headers exchange that dead-lettered tasks go to |
//! | `P.dead` | durable quorum queue bound to `P.dead-letter`: keeps the latest dead letters (100,000 messages, 1 GiB at most) |
//! | `P.reply.<job>` | one job's results; also bound to `P.dead-letter` for that job's tasks |
//!
//! A job is alive exactly as long as its reply queue exists: it is
//! auto-delete, so it goes away when the producer stops consuming (it
//! finished, was cancelled, or its process died), and workers drop tasks
//! whose reply queue is gone. See
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

/// A reply queue that never got a consumer (its producer died right after
/// declaring it) is deleted after this many milliseconds.
const REPLY_QUEUE_EXPIRES_MS: i64 = 60_000;

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
    ///
    /// # Errors
    /// [`Error::Broker`].
    pub async fn declare_reply_queue(&self, channel: &Channel, job: &JobId) -> Result<String> {
        let name = self.reply_queue(job);
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("classic"));
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(REPLY_QUEUE_EXPIRES_MS),
        );
        let options = QueueDeclareOptions {
            durable: false,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        declare_queue(channel, &name, options, args).await?;
        let mut this_job = FieldTable::default();
        this_job.insert("x-match".into(), string("all"));
        this_job.insert(header::JOB.into(), string(job.as_str()));
        bind(channel, &name, &self.dead_letter_exchange(), this_job).await?;
        Ok(name)
    }
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
    }
}
