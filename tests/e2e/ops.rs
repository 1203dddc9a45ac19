use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use nix::sys::signal::Signal;
use warren::JobId;
use warren::protocol::{DeadLetter, Outcome, TaskResult};

use warren_testkit::{content, eventually};

use crate::support::Scenario;
use crate::support::endpoints::{http_get, metric, wait_for_metrics, wait_for_status};
use crate::support::python::reference;

#[test]
fn a_worker_serves_metrics_health_and_readiness() {
    let mut s = Scenario::new("metrics");
    let mut worker = s.start_worker("w0", &["--metrics-addr", "127.0.0.1:0"]);
    s.broker.wait_for_consumers(1);
    let port = worker.metrics_port();
    wait_for_status(port, "/readyz", 200);
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    sum_shows_in_metrics(&mut s, port);
    let http = warren_testkit::HttpFixture::start();
    downloads_show_in_metrics(&mut s, &http, port);
    draining_is_alive_not_ready_and_finishes(&mut s, &http, &mut worker, port);

    // Alive but not ready while the broker cannot be reached.
    let unready = s.start_worker(
        "w1",
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        ],
    );
    let port = unready.metrics_port();
    wait_for_status(port, "/healthz", 200);
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(503));
    s.assert_clean();
}

/// A sum's tasks, bytes and durations in the metrics of the worker at
/// `port`.
fn sum_shows_in_metrics(s: &mut Scenario, port: u16) {
    // One task to a message, so that each task is a delivery of its own:
    // the duration histogram counts deliveries.
    let run = s
        .producer(&[
            "sum",
            "--random",
            "300000",
            "--seed",
            "4",
            "--chunk-size",
            "100000",
            "--tasks-per-message",
            "1",
        ])
        .run();
    assert_eq!(
        run.expect_success().answer(),
        reference(&["numpy-random-sum", "300000", "4"])
    );
    wait_for_metrics(
        port,
        &[
            r#"warren_worker_tasks_total{kind="sum",outcome="ok"} 3"#,
            "warren_worker_summed_bytes_total 2400000",
            r#"warren_worker_task_duration_seconds_count{kind="sum"} 3"#,
            "warren_worker_tasks_in_flight 0",
            "warren_worker_ready 1",
            "warren_worker_reconnects_total 0",
        ],
    );
}

/// Downloads: the bytes fetched, and each task under its outcome (a 404
/// is not retried, so it fails at once); the sum's counts stay.
fn downloads_show_in_metrics(s: &mut Scenario, http: &warren_testkit::HttpFixture, port: u16) {
    let run = s
        .producer(&[
            "download",
            &http.url("/files/a?size=1000"),
            &http.url("/files/b?size=2345"),
            &http.url("/status/404"),
            "--out-dir",
            &s.path_str("fetched"),
            "--json",
        ])
        .run();
    run.expect_code(1);
    let json = run.json();
    assert_eq!(json["succeeded"], 2, "{run}");
    assert_eq!(json["failed"].as_array().map(Vec::len), Some(1), "{run}");
    assert_eq!(std::fs::read(s.path("fetched/a")).unwrap().len(), 1000);
    assert_eq!(std::fs::read(s.path("fetched/b")).unwrap().len(), 2345);
    wait_for_metrics(
        port,
        &[
            "warren_worker_downloaded_bytes_total 3345",
            r#"warren_worker_tasks_total{kind="download",outcome="ok"} 2"#,
            r#"warren_worker_tasks_total{kind="download",outcome="failed"} 1"#,
            r#"warren_worker_task_duration_seconds_count{kind="download"} 3"#,
            // The sums are still counted as they were.
            r#"warren_worker_tasks_total{kind="sum",outcome="ok"} 3"#,
            "warren_worker_summed_bytes_total 2400000",
            "warren_worker_tasks_in_flight 0",
        ],
    );
}

/// Draining after SIGTERM: alive, no longer ready, and the task in hand
/// still finishes.
fn draining_is_alive_not_ready_and_finishes(
    s: &mut Scenario,
    http: &warren_testkit::HttpFixture,
    worker: &mut crate::support::Worker,
    port: u16,
) {
    let download = s
        .producer(&[
            "download",
            &http.url("/slow/drain?delay_ms=3000&size=100"),
            "--out-dir",
            &s.path_str("out"),
        ])
        .spawn();
    s.broker
        .wait_until(Duration::from_secs(20), "the download is in hand", |_| {
            http_get(port, "/metrics")
                .is_some_and(|(_, body)| body.contains("warren_worker_tasks_in_flight 1"))
        });
    worker.signal(Signal::SIGTERM);
    wait_for_status(port, "/readyz", 503);
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert!(worker.wait_exit(Duration::from_secs(20)).success());
    download.wait(Duration::from_secs(20)).expect_success();
    assert_eq!(std::fs::read(s.path("out/drain")).unwrap().len(), 100);
}

/// Issue 5: small files travel several to a task message (the broker's
/// cost is per message), large ones one each (so that no worker hoards
/// them), and every download is still its own task. The worker's metrics
/// tell messages (one duration each) from tasks.
#[test]
fn small_downloads_share_task_messages_and_large_ones_do_not() {
    let mut s = Scenario::new("batched-downloads");
    let worker = s.start_worker("w0", &["--metrics-addr", "127.0.0.1:0"]);
    s.broker.wait_for_consumers(1);
    let port = worker.metrics_port();
    let http = warren_testkit::HttpFixture::start();
    let downloads = |name: &str, files: usize, size: usize| {
        let urls: Vec<String> = (0..files)
            .map(|i| http.url(&format!("/files/{name}/{i}.bin?size={size}")))
            .collect();
        let list = s.path(&format!("{name}.txt"));
        std::fs::write(&list, urls.join("\n")).unwrap();
        let out = s.path_str(name);
        let run = s
            .producer(&[
                "download",
                list.to_str().unwrap(),
                "--out-dir",
                &out,
                "--json",
            ])
            .run();
        run.expect_success();
        assert_eq!(run.json()["succeeded"], files, "{run}");
        for i in 0..files {
            let got = std::fs::read(s.path(&format!("{name}/{i}.bin"))).unwrap();
            assert!(
                got == content(&format!("/files/{name}/{i}.bin"), size),
                "{name}/{i}.bin differs from what was served"
            );
        }
    };
    let tasks = r#"warren_worker_tasks_total{kind="download",outcome="ok"}"#;
    let messages = r#"warren_worker_task_duration_seconds_count{kind="download"}"#;

    downloads("small", 300, 2000);
    wait_for_metrics(port, &[&format!("{tasks} 300")]);
    let small_messages = metric(port, messages);
    // Up to the first window (64) goes one per message, before any size
    // is known; the rest share messages, up to 8 each.
    assert!(
        (300.0 / 8.0..=150.0).contains(&small_messages),
        "300 small files took {small_messages} messages"
    );

    downloads("large", 10, 3 << 20);
    wait_for_metrics(port, &[&format!("{tasks} 310")]);
    assert_eq!(
        metric(port, messages) - small_messages,
        10.0,
        "files over 2 MiB go one per message"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut s = Scenario::new("json_logs");
    let worker = s.start_worker("w0", &["--log-format", "json"]);
    s.broker.wait_for_consumers(1);
    let log = worker.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(object.get("level").is_some(), "{line}");
    }
    let consuming = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|o| o["message"] == "consuming")
        .unwrap_or_else(|| panic!("no 'consuming' line:\n{log}"));
    assert_eq!(consuming["worker"], "w0");
    assert_eq!(consuming["queue"], format!("{}.tasks", s.prefix));
}

#[test]
fn status_shows_queues_and_running_jobs() {
    let mut s = Scenario::new("status");
    let producer = s.spawn_small_job("1");
    let task_queue = s.broker.topology.task_queue();
    s.broker
        .wait_until(Duration::from_secs(20), "10 tasks are queued", |b| {
            b.ready(&task_queue) == 10
        });
    let status = wait_for_status_json(&s, "the running job", |status| {
        status["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.len() == 1)
            && status["jobs"][0]["producer_connected"] == true
    });
    assert_eq!(status["prefix"], s.prefix.as_str());
    let tasks = &status["queues"][0];
    assert_eq!(tasks["name"], task_queue.as_str());
    assert_eq!(tasks["ready"], 10);
    assert_eq!(tasks["consumers"], 0);
    assert_eq!(status["jobs"][0]["producer_connected"], true);
    let table = s.producer(&["status"]).run();
    assert!(
        table.expect_success().stdout.contains("1 job(s) running"),
        "{table}"
    );

    producer.signal(Signal::SIGINT);
    producer.wait(Duration::from_secs(20)).expect_code(130);
    let run = s.producer(&["status", "--json"]).run();
    assert_eq!(
        run.json()["jobs"].as_array().map(Vec::len),
        Some(0),
        "{run}"
    );
    // Without the management API, status says what it cannot know.
    let run = s
        .producer(&["status", "--management-url", "http://127.0.0.1:1"])
        .run();
    run.expect_success();
    assert!(run.stdout.contains("rabbitmq_management"), "{run}");
    let _worker = s.workers(1);
    s.assert_clean();
}

/// The queue of a `status --json` answer with this role.
fn queue_with_role<'a>(status: &'a serde_json::Value, role: &str) -> &'a serde_json::Value {
    status["queues"]
        .as_array()
        .and_then(|queues| queues.iter().find(|q| q["role"] == role))
        .unwrap_or_else(|| panic!("no {role} queue in {status}"))
}

/// Runs `producer status --json` until `condition` holds of its answer,
/// or fails after 30 s: the management API's counts lag a few seconds.
fn wait_for_status_json(
    s: &Scenario,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(Duration::from_secs(30), || {
        let run = s.producer(&["status", "--json"]).run();
        run.expect_success();
        let status = run.json();
        if condition(&status) {
            Ok(status)
        } else {
            Err(format!(
                "status never showed {what} (is the rabbitmq_management plugin enabled?):\n{run}"
            ))
        }
    })
}

#[test]
fn status_counts_tasks_in_work_and_dead_letters() {
    let mut s = Scenario::new("status_in_work");
    let _worker = s.start_worker("w0", &["--concurrency", "2"]);
    s.broker.wait_for_consumers(1);
    // A task nobody can read is dead-lettered by the worker.
    let task_queue = s.broker.topology.task_queue();
    let dead_queue = s.broker.topology.dead_letter_queue();
    s.broker
        .publish(&task_queue, b"garbage", BasicProperties::default());
    s.broker
        .wait_until(Duration::from_secs(20), "the task is dead-lettered", |b| {
            b.ready(&dead_queue) == 1
        });
    // Six 10-second downloads, two at a time: two tasks stay in work (taken,
    // not yet acknowledged) for half a minute.
    let http = warren_testkit::HttpFixture::start();
    let urls: Vec<String> = (0..6)
        .map(|i| http.url(&format!("/slow/s{i}?delay_ms=10000&size=100")))
        .collect();
    let out = s.path_str("out");
    let mut args = vec!["download", "--out-dir", &out];
    args.extend(urls.iter().map(String::as_str));
    let producer = s.producer(&args).spawn();

    // The management API's counts lag and are refreshed one by one: wait
    // for all of them.
    let status = wait_for_status_json(&s, "two tasks in work", |status| {
        queue_with_role(status, "tasks")["unacked"] == 2
            && queue_with_role(status, "dead")["ready"] == 1
            && status["jobs"][0]["producer_connected"] == true
    });
    let tasks = queue_with_role(&status, "tasks");
    assert_eq!(tasks["name"], task_queue.as_str(), "{status}");
    assert_eq!(tasks["consumers"], 1, "{status}");
    let dead = queue_with_role(&status, "dead");
    assert_eq!(dead["name"], dead_queue.as_str(), "{status}");
    assert_eq!(dead["ready"], 1, "{status}");
    assert_eq!(dead["consumers"], 0, "{status}");
    assert_eq!(status["jobs"].as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(status["jobs"][0]["producer_connected"], true, "{status}");

    // The worker finishes the two in hand and drops the rest of the
    // cancelled job; the dead letter was put there on purpose.
    producer.signal(Signal::SIGINT);
    producer.wait(Duration::from_secs(20)).expect_code(130);
    assert_eq!(s.broker.purge(&dead_queue), 1);
    s.assert_clean();
}

#[test]
fn local_workers_run_a_job_without_any_other_worker() {
    let mut s = Scenario::new("local_workers");
    let expected = reference(&["numpy-random-sum", "1000000", "6"]);
    let run = s
        .producer(&[
            "sum",
            "--random",
            "1e6",
            "--seed",
            "6",
            "--chunk-size",
            "50000",
            "--workers",
            "2",
            "--json",
        ])
        .run();
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str(), "{run}");
    let workers: Vec<&str> = json["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        !workers.is_empty() && workers.iter().all(|w| w.contains("/local-")),
        "{workers:?}"
    );
    // Workers that start with the job are not reported missing.
    assert!(!run.stderr.contains("no worker"), "{run}");
    // They are gone with the job.
    s.broker.wait_for_consumers(0);
    s.assert_clean();
}

#[test]
fn oversized_tasks_are_dead_lettered_before_any_work() {
    let mut s = Scenario::new("oversized");
    let worker = s.start_worker("w0", &["--max-task-size", "1KiB"]);
    s.broker.wait_for_consumers(1);
    let job = JobId::random();
    let (reply_queue, mut replies) = s.broker.declare_reply_queue(&job);
    let mut headers = FieldTable::default();
    for (key, value) in [
        ("warren-version", AMQPValue::LongLongInt(1)),
        (
            "warren-kind",
            AMQPValue::LongString(LongString::from("sum")),
        ),
        (
            "warren-job",
            AMQPValue::LongString(LongString::from(job.as_str())),
        ),
        ("warren-task", AMQPValue::LongLongInt(0)),
        (
            "warren-dtype",
            AMQPValue::LongString(LongString::from("float64")),
        ),
        ("warren-count", AMQPValue::LongLongInt(256)),
    ] {
        headers.insert(key.into(), value);
    }
    let task_queue = s.broker.topology.task_queue();
    s.broker.publish(
        &task_queue,
        &[0u8; 2048],
        BasicProperties::default()
            .with_reply_to(reply_queue.as_str().into())
            .with_headers(headers),
    );
    let mut error = None;
    let mut dead = false;
    for _ in 0..2 {
        let delivery = s
            .broker
            .next_delivery(&mut replies, Duration::from_secs(20))
            .expect("the job hears about its oversized task");
        if DeadLetter::of(&delivery.properties).is_some() {
            dead = true;
        } else if let Outcome::Error(failure) = TaskResult::decode(&delivery.data).unwrap().outcome
        {
            error = Some(failure.message);
        }
    }
    assert!(dead, "the task was not dead-lettered");
    let error = error.expect("an error result");
    assert!(
        error.contains("2048 bytes, over this worker's limit of 1024"),
        "{error}"
    );
    assert!(
        worker.log().contains("dead-lettering a task"),
        "{}",
        worker.log()
    );
}

/// Issue 16: a prefix without queues (a typo, say) is reported as such,
/// not as empty queues; a missing management API is one short line.
#[test]
fn status_says_when_no_queue_exists_under_the_prefix_issue_16() {
    let s = Scenario::new("status_no_queues");
    let no_api = ["--management-url", "http://127.0.0.1:1"];
    let run = s.producer(&[&["status"][..], &no_api].concat()).run();
    run.expect_success();
    assert_eq!(
        run.stdout.trim_end(),
        format!(
            "no queues exist under the prefix {:?}: workers and producers declare them when \
             they start; check --queue-prefix or WARREN_QUEUE_PREFIX",
            s.prefix
        ),
        "{run}"
    );
    let run = s
        .producer(&[&["status", "--json"][..], &no_api].concat())
        .run();
    run.expect_success();
    let status = run.json();
    for queue in status["queues"].as_array().unwrap() {
        assert_eq!(queue["exists"], false, "{run}");
        assert!(queue["ready"].is_null(), "{run}");
    }
    let management = status["management"].as_str().unwrap();
    assert_eq!(
        management,
        "no management API at http://127.0.0.1:1 (connection refused): for in-work counts \
         and jobs, rabbitmq-plugins enable rabbitmq_management or pass --management-url"
    );
}

/// Issue 12: with `--json`, flags that do not parse (clap's own error) or
/// do not go together still give a script one JSON object with `error` on
/// stdout, and status 2; stderr still tells people.
#[test]
fn with_json_a_flag_or_usage_error_prints_one_object_with_its_error() {
    let s = Scenario::new("json_usage");
    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["sum", "--random", "10", "--no-such-flag", "--json"],
            "unexpected argument '--no-such-flag' found",
            "error: unexpected argument '--no-such-flag' found",
        ),
        (
            &["sum", "--random", "10", "--timeout", "soon", "--json"],
            "invalid value 'soon' for '--timeout <DURATION>'",
            "error: invalid value 'soon'",
        ),
        (
            &["sum", "--random", "10", "--chunk-size", "0", "--json"],
            "--chunk-size must be at least 1",
            "error: --chunk-size must be at least 1",
        ),
        (
            &["sum", "--json"],
            "the following required arguments were not provided: <INPUT>",
            "error: the following required arguments were not provided:",
        ),
    ];
    for (args, error, stderr) in cases {
        let run = s.producer(args).run_within(Duration::from_secs(30));
        run.expect_code(2);
        let object: serde_json::Value = serde_json::from_str(run.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{run}"));
        let said = object["error"].as_str().unwrap_or_default();
        assert!(said.starts_with(error), "{said:?}\n{run}");
        assert_eq!(object["done"], 0, "{run}");
        assert!(run.stderr.contains(stderr), "{run}");
    }
    // Without --json, stdout stays empty as before.
    let run = s
        .producer(&["sum", "--random", "10", "--no-such-flag"])
        .run();
    run.expect_code(2);
    assert_eq!(run.stdout, "", "{run}");
}
