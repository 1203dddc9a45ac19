//! Jobs that outlive their producer: `producer attach` carries one on from
//! its record, `producer jobs` lists those that can be attached to, and
//! `producer cancel` ends one everywhere.

use std::time::Duration;

use crate::management::ManagementApi;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use warren::broker::{self, QueueProbe};
use warren::{BrokerConfig, JobId, Topology};

use crate::durable::{JobRecord, JobSpec};
use crate::error::{Error, Result};
use crate::job::{JobSession, Opening};
use crate::local::LocalPlan;
use crate::output::Report;
use crate::progress::Progress;
use crate::sum::{self, RunLimits};

/// Carries on a job whose producer stopped, and reports as that producer
/// would have.
///
/// # Errors
/// [`Error::NoSuchJob`], [`Error::JobAttached`], [`Error::CannotResume`],
/// and whatever ends the job itself.
pub(crate) async fn attach(
    broker: &BrokerConfig,
    job: &JobId,
    limits: RunLimits,
    local: &LocalPlan,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<Report> {
    progress.set_job(job);
    let session = JobSession::open(broker, Opening::Attach(job.clone()), local, &shutdown).await?;
    let Some(record) = session.record().cloned() else {
        unreachable!("an attached session always has the job's record");
    };
    progress.note(&format!(
        "attached to {} job {job}, started {} ago: {} of {} tasks done",
        record.spec.kind(),
        humantime::format_duration(whole_seconds(record.age())),
        record.done,
        record
            .total
            .map_or_else(|| "?".to_owned(), |t| t.to_string()),
    ));
    match &record.spec {
        JobSpec::Sum(spec) => {
            let report = sum::resume(session, &record, spec, limits, progress, shutdown).await?;
            Ok(Report::Sum {
                report,
                seed: spec.seed(),
            })
        }
        JobSpec::Download(spec) => {
            let resuming = (broker, local);
            let summary = crate::download::resume(
                resuming, session, &record, spec, limits, progress, shutdown,
            );
            Ok(Report::Download(summary.await?))
        }
    }
}

/// How long a producer that lost its broker keeps trying to carry its job
/// on: a broker restart, a failover to another node.
// A broker restart takes seconds on a quiet machine, but its quorum queues
// (the job's record among them) answer only once they have recovered: up to
// minutes on a busy one.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// Carries on a job after the producer lost its broker connection: attaches
/// to it again, retrying while the broker is away, for [`RECONNECT_FOR`]
/// after each loss (a job that lives through many short outages is carried
/// on through all of them).
///
/// # Errors
/// The last error once retrying is over, or the first that retrying cannot
/// help.
pub(crate) async fn reconnect(
    broker: &BrokerConfig,
    job: &JobId,
    limits: RunLimits,
    local: &LocalPlan,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<Report> {
    let mut deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    let mut backoff = Duration::from_millis(250);
    loop {
        progress.warn(&format!(
            "lost the broker connection: connecting again to carry job {job} on"
        ));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return Err(Error::Cancelled),
        }
        let done_before = progress.counts().0;
        match attach(broker, job, limits, local, progress, shutdown.clone()).await {
            // The job moved on before this loss: a new outage, with its own
            // time. A broker that drops every connection before any task is
            // answered still ends the retrying.
            Err(e) if e.is_worth_reconnecting() && progress.counts().0 > done_before => {
                tracing::debug!(error = %warren::display_chain(&e), "lost again after progress");
                deadline = tokio::time::Instant::now() + RECONNECT_FOR;
                backoff = Duration::from_millis(250);
            }
            Err(e) if e.is_worth_reconnecting() && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %warren::display_chain(&e), "reconnecting failed");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            outcome => return outcome,
        }
    }
}

/// One job that can be attached to, as `producer jobs` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct JobListing {
    /// The job's id.
    pub job_id: String,
    /// `sum` or `download`.
    pub kind: String,
    /// Tasks answered at the last checkpoint.
    pub done: u64,
    /// All tasks, once known.
    pub total: Option<u64>,
    /// Seconds since the job started.
    pub age_s: u64,
    /// Whether a producer is attached to it now.
    pub attached: bool,
    /// The job's TTL in seconds: how long it stays without a producer.
    pub ttl_s: u64,
}

/// Lists the jobs under the queue prefix that outlive their producer.
///
/// # Errors
/// A broker that cannot be reached, or a management API that does not
/// answer (only it can list queues).
pub(crate) async fn list(
    broker: &BrokerConfig,
    management_url: Option<&str>,
) -> Result<Vec<JobListing>> {
    let topology = Topology::new(broker.prefix.clone());
    let api = ManagementApi::for_broker(broker, management_url)?;
    let queues = api
        .queues(broker.tls.ca_pem())
        .await
        .map_err(|reason| Error::NoJobList { reason })?
        .queues;
    let connection = broker::connect(broker, "warren-producer jobs").await?;
    let mut jobs = Vec::new();
    let record_prefix = topology.job_queue_prefix();
    for queue in &queues {
        let Some(id) = queue.name.strip_prefix(&record_prefix) else {
            continue;
        };
        let Ok(job) = JobId::parse(id) else { continue };
        let reply_queue = topology.reply_queue(&job);
        let Some(reply) = queues.iter().find(|q| q.name == reply_queue) else {
            continue; // the job expired: its record goes soon too
        };
        // Each read on its own channel: a record queue that expired since
        // the listing closes the channel it is asked on.
        let channel = broker::open_channel(&connection).await?;
        let record = match JobRecord::load(&channel, &queue.name).await {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(Error::Warren(e)) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let _ = channel.close(200, "".into()).await;
        jobs.push(JobListing {
            job_id: job.to_string(),
            kind: record.spec.kind().to_owned(),
            done: record.done,
            total: record.total,
            age_s: record.age().as_secs(),
            attached: reply.consumers.unwrap_or(0) > 0,
            ttl_s: record.ttl().as_secs(),
        });
    }
    broker::close_quietly(&connection).await;
    jobs.sort_by_key(|j| std::cmp::Reverse(j.age_s));
    Ok(jobs)
}

/// The table `producer jobs` prints.
pub(crate) fn jobs_table(jobs: &[JobListing]) -> String {
    if jobs.is_empty() {
        return "no jobs to attach to".to_owned();
    }
    let mut text = format!(
        "{:<32}  {:<8}  {:>19}  {:>10}  {}",
        "JOB", "KIND", "DONE", "AGE", "PRODUCER"
    );
    for job in jobs {
        let done = match job.total {
            Some(total) => format!("{}/{total}", job.done),
            None => format!("{}/?", job.done),
        };
        let age = humantime::format_duration(Duration::from_secs(job.age_s)).to_string();
        let producer = if job.attached { "attached" } else { "none" };
        text += &format!(
            "\n{:<32}  {:<8}  {done:>19}  {age:>10}  {producer}",
            job.job_id, job.kind
        );
    }
    text
}

/// Ends a job everywhere: deletes its reply queue, so workers drop its
/// queued tasks and stop the running ones, and its record. A producer
/// attached to it sees its reply queue go and stops.
///
/// # Errors
/// [`Error::NoSuchJob`], or a broker failure.
pub(crate) async fn cancel(broker: &BrokerConfig, job: &JobId) -> Result<()> {
    let topology = Topology::new(broker.prefix.clone());
    let connection = broker::connect(broker, &format!("warren-producer cancel {job}")).await?;
    let outcome = delete_job(&topology, &connection, job).await;
    broker::close_quietly(&connection).await;
    outcome
}

async fn delete_job(
    topology: &Topology,
    connection: &lapin::Connection,
    job: &JobId,
) -> Result<()> {
    let reply_queue = topology.reply_queue(job);
    if QueueProbe::new()
        .inspect(connection, &reply_queue)
        .await?
        .is_none()
    {
        return Err(Error::NoSuchJob {
            job: job.to_string(),
            prefix: topology.prefix().to_string(),
        });
    }
    let channel = broker::open_channel(connection).await?;
    broker::delete_queue(&channel, &reply_queue).await?;
    broker::delete_queue(&channel, &topology.job_queue(job)).await?;
    Ok(())
}

fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}
