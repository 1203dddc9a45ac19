//! The reference: what the broker itself sustains with raw lapin, with the
//! same queue type (quorum), message sizes and headers as warren's tasks,
//! persistent messages, pipelined publisher confirms and a consumer with
//! manual acks (one multiple-ack per batch), on separate connections.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::Result;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use warren::broker::{self, Acks, Publisher};
use warren::{BrokerConfig, Dtype, JobId};

use crate::Scale;
use crate::cluster::Cluster;
use crate::report::{Row, Sample};

/// The ceiling, per message size.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// Messages/s with a small sum task's message (8 float64).
    pub small_msgs: f64,
    /// Bytes/s with 1 MiB messages (the default chunk).
    pub large_bytes: f64,
}

pub async fn run(cluster: &mut Cluster, scale: Scale, rows: &mut Vec<Row>) -> Result<Ceiling> {
    let small_count = if scale.quick { 20_000 } else { 40_000 };
    let large_count = if scale.quick { 500 } else { 1_500 };
    let mut small = Vec::new();
    let mut large = Vec::new();
    for _ in 0..scale.runs.min(3) {
        small.push(measure(cluster, 64, small_count, 2_000, 1_000).await?);
        large.push(measure(cluster, 1 << 20, large_count, 256, 100).await? * f64::from(1u32 << 20));
    }
    let small = Sample::of(&small);
    let large = Sample::of(&large);
    let ceiling = Ceiling {
        small_msgs: small.median,
        large_bytes: large.median,
    };
    rows.push(Row::new(
        "broker ceiling (raw lapin, quorum)",
        "64 B messages",
        small,
        "msg/s",
    ));
    let large_mb = Sample {
        median: large.median / 1e6,
        min: large.min / 1e6,
        max: large.max / 1e6,
        runs: large.runs,
    };
    rows.push(Row::new(
        "broker ceiling (raw lapin, quorum)",
        "1 MiB messages",
        large_mb,
        "MB/s",
    ));
    Ok(ceiling)
}

/// Publishes `count` messages of `body` bytes while a second connection
/// consumes and acks them; returns messages per second.
async fn measure(
    cluster: &Cluster,
    body: usize,
    count: u64,
    window: usize,
    prefetch: u16,
) -> Result<f64> {
    let queue = format!("{}.ceiling", cluster.prefix);
    let config = BrokerConfig::local(&cluster.url, &cluster.prefix)?;
    let channel = broker::open_channel(cluster.connection()).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
        .await?;

    let consumer_connection = broker::connect(&config, "warren-bench ceiling consumer").await?;
    let consume_channel = broker::open_channel(&consumer_connection).await?;
    let mut consumer = broker::consume(
        &consume_channel,
        &queue,
        "ceiling",
        Acks::Manual { prefetch },
    )
    .await?;
    // One multiple-ack per quarter of the prefetch window, as a tuned raw
    // consumer does (and as the independent loop of issue 13 did): an ack
    // per delivery costs a frame and an await per message, a likely cause
    // of this reference measuring 2.5x below that loop for 64 B messages.
    let ack_every = u64::from(prefetch / 4).max(1);
    let consumed = tokio::spawn(async move {
        let mut seen = 0;
        while seen < count {
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    seen += 1;
                    if seen % ack_every == 0 || seen == count {
                        let all_so_far = BasicAckOptions { multiple: true };
                        delivery.acker.ack(all_so_far).await?;
                    }
                }
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => anyhow::bail!("the ceiling consumer was cancelled"),
            }
        }
        anyhow::Ok(Instant::now())
    });

    let publisher_connection = broker::connect(&config, "warren-bench ceiling publisher").await?;
    let publisher = Publisher::open(&publisher_connection).await?;
    // A warren task's properties, so header encoding costs the same.
    let task =
        warren::protocol::SumTask::single(JobId::random(), 0, Dtype::Float64, (body / 8) as u64);
    let payload = vec![7u8; body];
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(window);
    for _ in 0..count {
        pending.push_back(
            publisher
                .publish(&queue, &payload, task.properties(&queue))
                .await?,
        );
        if pending.len() >= window
            && let Some(oldest) = pending.pop_front()
        {
            let _ = oldest.wait().await?;
        }
    }
    while let Some(oldest) = pending.pop_front() {
        let _ = oldest.wait().await?;
    }
    let finished = consumed.await??;
    let rate = count as f64 / (finished - started).as_secs_f64();
    broker::delete_queue(&channel, &queue).await?;
    broker::close_quietly(&publisher_connection).await;
    broker::close_quietly(&consumer_connection).await;
    Ok(rate)
}
