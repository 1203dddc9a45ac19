//! A job that outlives its producer: the job's record on the broker.
//!
//! Each job has a record queue, `P.job.<job>` (see `warren::topology`),
//! that keeps only the newest message: a [`JobRecord`] saying what the job
//! is (enough to publish the rest of its tasks and print the same answer)
//! and what has been gathered so far (its checkpoint). The producer saves a
//! new record, waits for the broker's confirm, and only then acks the
//! replies the record covers, so every result is always in the record or
//! still in the reply queue: a producer that dies loses nothing, and
//! `producer attach` carries on from the record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use warren::JobId;
use warren::broker::{Publisher, REFUSED_PUBLISH_RETRY_FOR, Routed};

use crate::error::{Error, Result};

/// The record format; a producer refuses records of another version.
pub(crate) const RECORD_VERSION: u32 = 1;

/// Records read from a record queue at most, to find the newest: the queue
/// keeps one, but a record held by a reader while a newer one was saved
/// comes back beside it.
const MAX_RECORDS_READ: usize = 8;

/// What a job is and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    /// [`RECORD_VERSION`].
    pub(crate) version: u32,
    /// The job.
    pub(crate) job: JobId,
    /// Saved in order: the newest record has the highest.
    pub(crate) seq: u64,
    /// When the job started, in milliseconds since the Unix epoch.
    pub(crate) created_unix_ms: u64,
    /// How long the job outlives its producer (`--job-ttl`), in
    /// milliseconds.
    pub(crate) ttl_ms: u64,
    /// Tasks answered so far.
    pub(crate) done: u64,
    /// All tasks, once known.
    pub(crate) total: Option<u64>,
    /// The job's kind and settings.
    pub(crate) spec: JobSpec,
    /// What the job's collector gathered, in its own form; `None` before
    /// the first checkpoint.
    pub(crate) checkpoint: Option<serde_json::Value>,
}

/// A job's kind and the settings that resuming it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum JobSpec {
    /// A sum job.
    Sum(crate::sum::SumSpec),
    /// A download job.
    Download(Box<crate::download::DownloadJobSpec>),
}

impl JobSpec {
    /// The directory the job shares with its workers, if any: a shared
    /// download's output directory (local workers of `attach --workers`
    /// need it).
    pub(crate) fn shared_dir(&self) -> Option<&std::path::Path> {
        match self {
            JobSpec::Sum(_) => None,
            JobSpec::Download(spec) => spec.shared_dir(),
        }
    }

    /// The kind's name, as `producer jobs` shows it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            JobSpec::Sum(_) => "sum",
            JobSpec::Download(_) => "download",
        }
    }
}

impl JobRecord {
    /// The first record of a new job.
    pub(crate) fn new(job: JobId, ttl: Duration, spec: JobSpec) -> Self {
        JobRecord {
            version: RECORD_VERSION,
            job,
            seq: 0,
            created_unix_ms: now_unix_ms(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            done: 0,
            total: None,
            spec,
            checkpoint: None,
        }
    }

    /// The job's TTL.
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// How long ago the job started.
    pub(crate) fn age(&self) -> Duration {
        Duration::from_millis(now_unix_ms().saturating_sub(self.created_unix_ms))
    }

    /// Saves this record as the job's newest, and waits until the broker
    /// holds it.
    ///
    /// # Errors
    /// A broker failure, or [`warren::Error::Unroutable`] when the record
    /// queue is gone (the job was cancelled or expired).
    pub(crate) async fn save(&self, publisher: &Publisher, queue: &str) -> Result<()> {
        let saving = self.start_saving(publisher, queue).await?;
        saving.await
    }

    /// Publishes this record as the job's newest and returns what waits
    /// for the broker to hold it, so that the caller goes on meanwhile.
    ///
    /// # Errors
    /// A broker failure to publish; the returned future: a failure to
    /// confirm, or [`warren::Error::Unroutable`] when the record queue is
    /// gone (the job was cancelled or expired).
    pub(crate) async fn start_saving(
        &self,
        publisher: &Publisher,
        queue: &str,
    ) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
        let body = serde_json::to_vec(self).expect("a record always serializes"); // invariant: plain data
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"));
        let pending = publisher.publish(queue, &body, properties.clone()).await?;
        let publisher = publisher.clone();
        let queue = queue.to_owned();
        Ok(async move {
            // A quorum record queue refuses messages while it elects a
            // leader: publish the record again rather than fail the job.
            let routed = publisher
                .confirm_or_publish_again(pending, &body, &properties, REFUSED_PUBLISH_RETRY_FOR)
                .await?;
            match routed {
                Routed::Queued => Ok(()),
                Routed::Returned => Err(warren::Error::Unroutable { queue }.into()),
            }
        })
    }

    /// Reads the newest record in `queue`, leaving it there; `None` when the
    /// queue is empty.
    ///
    /// # Errors
    /// A broker failure ([`warren::Error::is_not_found`] when there is no
    /// such queue), or [`Error::BadRecord`].
    pub(crate) async fn load(channel: &Channel, queue: &str) -> Result<Option<JobRecord>> {
        let mut newest: Option<JobRecord> = None;
        let mut last_tag = None;
        let mut outcome = Ok(());
        for _ in 0..MAX_RECORDS_READ {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| warren::Error::broker(format!("read the job record in {queue}"), e))?;
            let Some(message) = got else { break };
            last_tag = Some(message.delivery.delivery_tag);
            match parse(queue, &message.delivery.data) {
                Ok(record) if newest.as_ref().is_none_or(|n| record.seq > n.seq) => {
                    newest = Some(record);
                }
                Ok(_) => {}
                Err(e) => outcome = Err(e),
            }
            if message.message_count == 0 {
                break;
            }
        }
        if let Some(tag) = last_tag {
            let requeue = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            channel.basic_nack(tag, requeue).await.map_err(|e| {
                warren::Error::broker(format!("return the job record to {queue}"), e)
            })?;
        }
        outcome.map(|()| newest)
    }
}

fn parse(queue: &str, body: &[u8]) -> Result<JobRecord> {
    let record: JobRecord = serde_json::from_slice(body).map_err(|e| Error::BadRecord {
        queue: queue.to_owned(),
        reason: e.to_string(),
    })?;
    if record.version != RECORD_VERSION {
        return Err(Error::BadRecord {
            queue: queue.to_owned(),
            reason: format!(
                "record version {} (this producer reads version {RECORD_VERSION})",
                record.version
            ),
        });
    }
    Ok(record)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
