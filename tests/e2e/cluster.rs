//! A lost cluster node: three RabbitMQ nodes on this machine
//! ([`RabbitCluster`]), producer and workers given all three URLs, and a
//! node SIGKILLed mid-job. The task queue is a quorum queue, so it survives
//! the loss of one node of three; the workers move on to the next URL of
//! their list and the job ends exact and complete. Also: a list whose first
//! URL does not answer, on the shared test broker.

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use warren_testkit::{ClusterOptions, HttpFixture, RabbitCluster, content, eventually};

use crate::support::python::reference;
use crate::support::{Run, Scenario, Worker};

/// A test's cluster, its scenario (prefix and temp dir; its own broker
/// handle talks to the default node and is not used here) and workers.
// Fields drop in this order: the workers first (their logs are in the
// scenario's directory), the cluster after everything that talks to it.
struct ClusterJob {
    workers: Vec<Worker>,
    s: Scenario,
    cluster: RabbitCluster,
    _serial: MutexGuard<'static, ()>,
}

impl ClusterJob {
    fn start(test: &str) -> ClusterJob {
        ClusterJob::start_with(test, ClusterOptions::default())
    }

    fn start_with(test: &str, options: ClusterOptions) -> ClusterJob {
        let serial = crate::support::one_extra_broker_at_a_time();
        let cluster = RabbitCluster::start_with_options(options);
        eprintln!(
            "{test}: the 3-node cluster started in {:.1}s",
            cluster.startup_time().as_secs_f64()
        );
        ClusterJob {
            workers: Vec::new(),
            s: Scenario::new(test),
            cluster,
            _serial: serial,
        }
    }

    /// The nodes' URLs, comma-separated, starting with node `first`.
    fn urls_from(&self, first: usize) -> String {
        let mut urls = self.cluster.urls();
        urls.rotate_left(first);
        urls.join(",")
    }

    /// Starts `n` workers given all three URLs from node `first`, and
    /// waits until all of them consume the task queue.
    fn start_workers(&mut self, n: usize, first: usize, extra: &[&str]) {
        let urls = self.urls_from(first);
        for i in 0..n {
            let mut args = vec!["--amqp-url", urls.as_str()];
            args.extend_from_slice(extra);
            let worker = self.s.start_worker(&format!("w{i}"), &args);
            self.workers.push(worker);
        }
        self.wait_for_consumers(n);
    }

    fn wait_for_consumers(&self, n: usize) {
        let queue = format!("{}.tasks", self.s.prefix);
        self.wait_until(
            Duration::from_secs(30),
            &format!("{n} consumers on {queue}"),
            || {
                self.cluster
                    .list("queues", &["name", "consumers"])
                    .iter()
                    .any(|row| row[0] == queue && row[1] == n.to_string())
            },
        );
    }

    /// The node every worker is connected to (they all must share one).
    fn workers_node(&self) -> usize {
        let nodes: Vec<Option<usize>> = self
            .workers
            .iter()
            .map(|w| {
                self.cluster
                    .node_of_connection(&format!("warren-worker {} ", w.name))
            })
            .collect();
        let first = nodes[0].expect("the worker is connected");
        assert!(
            nodes.iter().all(|node| *node == Some(first)),
            "the workers are on different nodes: {nodes:?}"
        );
        first
    }

    /// Waits until `condition` holds, failing the test after `timeout`.
    fn wait_until(&self, timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        eventually(timeout, || {
            if condition() {
                Ok(())
            } else {
                Err(format!("not yet: {what}"))
            }
        });
    }

    /// Kills node `killed`, the workers' node, and checks they came back
    /// on another one.
    fn kill_the_workers_node(&mut self, killed: usize) {
        eprintln!("killing node {}", self.cluster.nodes()[killed].name);
        self.cluster.kill_node(killed);
        self.wait_for_consumers(self.workers.len());
        let now = self.workers_node();
        assert_ne!(now, killed, "the workers are back on the killed node");
        for worker in &self.workers {
            let log = worker.log();
            assert!(
                log.contains("lost the broker connection"),
                "worker {} did not notice:\n{log}",
                worker.name
            );
        }
    }

    /// Nothing of the prefix is left but the empty task and dead-letter
    /// queues (polled: quorum queues report counts with a delay).
    fn assert_clean(&self) {
        let prefix = format!("{}.", self.s.prefix);
        let shared = [format!("{prefix}tasks"), format!("{prefix}dead")];
        let mut left = Vec::new();
        self.wait_until(Duration::from_secs(30), "the job's queues are gone", || {
            left = self.cluster.queues_with_prefix(&prefix);
            left.iter()
                .all(|(name, messages)| shared.contains(name) && *messages == 0)
        });
    }
}

/// Counts the tasks a worker has finished, from its debug log.
fn finished_tasks(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" done")).count()
}

impl ClusterJob {
    /// Tasks finished so far by all workers.
    fn finished(&self) -> usize {
        self.workers.iter().map(|w| finished_tasks(&w.log())).sum()
    }

    /// Fails the test unless the job (of `tasks` tasks) was still running
    /// when `what` happened, `finished` tasks in: else it proves nothing.
    fn assert_mid_job(finished: usize, tasks: usize, what: &str) {
        assert!(
            finished < tasks,
            "the job was over ({finished} of {tasks} tasks done) before {what}"
        );
    }
}

#[test]
fn killing_the_workers_node_mid_sum_still_gives_the_exact_sum() {
    let mut job = ClusterJob::start("cluster_sum");
    let expected = reference(&["numpy-random-sum", "20000000", "11"]);
    // The workers start at node 0 and the producer at node 1: this test
    // kills only the workers' node (which also leads the task queue, as
    // they declared it first).
    job.start_workers(2, 0, &[]);
    let workers_node = job.workers_node();
    let urls = job.urls_from(1);
    let started = Instant::now();
    let producer = job
        .s
        .producer(&[
            "--amqp-url",
            &urls,
            "sum",
            "--random",
            "2e7",
            "--seed",
            "11",
            "--chunk-size",
            "20000",
            "--json",
        ])
        .spawn();
    job.wait_until(Duration::from_secs(60), "w0 has finished 20 tasks", || {
        finished_tasks(&job.workers[0].log()) >= 20
    });
    let finished_at_kill = job.finished();
    job.kill_the_workers_node(workers_node);
    let run = producer.wait(Duration::from_secs(120));
    ClusterJob::assert_mid_job(finished_at_kill, 1000, "the kill");
    eprintln!("the job took {:.1}s", started.elapsed().as_secs_f64());
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str(), "{run}");
    assert_eq!(json["count"], 20_000_000);
    assert_eq!(json["chunks"], 1000);
    job.assert_clean();
}

#[test]
fn killing_the_workers_node_mid_download_still_delivers_every_file() {
    let mut job = ClusterJob::start("cluster_download");
    let http = HttpFixture::start();
    let out = job.s.path("out");
    std::fs::create_dir_all(&out).unwrap();
    // Slow files, to be mid-download when the node dies, and quick ones.
    let slow: Vec<String> = (0..4).map(|i| format!("/trickle/cluster{i}")).collect();
    let size = 4_000_000;
    let mut lines: Vec<String> = slow
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let url = http.url(&format!("{path}?size={size}&chunk=65536&delay_ms=15"));
            format!("{url} slow{i}.bin")
        })
        .collect();
    lines.extend((0..40).map(|i| {
        format!(
            "{} quick{i}.bin",
            http.url(&format!("/files/q{i}?size={}", 1000 + i))
        )
    }));
    let list = job.s.path("urls.txt");
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();

    job.start_workers(2, 0, &["--concurrency", "4"]);
    let workers_node = job.workers_node();
    let urls = job.urls_from(1);
    let producer = job
        .s
        .producer(&[
            "--amqp-url",
            &urls,
            "download",
            list.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
            "--json",
        ])
        .spawn();
    job.wait_until(
        Duration::from_secs(30),
        "1 MB of a slow file was sent",
        || slow.iter().any(|path| http.bytes_sent(path) >= 1_000_000),
    );
    job.kill_the_workers_node(workers_node);
    let run: Run = producer.wait(Duration::from_secs(120));
    run.expect_success();
    assert!(
        slow.iter().any(|path| http.hits(path).len() >= 2),
        "no download was cut short by the node's loss"
    );
    assert_eq!(run.json()["succeeded"], 44, "{run}");
    for (i, path) in slow.iter().enumerate() {
        let file = std::fs::read(out.join(format!("slow{i}.bin"))).unwrap();
        assert!(file == content(path, size), "slow{i}.bin differs");
    }
    for i in 0..40 {
        let file = std::fs::read(out.join(format!("quick{i}.bin"))).unwrap();
        assert!(
            file == content(&format!("/files/q{i}"), 1000 + i),
            "quick{i}.bin differs"
        );
    }
    let temp = out.join(".warren-tmp");
    let left: Vec<_> = std::fs::read_dir(&temp)
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    job.assert_clean();
}

#[test]
fn killing_the_reply_queue_node_then_the_workers_node_still_gives_the_exact_sum() {
    let mut job = ClusterJob::start("cluster_reply");
    let expected = reference(&["numpy-random-sum", "120000000", "12"]);
    // The producer starts at node 0, where its reply queue then lives; the
    // workers at node 1.
    // A long job (6000 tasks) and slow workers: the job must outlast a
    // node's restart, which takes 20 s or more on a busy machine.
    job.start_workers(2, 1, &["--concurrency", "1"]);
    let workers_node = job.workers_node();
    let urls = job.urls_from(0);
    let producer = job
        .s
        .producer(&[
            "--amqp-url",
            &urls,
            "sum",
            "--random",
            "1.2e8",
            "--seed",
            "12",
            "--chunk-size",
            "20000",
            "--json",
        ])
        .spawn();
    let (reply_queue, reply_node) = job.reply_queue_leader();
    assert_ne!(reply_node, workers_node, "the test wants them apart");
    job.wait_until(Duration::from_secs(60), "w0 has finished 20 tasks", || {
        finished_tasks(&job.workers[0].log()) >= 20
    });
    eprintln!(
        "killing node {}, leader of {reply_queue}",
        job.cluster.nodes()[reply_node].name
    );
    let finished_at_first_kill = job.finished();
    job.cluster.kill_node(reply_node);
    // Quorum queues need two nodes of three: bring it back before the
    // second kill.
    job.cluster.restart_node(reply_node);
    let w0_after_restart = finished_tasks(&job.workers[0].log());
    job.wait_until(
        Duration::from_secs(60),
        "w0 has finished 20 more tasks",
        || finished_tasks(&job.workers[0].log()) >= w0_after_restart + 20,
    );
    let finished_at_second_kill = job.finished();
    job.kill_the_workers_node(workers_node);
    let run = producer.wait(Duration::from_secs(300));
    ClusterJob::assert_mid_job(
        finished_at_first_kill,
        6000,
        "the reply queue's node was killed",
    );
    ClusterJob::assert_mid_job(
        finished_at_second_kill,
        6000,
        "the workers' node was killed",
    );
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str(), "{run}");
    assert_eq!(json["count"], 120_000_000);
    job.assert_clean();
}

/// Sixteen 4 MB files that trickle (about 9 s each), listed in `urls.txt`
/// as `slow<i>.bin`: their server paths, to check the files against.
fn trickling_files(job: &ClusterJob, http: &HttpFixture) -> Vec<String> {
    let paths: Vec<String> = (0..16).map(|i| format!("/trickle/reply{i}")).collect();
    let lines: Vec<String> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let query = format!("?size={TRICKLE_SIZE}&chunk=65536&delay_ms=150");
            format!("{} slow{i}.bin", http.url(&format!("{path}{query}")))
        })
        .collect();
    std::fs::write(job.s.path("urls.txt"), lines.join("\n") + "\n").unwrap();
    paths
}

const TRICKLE_SIZE: usize = 4_000_000;

#[test]
fn killing_the_reply_queue_node_then_the_workers_node_mid_download_still_delivers_every_file() {
    let mut job = ClusterJob::start("cluster_reply_download");
    let http = HttpFixture::start();
    let paths = trickling_files(&job, &http);
    let out = job.s.path("out");
    std::fs::create_dir_all(&out).unwrap();
    // The producer starts at node 0, where its reply queue then lives; the
    // workers at node 1, four files at a time.
    job.start_workers(2, 1, &["--concurrency", "2"]);
    let workers_node = job.workers_node();
    let (urls, list) = (job.urls_from(0), job.s.path_str("urls.txt"));
    let out_str = out.to_str().unwrap();
    let args = [
        "--amqp-url",
        &urls,
        "download",
        &list,
        "-o",
        out_str,
        "--json",
    ];
    let producer = job.s.producer(&args).spawn();
    let (reply_queue, reply_node) = job.reply_queue_leader();
    assert_ne!(reply_node, workers_node, "the test wants them apart");
    job.wait_until(Duration::from_secs(60), "2 files are done", || {
        job.finished() >= 2
    });
    eprintln!("killing node {reply_node}, leader of {reply_queue}");
    let finished_at_first_kill = job.finished();
    job.cluster.kill_node(reply_node);
    job.cluster.restart_node(reply_node);
    let after_restart = job.finished();
    job.wait_until(Duration::from_secs(60), "2 more files are done", || {
        job.finished() >= after_restart + 2
    });
    let finished_at_second_kill = job.finished();
    job.kill_the_workers_node(workers_node);
    let run = producer.wait(Duration::from_secs(300));
    ClusterJob::assert_mid_job(
        finished_at_first_kill,
        16,
        "the reply queue's node was killed",
    );
    ClusterJob::assert_mid_job(finished_at_second_kill, 16, "the workers' node was killed");
    run.expect_success();
    assert_eq!(run.json()["succeeded"], 16, "{run}");
    assert!(run.stderr.contains("lost the broker connection"), "{run}");
    for (i, path) in paths.iter().enumerate() {
        let file = std::fs::read(out.join(format!("slow{i}.bin"))).unwrap();
        assert!(file == content(path, TRICKLE_SIZE), "slow{i}.bin differs");
    }
    let left: Vec<_> = std::fs::read_dir(out.join(".warren-tmp"))
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    job.assert_clean();
}

impl ClusterJob {
    /// The job's reply queue and the node that holds it (a quorum queue's
    /// leader; a classic queue's process), once the queue exists.
    fn reply_queue_leader(&self) -> (String, usize) {
        let reply_prefix = format!("{}.reply.", self.s.prefix);
        let mut found = None;
        self.wait_until(
            Duration::from_secs(20),
            "the job's reply queue exists",
            || {
                // `pid` names the node in both cases: `<node.1.2.3>` or
                // `{'queue','node'}`.
                found = self
                    .cluster
                    .list("queues", &["name", "pid"])
                    .into_iter()
                    .find(|row| row[0].starts_with(&reply_prefix))
                    .and_then(|row| {
                        let nodes = self.cluster.nodes();
                        let node = nodes.iter().position(|n| row[1].contains(&n.name))?;
                        Some((row[0].clone(), node))
                    });
                found.is_some()
            },
        );
        found.expect("the wait found it")
    }
}

#[test]
fn producer_and_worker_skip_a_url_of_the_list_that_does_not_answer() {
    let mut s = Scenario::new("failover_list");
    // Nothing listens on port 1: refused at once, then the next URL.
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f";
    let urls = format!("{dead},{}", crate::support::broker::amqp_url());
    let _worker = s.start_worker("w0", &["--amqp-url", &urls]);
    s.broker.wait_for_consumers(1);
    let expected = reference(&["numpy-random-sum", "100000", "3"]);
    let run = s
        .producer(&[
            "--amqp-url",
            &urls,
            "sum",
            "--random",
            "1e5",
            "--seed",
            "3",
            "--json",
        ])
        .run();
    run.expect_success();
    assert_eq!(run.json()["sum"], expected.as_str(), "{run}");

    // When none answers, the error names each URL tried, redacted.
    let run = s
        .producer(&[
            "--amqp-url",
            "amqp://guest:s3cret@127.0.0.1:1/%2f,amqp://guest:s3cret@127.0.0.1:2/%2f",
            "--broker-wait",
            "0",
            "sum",
            "--random",
            "10",
        ])
        .run();
    run.expect_code(2);
    assert!(
        run.stderr.contains(
            "cannot connect to any broker of the list: amqp://guest:***@127.0.0.1:1/%2f ("
        ) && run.stderr.contains("nor amqp://guest:***@127.0.0.1:2/%2f"),
        "{run}"
    );
    assert!(!run.stderr.contains("s3cret"), "{run}");
    s.assert_clean();
}

/// The management API follows the failover list: with the first node of
/// the cluster down, `producer status` and `producer jobs` ask the next
/// node's API and still see the running job. (The nodes share this
/// machine, so each API has its own port and the test names them with
/// `--management-url`; by default each broker URL's host on 15672 is
/// asked, in the same order.)
#[test]
fn status_and_jobs_ask_the_next_management_api_when_the_first_node_is_down() {
    let mut job = ClusterJob::start_with(
        "cluster_management",
        ClusterOptions {
            management: true,
            ..ClusterOptions::default()
        },
    );
    let urls = job.urls_from(0);
    let apis: Vec<String> = job
        .cluster
        .nodes()
        .iter()
        .map(|node| node.management_url().expect("the plugin is on"))
        .collect();
    let apis = apis.join(",");
    // A job with no worker waits: it stays on the list. Its producer uses
    // node 1, which stays up.
    let producer = job
        .s
        .producer(&[
            "--amqp-url",
            &job.urls_from(1),
            "sum",
            "--random",
            "1000",
            "--chunk-size",
            "100",
        ])
        .spawn();
    let (reply_queue, _) = job.reply_queue_leader();
    let job_id = reply_queue.rsplit('.').next().unwrap().to_owned();
    job.cluster.kill_node(0);

    let status = |job: &ClusterJob| {
        let run = job
            .s
            .producer(&[
                "--amqp-url",
                &urls,
                "status",
                "--json",
                "--management-url",
                &apis,
            ])
            .run();
        run.expect_success();
        run
    };
    let second_api = job.cluster.nodes()[1].management_url().unwrap();
    // The management API's counts lag a few seconds behind.
    let mut last = None;
    job.wait_until(Duration::from_secs(30), "status lists the job", || {
        let run = status(&job);
        let json = run.json();
        let found = json["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.iter().any(|j| j["job_id"] == job_id.as_str()));
        last = Some(run);
        found
    });
    let run = last.expect("status ran");
    assert_eq!(
        run.json()["management"],
        format!("management API at {second_api}"),
        "{run}"
    );

    let run = job
        .s
        .producer(&[
            "--amqp-url",
            &urls,
            "jobs",
            "--json",
            "--management-url",
            &apis,
        ])
        .run();
    run.expect_success();
    let jobs = run.json();
    let listed = jobs
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["job_id"] == job_id.as_str()))
        .unwrap_or_else(|| panic!("job {job_id} is not listed:\n{run}"));
    assert_eq!(listed["kind"], "sum", "{run}");

    // None answering is one line naming each API tried.
    let dead = "http://127.0.0.1:1,http://127.0.0.1:2";
    let run = job
        .s
        .producer(&["--amqp-url", &urls, "jobs", "--management-url", dead])
        .run();
    run.expect_code(2);
    assert!(
        run.stderr.contains(
            "the management API did not answer: http://127.0.0.1:1 (connection refused), \
             nor http://127.0.0.1:2 (connection refused)"
        ),
        "{run}"
    );
    drop(producer);
}
