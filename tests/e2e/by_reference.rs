use std::time::Duration;

use warren_testkit::FileServer;

use crate::support::Scenario;
use crate::support::python::{expected_npy_sum, reference};
use crate::support::s3::S3Server;

/// Writes `n` random values of `dtype` as raw binary in `order` (`<`, `>`)
/// and returns their exact sum, from Python.
fn random_raw(s: &Scenario, name: &str, n: u64, dtype: &str, order: &str) -> String {
    reference(&[
        "random-raw",
        &s.path_str(name),
        &n.to_string(),
        "5",
        dtype,
        order,
    ])
}

fn shared_args<'a>(s: &'a Scenario, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["--shared".into(), "--shared-dir".into(), s.path_str("")];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

#[test]
fn shared_sums_by_reference_match_fsum_for_every_layout_range_size_and_worker_count() {
    let mut s = Scenario::new("byref_shared");
    let dir = s.path_str("");
    let little = s.path_str("little.npy");
    reference(&["random-npy", &little, "3000000", "11"]);
    let big = s.path_str("big.npy");
    reference(&["random-npy", &big, "3000000", "11", "float64", ">"]);
    let expected = expected_npy_sum(s.path("little.npy").as_path());
    assert_eq!(expected_npy_sum(s.path("big.npy").as_path()), expected);
    let raw_cases = [
        ("f8-big.raw", "float64", ">", "big"),
        ("i4-little.raw", "int32", "<", "little"),
        ("u2-big.raw", "uint16", ">", "big"),
        ("f4-little.raw", "float32", "<", "little"),
    ]
    .map(|(name, dtype, order, flag)| {
        let answer = random_raw(&s, name, 1_000_003, dtype, order);
        (name, dtype, flag, answer)
    });

    let mut workers = vec![s.start_worker("w0", &["--shared-dir", &dir])];
    s.broker.wait_for_consumers(1);
    for range_size in ["64MiB", "1MiB", "999999"] {
        for npy in [&little, &big] {
            let args = shared_args(&s, &[npy.as_str(), "--range-size", range_size, "--json"]);
            let mut argv = vec!["sum"];
            argv.extend(args.iter().map(String::as_str));
            let run = s.producer(&argv).run();
            run.expect_success();
            let json = run.json();
            assert_eq!(json["sum"], expected.as_str(), "{range_size} {npy}\n{run}");
            assert_eq!(json["count"], 3_000_000);
            let name = std::path::Path::new(npy)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap();
            assert_eq!(json["source"], format!("shared:{name}"));
        }
    }
    workers.push(s.start_worker("w1", &["--shared-dir", &dir]));
    workers.push(s.start_worker("w2", &["--shared-dir", &dir]));
    s.broker.wait_for_consumers(3);
    for (name, dtype, order, answer) in &raw_cases {
        let path = s.path_str(name);
        let args = shared_args(
            &s,
            &[
                path.as_str(),
                "--format",
                "raw",
                "--dtype",
                dtype,
                "--byte-order",
                order,
                "--range-size",
                "300000",
                "--json",
            ],
        );
        let mut argv = vec!["sum"];
        argv.extend(args.iter().map(String::as_str));
        let run = s.producer(&argv).run();
        run.expect_success();
        assert_eq!(run.json()["sum"], answer.as_str(), "{name}\n{run}");
        assert_eq!(run.json()["count"], 1_000_003, "{name}");
    }
    s.assert_clean();
}

#[test]
fn http_sums_by_reference_match_fsum_reading_only_their_ranges() {
    let mut s = Scenario::new("byref_http");
    let data = s.path_str("x.npy");
    reference(&["random-npy", &data, "2000000", "12", "float64", ">"]);
    let expected = expected_npy_sum(s.path("x.npy").as_path());
    let server = FileServer::start(s.dir.path());
    let _workers = s.workers(2);
    let url = server.url("x.npy");
    let run = s
        .producer(&["sum", &url, "--range-size", "1MiB", "--json"])
        .run();
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str(), "{run}");
    assert_eq!(json["source"], url.as_str());
    // 16 MB in 1 MiB ranges: one request each, plus the producer's one for
    // the header. Nothing read twice, nothing whole.
    let tasks = json["chunks"].as_u64().unwrap();
    assert_eq!(tasks, 16);
    assert_eq!(server.ranges_served(), tasks + 1);
    s.assert_clean();
}

#[test]
fn s3_sums_by_reference_match_fsum() {
    let mut s = Scenario::new("byref_s3");
    let data = s.path_str("x.npy");
    reference(&["random-npy", &data, "1000000", "13"]);
    let expected = expected_npy_sum(s.path("x.npy").as_path());
    let raw = s.path("i8.raw");
    let raw_answer = random_raw(&s, "i8.raw", 500_000, "int64", ">");
    let server = S3Server::start(false);
    server.put("warren-test", "inputs/x.npy", s.path("x.npy").as_path());
    server.put("warren-test", "inputs/i8.raw", &raw);
    let env = server.env();
    let _w0 = s.start_worker_with_env("w0", &[], &env);
    let _w1 = s.start_worker_with_env("w1", &[], &env);
    s.broker.wait_for_consumers(2);
    let with_env = |args: &[&str]| {
        env.iter()
            .fold(s.producer(args), |p, (k, v)| p.env(k, v))
            .run()
    };
    let run = with_env(&[
        "sum",
        "s3://warren-test/inputs/x.npy",
        "--range-size",
        "1MiB",
        "--json",
    ]);
    run.expect_success();
    assert_eq!(run.json()["sum"], expected.as_str(), "{run}");
    assert_eq!(run.json()["source"], "s3://warren-test/inputs/x.npy");
    let run = with_env(&[
        "sum",
        "s3://warren-test/inputs/i8.raw",
        "--format",
        "raw",
        "--dtype",
        "int64",
        "--byte-order",
        "big",
        "--range-size",
        "100000",
    ]);
    assert_eq!(run.expect_success().answer(), raw_answer, "{run}");
    s.assert_clean();
}

#[test]
fn s3_with_bad_credentials_is_a_clear_error_before_anything_is_published() {
    let mut s = Scenario::new("byref_s3_denied");
    let server = S3Server::start(true);
    let run = server
        .env()
        .iter()
        .fold(
            s.producer(&["sum", "s3://warren-test/x.npy"]),
            |p, (k, v)| p.env(k, v),
        )
        .run_within(Duration::from_secs(60));
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("cannot read bytes 0..4096 of s3://warren-test/x.npy"),
        "{run}"
    );
    assert!(run.stderr.contains("403"), "{run}");
    s.assert_clean();
}

#[test]
fn a_server_without_range_support_is_refused_before_anything_is_published() {
    let mut s = Scenario::new("byref_norange");
    reference(&["random-npy", &s.path_str("x.npy"), "1000", "1"]);
    let server = FileServer::start(s.dir.path());
    server.ignore_range();
    let run = s
        .producer(&["sum", &server.url("x.npy")])
        .run_within(Duration::from_secs(60));
    run.expect_code(2);
    assert!(run.stderr.contains("ignores HTTP Range requests"), "{run}");
    assert_eq!(s.broker.ready(&s.broker.topology.task_queue()), 0);
    s.assert_clean();
}

#[test]
fn a_file_changed_during_the_job_fails_it_naming_the_source() {
    let mut s = Scenario::new("byref_changed");
    let dir = s.path_str("");
    let data = s.path_str("x.npy");
    reference(&["random-npy", &data, "1000000", "2"]);
    let producer = s
        .producer(&[
            "sum",
            &data,
            "--shared",
            "--shared-dir",
            &dir,
            "--range-size",
            "1MiB",
        ])
        .spawn();
    let task_queue = s.broker.topology.task_queue();
    s.broker
        .wait_until(Duration::from_secs(30), "the 8 tasks are queued", |b| {
            b.ready(&task_queue) == 8
        });
    // Rewritten in place with other values of the same size.
    reference(&["random-npy", &data, "1000000", "3"]);
    let _worker = s.start_worker("w0", &["--shared-dir", &dir]);
    let run = producer.wait(Duration::from_secs(60));
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("the input changed while it was being summed: shared:x.npy"),
        "{run}"
    );
    s.assert_clean();
}

#[test]
fn a_404_mid_job_fails_it_naming_source_and_range() {
    let mut s = Scenario::new("byref_404");
    reference(&["random-npy", &s.path_str("x.npy"), "500000", "2"]);
    let server = FileServer::start(s.dir.path());
    let url = server.url("x.npy");
    let producer = s.producer(&["sum", &url, "--range-size", "1MiB"]).spawn();
    let task_queue = s.broker.topology.task_queue();
    s.broker
        .wait_until(Duration::from_secs(30), "the 4 tasks are queued", |b| {
            b.ready(&task_queue) == 4
        });
    std::fs::remove_file(s.path("x.npy")).unwrap();
    let _worker = s.start_worker("w0", &[]);
    let run = producer.wait(Duration::from_secs(60));
    run.expect_code(2);
    assert!(
        run.stderr.contains("cannot read bytes ") && run.stderr.contains(&url),
        "{run}"
    );
    assert!(run.stderr.contains("after 3 attempts"), "{run}");
    s.assert_clean();
}

#[test]
fn paths_outside_the_shared_directory_are_refused_by_producer_and_worker() {
    let mut s = Scenario::new("byref_outside");
    let producer_dir = s.path("producer-shared");
    let worker_dir = s.path("worker-shared");
    let outside = s.path("outside");
    for dir in [&producer_dir, &worker_dir, &outside] {
        std::fs::create_dir(dir).unwrap();
    }
    let secret = outside.join("x.npy");
    reference(&["random-npy", secret.to_str().unwrap(), "1000", "1"]);

    // The producer refuses a path outside its shared directory at once.
    let run = s
        .producer(&[
            "sum",
            secret.to_str().unwrap(),
            "--shared",
            "--shared-dir",
            producer_dir.to_str().unwrap(),
        ])
        .run_within(Duration::from_secs(30));
    run.expect_code(2);
    assert!(
        run.stderr.contains("is outside the shared directory"),
        "{run}"
    );

    // A worker whose shared directory holds a symbolic link out of it
    // refuses to follow it, whatever the producer saw on its side.
    std::fs::copy(&secret, producer_dir.join("x.npy")).unwrap();
    std::os::unix::fs::symlink(&secret, worker_dir.join("x.npy")).unwrap();
    let _worker = s.start_worker("w0", &["--shared-dir", worker_dir.to_str().unwrap()]);
    s.broker.wait_for_consumers(1);
    let run = s
        .producer(&[
            "sum",
            producer_dir.join("x.npy").to_str().unwrap(),
            "--shared",
            "--shared-dir",
            producer_dir.to_str().unwrap(),
        ])
        .run_within(Duration::from_secs(60));
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("leads out of this worker's shared directory"),
        "{run}"
    );
    s.assert_clean();
}

#[test]
fn text_input_by_reference_is_refused_with_what_to_do() {
    let mut s = Scenario::new("byref_text");
    std::fs::write(s.path("values.txt"), "1.5 2.5\n").unwrap();
    let dir = s.path_str("");
    let run = s
        .producer(&[
            "sum",
            &s.path_str("values.txt"),
            "--shared",
            "--shared-dir",
            &dir,
        ])
        .run_within(Duration::from_secs(30));
    run.expect_code(2);
    assert!(
        run.stderr.contains("cannot be summed by reference"),
        "{run}"
    );
    s.assert_clean();
}

#[test]
fn a_worker_killed_mid_range_leaves_the_sum_exact_and_counted_once() {
    let mut s = Scenario::new("byref_killed");
    let data = s.path_str("x.npy");
    reference(&["random-npy", &data, "2500000", "21"]);
    let expected = expected_npy_sum(s.path("x.npy").as_path());
    let server = FileServer::start(s.dir.path());
    // 20 MB at 4 MB/s per range: each 2 MiB range takes about 0.5 s, so
    // once every range has been requested, both workers are mid-range.
    server.cap_rate(4_000_000);
    let mut workers = s.workers(2);
    let producer = s
        .producer(&[
            "sum",
            &server.url("x.npy"),
            "--range-size",
            "2MiB",
            "--json",
        ])
        .spawn();
    // The header and all ten ranges (20 MB in 2 MiB ranges): both workers
    // hold theirs (16 fit in their prefetch), so the one killed holds
    // some. Waiting for fewer let a worker that started late be killed
    // before it had asked for any (seen in CI).
    s.broker
        .wait_until(Duration::from_secs(60), "every range was requested", |_| {
            server.ranges_served() >= 11
        });
    workers[0].kill_hard();
    let run = producer.wait(Duration::from_secs(120));
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str(), "{run}");
    assert_eq!(json["count"], 2_500_000, "{run}");
    // The header, every range once, and again the ranges the killed worker
    // held (it always holds some: each takes 0.25 s to arrive).
    let chunks = json["chunks"].as_u64().unwrap();
    assert!(
        server.ranges_served() >= chunks + 2,
        "{} ranges for {chunks} tasks",
        server.ranges_served()
    );
    s.assert_clean();
}
