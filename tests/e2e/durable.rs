//! Jobs that outlive their producer: a producer SIGKILLed mid-job, and
//! `producer attach` finishing the job exactly; `producer jobs`, `producer
//! cancel` (which also stops running downloads), the attach lock, a changed
//! input and the job TTL.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::broker::queues_with_prefix;
use crate::support::process::{Run, RunningProducer};
use crate::support::python::reference;
use crate::support::{RABBITMQCTL_NEEDED, Scenario};

/// The job's entry in `producer jobs --json`, if it is listed.
fn listed_job(s: &Scenario, job: &warren::JobId) -> Option<serde_json::Value> {
    let run = s.producer(&["jobs", "--json"]).run();
    run.expect_success();
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(run.answer()).unwrap_or_else(|e| panic!("jobs --json: {e}\n{run}"));
    jobs.into_iter().find(|j| j["job_id"] == job.as_str())
}

/// Waits until `producer jobs` lists the job in a state `ready` accepts.
fn wait_for_listing(
    s: &Scenario,
    job: &warren::JobId,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = listed_job(s, job);
        if let Some(entry) = listed.as_ref().filter(|e| ready(e)) {
            return entry.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last listing: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The id of the job a producer started, from the line it prints on
/// stderr when the job starts.
fn started_job(producer: &RunningProducer) -> warren::JobId {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stderr = producer.stderr();
        if let Some(line) = stderr.lines().find(|l| l.starts_with("job ")) {
            let id = line
                .split_whitespace()
                .nth(1)
                .expect("the line names the job");
            return warren::JobId::parse(id.trim_end_matches(';')).expect("a job id");
        }
        assert!(
            Instant::now() < deadline,
            "the producer did not print its job id within 30 s: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the broker still holds a queue of this job (its reply queue or
/// its record).
fn job_queues_exist(s: &Scenario, job: &warren::JobId) -> bool {
    let queues = queues_with_prefix(&s.prefix).expect(RABBITMQCTL_NEEDED);
    queues.iter().any(|(name, _)| name.ends_with(job.as_str()))
}

/// Starts a sum of 4e7 random doubles (seed 11) in 2000 tasks, once the
/// test's worker consumes, and waits until 100 of them are checkpointed.
fn long_sum_under_way(s: &mut Scenario) -> (RunningProducer, warren::JobId) {
    s.broker.wait_for_consumers(1);
    let producer = s
        .producer(&[
            "sum",
            "--random",
            "4e7",
            "--seed",
            "11",
            "--chunk-size",
            "20000",
            "--json",
        ])
        .spawn();
    let job = started_job(&producer);
    wait_for_listing(s, &job, "100 of its 2000 tasks are checkpointed", |e| {
        e["done"].as_u64().unwrap_or(0) >= 100
    });
    (producer, job)
}

#[test]
fn a_sum_whose_producer_is_killed_mid_job_ends_exact_with_attach() {
    let mut s = Scenario::new("attach_sum");
    let expected = reference(&["numpy-random-sum", "40000000", "11"]);
    let _worker = s.start_worker("w0", &["--concurrency", "1"]);
    let (first, job) = long_sum_under_way(&mut s);
    first.signal(Signal::SIGKILL);
    let killed = first.wait(Duration::from_secs(10));
    assert!(
        killed.stderr.contains(&format!("producer attach {job}")),
        "the producer names the job when it starts: {killed}"
    );

    let run = s
        .producer(&["attach", job.as_str(), "--json"])
        .run_within(Duration::from_secs(120));
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str(), "{run}");
    assert_eq!(json["count"], 40_000_000, "{run}");
    assert_eq!(json["chunks"], 2000, "{run}");
    assert_eq!(json["job_id"], job.as_str(), "{run}");
    assert_eq!(json["seed"], 11, "{run}");
    s.assert_clean();
}

#[test]
fn a_sum_by_reference_whose_producer_is_killed_ends_exact_with_attach() {
    let mut s = Scenario::new("attach_ref");
    let data = s.path_str("data.npy");
    reference(&["random-npy", &data, "4000000", "5"]);
    let expected = crate::support::python::expected_npy_sum(s.path("data.npy").as_path());
    let dir = s.path_str("");
    let _worker = s.start_worker("w0", &["--shared-dir", &dir, "--concurrency", "1"]);
    s.broker.wait_for_consumers(1);
    let first = s
        .producer(&[
            "sum",
            &data,
            "--shared",
            "--shared-dir",
            &dir,
            "--range-size",
            "64KiB",
            "--max-in-flight",
            "16",
        ])
        .spawn();
    let job = started_job(&first);
    wait_for_listing(&s, &job, "50 of its 489 ranges are checkpointed", |e| {
        e["done"].as_u64().unwrap_or(0) >= 50
    });
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10));

    let run = s
        .producer(&["attach", job.as_str()])
        .run_within(Duration::from_secs(120));
    run.expect_success();
    assert_eq!(run.answer(), expected, "{run}");
    s.assert_clean();
}

#[test]
fn attach_refuses_a_job_that_another_producer_is_attached_to() {
    let mut s = Scenario::new("attach_locked");
    // No worker: the job waits.
    let first = s.spawn_small_job("1");
    let job = started_job(&first);
    let run = s.producer(&["attach", job.as_str()]).run();
    run.expect_code(2);
    assert!(
        run.stderr.contains("is attached to another producer"),
        "{run}"
    );
    // The refused attach left the job alone; Ctrl-C on its producer ends it.
    first.signal(Signal::SIGINT);
    first.wait(Duration::from_secs(20)).expect_code(130);
    let _drain = s.start_worker("drain", &[]);
    s.assert_clean();
}

#[test]
fn jobs_lists_a_job_whose_producer_was_killed_and_cancel_ends_it() {
    let mut s = Scenario::new("jobs_cancel");
    let first = s.spawn_small_job("1");
    let job = started_job(&first);
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10));
    let entry = wait_for_listing(&s, &job, "the job is listed without a producer", |e| {
        e["attached"] == false
    });
    assert_eq!(entry["kind"], "sum", "{entry}");
    assert_eq!(entry["ttl_s"], 600, "{entry}");

    s.producer(&["cancel", job.as_str()]).run().expect_success();
    assert!(
        !job_queues_exist(&s, &job),
        "cancel deletes the job's queues"
    );
    let again = s.producer(&["attach", job.as_str()]).run();
    again.expect_code(2);
    assert!(again.stderr.contains("no job"), "{again}");
    // The queued tasks of the cancelled job are dropped by the workers.
    let _drain = s.start_worker("drain", &[]);
    s.assert_clean();
}

#[test]
fn a_job_left_without_a_producer_expires_after_its_ttl() {
    let mut s = Scenario::new("job_ttl");
    let first = s
        .producer(&[
            "sum",
            "--random",
            "1000",
            "--seed",
            "1",
            "--chunk-size",
            "100",
            "--job-ttl",
            "2s",
        ])
        .spawn();
    let job = started_job(&first);
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10));
    // RabbitMQ checks queue expiry every few seconds.
    let deadline = Instant::now() + Duration::from_secs(40);
    while job_queues_exist(&s, &job) {
        assert!(
            Instant::now() < deadline,
            "the job's queues outlived its 2 s TTL by 40 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _drain = s.start_worker("drain", &[]);
    s.assert_clean();
}

#[test]
fn attach_refuses_an_input_that_changed_since_the_job_started() {
    let mut s = Scenario::new("attach_changed");
    let values: Vec<u8> = (0..100_000u32)
        .flat_map(|i| f64::from(i).to_le_bytes())
        .collect();
    std::fs::write(s.path("data.f64"), &values).unwrap();
    // No worker, and a small window: most of the input is not published.
    let first = s
        .producer(&[
            "sum",
            &s.path_str("data.f64"),
            "--format",
            "raw",
            "--dtype",
            "float64",
            "--chunk-size",
            "1000",
            "--max-in-flight",
            "4",
        ])
        .spawn();
    let job = started_job(&first);
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10));
    let mut changed = values.clone();
    changed[8..16].copy_from_slice(&1e300f64.to_le_bytes());
    std::fs::write(s.path("data.f64"), &changed).unwrap();

    let run = s.producer(&["attach", job.as_str()]).run();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("the input changed since the job started"),
        "{run}"
    );
    s.producer(&["cancel", job.as_str()]).run().expect_success();
    let _drain = s.start_worker("drain", &[]);
    s.assert_clean();
}

#[test]
fn attach_refuses_a_url_list_that_changed_since_the_download_started() {
    let mut s = Scenario::new("attach_list_changed");
    std::fs::write(s.path("urls.txt"), "http://127.0.0.1:9/never-fetched\n").unwrap();
    // No worker: the job waits with its task queued.
    let out = s.path_str("out");
    let first = s.producer(&["download", "urls.txt", "-o", &out]).spawn();
    let job = started_job(&first);
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10));
    std::fs::write(s.path("urls.txt"), "http://127.0.0.1:9/another\n").unwrap();

    let run = s.producer(&["attach", job.as_str()]).run();
    run.expect_code(2);
    let expected = format!(
        "the input changed since the job started: {}",
        s.path_str("urls.txt")
    );
    assert!(run.stderr.contains(&expected), "{run}");
    s.producer(&["cancel", job.as_str()]).run().expect_success();
    let _drain = s.start_worker("drain", &[]);
    s.assert_clean();
}

#[test]
fn attach_with_local_workers_completes_a_shared_download() {
    let mut s = Scenario::new("attach_dl_local");
    let (_server, files, urls) = served_files(&s, 4, 1000, 0);
    let (out, manifest) = (s.path_str("out"), s.path_str("manifest.jsonl"));
    // No worker: the first producer publishes and waits.
    let args = [
        "download",
        "urls.txt",
        "-o",
        &out,
        "--shared",
        "--manifest",
        &manifest,
    ];
    let first = s.producer(&args).spawn();
    let job = started_job(&first);
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10));

    // The attached producer's own workers share the job's output directory.
    let run = s
        .producer(&["attach", job.as_str(), "--workers", "2", "--json"])
        .run_within(Duration::from_secs(60));
    run.expect_success();
    assert_eq!(run.json()["succeeded"], 4, "{run}");
    assert_download_complete(&s.path("out"), &manifest, &files, &urls);
    s.assert_clean();
}

/// The broker closes the producer's connection mid-job (as
/// `rabbitmqctl close_connection` does for an operator, or a broker
/// restart does): the same producer run connects again and ends exact.
#[test]
fn a_producer_whose_connection_is_closed_mid_job_reconnects_and_ends_exact() {
    let mut s = Scenario::new("reconnect");
    let expected = reference(&["numpy-random-sum", "40000000", "11"]);
    let _worker = s.start_worker("w0", &["--concurrency", "1"]);
    let (producer, job) = long_sum_under_way(&mut s);
    close_connection(&format!("warren-producer {job}"));
    let run = producer.wait(Duration::from_secs(120));
    run.expect_success();
    assert_eq!(run.json()["sum"], expected.as_str(), "{run}");
    assert_eq!(run.json()["chunks"], 2000, "{run}");
    assert!(run.stderr.contains("lost the broker connection"), "{run}");
    s.assert_clean();
}

/// Closes the broker connection named `name`, as an operator would.
fn close_connection(name: &str) {
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect(RABBITMQCTL_NEEDED);
    let listing = String::from_utf8_lossy(&listing.stdout);
    let pid = listing
        .lines()
        .find(|line| line.contains(&format!("\"{name}\"")))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {name} in:\n{listing}"));
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", pid, "closed by a warren test"])
        .status()
        .expect(RABBITMQCTL_NEEDED);
    assert!(
        closed.success(),
        "rabbitmqctl close_connection {pid} failed"
    );
}

#[test]
fn a_detached_sum_by_reference_is_collected_by_attach() {
    let mut s = Scenario::new("detach");
    let data = s.path_str("data.npy");
    reference(&["random-npy", &data, "1000000", "9"]);
    let expected = crate::support::python::expected_npy_sum(s.path("data.npy").as_path());
    let dir = s.path_str("");
    let submitted = s
        .producer(&[
            "sum",
            &data,
            "--shared",
            "--shared-dir",
            &dir,
            "--range-size",
            "1MiB",
            "--detach",
        ])
        .run();
    submitted.expect_success();
    let job = warren::JobId::parse(submitted.answer()).expect("--detach prints the job id");
    // Nothing runs the job until a worker comes; the tasks wait.
    let _worker = s.start_worker("w0", &["--shared-dir", &dir]);
    let run = s.producer(&["attach", job.as_str()]).run();
    run.expect_success();
    assert_eq!(run.answer(), expected, "{run}");
    // A streamed input cannot be detached: it needs its producer.
    let refused = s.producer(&["sum", "--random", "100", "--detach"]).run();
    refused.expect_code(2);
    assert!(refused.stderr.contains("--detach needs"), "{refused}");
    s.assert_clean();
}

#[test]
fn a_job_with_no_ttl_ends_with_its_producer() {
    let mut s = Scenario::new("ttl_zero");
    let sum = ["sum", "--random", "1000", "--chunk-size", "100"];
    let out = s.path_str("out");
    let download = ["download", "http://127.0.0.1:9/never-fetched", "-o", &out];
    for job_args in [&sum[..], &download[..]] {
        let first = s
            .producer(&[job_args, &["--job-ttl", "0"]].concat())
            .spawn();
        let (_, job) = s.running_job();
        assert!(
            !first.stderr().contains("producer attach"),
            "no attach hint for a job that ends with its producer"
        );
        first.signal(Signal::SIGKILL);
        first.wait(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(20);
        while job_queues_exist(&s, &job) {
            assert!(
                Instant::now() < deadline,
                "the reply queue of a --job-ttl 0 {} job outlived its producer",
                job_args[0]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let _drain = s.start_worker("drain", &[]);
    s.assert_clean();
}

/// Sizes of the files in a download's temporary area (the job marker is
/// empty; a download in progress is not).
fn temporary_bytes(out: &std::path::Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(out.join(".warren-tmp")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .filter(|&len| len > 0)
        .collect()
}

#[test]
fn cancel_stops_a_running_download_and_leaves_no_partial_file() {
    let mut s = Scenario::new("cancel_download");
    std::fs::create_dir_all(s.path("files")).unwrap();
    std::fs::write(s.path("files/big.bin"), vec![7u8; 8 << 20]).unwrap();
    let server = warren_testkit::FileServer::start(&s.path("files"));
    // 8 MiB at 512 KiB/s: 16 s if nothing stops it.
    server.cap_rate(1 << 20);
    let out = s.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let out_str = s.path_str("out");
    let _worker = s.start_worker("w0", &["--shared-dir", &out_str]);
    s.broker.wait_for_consumers(1);
    let producer = s
        .producer(&[
            "download",
            &server.url("big.bin"),
            "-o",
            &out_str,
            "--shared",
        ])
        .spawn();
    let (_, job) = s.running_job();
    let deadline = Instant::now() + Duration::from_secs(30);
    while temporary_bytes(&out).is_empty() {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(50));
    }

    let cancelled = Instant::now();
    s.producer(&["cancel", job.as_str()]).run().expect_success();
    let run = producer.wait(Duration::from_secs(15));
    run.expect_code(130);
    assert!(run.stderr.contains("was cancelled"), "{run}");
    while !temporary_bytes(&out).is_empty() {
        assert!(
            cancelled.elapsed() < Duration::from_secs(5),
            "a partial file is still there 5 s after the cancel: {:?}",
            temporary_bytes(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !out.join("big.bin").exists(),
        "the cancelled file was placed"
    );
    s.assert_clean();
}

#[test]
fn a_download_sweeps_the_temporary_files_of_jobs_that_are_over() {
    let mut s = Scenario::new("sweep");
    std::fs::create_dir_all(s.path("files")).unwrap();
    std::fs::write(s.path("files/a.bin"), b"hello").unwrap();
    let server = warren_testkit::FileServer::start(&s.path("files"));
    let temp = s.path("out/.warren-tmp");
    std::fs::create_dir_all(&temp).unwrap();
    let dead = warren::JobId::random();
    let live = warren::JobId::random();
    std::fs::write(temp.join(format!("{dead}-3")), b"partial").unwrap();
    std::fs::write(temp.join(format!("{dead}-marker")), b"").unwrap();
    std::fs::write(temp.join(format!("{live}-5")), b"partial").unwrap();
    std::fs::write(temp.join("not-a-job-file"), b"kept").unwrap();
    let _worker = s.start_worker("w0", &[]);
    // (The worker declares the shared topology the reply queue binds to.)
    s.broker.wait_for_consumers(1);
    // A job still running: its reply queue exists.
    let _live_job = s.broker.declare_reply_queue(&live);
    let out = s.path_str("out");
    s.producer(&["download", &server.url("a.bin"), "-o", &out])
        .run()
        .expect_success();
    assert!(
        !temp.join(format!("{dead}-3")).exists(),
        "a dead job's partial file stays"
    );
    assert!(
        !temp.join(format!("{dead}-marker")).exists(),
        "a dead job's marker stays"
    );
    assert!(
        temp.join(format!("{live}-5")).exists(),
        "a live job's file was swept"
    );
    assert!(
        temp.join("not-a-job-file").exists(),
        "a file of no job was swept"
    );
}

/// Files by name, with their content.
type Files = Vec<(String, Vec<u8>)>;

/// `count` files of `size` bytes served at `rate` bytes/s each (0: no
/// cap), listed in `urls.txt`: the server (keep it alive), the files and
/// the URLs in list order.
fn served_files(
    s: &Scenario,
    count: u8,
    size: usize,
    rate: u64,
) -> (warren_testkit::FileServer, Files, Vec<String>) {
    std::fs::create_dir_all(s.path("files")).unwrap();
    let files: Files = (0..count)
        .map(|i| (format!("f{i}.bin"), vec![i; size]))
        .collect();
    for (name, data) in &files {
        std::fs::write(s.path("files").join(name), data).unwrap();
    }
    let server = warren_testkit::FileServer::start(&s.path("files"));
    server.cap_rate(rate);
    let urls: Vec<String> = files.iter().map(|(name, _)| server.url(name)).collect();
    std::fs::write(s.path("urls.txt"), urls.join("\n") + "\n").unwrap();
    (server, files, urls)
}

/// Ten 3 MiB files served at 1 MiB/s each (each comes through the broker
/// in three chunks).
fn ten_slow_files(s: &Scenario) -> (warren_testkit::FileServer, Files, Vec<String>) {
    served_files(s, 10, 3 << 20, 1 << 20)
}

/// Every file is in `out` with its content, the manifest lists each URL
/// once as `ok`, and nothing is left in `.warren-tmp`.
fn assert_download_complete(out: &std::path::Path, manifest: &str, files: &Files, urls: &[String]) {
    for (name, data) in files {
        let got = std::fs::read(out.join(name)).expect("every file is there");
        assert!(got == *data, "{name} differs");
    }
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut listed: Vec<(String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| {
            (
                r["url"].as_str().unwrap().to_owned(),
                r["status"].to_string(),
            )
        })
        .collect();
    listed.sort();
    let mut expected: Vec<(String, String)> = urls
        .iter()
        .map(|u| (u.clone(), "\"ok\"".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(listed, expected, "each URL once, ok");
    let left: Vec<_> = std::fs::read_dir(out.join(".warren-tmp"))
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// What stops a download's producer mid-job.
#[derive(Clone, Copy)]
enum Interruption {
    /// SIGKILL; `producer attach` carries the job on.
    KillThenAttach,
    /// The broker closes its connection; it connects again itself.
    ClosedConnection,
}

/// Starts a download of [`ten_slow_files`] (shared delivery or through the
/// broker) with one worker fetching two at a time, interrupts its producer
/// a second after two are checkpointed, two more being half received (so
/// some of their chunks are acked: only a new fetch completes them), and
/// checks the run that ends the job: it prints what an uninterrupted run
/// would have,
/// every file arrives complete and once, and nothing is left behind.
fn interrupted_download(test: &str, shared: bool, interruption: Interruption) {
    let mut s = Scenario::new(test);
    let (_server, files, urls) = ten_slow_files(&s);
    let out = s.path("out");
    let (out_str, manifest) = (s.path_str("out"), s.path_str("manifest.jsonl"));
    std::fs::create_dir_all(&out).unwrap();
    let mut worker_args = vec!["--concurrency", "2"];
    let mut args = vec!["download", "urls.txt", "-o", &out_str];
    args.extend(["--manifest", &manifest, "--json"]);
    if shared {
        worker_args.extend(["--shared-dir", &out_str]);
        args.push("--shared");
    }
    let _worker = s.start_worker("w0", &worker_args);
    s.broker.wait_for_consumers(1);
    let first = s.producer(&args).spawn();
    let job = started_job(&first);
    wait_for_listing(&s, &job, "2 of its 10 files are checkpointed", |e| {
        e["done"].as_u64().unwrap_or(0) >= 2 && e["kind"] == "download"
    });
    std::thread::sleep(Duration::from_secs(1));
    let (run, said) = match interruption {
        Interruption::KillThenAttach => {
            first.signal(Signal::SIGKILL);
            first.wait(Duration::from_secs(10));
            let attach = s.producer(&["attach", job.as_str(), "--json"]);
            (
                attach.run_within(Duration::from_secs(120)),
                "attached to download job",
            )
        }
        Interruption::ClosedConnection => {
            close_connection(&format!("warren-producer {job}"));
            (
                first.wait(Duration::from_secs(120)),
                "lost the broker connection",
            )
        }
    };
    run.expect_success();
    assert!(
        run.stderr.contains(said) && !run.stderr.contains("10 of 10"),
        "the job was carried on before its end: {run}"
    );
    assert_summary(&run, &job, &manifest);
    assert_download_complete(&out, &manifest, &files, &urls);
    s.assert_clean();
}

/// The summary of the ten files, all downloaded by one worker.
fn assert_summary(run: &Run, job: &warren::JobId, manifest: &str) {
    let json = run.json();
    assert_eq!(json["succeeded"], 10, "{run}");
    assert_eq!(json["failed"], serde_json::json!([]), "{run}");
    assert_eq!(json["skipped"], 0, "{run}");
    assert_eq!(json["bytes"], 30 << 20, "{run}");
    assert_eq!(json["job_id"], job.as_str(), "{run}");
    assert_eq!(json["manifest"], manifest, "{run}");
    assert_eq!(json["workers_seen"], 1, "{run}");
}

#[test]
fn a_shared_download_whose_producer_is_killed_completes_with_attach() {
    interrupted_download("attach_dl_shared", true, Interruption::KillThenAttach);
}

#[test]
fn a_broker_download_whose_producer_is_killed_completes_with_attach() {
    interrupted_download("attach_dl_broker", false, Interruption::KillThenAttach);
}

#[test]
fn a_download_whose_producer_loses_its_connection_reconnects_and_completes() {
    interrupted_download("reconnect_dl", false, Interruption::ClosedConnection);
}

#[test]
fn a_detached_shared_download_is_collected_by_attach() {
    let mut s = Scenario::new("detach_dl");
    let http = warren_testkit::HttpFixture::start();
    let paths: Vec<String> = (0..6).map(|i| format!("/files/detach/d{i}.bin")).collect();
    let urls: Vec<String> = paths
        .iter()
        .map(|path| http.url(&format!("{path}?size=200000")))
        .collect();
    let files: Files = (0..6)
        .zip(&paths)
        .map(|(i, path)| (format!("d{i}.bin"), warren_testkit::content(path, 200_000)))
        .collect();
    std::fs::write(s.path("urls.txt"), urls.join("\n") + "\n").unwrap();
    let out = s.path("out");
    let (out_str, manifest) = (s.path_str("out"), s.path_str("manifest.jsonl"));
    std::fs::create_dir_all(&out).unwrap();
    // Without --shared the files come back through the producer: it must
    // stay to the end.
    let download = ["download", "urls.txt", "-o", &out_str, "--detach"];
    let refused = s.producer(&download).run();
    refused.expect_code(2);
    assert!(
        refused.stderr.contains("--detach needs --shared"),
        "{refused}"
    );
    // No worker yet: a producer that waited for the files would not exit.
    let shared = ["--shared", "--manifest", &manifest];
    let submitted = s
        .producer(&[&download[..], &shared[..]].concat())
        .run_within(Duration::from_secs(30));
    submitted.expect_success();
    let job = warren::JobId::parse(submitted.answer()).expect("--detach prints the job id");
    assert_eq!(http.total_hits(), 0, "nothing fetched before a worker came");
    let _worker = s.start_worker("w0", &["--shared-dir", &out_str]);
    let run = s
        .producer(&["attach", job.as_str(), "--json"])
        .run_within(Duration::from_secs(120));
    run.expect_success();
    assert_eq!(run.json()["succeeded"], 6, "{run}");
    assert_eq!(run.json()["job_id"], job.as_str(), "{run}");
    assert_download_complete(&out, &manifest, &files, &urls);
    for path in &paths {
        // attach publishes none of the tasks again: they are all out.
        assert_eq!(http.hits(path).len(), 1, "{path} fetched once: {run}");
    }
    // Nothing left to fetch: it prints what a run without --detach does.
    let again = s
        .producer(&[&download[..], &shared[..], &["--json"]].concat())
        .run();
    again.expect_success();
    assert_eq!(again.json()["skipped"], 6, "{again}");
    s.assert_clean();
}
