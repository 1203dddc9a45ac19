//! The chaos soak: a sum of many small tasks and a download job on a broker
//! of the test's own (a one-node [`RabbitCluster`]), while workers are
//! SIGKILLed and replaced at random, every connection through a
//! [`CuttingProxy`] is cut now and then, and the broker itself is restarted
//! once. The sum must come out exact with every task counted
//! once, and every file complete, with nothing left in `.warren-tmp`.
//!
//! The workers and both producers reach the broker through the proxy: a
//! producer whose connection is cut connects again and carries its job on
//! from its last checkpoint. The broker restarts before the download
//! starts.
//!
//! Also the broker alone restarted mid-sum, with nothing else going wrong.
//!
//! `WARREN_CHAOS_LONG=1` runs the long version (ten times the tasks and
//! files, chaos for as long as they take, up to 30 minutes);
//! `WARREN_CHAOS_SEED=N` replays the random choices of an earlier run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use warren_testkit::{HttpFixture, RabbitCluster, content, eventually};

use crate::support::process::RunningProducer;
use crate::support::proxy::CuttingProxy;
use crate::support::python::reference;
use crate::support::{Scenario, Worker, one_extra_broker_at_a_time};

/// How big the soak is.
struct Size {
    /// Values summed, ten to a task.
    values: u64,
    /// Files downloaded (a few of them slow).
    files: usize,
    /// Workers running at any time.
    workers: usize,
    /// Bound on the whole soak once the broker runs.
    deadline: Duration,
}

impl Size {
    fn from_env() -> Size {
        let long = std::env::var_os("WARREN_CHAOS_LONG").is_some_and(|v| v == "1");
        let scale = if long { 10 } else { 1 };
        Size {
            values: 1_000_000 * scale,
            files: 200 * scale as usize,
            workers: 3,
            deadline: Duration::from_secs(if long { 30 * 60 } else { 240 }),
        }
    }

    fn tasks(&self) -> u64 {
        self.values / VALUES_PER_TASK
    }
}

const VALUES_PER_TASK: u64 = 10;
/// Eight tasks to a message: many messages, so that kills and cuts land
/// mid-job, and batching still in use.
const TASKS_PER_MESSAGE: u64 = 8;
/// Size of the slow files (sent in 64 KiB pieces 20 ms apart: about 1.5 s).
const SLOW_FILE: usize = 5 * 65_536;

/// A small xorshift generator: the soak's choices, replayable from a seed.
struct Dice(u64);

impl Dice {
    fn from_env() -> Dice {
        let seed = std::env::var("WARREN_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.map_or(1, |d| d.as_nanos() as u64) | 1
            });
        eprintln!("chaos: seed {seed} (WARREN_CHAOS_SEED={seed} replays it)");
        Dice(seed)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the chaos did, printed at the end.
#[derive(Debug, Default)]
struct Counts {
    workers_killed: u32,
    cuts: u32,
    connections_cut: usize,
    broker_restarts: u32,
}

/// The soak's world: its broker, the proxy, the workers (the killed ones
/// are kept for their logs).
// Fields drop in this order: workers, then the proxy, then the broker,
// then the right to start one.
struct Soak {
    live: Vec<Worker>,
    killed: Vec<Worker>,
    started: usize,
    proxy: CuttingProxy,
    s: Scenario,
    broker: RabbitCluster,
    dice: Dice,
    counts: Counts,
    _serial: MutexGuard<'static, ()>,
}

impl Soak {
    fn start() -> Soak {
        let serial = one_extra_broker_at_a_time();
        let broker = RabbitCluster::start_with(1);
        eprintln!(
            "chaos: the test's broker started in {:.1}s",
            broker.startup_time().as_secs_f64()
        );
        let upstream = SocketAddr::from(([127, 0, 0, 1], broker.nodes()[0].port));
        Soak {
            live: Vec::new(),
            killed: Vec::new(),
            started: 0,
            proxy: CuttingProxy::start(upstream),
            s: Scenario::new("chaos_soak"),
            broker,
            dice: Dice::from_env(),
            counts: Counts::default(),
            _serial: serial,
        }
    }

    fn start_worker(&mut self) {
        let name = format!("w{}", self.started);
        self.started += 1;
        let url = self.proxy.url();
        let args = ["--amqp-url", url.as_str(), "--concurrency", "4"];
        self.live.push(self.s.start_worker(&name, &args));
    }

    /// Starts `n` workers and waits until they all consume.
    fn start_workers(&mut self, n: usize) {
        for _ in 0..n {
            self.start_worker();
        }
        self.wait_for_consumers(n);
    }

    fn wait_for_consumers(&self, n: usize) {
        let queue = format!("{}.tasks", self.s.prefix);
        eventually(Duration::from_secs(60), || {
            let rows = self.broker.list("queues", &["name", "consumers"]);
            if rows
                .iter()
                .any(|row| row[0] == queue && row[1] == n.to_string())
            {
                Ok(())
            } else {
                Err(format!("{n} consumers on {queue}: {rows:?}"))
            }
        });
    }

    /// Messages the workers have finished so far, from their debug logs.
    fn messages_done(&self) -> usize {
        let logs = self.live.iter().chain(&self.killed).map(Worker::log);
        logs.map(|log| log.lines().filter(|l| l.contains(" done")).count())
            .sum()
    }

    /// One act of chaos: a worker SIGKILLed and replaced, or every
    /// connection through the proxy cut.
    fn strike(&mut self) {
        if self.dice.below(2) == 0 {
            let victim = self.dice.below(self.live.len() as u64) as usize;
            let mut worker = self.live.swap_remove(victim);
            worker.kill_hard();
            self.killed.push(worker);
            self.counts.workers_killed += 1;
            self.start_worker();
        } else {
            self.counts.connections_cut += self.proxy.cut_all();
            self.counts.cuts += 1;
        }
    }

    /// Strikes every 1 to 3 s until `done` holds, failing the test at
    /// `deadline`.
    fn strike_until(&mut self, deadline: Instant, what: &str, mut done: impl FnMut(&Soak) -> bool) {
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "chaos: timed out waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(1000 + self.dice.below(2000)));
            self.strike();
        }
    }

    /// Restarts the broker as an operator does (`rabbitmqctl stop_app`,
    /// `start_app`): every connection is closed, nothing answers for a
    /// second, and the queues stop and recover. (A SIGKILLed node here
    /// sometimes brought the job's record queue back unreadable for
    /// minutes: basic.get timing out; see the notes of issue 12.)
    fn restart_broker(&mut self) {
        for (command, pause) in [
            ("stop_app", Duration::from_secs(1)),
            ("start_app", Duration::ZERO),
        ] {
            let output = self.broker.rabbitmqctl(0, &[command]);
            assert!(
                output.status.success(),
                "rabbitmqctl {command} failed: {output:?}"
            );
            std::thread::sleep(pause);
        }
        self.counts.broker_restarts += 1;
    }
}

/// A download list of `n` files, every tenth of them slow, into `out`.
fn download_list(http: &HttpFixture, n: usize, path: &Path) -> Vec<(String, usize)> {
    let files: Vec<(String, usize)> = (0..n)
        .map(|i| {
            if i % 10 == 0 {
                (format!("/trickle/chaos{i}"), SLOW_FILE)
            } else {
                (format!("/files/chaos{i}"), 1000 + 97 * i)
            }
        })
        .collect();
    let lines: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, (path, size))| {
            let query = if path.starts_with("/trickle/") {
                format!("?size={size}&chunk=65536&delay_ms=20")
            } else {
                format!("?size={size}")
            };
            format!("{} f{i}.bin", http.url(&format!("{path}{query}")))
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("the temp dir is writable");
    files
}

/// A sum of random doubles, as `producer sum --random` runs it.
struct SumJob {
    values: u64,
    seed: u32,
    per_task: u64,
    per_message: u64,
}

impl Soak {
    /// Starts `producer sum --random` with `--json`, connected to `url`.
    fn spawn_sum(&self, url: &str, job: &SumJob) -> RunningProducer {
        let (values, seed) = (job.values.to_string(), job.seed.to_string());
        let (chunk, per_message) = (job.per_task.to_string(), job.per_message.to_string());
        self.s
            .producer(&[
                "--amqp-url",
                url,
                "sum",
                "--random",
                &values,
                "--seed",
                &seed,
                "--chunk-size",
                &chunk,
                "--tasks-per-message",
                &per_message,
                "--json",
            ])
            .spawn()
    }
}

/// Every file of `files` is in `out` with its content, and nothing is
/// left in `.warren-tmp`.
fn assert_files_complete(out: &Path, files: &[(String, usize)]) {
    for (i, (path, size)) in files.iter().enumerate() {
        let file = std::fs::read(out.join(format!("f{i}.bin"))).expect("every file is there");
        assert!(file == content(path, *size), "f{i}.bin differs from {path}");
    }
    let temp: Vec<_> = std::fs::read_dir(out.join(".warren-tmp"))
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(temp.is_empty(), "temporary files left: {temp:?}");
}

fn is_running(producer: &mut RunningProducer) -> bool {
    producer.try_wait().is_none()
}

#[test]
fn chaos_soak_sum_and_download_end_exact_and_complete_through_kills_cuts_and_a_broker_restart() {
    let size = Size::from_env();
    let expected = reference(&["numpy-random-sum", &size.values.to_string(), "23"]);
    let mut soak = Soak::start();
    let began = Instant::now();
    let deadline = began + size.deadline;
    soak.start_workers(size.workers);

    let proxy_url = soak.proxy.url();
    let sum_job = SumJob {
        values: size.values,
        seed: 23,
        per_task: VALUES_PER_TASK,
        per_message: TASKS_PER_MESSAGE,
    };
    let mut sum = soak.spawn_sum(&proxy_url, &sum_job);
    let messages = (size.tasks() / TASKS_PER_MESSAGE) as usize;
    soak.strike_until(deadline, "the sum is under way", |soak| {
        soak.messages_done() >= messages / 20
    });
    let done = soak.messages_done();
    assert!(
        is_running(&mut sum) && done < messages,
        "the sum was over ({done} of {messages} messages) before the broker restart: \
         the soak proves nothing"
    );
    soak.restart_broker();

    let http = HttpFixture::start();
    let out = soak.s.path("out");
    let list = soak.s.path("urls.txt");
    let files = download_list(&http, size.files, &list);
    let mut download = soak
        .s
        .producer(&[
            "--amqp-url",
            &proxy_url,
            "download",
            list.to_str().expect("UTF-8 path"),
            "--out-dir",
            out.to_str().expect("UTF-8 path"),
            "--json",
        ])
        .spawn();
    soak.strike_until(deadline, "both jobs are over", |_| {
        !is_running(&mut sum) && !is_running(&mut download)
    });

    let sum = sum.wait(Duration::from_secs(5));
    sum.expect_success();
    let json = sum.json();
    assert_eq!(json["sum"], expected.as_str(), "{sum}");
    assert_eq!(json["count"], size.values, "{sum}");
    assert_eq!(
        json["chunks"],
        size.tasks(),
        "every task counted once: {sum}"
    );
    let download = download.wait(Duration::from_secs(5));
    download.expect_success();
    assert_eq!(download.json()["succeeded"], files.len(), "{download}");
    assert_files_complete(&out, &files);
    eprintln!(
        "chaos: {} tasks in {} messages and {} files in {:.0}s; {:?}; \
         duplicate results ignored: {}; slow files fetched more than once: {}",
        size.tasks(),
        messages,
        files.len(),
        began.elapsed().as_secs_f64(),
        soak.counts,
        json["duplicates"],
        files.iter().filter(|(p, _)| http.hits(p).len() > 1).count(),
    );
    assert!(
        soak.counts.workers_killed > 0 && soak.counts.cuts > 0,
        "the soak struck no worker or no connection: {:?}",
        soak.counts
    );
}

/// The broker alone, restarted mid-sum, with nothing else
/// going wrong: the same producer run waits for it, carries the job on from
/// its record and prints the exact sum.
#[test]
fn a_broker_restarted_mid_sum_costs_the_producer_a_pause_not_the_job() {
    let expected = reference(&["numpy-random-sum", "4000000", "29"]);
    let mut soak = Soak::start();
    soak.start_workers(2);
    let node_url = soak.broker.nodes()[0].url();
    let sum_job = SumJob {
        values: 4_000_000,
        seed: 29,
        per_task: 2000,
        per_message: 1,
    };
    let mut sum = soak.spawn_sum(&node_url, &sum_job);
    eventually(Duration::from_secs(60), || {
        let done = soak.messages_done();
        if done >= 100 {
            Ok(())
        } else {
            Err(format!("{done} of 2000 tasks done"))
        }
    });
    let done = soak.messages_done();
    assert!(
        is_running(&mut sum) && done < 2000,
        "the sum was over ({done} of 2000 tasks) before the broker restart"
    );
    soak.restart_broker();

    // A restart on a crowded machine, quorum queues recovering, can take
    // minutes; the producer retries for up to 5 after each loss.
    let run = sum.wait(Duration::from_secs(420));
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str(), "{run}");
    assert_eq!(json["count"], 4_000_000, "{run}");
    assert_eq!(json["chunks"], 2000, "every task counted once: {run}");
    assert!(
        run.stderr.contains("lost the broker connection"),
        "the producer did not notice the restart: {run}"
    );
}
