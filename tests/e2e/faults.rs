use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use nix::sys::signal::Signal;
use warren::exact::sum_chunk;
use warren::protocol::{DeadLetter, Outcome, PROTOCOL_VERSION, TaskResult};
use warren::{Dtype, JobId};
use warren_testkit::{RabbitCluster, eventually};

use crate::support::broker::queues_with_prefix;
use crate::support::endpoints::{SUM_TASKS_DONE, metric, wait_for_metric_at_least};
use crate::support::proxy::{AmqpProxy, BASIC_QOS, ClosedPort, Forwarder, broker_url_at};
use crate::support::python::reference;
use crate::support::{RABBITMQCTL_NEEDED, Scenario, Worker};

/// Connections a worker opened again after losing one.
const RECONNECTS: &str = "warren_worker_reconnects_total";

/// Starts w0, with its metrics on a port of the system's choice, and
/// `others` plain workers; waits until all consume. Returns w0's metrics
/// port and the workers, w0 first.
fn workers_with_metrics_on_w0(s: &mut Scenario, others: usize) -> (u16, Vec<Worker>) {
    let w0 = s.start_worker("w0", &["--metrics-addr", "127.0.0.1:0"]);
    let port = w0.metrics_port();
    let mut workers = vec![w0];
    workers.extend((1..=others).map(|i| s.start_worker(&format!("w{i}"), &[])));
    s.broker.wait_for_consumers(workers.len() as u32);
    (port, workers)
}

#[test]
fn worker_killed_mid_job_still_gives_the_exact_answer() {
    let mut s = Scenario::new("sigkill");
    let expected = reference(&["numpy-random-sum", "20000000", "11"]);
    let (port, mut workers) = workers_with_metrics_on_w0(&mut s, 1);
    let producer = s
        .producer(&[
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
    // Kill w0 once it is in the middle of the job.
    wait_for_metric_at_least(port, SUM_TASKS_DONE, 20.0, Duration::from_secs(60));
    workers[0].kill_hard();
    let run = producer.wait(Duration::from_secs(180));
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str(), "{run}");
    assert_eq!(json["count"], 20_000_000);
    assert_eq!(json["chunks"], 1000);
    s.assert_clean();
}

#[test]
fn duplicate_results_are_counted_once() {
    let mut s = Scenario::new("duplicates");
    // Raw float64 data whose first chunk the test sums itself.
    let values: Vec<f64> = (0..50_000)
        .map(|i| (i as f64 * 0.731).cos() * 1e10_f64.powf((i % 7) as f64 / 7.0))
        .collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(s.path("data.f64"), &bytes).unwrap();
    let expected = reference(&["sum-raw", &s.path_str("data.f64"), "float64"]);

    let producer = s
        .producer(&[
            "sum",
            &s.path_str("data.f64"),
            "--format",
            "raw",
            "--dtype",
            "float64",
            "--chunk-size",
            "10000",
            // One task per message, so that task 0 travels alone.
            "--max-in-flight",
            "8",
            "--json",
        ])
        .spawn();
    // Find the job's reply queue while no worker runs.
    let (reply_queue, job) = s.running_job();
    let task_queue = s.broker.topology.task_queue();
    s.broker
        .wait_until(Duration::from_secs(20), "all 5 tasks are queued", |b| {
            b.ready(&task_queue) == 5
        });
    // Answer task 0 twice before any worker does: the worker's answer will
    // be a third copy (if it arrives before the job ends). The exact sum
    // shows none was counted twice.
    let partial = sum_chunk(Dtype::Float64, &bytes[..10_000 * 8]).unwrap();
    let result = TaskResult {
        version: PROTOCOL_VERSION,
        job_id: job,
        task: Some(0),
        worker: "test".into(),
        elapsed_s: 0.0,
        outcome: Outcome::Sum(vec![partial]),
    };
    for _ in 0..2 {
        s.broker
            .publish(&reply_queue, &result.to_json(), result.properties());
    }
    let _workers = s.workers(2);
    let run = producer.wait(Duration::from_secs(60));
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str(), "{run}");
    // The second copy is a duplicate for sure; the worker's own answer for
    // task 0 is one too unless the job finished before it arrived.
    let duplicates = json["duplicates"].as_u64().unwrap();
    assert!((1..=2).contains(&duplicates), "{run}");
    assert_eq!(json["chunks"], 5);
    s.assert_clean();
}

#[test]
fn a_result_that_does_not_answer_a_whole_message_fails_its_job() {
    let mut s = Scenario::new("partial_answer");
    let cases: [(u64, usize, &str); 2] = [
        (0, 1, "answered the 2 task(s) from 0 with 1 partial sum(s)"),
        (
            1,
            1,
            "answered task 1, which no unanswered message starts with",
        ),
    ];
    for (task, partials, expected) in cases {
        // Five messages of two tasks of 100 values; no worker, so only the
        // test answers.
        let producer = s.spawn_small_job("2");
        let (reply_queue, job) = s.running_job();
        let partial = sum_chunk(Dtype::Float64, &[0u8; 800]).unwrap();
        let result = TaskResult {
            version: PROTOCOL_VERSION,
            job_id: job,
            task: Some(task),
            worker: "test".into(),
            elapsed_s: 0.0,
            outcome: Outcome::Sum(vec![partial; partials]),
        };
        s.broker
            .publish(&reply_queue, &result.to_json(), result.properties());
        // Without the check the job would wait for its other tasks forever.
        let run = producer.wait(Duration::from_secs(20));
        run.expect_code(2);
        assert!(run.stderr.contains("malformed result"), "{run}");
        assert!(run.stderr.contains(expected), "{run}");
    }
    let _worker = s.workers(1);
    s.assert_clean();
}

#[test]
fn a_failed_or_dead_lettered_task_fails_its_job_at_once() {
    let mut s = Scenario::new("fail_fast");
    for (injected, expected) in [
        ("error", "error: task 2 failed on worker test: disk on fire"),
        (
            "dead letter",
            "error: task 3 was dead-lettered by the broker (it was delivered 20 times",
        ),
    ] {
        // No worker: the job would wait forever if the producer did not
        // act on what arrives.
        let producer = s.spawn_small_job("1");
        let (reply_queue, job) = s.running_job();
        if injected == "error" {
            let result = TaskResult {
                version: PROTOCOL_VERSION,
                job_id: job,
                task: Some(2),
                worker: "test".into(),
                elapsed_s: 0.0,
                outcome: Outcome::Error(warren::protocol::TaskFailure {
                    kind: warren::protocol::FailureKind::Failed,
                    message: "disk on fire".into(),
                }),
            };
            s.broker
                .publish(&reply_queue, &result.to_json(), result.properties());
        } else {
            let headers = header_table(&[
                ("x-first-death-reason", text("delivery_limit")),
                ("warren-task", AMQPValue::LongLongInt(3)),
                ("warren-job", text(job.as_str())),
            ]);
            s.broker.publish(
                &reply_queue,
                b"",
                BasicProperties::default().with_headers(headers),
            );
        }
        let run = producer.wait(Duration::from_secs(20));
        run.expect_code(2);
        assert!(run.stderr.contains(expected), "{injected}: {run}");
    }
    // The failed jobs' tasks are dropped by the next worker.
    let _worker = s.workers(1);
    s.assert_clean();
}

#[test]
fn without_workers_the_producer_warns_and_times_out_clearly() {
    let mut s = Scenario::new("no_worker");
    let run = s
        .producer(&[
            "sum",
            "--random",
            "1000",
            "--seed",
            "1",
            "--chunk-size",
            "100",
            "--timeout",
            "3s",
        ])
        .run_within(Duration::from_secs(30));
    run.expect_code(2);
    assert!(
        run.stderr.contains("warning: no worker is consuming"),
        "{run}"
    );
    assert!(
        run.stderr
            .contains("error: timed out after 3s: 0 of 10 tasks done"),
        "{run}"
    );
    // The abandoned tasks wait in the queue until a worker comes and drops them.
    // The 10 tiny tasks travel as one batched message.
    assert_eq!(s.broker.ready(&s.broker.topology.task_queue()), 1);
    let worker = s.workers(1);
    s.assert_clean();
    assert!(
        worker[0].log().contains("job is gone"),
        "{}",
        worker[0].log()
    );
}

#[test]
fn ctrl_c_cancels_the_job_and_its_tasks_are_dropped() {
    let mut s = Scenario::new("ctrl_c");
    let producer = s
        .producer(&[
            "sum",
            "--random",
            "5000",
            "--seed",
            "1",
            "--chunk-size",
            "100",
        ])
        .spawn();
    let task_queue = s.broker.topology.task_queue();
    s.broker
        .wait_until(Duration::from_secs(20), "tasks are queued", |b| {
            b.ready(&task_queue) >= 1
        });
    producer.signal(Signal::SIGINT);
    let run = producer.wait(Duration::from_secs(20));
    run.expect_code(130);
    assert!(run.stderr.contains("cancelled"), "{run}");
    assert!(run.stdout.is_empty());
    let _worker = s.workers(1);
    s.assert_clean();
}

/// Issue 12: a worker dropping the tasks of a job that has ended (its
/// reply queue is gone: "NOT_FOUND - no queue") logged it at ERROR. It is
/// the ordinary end of a job.
#[test]
fn dropping_a_finished_jobs_tasks_logs_no_error_issue_12() {
    let mut s = Scenario::new("gone_no_error");
    let run = s
        .producer(&["sum", "--random", "100", "--seed", "1", "--timeout", "1s"])
        .run_within(Duration::from_secs(30));
    run.expect_code(2);
    let worker = s.workers(1);
    s.assert_clean();
    let log = worker[0].log();
    assert!(log.contains("job is gone"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

/// Issue 12: `--json` printed nothing when a job ended early, leaving a
/// script no object to read.
#[test]
fn with_json_a_timed_out_job_prints_one_object_with_its_error() {
    let mut s = Scenario::new("json_timeout");
    let run = s
        .producer(&[
            "sum",
            "--random",
            "1000",
            "--seed",
            "1",
            "--chunk-size",
            "100",
            "--timeout",
            "2s",
            "--json",
        ])
        .run_within(Duration::from_secs(30));
    run.expect_code(2);
    let object: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{run}"));
    let error = object["error"].as_str().unwrap_or_default();
    assert!(error.contains("timed out after 2s"), "{run}");
    assert_eq!(object["done"], 0, "{run}");
    assert_eq!(object["total"], 10, "{run}");
    assert!(
        object["job_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{run}"
    );
    assert!(
        object["elapsed_s"].as_f64().is_some_and(|s| s >= 2.0),
        "{run}"
    );
    // stderr still says it for people.
    assert!(run.stderr.contains("error: timed out after 2s"), "{run}");
    let _worker = s.workers(1);
    s.assert_clean();
}

#[test]
fn ctrl_c_while_the_job_opens_leaves_no_reply_queue() {
    let mut s = Scenario::new("ctrl_c_opening");
    // Stop the producer between declaring its reply queue and consuming it.
    // A queue that never had a consumer is not auto-deleted: dropped here,
    // it would stay until it expires.
    let mut proxy = AmqpProxy::hold_at(BASIC_QOS);
    let producer = s
        .producer(&["sum", "--random", "1000", "--seed", "1"])
        .env("AMQP_URL", &proxy.url())
        .env("RUST_LOG", "info")
        .spawn();
    proxy.wait_until_held(Duration::from_secs(30));
    let (reply_queue, _) = s.running_job();
    producer.signal(Signal::SIGINT);
    // Only once the producer has cancelled may the broker answer. It logs
    // the signal just after cancelling; had it given up opening at once,
    // it would already be saying so on its way out. Its log is the only
    // sign: its connection is held, so the broker sees nothing change.
    s.broker
        .wait_until(Duration::from_secs(10), "the producer saw SIGINT", |_| {
            let stderr = producer.stderr();
            stderr.contains("signal received") || stderr.contains("cancelled")
        });
    proxy.release();
    let run = producer.wait(Duration::from_secs(30));
    run.expect_code(130);
    assert!(run.stderr.contains("cancelled"), "{run}");
    let queues = queues_with_prefix(&s.prefix).expect(RABBITMQCTL_NEEDED);
    assert!(
        !queues.iter().any(|(name, _)| *name == reply_queue),
        "the reply queue was left behind: {queues:?}\n{run}"
    );
    let _worker = s.workers(1);
    s.assert_clean();
}

#[test]
fn an_unreachable_broker_is_a_clear_error_without_the_password() {
    let s = Scenario::new("broker_down");
    let url = "amqp://guest:sekrit@127.0.0.1:1/%2f";
    let run = s
        .producer(&["sum", "--random", "10"])
        .env("AMQP_URL", url)
        .env("WARREN_BROKER_WAIT", "1s")
        .run_within(Duration::from_secs(30));
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("error: cannot connect to the broker at amqp://guest:***@127.0.0.1:1/%2f"),
        "{run}"
    );
    assert!(
        run.stderr.contains("hint: is RabbitMQ running there?"),
        "{run}"
    );
    assert!(
        !run.stderr.contains("sekrit"),
        "the password leaked:\n{run}"
    );

    // A worker keeps retrying (for docker compose start-up order) and still
    // stops cleanly.
    // What it says is the behaviour here: nothing else shows that it waits.
    let mut worker = s.start_worker("w0", &["--amqp-url", url]);
    eventually(Duration::from_secs(10), || {
        let log = worker.log();
        if log.contains("retrying in") {
            Ok(())
        } else {
            Err(format!("the worker never said it was retrying:\n{log}"))
        }
    });
    worker.signal(Signal::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(worker.log().contains("amqp://guest:***@127.0.0.1:1/%2f"));
    assert!(!worker.log().contains("sekrit"));
}

/// Issue 16: `docker compose up -d` then `docker compose run producer`
/// failed with "connection refused" while RabbitMQ was still starting.
/// The producer now waits for a broker that is not listening yet, says so,
/// and finishes the job once the broker answers.
#[test]
fn producer_waits_for_a_broker_that_starts_late_and_says_so() {
    let mut s = Scenario::new("broker_late");
    let expected = reference(&["numpy-random-sum", "100000", "5"]);
    let _workers = s.workers(1);
    // Refusing connections until the test opens it, and the test's alone.
    let port = ClosedPort::reserve();
    let addr = port.addr();
    let producer = s
        .producer(&["sum", "--random", "1e5", "--seed", "5"])
        .env("AMQP_URL", &broker_url_at(addr))
        .env("WARREN_BROKER_WAIT", "60s")
        .spawn();
    // Nothing listens there yet: the producer must be waiting, not failing.
    s.broker.wait_until(
        Duration::from_secs(20),
        "the producer says it waits",
        |_| producer.stderr().contains("waiting for the broker at"),
    );
    // The broker comes up a while later: a delay the scenario chooses, not
    // a wait for something.
    std::thread::sleep(Duration::from_secs(2));
    let _broker_starts = Forwarder::start_on(port);
    let run = producer.wait(Duration::from_secs(90));
    run.expect_success();
    assert_eq!(run.answer(), expected, "{run}");
    let redacted = format!("waiting for the broker at amqp://guest:***@{addr}/%2f");
    assert!(run.stderr.contains(&redacted), "{run}");
    assert!(run.stderr.contains("--broker-wait"), "{run}");
    s.assert_clean();
}

/// Issue 16: the wait for a broker has a bound. With nothing ever
/// listening, the producer and a worker give up after `--broker-wait` with
/// a clear error and status 2; refused credentials are not waited for.
#[test]
fn the_wait_for_a_broker_is_bounded_and_skips_refused_credentials() {
    let s = Scenario::new("broker_never");
    // Held for the whole test, so nothing else can listen there.
    let never_listening = ClosedPort::reserve();
    let addr = never_listening.addr();
    let url = format!("amqp://guest:sekrit@{addr}/%2f");
    let started = std::time::Instant::now();
    let run = s
        .producer(&["sum", "--random", "10"])
        .env("AMQP_URL", &url)
        .env("WARREN_BROKER_WAIT", "3s")
        .run_within(Duration::from_secs(30));
    let took = started.elapsed();
    run.expect_code(2);
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(10),
        "gave up after {took:?}:\n{run}"
    );
    assert!(run.stderr.contains("waiting for the broker at"), "{run}");
    let error = format!(
        "error: cannot connect to the broker at amqp://guest:***@{addr}/%2f (kept trying for "
    );
    assert!(run.stderr.contains(&error), "{run}");
    assert!(!run.stderr.contains("sekrit"), "{run}");

    let mut worker = s.start_worker("w0", &["--amqp-url", &url, "--broker-wait", "3s"]);
    let status = worker.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(2), "{}", worker.log());
    assert!(
        worker.log().contains("(kept trying for "),
        "{}",
        worker.log()
    );

    // A wrong password needs other settings: no wait, however long the
    // bound.
    let started = std::time::Instant::now();
    let run = s
        .producer(&["sum", "--random", "10"])
        .env("AMQP_URL", "amqp://guest:wrong@127.0.0.1:5672/%2f")
        .env("WARREN_BROKER_WAIT", "60s")
        .run_within(Duration::from_secs(30));
    run.expect_code(2);
    assert!(started.elapsed() < Duration::from_secs(15), "{run}");
    assert!(!run.stderr.contains("waiting for the broker"), "{run}");
    assert!(
        run.stderr.contains("hint: check the user name, password"),
        "{run}"
    );
}

#[test]
fn refused_credentials_stop_the_worker_with_a_hint() {
    let s = Scenario::new("bad_password");
    let mut worker = s.start_worker(
        "w0",
        &["--amqp-url", "amqp://guest:wrong@127.0.0.1:5672/%2f"],
    );
    let status = worker.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{}", worker.log());
    assert!(
        worker.log().contains("hint: check the user name, password"),
        "{}",
        worker.log()
    );
    assert!(!worker.log().contains("wrong@"), "{}", worker.log());
}

fn header_table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert((*key).into(), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[test]
fn malformed_tasks_are_dead_lettered_and_reported_to_their_job() {
    let mut s = Scenario::new("malformed");
    let _worker = s.workers(1);
    let job = JobId::random();
    let (reply_queue, mut replies) = s.broker.declare_reply_queue(&job);
    let task_queue = s.broker.topology.task_queue();
    let task = |version: i64, dtype: &str| {
        BasicProperties::default()
            .with_reply_to(reply_queue.as_str().into())
            .with_headers(header_table(&[
                ("warren-version", AMQPValue::LongLongInt(version)),
                ("warren-kind", text("sum")),
                ("warren-job", text(job.as_str())),
                ("warren-task", AMQPValue::LongLongInt(3)),
                ("warren-dtype", text(dtype)),
                ("warren-count", AMQPValue::LongLongInt(1)),
            ]))
    };
    s.broker
        .publish(&task_queue, &[0u8; 8], task(1, "complex64"));
    s.broker
        .publish(&task_queue, &[0u8; 8], task(99, "float64"));
    s.broker
        .publish(&task_queue, b"garbage", BasicProperties::default());

    // The job hears about both of its tasks twice: the worker's error result
    // and the broker's dead-letter copy.
    let mut errors = Vec::new();
    let mut dead = 0;
    for _ in 0..4 {
        let delivery = s
            .broker
            .next_delivery(&mut replies, Duration::from_secs(20))
            .expect("the job hears about its malformed tasks");
        if let Some(letter) = DeadLetter::of(&delivery.properties) {
            assert_eq!(letter.reason, "rejected");
            assert_eq!(letter.task, Some(3));
            dead += 1;
        } else {
            let result = TaskResult::decode(&delivery.data).unwrap();
            assert_eq!(result.task, Some(3));
            match result.outcome {
                Outcome::Error(failure) => errors.push(failure.message),
                other => panic!("expected an error result, got {other:?}"),
            }
        }
    }
    assert_eq!(dead, 2);
    errors.sort();
    assert!(
        errors[0].contains("unsupported dtype \"complex64\""),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("unsupported protocol version 99"),
        "{errors:?}"
    );
    // All three are kept in the dead-letter queue, none went back to work.
    let dead_queue = s.broker.topology.dead_letter_queue();
    s.broker
        .wait_until(Duration::from_secs(10), "3 dead letters", |b| {
            b.ready(&dead_queue) == 3
        });
    assert_eq!(s.broker.ready(&task_queue), 0);
    // And the worker is still serving.
    let run = s
        .producer(&["sum", "--random", "1000", "--seed", "2"])
        .run();
    assert_eq!(
        run.expect_success().answer(),
        reference(&["numpy-random-sum", "1000", "2"])
    );
}

#[test]
fn a_task_of_unknown_kind_is_dead_lettered_and_fails_its_job_at_once() {
    let mut s = Scenario::new("unknown_kind");
    let worker = s.workers(1);
    // 100,000 tasks, two in flight at a time (over a minute of work): the
    // job is far from done when the worker comes to the task the test adds.
    let producer = s
        .producer(&[
            "sum",
            "--random",
            "1e8",
            "--seed",
            "3",
            "--chunk-size",
            "1000",
            "--max-in-flight",
            "2",
        ])
        .spawn();
    let (reply_queue, job) = s.running_job();
    let task_queue = s.broker.topology.task_queue();
    s.broker.publish(
        &task_queue,
        &[0u8; 8],
        BasicProperties::default()
            .with_reply_to(reply_queue.as_str().into())
            .with_headers(header_table(&[
                ("warren-version", AMQPValue::LongLongInt(1)),
                ("warren-kind", text("paint")),
                ("warren-job", text(job.as_str())),
                ("warren-task", AMQPValue::LongLongInt(7)),
                ("warren-dtype", text("float64")),
                ("warren-count", AMQPValue::LongLongInt(1)),
            ])),
    );
    // The worker tells the job before it dead-letters the task, so the
    // producer fails with the worker's reason, not the broker's.
    let run = producer.wait(Duration::from_secs(30));
    run.expect_code(2);
    assert!(
        run.stderr.contains(
            "error: task 7 failed on worker w0: malformed task: unknown task kind \"paint\""
        ),
        "{run}"
    );
    let dead_queue = s.broker.topology.dead_letter_queue();
    s.broker
        .wait_until(Duration::from_secs(10), "1 dead letter", |b| {
            b.ready(&dead_queue) == 1
        });
    assert!(
        worker[0].log().contains("dead-lettering a task"),
        "{}",
        worker[0].log()
    );
    // The job's other tasks are dropped; only the dead letter was left.
    assert_eq!(s.broker.purge(&dead_queue), 1);
    s.assert_clean();
}

#[test]
fn sigterm_lets_a_worker_finish_and_exit_zero() {
    let mut s = Scenario::new("sigterm");
    let expected = reference(&["numpy-random-sum", "10000000", "5"]);
    let (port, mut workers) = workers_with_metrics_on_w0(&mut s, 1);
    let producer = s
        .producer(&[
            "sum",
            "--random",
            "1e7",
            "--seed",
            "5",
            "--chunk-size",
            "20000",
        ])
        .spawn();
    wait_for_metric_at_least(port, SUM_TASKS_DONE, 10.0, Duration::from_secs(60));
    workers[0].signal(Signal::SIGTERM);
    let status = workers[0].wait_exit(Duration::from_secs(40));
    assert!(status.success(), "{status}\n{}", workers[0].log());
    assert!(workers[0].log().contains("stopped"), "{}", workers[0].log());
    let run = producer.wait(Duration::from_secs(120));
    assert_eq!(run.expect_success().answer(), expected);
    s.assert_clean();
}

/// The broker's id of the connection with this connection name.
fn connection_pid(name: &str) -> String {
    let listing = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl is needed for this test");
    let listing = String::from_utf8_lossy(&listing.stdout);
    listing
        .lines()
        .find(|line| line.contains(&format!("{{\"connection_name\",\"{name}\"}}")))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {name}:\n{listing}"))
        .to_owned()
}

/// Closes a connection the way a network failure or a broker operator
/// would.
fn close_connection(pid: &str) {
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", pid, "closed by the reconnect test"])
        .status()
        .unwrap();
    assert!(closed.success());
}

#[test]
fn a_worker_reconnects_after_its_connection_is_closed() {
    let mut s = Scenario::new("reconnect");
    let expected = reference(&["numpy-random-sum", "4000000", "8"]);
    let (port, workers) = workers_with_metrics_on_w0(&mut s, 0);
    let pid = connection_pid(&format!("warren-worker {} ({})", workers[0].name, s.prefix));
    // 4000 tasks, two at a time: the job is still running when the
    // connection goes.
    let producer = s
        .producer(&[
            "sum",
            "--random",
            "4e6",
            "--seed",
            "8",
            "--chunk-size",
            "1000",
            "--max-in-flight",
            "2",
            "--json",
        ])
        .spawn();
    wait_for_metric_at_least(port, SUM_TASKS_DONE, 10.0, Duration::from_secs(60));
    close_connection(&pid);
    // The counter moves once the new connection consumes; whatever is
    // counted after that went over it.
    wait_for_metric_at_least(port, RECONNECTS, 1.0, Duration::from_secs(30));
    let done_when_reconnected = metric(port, SUM_TASKS_DONE);
    let run = producer.wait(Duration::from_secs(120));
    run.expect_success();
    assert_eq!(run.json()["sum"], expected.as_str());
    // The job went on over the new connection.
    assert_eq!(metric(port, RECONNECTS), 1.0);
    wait_for_metric_at_least(
        port,
        SUM_TASKS_DONE,
        done_when_reconnected + 1.0,
        Duration::from_secs(20),
    );
    s.assert_clean();
}

/// Issue 12: broker errors gave no hint what to do. A producer whose
/// connection an operator (or a broker shutdown) closes mid-job says what
/// happened and what to do, and `--json` still prints one object.
#[test]
fn a_producer_whose_connection_is_closed_says_what_to_do_issue_12() {
    let mut s = Scenario::new("producer_conn_closed");
    // A job that ends with its producer: a durable one reconnects instead
    // (durable::a_producer_whose_connection_is_closed_mid_job_reconnects_and_ends_exact).
    let producer = s
        .producer(&[
            "sum",
            "--random",
            "1000",
            "--seed",
            "1",
            "--job-ttl",
            "0",
            "--timeout",
            "60s",
            "--json",
        ])
        .spawn();
    let (_, job) = s.running_job();
    let pid = connection_pid(&format!("warren-producer {job}"));
    close_connection(&pid);
    let run = producer.wait(Duration::from_secs(30));
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("hint: the broker closed the connection"),
        "{run}"
    );
    let object: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{run}"));
    assert!(object["error"].as_str().is_some(), "{run}");
    assert_eq!(object["job_id"], job.as_str(), "{run}");
    let _worker = s.workers(1);
    s.assert_clean();
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let s = Scenario::new("closed_stdout");
    let mut child = std::process::Command::new(crate::support::process::binary("producer"))
        .args(["--queue-prefix", &s.prefix])
        .args(["sum", "--random", "1000", "--workers", "1"])
        .env("AMQP_URL", crate::support::broker::amqp_url())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Like `producer sum ... | head -c0`: nobody reads the answer.
    drop(child.stdout.take());
    let status = crate::support::process::wait_with_deadline(
        &mut child,
        Duration::from_secs(60),
        "the producer",
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_result_naming_another_job_fails_the_job_it_reached() {
    let mut s = Scenario::new("other_job");
    // No worker: only the test answers, and the job would wait for ever
    // if the stray result were ignored.
    let producer = s.spawn_small_job("1");
    let (reply_queue, job) = s.running_job();
    let partial = sum_chunk(Dtype::Float64, &[0u8; 800]).unwrap();
    let stray = TaskResult {
        version: PROTOCOL_VERSION,
        job_id: JobId::parse("someone-elses-job").unwrap(),
        task: Some(0),
        worker: "test".into(),
        elapsed_s: 0.0,
        outcome: Outcome::Sum(vec![partial]),
    };
    s.broker
        .publish(&reply_queue, &stray.to_json(), stray.properties());
    let run = producer.wait(Duration::from_secs(20));
    run.expect_code(2);
    let expected = format!(
        "malformed result: it names job someone-elses-job but came through the reply queue of job {job}"
    );
    assert!(run.stderr.contains(&expected), "{run}");

    // A download job: a body chunk naming another job ends it the same way.
    let out = s.path_str("out");
    let producer = s
        .producer(&[
            "download",
            "http://127.0.0.1:9/never-fetched",
            "--out-dir",
            &out,
        ])
        .spawn();
    let (reply_queue, job) = s.running_job();
    let headers = header_table(&[
        ("warren-version", AMQPValue::LongLongInt(PROTOCOL_VERSION)),
        ("warren-job", text("someone-elses-job")),
        ("warren-task", AMQPValue::LongLongInt(0)),
        ("warren-attempt", text("a1")),
        ("warren-offset", AMQPValue::LongLongInt(0)),
    ]);
    s.broker.publish(
        &reply_queue,
        b"data",
        BasicProperties::default().with_headers(headers),
    );
    let run = producer.wait(Duration::from_secs(20));
    run.expect_code(2);
    let expected = format!(
        "malformed body chunk: it names job someone-elses-job but came through the reply queue of job {job}"
    );
    assert!(run.stderr.contains(&expected), "{run}");
    let _worker = s.workers(1);
    s.assert_clean();
}

#[test]
fn tasks_acked_but_never_answered_fail_the_job_naming_them() {
    let mut s = Scenario::new("rogue_ack");
    let (channel, _rogue) = s.broker.consume_tasks_and_drop_them();
    s.broker.wait_for_consumers(1);
    let started = std::time::Instant::now();
    let run = s
        .producer(&[
            "sum",
            "--random",
            "300",
            "--seed",
            "1",
            "--chunk-size",
            "100",
            "--tasks-per-message",
            "1",
            "--stall-timeout",
            "3s",
        ])
        .run();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("tasks 0, 1, 2 left the task queue but no answer came: no reply for 3s"),
        "{run}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{run}");

    // A download job the same way.
    let out = s.path_str("out");
    let run = s
        .producer(&[
            "download",
            "http://127.0.0.1:9/taken-and-dropped",
            "--out-dir",
            &out,
            "--stall-timeout",
            "3s",
        ])
        .run();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("task 0 left the task queue but no answer came"),
        "{run}"
    );
    s.broker.close_channel(&channel);
    s.assert_clean();
}

/// Issue 12: a memory alarm blocks every publisher. The producer said
/// nothing of it, and on Ctrl-C waited on deletes that its blocked
/// connection could not send; it now names the alarm,
/// and Ctrl-C still cancels the job (deleting its queues through a spare
/// connection) and exits 130 at once. On an extra node of its own: the
/// shared test broker is never alarmed. (A job that keeps no record, as a
/// durable one waits for the alarm before its record is saved: see
/// GUARANTEES.md.)
#[test]
fn a_memory_alarm_is_named_and_ctrl_c_still_cancels_the_job_at_once() {
    let _serial = crate::support::one_extra_broker_at_a_time();
    let node = RabbitCluster::start_with(1);
    let url = node.urls().remove(0);
    let s = Scenario::new("memory_alarm");
    let task_queue = format!("{}.tasks", s.prefix);
    let _worker = s.start_worker("w0", &["--amqp-url", &url]);
    eventually(Duration::from_secs(30), || {
        let consumers = node.list("queues", &["name", "consumers"]);
        if consumers
            .iter()
            .any(|row| row[0] == task_queue && row[1] == "1")
        {
            Ok(())
        } else {
            Err(format!("no consumer on {task_queue} yet: {consumers:?}"))
        }
    });
    let alarm = node.rabbitmqctl(0, &["set_vm_memory_high_watermark", "0.0000001"]);
    assert!(alarm.status.success(), "{alarm:?}");
    let producer = s
        .producer(&[
            "--amqp-url",
            &url,
            "sum",
            "--random",
            "2e6",
            "--chunk-size",
            "20000",
            "--job-ttl",
            "0",
        ])
        .spawn();
    eventually(Duration::from_secs(30), || {
        let stderr = producer.stderr();
        if stderr.contains("a resource alarm is in effect") {
            Ok(())
        } else {
            Err(format!("the alarm is not named yet:\n{stderr}"))
        }
    });
    let interrupted = std::time::Instant::now();
    producer.signal(Signal::SIGINT);
    let run = producer.wait(Duration::from_secs(60));
    let took = interrupted.elapsed();
    run.expect_code(130);
    assert!(
        took < Duration::from_secs(8),
        "Ctrl-C took {took:?} to end the run during the alarm\n{run}"
    );
    assert!(run.stderr.contains("rabbitmq-diagnostics alarms"), "{run}");
    assert!(!run.stderr.contains("no worker is consuming"), "{run}");
    // Cancelled everywhere: the job's queues are gone although its own
    // connection could send nothing.
    let left: Vec<_> = node
        .queues_with_prefix(&s.prefix)
        .into_iter()
        .filter(|(name, _)| name.contains(".reply.") || name.contains(".job."))
        .collect();
    assert!(
        left.is_empty(),
        "the job's queues are left: {left:?}\n{run}"
    );
}

/// A queue that refuses publishes while it is full (`x-overflow:
/// reject-publish`) makes the broker nack them, as a quorum queue without a
/// leader does; `warren::broker`'s retry, which tasks, results and
/// checkpoints all go through, publishes again until the queue takes the
/// message, and gives up with `Nacked` at its bound.
#[test]
fn a_message_the_broker_refuses_is_published_again_until_the_queue_takes_it() {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions};
    use warren::broker::{self, Publisher, Routed};

    let mut s = Scenario::new("refused_publish");
    let queue = format!("{}.full", s.prefix);
    s.broker.with_connection(async |connection| {
        let channel = broker::open_channel(connection).await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                arguments,
            )
            .await
            .unwrap();
        let publisher = Publisher::open(connection).await.unwrap();
        let properties = BasicProperties::default();
        let first = publisher.publish_confirmed(&queue, b"first", properties.clone());
        assert_eq!(first.await.unwrap(), Routed::Queued);

        // Full for longer than the bound: refused, after trying that long.
        let started = std::time::Instant::now();
        let bound = Duration::from_millis(800);
        let refused = publisher
            .publish_until_taken(&queue, b"second", &properties, bound)
            .await;
        assert!(
            matches!(refused, Err(warren::Error::Nacked { .. })),
            "a message refused past the bound is an error: {refused:?}"
        );
        assert!(started.elapsed() >= bound, "gave up before its bound");

        // Room made after a second: the same call is taken.
        let reader = channel.clone();
        let name = queue.clone();
        let drain = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let got = reader.basic_get(name.as_str().into(), BasicGetOptions { no_ack: true });
            got.await.unwrap().map(|m| m.delivery.data)
        });
        let taken = publisher
            .publish_until_taken(&queue, b"second", &properties, Duration::from_secs(30))
            .await;
        assert_eq!(taken.unwrap(), Routed::Queued);
        assert_eq!(drain.await.unwrap().as_deref(), Some(&b"first"[..]));
        let left = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true });
        let left = left.await.unwrap().map(|m| m.delivery.data);
        assert_eq!(left.as_deref(), Some(&b"second"[..]), "taken exactly once");
        broker::delete_queue(&channel, &queue).await.unwrap();
    });
    s.assert_clean();
}
