//! Direct access to the test broker: queue counters, raw publishes and
//! cleanup, through the same `warren` names the binaries use.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren::broker::{self, QueueProbe, QueueStats};
use warren::{BrokerConfig, Topology};
use warren_testkit::eventually;

/// The broker the tests use: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| warren::DEFAULT_AMQP_URL.to_owned())
}

/// A blocking handle on the broker for one test's prefix.
pub struct Broker {
    runtime: tokio::runtime::Runtime,
    connection: Connection,
    pub topology: Topology,
    probe: QueueProbe,
}

impl Broker {
    /// Connects, failing the test with instructions when no broker answers.
    pub fn connect(prefix: &str) -> Broker {
        // One background thread keeps lapin's heartbeats going between the
        // blocking calls.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a small runtime builds");
        let config = BrokerConfig::local(&amqp_url(), prefix).expect("the test prefix is valid");
        let connection = runtime
            .block_on(broker::connect(&config, &format!("warren-tests {prefix}")))
            .unwrap_or_else(|e| {
                panic!(
                    "these tests need a RabbitMQ broker: {}\n\
                     start one with `rabbitmq-server -detached` (or `docker compose up -d rabbitmq`), \
                     or set AMQP_URL",
                    warren::display_chain(&e)
                )
            });
        Broker {
            runtime,
            connection,
            topology: Topology::new(config.prefix),
            probe: QueueProbe::new(),
        }
    }

    /// A queue's counters, or `None` if it does not exist.
    pub fn stats(&mut self, queue: &str) -> Option<QueueStats> {
        let Broker {
            runtime,
            connection,
            probe,
            ..
        } = self;
        runtime
            .block_on(probe.inspect(connection, queue))
            .expect("a passive declare works")
    }

    /// Ready messages in a queue (0 if it does not exist).
    pub fn ready(&mut self, queue: &str) -> u32 {
        self.stats(queue).map_or(0, |s| s.ready)
    }

    /// Waits until `condition` holds, or panics with `what` after
    /// `timeout`.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&mut Broker) -> bool,
    ) {
        eventually(timeout, || {
            if condition(self) {
                Ok(())
            } else {
                Err(format!("waiting until {what}"))
            }
        });
    }

    /// Waits until `n` consumers are on the task queue.
    pub fn wait_for_consumers(&mut self, n: u32) {
        let queue = self.topology.task_queue();
        self.wait_until(
            Duration::from_secs(30),
            &format!("{n} consumer(s) on {queue}"),
            |b| b.stats(&queue).is_some_and(|s| s.consumers == n),
        );
    }

    /// Declares a reply queue for a job the test plays the producer of, and
    /// consumes it; returns its name.
    pub fn declare_reply_queue(&mut self, job: &warren::JobId) -> (String, lapin::Consumer) {
        let channel = self
            .runtime
            .block_on(broker::open_channel(&self.connection))
            .unwrap();
        let queue = self
            .runtime
            .block_on(self.topology.declare_reply_queue(
                &channel,
                job,
                warren::topology::JobLifetime::WithProducer,
            ))
            .unwrap();
        let consumer = self
            .runtime
            .block_on(channel.basic_consume(
                queue.as_str().into(),
                "test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ))
            .unwrap();
        (queue, consumer)
    }

    /// A rogue consumer on the task queue (declared first, as a worker
    /// would): it takes tasks with automatic acks and never answers them.
    /// Close the returned channel to stop it.
    pub fn consume_tasks_and_drop_them(&mut self) -> (lapin::Channel, lapin::Consumer) {
        let queue = self.topology.task_queue();
        self.runtime.block_on(async {
            let channel = broker::open_channel(&self.connection).await.unwrap();
            self.topology.declare_shared(&channel).await.unwrap();
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "rogue".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            (channel, consumer)
        })
    }

    /// Closes a channel the test opened.
    pub fn close_channel(&mut self, channel: &lapin::Channel) {
        self.runtime
            .block_on(channel.close(200, "test done".into()))
            .unwrap();
    }

    /// The next delivery of a consumer, or `None` after `timeout`.
    pub fn next_delivery(
        &mut self,
        consumer: &mut lapin::Consumer,
        timeout: Duration,
    ) -> Option<lapin::message::Delivery> {
        self.runtime.block_on(async {
            match tokio::time::timeout(timeout, consumer.next()).await {
                Ok(Some(Ok(delivery))) => Some(delivery),
                _ => None,
            }
        })
    }

    /// Publishes a raw message to a queue with a confirm.
    pub fn publish(&mut self, queue: &str, body: &[u8], properties: BasicProperties) {
        self.runtime.block_on(async {
            let channel = broker::open_channel(&self.connection).await.unwrap();
            channel.confirm_select(Default::default()).await.unwrap();
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
        });
    }

    /// Runs `work` on the test's connection: for tests that drive
    /// `warren::broker` itself.
    pub fn with_connection<T>(&mut self, work: impl AsyncFnOnce(&Connection) -> T) -> T {
        self.runtime.block_on(work(&self.connection))
    }

    /// Drops every ready message of a queue (dead letters a test made on
    /// purpose, before [`super::Scenario::assert_clean`]); returns how many.
    pub fn purge(&mut self, queue: &str) -> u32 {
        self.runtime.block_on(async {
            let channel = broker::open_channel(&self.connection).await.unwrap();
            channel
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await
                .unwrap()
        })
    }

    /// Deletes the prefix's shared queues and exchange.
    pub fn delete_all(&mut self) {
        let topology = self.topology.clone();
        let connection = &self.connection;
        self.runtime.block_on(async {
            let Ok(channel) = broker::open_channel(connection).await else {
                return;
            };
            for queue in [topology.task_queue(), topology.dead_letter_queue()] {
                let _ = broker::delete_queue(&channel, &queue).await;
            }
            let _ = channel
                .exchange_delete(
                    topology.dead_letter_exchange().as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
            broker::close_quietly(connection).await;
        });
    }
}

/// Queue names on the broker that start with `prefix.`, from `rabbitmqctl`
/// (which sees every queue, including ones the code under test forgot).
/// `None` when `rabbitmqctl` cannot be run (a remote broker).
pub fn queues_with_prefix(prefix: &str) -> Option<Vec<(String, u64)>> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let wanted = format!("{prefix}.");
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let name = fields.next()?;
                let messages = fields.next()?.parse().ok()?;
                name.starts_with(&wanted)
                    .then(|| (name.to_owned(), messages))
            })
            .collect(),
    )
}
