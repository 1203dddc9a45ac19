//! What every end-to-end test needs: a [`Scenario`] with its own queue
//! prefix (deleted on drop) and temp directory, workers and producer runs
//! of the real binaries, and reference answers computed by Python.

pub mod broker;
pub mod endpoints;
pub mod process;
pub mod proxy;
pub mod python;
pub mod s3;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use warren_testkit::eventually;

pub use broker::Broker;
pub use process::{Producer, Run, Worker};

/// Holds the right to start RabbitMQ nodes of a test's own (a cluster, a
/// broker to restart or to alarm): one such test at a time, beside the
/// other tests, is plenty for the small machines the tests run on, and a
/// node that boots on a crowded machine can take minutes.
pub fn one_extra_broker_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static EXTRA_BROKERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    EXTRA_BROKERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a test cannot check the broker without `rabbitmqctl`.
pub const RABBITMQCTL_NEEDED: &str = "rabbitmqctl must be able to manage the test broker \
     (run the tests as root or as the rabbitmq user, on the broker's host)";

/// One test's isolated world on the shared broker.
pub struct Scenario {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub broker: Broker,
}

impl Scenario {
    /// A fresh prefix `wt-<pid>-<n>-<test>`: unique per test and per run.
    pub fn new(test: &str) -> Scenario {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let short: String = test.chars().take(40).collect();
        let prefix = format!("wt-{}-{n}-{short}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("warren-e2e-")
            .tempdir()
            .expect("a temp dir can be made");
        let broker = Broker::connect(&prefix);
        Scenario {
            prefix,
            dir,
            broker,
        }
    }

    /// A path inside the test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The same, as text for command lines.
    pub fn path_str(&self, name: &str) -> String {
        self.path(name)
            .to_str()
            .expect("temp paths are UTF-8")
            .to_owned()
    }

    /// Starts a worker with `args` (it is not yet consuming on return).
    pub fn start_worker(&self, name: &str, args: &[&str]) -> Worker {
        Worker::start(&self.prefix, name, self.dir.path(), args)
    }

    /// Starts a worker with `args` and extra environment variables.
    pub fn start_worker_with_env(
        &self,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Worker {
        Worker::start_with_env(&self.prefix, name, self.dir.path(), args, env)
    }

    /// Starts `n` workers and waits until all consume the task queue.
    pub fn workers(&mut self, n: usize) -> Vec<Worker> {
        let workers: Vec<Worker> = (0..n)
            .map(|i| self.start_worker(&format!("w{i}"), &[]))
            .collect();
        self.broker.wait_for_consumers(n as u32);
        workers
    }

    /// A producer run with this scenario's prefix, in its temp dir.
    pub fn producer(&self, args: &[&str]) -> Producer {
        Producer::new(&self.prefix, self.dir.path(), args)
    }

    /// A sum of 1000 random floats in tasks of 100, `tasks_per_message` to
    /// a message, started without waiting: with no worker running it waits
    /// for whatever answers its tasks.
    pub fn spawn_small_job(&self, tasks_per_message: &str) -> process::RunningProducer {
        self.producer(&[
            "sum",
            "--random",
            "1000",
            "--seed",
            "1",
            "--chunk-size",
            "100",
            "--tasks-per-message",
            tasks_per_message,
        ])
        .spawn()
    }

    /// The reply queue and job id of the one job running under this prefix,
    /// once it exists (found through `rabbitmqctl`, as an operator would).
    pub fn running_job(&self) -> (String, warren::JobId) {
        let prefix = self.prefix.clone();
        let reply_prefix = format!("{prefix}.reply.");
        let queue = eventually(Duration::from_secs(20), || {
            let queues = broker::queues_with_prefix(&prefix).expect(RABBITMQCTL_NEEDED);
            queues
                .iter()
                .map(|(name, _)| name)
                .find(|name| name.starts_with(&reply_prefix))
                .cloned()
                .ok_or_else(|| format!("no reply queue of a job among {queues:?}"))
        });
        let job = warren::JobId::parse(&queue[reply_prefix.len()..])
            .expect("reply queues name their job");
        (queue, job)
    }

    /// Asserts nothing of this prefix is left on the broker but the shared,
    /// empty task and dead-letter queues: no reply queue, no message, ready
    /// or unacknowledged. Polls for a while: acks travel asynchronously and
    /// `rabbitmqctl` reports quorum-queue counts with a delay.
    pub fn assert_clean(&mut self) {
        let task_queue = self.broker.topology.task_queue();
        let shared = [task_queue, self.broker.topology.dead_letter_queue()];
        let prefix = self.prefix.clone();
        let clean = |queues: &Vec<(String, u64)>| {
            queues
                .iter()
                .all(|(name, messages)| shared.contains(name) && *messages == 0)
        };
        eventually(Duration::from_secs(30), || {
            let queues = broker::queues_with_prefix(&prefix).expect(RABBITMQCTL_NEEDED);
            if clean(&queues) {
                Ok(())
            } else {
                Err(format!(
                    "the broker still holds queues or messages of {prefix}: {queues:?}"
                ))
            }
        });
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.broker.delete_all();
    }
}
