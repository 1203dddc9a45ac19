//! The plain loop of a download through the broker: the least work any
//! broker-mode download does, with none of warren's job around it, so that
//! warren's broker mode can be measured against what its own path can do
//! on this machine, not only against the broker's ceiling (which leaves
//! out fetching, writing and hashing; all share the same two cores).
//!
//! One process fetches each URL with reqwest, `concurrency` at a time, and
//! publishes its body as warren's workers do: in chunks of the file up to
//! 1 MiB, 1 MiB beyond, with warren's `BodyChunk` headers, at most eight
//! unconfirmed per file, to a queue of the type of warren's reply queue. A
//! consumer on its own connection (prefetch and multiple-acks as in the
//! ceiling) writes each file under a temporary name while hashing it
//! (SHA-256), renames it when its last byte arrived, and, once every file
//! is in, makes them durable with one `syncfs`, as warren's default policy
//! does. No tasks, reports, checkpoints or separate processes.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use futures_lite::StreamExt;
use lapin::options::BasicAckOptions;
use sha2::{Digest, Sha256};
use warren::broker::{self, Acks, PendingConfirm, Publisher};
use warren::protocol::BodyChunk;
use warren::{BrokerConfig, JobId};

use super::ceiling::{self, QueueType};
use crate::cluster::Cluster;

const MIB: usize = 1 << 20;

/// Chunks of one file published but not confirmed, at most: a warren
/// worker's window.
const UNCONFIRMED_PER_FILE: usize = 8;

/// One run of the loop: `urls`, each `size` bytes, through a queue of
/// type `queue_type` into `dir` (which the caller empties), `concurrency`
/// fetches at once; MB/s from the first connection to the final sync.
pub async fn time_relay_loop(
    cluster: &Cluster,
    urls: &[String],
    size: usize,
    dir: &Path,
    concurrency: usize,
    queue_type: QueueType,
) -> Result<f64> {
    let started = Instant::now();
    let queue = format!("{}.relay-loop", cluster.prefix);
    let config = BrokerConfig::local(&cluster.url, &cluster.prefix)?;
    let channel = broker::open_channel(cluster.connection()).await?;
    ceiling::declare(&channel, &queue, queue_type).await?;

    let chunk = size.min(MIB);
    let prefetch = (16 * MIB / chunk).clamp(16, 2_000) as u16;
    let consumer_connection = broker::connect(&config, "warren-bench relay loop consumer").await?;
    let consume_channel = broker::open_channel(&consumer_connection).await?;
    let consumer = broker::consume(
        &consume_channel,
        &queue,
        "relay-loop",
        Acks::Manual { prefetch },
    )
    .await?;
    let ack_every = u64::from(prefetch / 4).max(1);
    let files = Files {
        dir: dir.to_owned(),
        count: urls.len(),
        size,
    };
    let writer = tokio::spawn(write_files(consumer, files, ack_every));

    let publisher_connection =
        broker::connect(&config, "warren-bench relay loop publisher").await?;
    let publisher = Publisher::open(&publisher_connection).await?;
    let relay = Relay {
        publisher,
        queue: queue.clone(),
        chunk,
        job: JobId::random(),
    };
    fetch_and_publish(urls, Arc::new(relay), concurrency).await?;
    writer.await??;
    let handle = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&handle)?;
    let rate = (urls.len() * size) as f64 / 1e6 / started.elapsed().as_secs_f64();

    broker::delete_queue(&channel, &queue).await?;
    broker::close_quietly(&publisher_connection).await;
    broker::close_quietly(&consumer_connection).await;
    Ok(rate)
}

/// Where fetched bodies go on the broker.
struct Relay {
    publisher: Publisher,
    queue: String,
    chunk: usize,
    job: JobId,
}

/// Fetches every URL, `concurrency` fetchers taking the next one in turn.
async fn fetch_and_publish(urls: &[String], relay: Arc<Relay>, concurrency: usize) -> Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let urls: Arc<[String]> = urls.into();
    let next = Arc::new(AtomicUsize::new(0));
    let mut fetchers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(urls.len()) {
        let (client, urls, next, relay) = (
            client.clone(),
            Arc::clone(&urls),
            Arc::clone(&next),
            Arc::clone(&relay),
        );
        fetchers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(url) = urls.get(index) else {
                    return anyhow::Ok(());
                };
                relay_one(&client, url, index as u64, &relay).await?;
            }
        });
    }
    while let Some(done) = fetchers.join_next().await {
        done??;
    }
    Ok(())
}

/// Fetches one URL and publishes its body in chunks, waiting for every
/// confirm before it returns.
async fn relay_one(client: &reqwest::Client, url: &str, index: u64, relay: &Relay) -> Result<()> {
    let mut response = client.get(url).send().await?.error_for_status()?;
    let mut header = BodyChunk {
        job: relay.job.clone(),
        task: index,
        attempt: "a1b2c3d4".to_owned(),
        offset: 0,
    };
    let mut buffer = Vec::with_capacity(relay.chunk);
    let mut pending: VecDeque<PendingConfirm> = VecDeque::new();
    let mut publish = async |buffer: &mut Vec<u8>, header: &mut BodyChunk| -> Result<()> {
        let confirm = relay
            .publisher
            .publish(&relay.queue, buffer, header.properties())
            .await?;
        header.offset += buffer.len() as u64;
        buffer.clear();
        pending.push_back(confirm);
        if pending.len() > UNCONFIRMED_PER_FILE
            && let Some(oldest) = pending.pop_front()
        {
            let _ = oldest.wait().await?;
        }
        Ok(())
    };
    while let Some(bytes) = response.chunk().await? {
        let mut data = &bytes[..];
        while !data.is_empty() {
            let take = (relay.chunk - buffer.len()).min(data.len());
            buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if buffer.len() == relay.chunk {
                publish(&mut buffer, &mut header).await?;
            }
        }
    }
    if !buffer.is_empty() {
        publish(&mut buffer, &mut header).await?;
    }
    while let Some(oldest) = pending.pop_front() {
        let _ = oldest.wait().await?;
    }
    Ok(())
}

/// The files the consumer expects.
struct Files {
    dir: PathBuf,
    count: usize,
    size: usize,
}

/// A file being written: its temporary file, its hash so far, its bytes.
type Open = (std::fs::File, Sha256, usize);

/// Consumes body chunks, writing and hashing each file and renaming it
/// once complete, until every file is in.
async fn write_files(mut consumer: lapin::Consumer, files: Files, ack_every: u64) -> Result<()> {
    let mut open: HashMap<u64, Open> = HashMap::new();
    let (mut complete, mut seen) = (0, 0u64);
    while complete < files.count {
        let delivery = consumer
            .next()
            .await
            .context("the relay loop's consumer was cancelled")??;
        let chunk = BodyChunk::of(&delivery.properties).context("a body chunk's headers")??;
        let temp = files.dir.join(format!("{}.tmp", chunk.task));
        let file = match open.entry(chunk.task) {
            std::collections::hash_map::Entry::Occupied(file) => file.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((std::fs::File::create(&temp)?, Sha256::new(), 0))
            }
        };
        ensure!(file.2 as u64 == chunk.offset, "chunks out of order");
        file.0.write_all(&delivery.data)?;
        file.1.update(&delivery.data);
        file.2 += delivery.data.len();
        if file.2 == files.size {
            let (_, hash, _) = open.remove(&chunk.task).expect("just found");
            std::hint::black_box(hash.finalize());
            std::fs::rename(&temp, files.dir.join(format!("{}.bin", chunk.task)))?;
            complete += 1;
        }
        seen += 1;
        if seen % ack_every == 0 || complete == files.count {
            let all_so_far = BasicAckOptions { multiple: true };
            delivery.acker.ack(all_so_far).await?;
        }
    }
    Ok(())
}
