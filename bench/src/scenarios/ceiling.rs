//! The reference: what the broker itself sustains with a plain raw-lapin
//! loop, with the same queue types, message sizes, headers and delivery
//! modes as warren's messages: one publisher with pipelined confirms and
//! one consumer with manual acks, one multiple-ack per quarter of its
//! prefetch, on separate connections.
//!
//! - warren's tasks and sum results: persistent messages on quorum queues,
//!   64 B (a small sum task) and 1 MiB (the default chunk);
//! - the body chunks of broker-mode downloads, 256 KiB (a 256 KiB file is
//!   one chunk) and 1 MiB (larger files go in chunks of the default 1 MiB):
//!   on a quorum queue, the reply queue of a download job that outlives its
//!   producer (the default), and on a classic queue, that of a job with
//!   `--job-ttl 0`.
//!
//! Every ratio refers to these, measured in the same run; a weak ceiling
//! would flatter them all, so each is the best setting of the loop found
//! (see [`Shape::best`]). One more row measures the 64 B ceiling as it
//! was measured before issue 13, an ack per delivery, beside it.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::Result;
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use warren::broker::{self, Acks, Publisher};
use warren::protocol::{BodyChunk, SumTask};
use warren::{BrokerConfig, Dtype, JobId};

use crate::Scale;
use crate::cluster::Cluster;
use crate::report::{Row, Sample, human};

const MIB: usize = 1 << 20;

/// The ceilings, per queue type and message size.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// Messages/s, 64 B persistent messages on a quorum queue (a small
    /// sum task).
    pub small_msgs: f64,
    /// Bytes/s, 1 MiB persistent messages on a quorum queue.
    pub large_bytes: f64,
    /// Bytes/s of download body chunks of 256 KiB and of 1 MiB, on each
    /// type of a download job's reply queue; `None` unless downloads run.
    pub relay: Option<RelayCeilings>,
}

/// The ceilings of broker-mode downloads' body chunks on each queue type.
#[derive(Debug, Clone, Copy)]
pub struct RelayCeilings {
    /// On a quorum queue: the reply queue of a job that outlives its
    /// producer (the default).
    pub quorum: RelayCeiling,
    /// On a classic queue: the reply queue with `--job-ttl 0`.
    pub classic: RelayCeiling,
}

/// The ceilings of broker-mode downloads' body chunks on one queue type.
#[derive(Debug, Clone, Copy)]
pub struct RelayCeiling {
    /// Bytes/s with 256 KiB messages.
    pub small_bytes: f64,
    /// Bytes/s with 1 MiB messages.
    pub large_bytes: f64,
}

impl RelayCeiling {
    /// The ceiling for chunks of files of `file_size` bytes: one message
    /// per file up to 1 MiB, 1 MiB messages beyond.
    pub fn for_file_size(&self, file_size: usize) -> (f64, &'static str) {
        if file_size < MIB {
            (self.small_bytes, "256 KiB")
        } else {
            (self.large_bytes, "1 MiB")
        }
    }
}

/// A queue type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Durable, replicated: warren's task queue and the reply queues of
    /// jobs that outlive their producer.
    Quorum,
    /// Non-durable: the reply queue of a job with `--job-ttl 0`.
    Classic,
}

/// How the consumer acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acking {
    /// One ack per delivery.
    EachDelivery,
    /// One multiple-ack every this many deliveries.
    Multiple(u64),
}

/// Whose headers and delivery mode the loop's messages carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// A sum task's (persistent).
    SumTask,
    /// A download body chunk's (transient).
    BodyChunk,
}

/// One kind of traffic and the loop's settings for it.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub queue: QueueType,
    pub message: Message,
    /// Message body in bytes.
    pub body: usize,
    /// Messages per measurement.
    pub count: u64,
    /// Publishes awaiting their confirms at most.
    pub window: usize,
    pub prefetch: u16,
    pub acking: Acking,
}

impl Shape {
    /// The best setting of the loop for `queue` and `body`: a confirm
    /// window and prefetch of a few MiB in flight (at least 1,000 small
    /// messages), one multiple-ack per quarter of the prefetch.
    pub fn best(queue: QueueType, message: Message, body: usize, count: u64) -> Shape {
        let window = (32 * MIB / body).clamp(16, 4_000);
        let prefetch = (16 * MIB / body).clamp(16, 2_000) as u16;
        Shape {
            queue,
            message,
            body,
            count,
            window,
            prefetch,
            acking: Acking::Multiple(u64::from(prefetch / 4).max(1)),
        }
    }
}

pub async fn run(
    cluster: &mut Cluster,
    scale: Scale,
    with_relay: bool,
    rows: &mut Vec<Row>,
) -> Result<Ceiling> {
    let runs = scale.runs.min(3);
    let small_count = if scale.quick { 20_000 } else { 40_000 };
    let large_count = if scale.quick { 500 } else { 1_500 };
    let small = Shape::best(QueueType::Quorum, Message::SumTask, 64, small_count);
    // As measured before issue 13: an ack per delivery, a window of 2,000
    // and a prefetch of 1,000.
    let small_before = Shape {
        window: 2_000,
        prefetch: 1_000,
        acking: Acking::EachDelivery,
        ..small
    };
    let large = Shape::best(QueueType::Quorum, Message::SumTask, MIB, large_count);
    // Alternating, so that drift on the shared machine hits both alike.
    let mut small_rates = Vec::new();
    let mut before_rates = Vec::new();
    let mut large_rates = Vec::new();
    for _ in 0..runs {
        small_rates.push(measure(cluster, &small).await?);
        before_rates.push(measure(cluster, &small_before).await?);
        large_rates.push(measure(cluster, &large).await? * MIB as f64);
    }
    let small_sample = Sample::of(&small_rates);
    let name = "broker ceiling (raw lapin, quorum, persistent)";
    rows.push(Row::new(
        name,
        "64 B messages",
        small_sample.clone(),
        "msg/s",
    ));
    rows.push(
        Row::new(
            "broker ceiling as measured before issue 13 (an ack per delivery)",
            "64 B messages",
            Sample::of(&before_rates),
            "msg/s",
        )
        .against(
            format!("the ceiling ({} msg/s)", human(small_sample.median)),
            small_sample.median,
        ),
    );
    let large_sample = Sample::of(&large_rates);
    rows.push(Row::new(
        name,
        "1 MiB messages",
        megabytes(&large_sample),
        "MB/s",
    ));
    let relay = if with_relay {
        Some(relay(cluster, scale, rows).await?)
    } else {
        None
    };
    Ok(Ceiling {
        small_msgs: small_sample.median,
        large_bytes: large_sample.median,
        relay,
    })
}

/// The ceilings of download body chunks on each queue type.
async fn relay(cluster: &mut Cluster, scale: Scale, rows: &mut Vec<Row>) -> Result<RelayCeilings> {
    Ok(RelayCeilings {
        quorum: relay_on(cluster, scale, QueueType::Quorum, rows).await?,
        classic: relay_on(cluster, scale, QueueType::Classic, rows).await?,
    })
}

/// The ceilings of download body chunks on a queue of type `queue`.
async fn relay_on(
    cluster: &mut Cluster,
    scale: Scale,
    queue: QueueType,
    rows: &mut Vec<Row>,
) -> Result<RelayCeiling> {
    let (small_count, large_count) = if scale.quick {
        (800, 300)
    } else {
        (2_000, 800)
    };
    let small = Shape::best(queue, Message::BodyChunk, 256 << 10, small_count);
    let large = Shape::best(queue, Message::BodyChunk, MIB, large_count);
    let mut small_rates = Vec::new();
    let mut large_rates = Vec::new();
    for _ in 0..scale.runs.min(3) {
        small_rates.push(measure(cluster, &small).await? * small.body as f64);
        large_rates.push(measure(cluster, &large).await? * large.body as f64);
    }
    let name = match queue {
        QueueType::Quorum => "broker ceiling (raw lapin, quorum: download chunks)",
        QueueType::Classic => {
            "broker ceiling (raw lapin, classic: download chunks with --job-ttl 0)"
        }
    };
    let small_sample = Sample::of(&small_rates);
    let large_sample = Sample::of(&large_rates);
    rows.push(Row::new(
        name,
        "256 KiB messages",
        megabytes(&small_sample),
        "MB/s",
    ));
    rows.push(Row::new(
        name,
        "1 MiB messages",
        megabytes(&large_sample),
        "MB/s",
    ));
    Ok(RelayCeiling {
        small_bytes: small_sample.median,
        large_bytes: large_sample.median,
    })
}

/// A sample in bytes/s as MB/s.
fn megabytes(sample: &Sample) -> Sample {
    Sample {
        median: sample.median / 1e6,
        min: sample.min / 1e6,
        max: sample.max / 1e6,
        runs: sample.runs,
    }
}

/// Publishes `shape.count` messages while a second connection consumes
/// and acks them; returns messages per second, from the first publish to
/// the last delivery.
pub async fn measure(cluster: &Cluster, shape: &Shape) -> Result<f64> {
    let queue = format!("{}.ceiling", cluster.prefix);
    let config = BrokerConfig::local(&cluster.url, &cluster.prefix)?;
    let channel = broker::open_channel(cluster.connection()).await?;
    declare(&channel, &queue, shape.queue).await?;

    let consumer_connection = broker::connect(&config, "warren-bench ceiling consumer").await?;
    let consume_channel = broker::open_channel(&consumer_connection).await?;
    let consumer = broker::consume(
        &consume_channel,
        &queue,
        "ceiling",
        Acks::Manual {
            prefetch: shape.prefetch,
        },
    )
    .await?;
    let consumed = tokio::spawn(consume(consumer, shape.count, shape.acking));

    let publisher_connection = broker::connect(&config, "warren-bench ceiling publisher").await?;
    let publisher = Publisher::open(&publisher_connection).await?;
    let properties = properties(shape, &queue);
    let payload = vec![7u8; shape.body];
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(shape.window);
    for _ in 0..shape.count {
        pending.push_back(
            publisher
                .publish(&queue, &payload, properties.clone())
                .await?,
        );
        if pending.len() >= shape.window
            && let Some(oldest) = pending.pop_front()
        {
            let _ = oldest.wait().await?;
        }
    }
    while let Some(oldest) = pending.pop_front() {
        let _ = oldest.wait().await?;
    }
    let finished = consumed.await??;
    let rate = shape.count as f64 / (finished - started).as_secs_f64();
    broker::delete_queue(&channel, &queue).await?;
    broker::close_quietly(&publisher_connection).await;
    broker::close_quietly(&consumer_connection).await;
    Ok(rate)
}

pub(super) async fn declare(
    channel: &lapin::Channel,
    queue: &str,
    queue_type: QueueType,
) -> Result<()> {
    let mut args = FieldTable::default();
    let (kind, options) = match queue_type {
        QueueType::Quorum => ("quorum", QueueDeclareOptions::durable()),
        QueueType::Classic => ("classic", QueueDeclareOptions::default()),
    };
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(kind)),
    );
    channel.queue_declare(queue.into(), options, args).await?;
    Ok(())
}

/// warren's properties for such a message, so that header encoding costs
/// the same.
fn properties(shape: &Shape, queue: &str) -> BasicProperties {
    match shape.message {
        Message::SumTask => {
            let elements = (shape.body / 8) as u64;
            SumTask::single(JobId::random(), 0, Dtype::Float64, elements).properties(queue)
        }
        Message::BodyChunk => BodyChunk {
            job: JobId::random(),
            task: 0,
            attempt: "a1b2c3d4".to_owned(),
            offset: 0,
        }
        .properties(),
    }
}

/// Consumes `count` deliveries, acking as `acking` says; returns when the
/// last arrived.
async fn consume(mut consumer: lapin::Consumer, count: u64, acking: Acking) -> Result<Instant> {
    let mut seen = 0;
    while seen < count {
        match consumer.next().await {
            Some(Ok(delivery)) => {
                seen += 1;
                match acking {
                    Acking::EachDelivery => {
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                    }
                    Acking::Multiple(every) if seen % every == 0 || seen == count => {
                        let all_so_far = BasicAckOptions { multiple: true };
                        delivery.acker.ack(all_so_far).await?;
                    }
                    Acking::Multiple(_) => {}
                }
            }
            Some(Err(e)) => return Err(anyhow::Error::from(e)),
            None => anyhow::bail!("the ceiling consumer was cancelled"),
        }
    }
    Ok(Instant::now())
}
