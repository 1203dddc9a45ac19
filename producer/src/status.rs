//! `producer status`: what is queued, in work and dead-lettered under a
//! prefix, and which jobs are running.
//!
//! Two sources: AMQP passive declares give live ready counts and consumers
//! of the task and dead-letter queues (always available); the management
//! HTTP API adds unacknowledged (in-work) counts and lists the prefix's
//! reply queues, one per running job. Without the management plugin the
//! report says what it cannot know.

use crate::management::ManagementApi;
use serde::Serialize;
use warren::broker::{self, QueueProbe};
use warren::{BrokerConfig, Topology};

use crate::error::Result;

/// `producer status` settings.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// The management APIs' base URLs, comma-separated, if not each
    /// broker URL's host on 15672.
    pub management_url: Option<String>,
}

/// What a queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The shared task queue.
    Tasks,
    /// The dead-letter queue.
    Dead,
    /// A running job's reply queue.
    Reply,
}

/// One queue's counters; `None` where the source cannot tell, or the
/// queue does not exist.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub name: String,
    pub role: Role,
    /// Whether the broker has this queue: a worker or producer declares it
    /// on start, so a missing one most often means a mistyped prefix.
    pub exists: bool,
    /// Messages waiting for a consumer.
    pub ready: Option<u64>,
    /// Messages delivered and not yet acknowledged (tasks in work).
    pub unacked: Option<u64>,
    pub consumers: Option<u64>,
}

/// A running job, known by its reply queue.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job_id: String,
    pub reply_queue: String,
    /// Results waiting for the producer.
    pub results_waiting: Option<u64>,
    /// Whether its producer is consuming (it is alive).
    pub producer_connected: Option<bool>,
}

/// What `producer status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub prefix: String,
    pub queues: Vec<QueueStatus>,
    /// `None` when the management API was not available.
    pub jobs: Option<Vec<JobStatus>>,
    /// Where the in-work counts and the job list came from, or why they
    /// are missing.
    pub management: String,
}

/// Gathers the report.
///
/// # Errors
/// A broker that cannot be reached over AMQP.
pub async fn run(broker: &BrokerConfig, config: &StatusConfig) -> Result<StatusReport> {
    let topology = Topology::new(broker.prefix.clone());
    let connection = broker::connect(broker, "warren-producer status").await?;
    let mut probe = QueueProbe::new();
    let mut queues = Vec::new();
    for (name, role) in [
        (topology.task_queue(), Role::Tasks),
        (topology.dead_letter_queue(), Role::Dead),
    ] {
        let stats = probe.inspect(&connection, &name).await?;
        queues.push(QueueStatus {
            name,
            role,
            exists: stats.is_some(),
            ready: stats.map(|s| u64::from(s.ready)),
            unacked: None,
            consumers: stats.map(|s| u64::from(s.consumers)),
        });
    }
    broker::close_quietly(&connection).await;

    let api = ManagementApi::for_broker(broker, config.management_url.as_deref())?;
    let (jobs, management) = match api.queues(broker.tls.ca_pem()).await {
        Ok(listing) => {
            let managed = listing.queues;
            let reply_prefix = format!("{}.reply.", topology.prefix());
            for queue in &mut queues {
                if let Some(found) = managed.iter().find(|m| m.name == queue.name) {
                    queue.unacked = found.messages_unacknowledged;
                }
            }
            let jobs = managed
                .iter()
                .filter_map(|m| {
                    let job_id = m.name.strip_prefix(&reply_prefix)?;
                    Some(JobStatus {
                        job_id: job_id.to_owned(),
                        reply_queue: m.name.clone(),
                        results_waiting: m.messages_ready,
                        producer_connected: m.consumers.map(|c| c > 0),
                    })
                })
                .collect();
            (Some(jobs), format!("management API at {}", listing.base))
        }
        Err(reason) => (
            None,
            format!(
                "no management API at {reason}: for in-work counts and jobs, \
                 rabbitmq-plugins enable rabbitmq_management or pass --management-url"
            ),
        ),
    };
    Ok(StatusReport {
        prefix: topology.prefix().to_string(),
        queues,
        jobs,
        management,
    })
}

impl StatusReport {
    /// True when none of the prefix's queues exists.
    pub fn has_no_queues(&self) -> bool {
        self.queues.iter().all(|q| !q.exists)
    }

    /// The human table.
    pub fn table(&self) -> String {
        if self.has_no_queues() {
            return format!(
                "no queues exist under the prefix {:?}: workers and producers declare them \
                 when they start; check --queue-prefix or WARREN_QUEUE_PREFIX",
                self.prefix
            );
        }
        let show = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let width = self
            .queues
            .iter()
            .map(|q| q.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!(
            "{:width$}  {:>9}  {:>9}  {:>9}\n",
            "queue", "ready", "in work", "consumers"
        );
        for queue in &self.queues {
            if !queue.exists {
                out.push_str(&format!("{:width$}  does not exist\n", queue.name));
                continue;
            }
            out.push_str(&format!(
                "{:width$}  {:>9}  {:>9}  {:>9}\n",
                queue.name,
                show(queue.ready),
                show(queue.unacked),
                show(queue.consumers)
            ));
        }
        match &self.jobs {
            Some(jobs) if jobs.is_empty() => out.push_str("no job running\n"),
            Some(jobs) => {
                out.push_str(&format!("{} job(s) running:\n", jobs.len()));
                for job in jobs {
                    out.push_str(&format!(
                        "  {}  results waiting: {}, producer connected: {}\n",
                        job.job_id,
                        show(job.results_waiting),
                        job.producer_connected
                            .map_or("?", |c| if c { "yes" } else { "no" })
                    ));
                }
            }
            None => {}
        }
        out.push_str(&format!("({})", self.management));
        out
    }
}
