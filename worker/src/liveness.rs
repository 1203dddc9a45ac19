//! Whether a task's job is still alive, so that tasks of finished or
//! cancelled jobs are dropped instead of worked on.
//!
//! A job is alive exactly as long as its reply queue exists (see
//! `warren::topology`). Checking costs a passive declare, so answers are
//! cached: "gone" for good, "alive" for [`ALIVE_FOR`].

use std::collections::HashMap;
// A poisoned lock still holds a consistent map (every update is one
// insert or retain), so poisoning is ignored rather than turned into a panic.
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use lapin::Connection;
use tokio::sync::Mutex;
use warren::JobId;
use warren::broker::QueueProbe;

/// How long an "alive" answer is trusted.
const ALIVE_FOR: Duration = Duration::from_secs(1);

/// Past this many remembered jobs, entries older than [`FORGET_AFTER`] go.
const MAX_REMEMBERED: usize = 4096;
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Alive,
    Gone,
}

/// The cache of job states, shared by all tasks of a worker.
#[derive(Debug, Default)]
pub(crate) struct JobLiveness {
    known: std::sync::Mutex<HashMap<JobId, (State, Instant)>>,
    probe: Mutex<QueueProbe>,
}

impl JobLiveness {
    /// True unless the job's reply queue is known to be gone. When the
    /// broker cannot tell, the job counts as alive: the result's mandatory
    /// publish will tell instead.
    pub(crate) async fn is_alive(
        &self,
        connection: &Connection,
        job: &JobId,
        reply_queue: &str,
    ) -> bool {
        if let Some((state, checked)) = self.lookup(job)
            && (state == State::Gone || checked.elapsed() < ALIVE_FOR)
        {
            return state == State::Alive;
        }
        let found = self
            .probe
            .lock()
            .await
            .inspect(connection, reply_queue)
            .await;
        let state = match found {
            Ok(Some(_)) => State::Alive,
            Ok(None) => State::Gone,
            Err(e) => {
                tracing::debug!(error = %e, "job liveness check failed");
                return true;
            }
        };
        self.remember(job, state);
        state == State::Alive
    }

    /// Records that a job's reply queue is gone.
    pub(crate) fn mark_gone(&self, job: &JobId) {
        self.remember(job, State::Gone);
    }

    fn lookup(&self, job: &JobId) -> Option<(State, Instant)> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(job)
            .copied()
    }

    fn remember(&self, job: &JobId, state: State) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= MAX_REMEMBERED {
            known.retain(|_, (_, checked)| checked.elapsed() < FORGET_AFTER);
        }
        known.insert(job.clone(), (state, Instant::now()));
    }
}
