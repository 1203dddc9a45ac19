use std::path::{Path, PathBuf};
use std::time::Duration;

use warren_testkit::{HttpFixture, content, eventually, sha256_hex};

use nix::sys::signal::Signal;

use crate::support::broker::queues_with_prefix;
use crate::support::{RABBITMQCTL_NEEDED, Run, Scenario, Worker};

/// Both ways files can land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Through the broker, written by the producer.
    Broker,
    /// Written by the workers into the shared directory.
    Shared,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Broker => "broker",
            Mode::Shared => "shared",
        }
    }
}

/// A download scenario: an HTTP fixture, an output directory that is also
/// the workers' shared directory, and workers.
struct Downloads {
    s: Scenario,
    http: HttpFixture,
    out: PathBuf,
}

impl Downloads {
    fn new(test: &str) -> Downloads {
        let s = Scenario::new(test);
        let out = s.path("out");
        std::fs::create_dir_all(&out).unwrap();
        Downloads {
            s,
            http: HttpFixture::start(),
            out,
        }
    }

    fn worker(&self, name: &str) -> Worker {
        self.s.start_worker(
            name,
            &[
                "--shared-dir",
                self.out.to_str().unwrap(),
                "--concurrency",
                "8",
            ],
        )
    }

    fn workers(&mut self, n: usize) -> Vec<Worker> {
        let workers = (0..n).map(|i| self.worker(&format!("w{i}"))).collect();
        self.s.broker.wait_for_consumers(n as u32);
        workers
    }

    /// Writes a URL list and returns its path.
    fn list(&self, name: &str, lines: &[String]) -> String {
        let path = self.s.path(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn download(&self, list: &str, mode: Mode, extra: &[&str]) -> crate::support::Producer {
        let mut args = vec![
            "download",
            list,
            "--out-dir",
            self.out.to_str().unwrap(),
            "--json",
        ];
        if mode == Mode::Shared {
            args.push("--shared");
        }
        args.extend_from_slice(extra);
        self.s.producer(&args)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }
}

/// Nothing half-written anywhere: no temporary files left over.
fn assert_no_partials(out: &Path) {
    let temp = out.join(".warren-tmp");
    if let Ok(entries) = std::fs::read_dir(&temp) {
        let left: Vec<_> = entries.map(|e| e.unwrap().file_name()).collect();
        assert!(
            left.is_empty(),
            "temporary files left in {}: {left:?}",
            temp.display()
        );
    }
}

fn failed_urls(run: &Run) -> Vec<(String, String)> {
    run.json()["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["url"].as_str().unwrap().to_owned(),
                f["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn manifest(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn hundreds_of_files_arrive_complete_in_both_modes() {
    let mut d = Downloads::new("dl_many");
    let _workers = d.workers(2);
    for mode in [Mode::Broker, Mode::Shared] {
        let files: Vec<(String, usize)> = (0..300)
            .map(|i| {
                (
                    format!("/files/{}/img{i}.bin", mode.name()),
                    (i * 7919) % 300_000 + 1,
                )
            })
            .collect();
        let lines: Vec<String> = files
            .iter()
            .map(|(path, size)| d.http.url(&format!("{path}?size={size}")))
            .collect();
        let list = d.list(&format!("{}.txt", mode.name()), &lines);
        let manifest_path = d.s.path(&format!("{}.jsonl", mode.name()));
        let run = d
            .download(
                &list,
                mode,
                &["--manifest", manifest_path.to_str().unwrap()],
            )
            .run();
        run.expect_success();
        let json = run.json();
        assert_eq!(json["succeeded"], 300, "{run}");
        assert_eq!(json["skipped"], 0);
        let job_id = json["job_id"].as_str().unwrap_or_else(|| panic!("{run}"));
        assert!(
            job_id.len() == 32 && job_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{job_id}"
        );
        let elapsed = json["elapsed_s"]
            .as_f64()
            .unwrap_or_else(|| panic!("{run}"));
        assert!(elapsed > 0.0 && elapsed < 120.0, "{elapsed}");
        assert_eq!(json["failed"].as_array().unwrap().len(), 0);
        let total: usize = files.iter().map(|(_, size)| size).sum();
        assert_eq!(json["bytes"], total as u64);
        for (path, size) in &files {
            let name = path.rsplit('/').next().unwrap();
            let got = std::fs::read(d.file(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(got == content(path, *size), "{name} differs ({mode:?})");
        }
        let records = manifest(&manifest_path);
        assert_eq!(records.len(), 300);
        for record in &records {
            assert_eq!(record["status"], "ok", "{record}");
            for key in [
                "url",
                "path",
                "bytes",
                "sha256",
                "http_status",
                "attempts",
                "error",
            ] {
                assert!(record.get(key).is_some(), "manifest lacks {key}: {record}");
            }
        }
        assert_no_partials(&d.out);
        for (path, _) in &files {
            std::fs::remove_file(d.file(path.rsplit('/').next().unwrap())).unwrap();
        }
    }
    d.s.assert_clean();
}

#[test]
fn failures_are_retried_or_reported_and_never_written() {
    let mut d = Downloads::new("dl_failures");
    let _workers = d.workers(2);
    for mode in [Mode::Broker, Mode::Shared] {
        let m = mode.name();
        let good = content(&format!("/files/{m}/good.bin"), 100);
        let entries = [
            (format!("/status/404?{m}"), "missing"),
            (format!("/flaky/{m}?fail=2&status=503&size=1000"), "flaky"),
            (format!("/retry-after/{m}?seconds=1&size=1000"), "polite"),
            (format!("/slow/{m}?delay_ms=4000"), "slow"),
            (format!("/files/{m}/big.bin?size=2000000"), "big"),
            (format!("/nolength/{m}?size=2000000"), "unannounced"),
            (format!("/redirect/5?size=777&{m}"), "redirected"),
            (format!("/redirect/11?{m}"), "too-many-redirects"),
            (format!("/loop?{m}"), "loop"),
            (format!("/files/{m}/tampered.bin?size=100"), "tampered"),
            (format!("/files/{m}/good.bin?size=100"), "verified"),
        ];
        let lines: Vec<String> = entries
            .iter()
            .map(|(path, name)| {
                let sha = match *name {
                    "tampered" => format!(" sha256:{}", "0".repeat(64)),
                    "verified" => format!(" sha256:{}", sha256_hex(&good)),
                    _ => String::new(),
                };
                format!("{} {name}{sha}", d.http.url(path))
            })
            .collect();
        let list = d.list(&format!("{m}.txt"), &lines);
        let manifest_path = d.s.path(&format!("{m}.jsonl"));
        let run = d
            .download(
                &list,
                mode,
                &[
                    "--max-size",
                    "1MB",
                    "--idle-timeout",
                    "1s",
                    "--attempts",
                    "3",
                    "--manifest",
                    manifest_path.to_str().unwrap(),
                ],
            )
            .run();
        run.expect_code(1);
        let failed = failed_urls(&run);
        let error_of = |name: &str| {
            failed
                .iter()
                .find(|(url, _)| {
                    url.contains(
                        &entries
                            .iter()
                            .find(|(_, n)| *n == name)
                            .unwrap()
                            .0
                            .split('?')
                            .next()
                            .unwrap()
                            .to_owned(),
                    )
                })
                .map(|(_, error)| error.clone())
        };
        let expect_failure = |name: &str, needle: &str| {
            let error =
                error_of(name).unwrap_or_else(|| panic!("{name} did not fail ({mode:?}):\n{run}"));
            assert!(error.contains(needle), "{name}: {error:?} lacks {needle:?}");
            assert!(
                !d.file(name).exists(),
                "{name} was written though it failed"
            );
        };
        expect_failure("missing", "HTTP 404 Not Found");
        expect_failure("slow", "no response within 1s (after 3 attempts)");
        expect_failure("big", "over the limit of 1000000 bytes");
        expect_failure("unannounced", "exceeds the limit of 1000000 bytes");
        expect_failure("too-many-redirects", "more than 10 redirects");
        expect_failure("loop", "redirect loop");
        expect_failure("tampered", "checksum mismatch");
        assert_eq!(failed.len(), 7, "{run}");

        for (name, path, size) in [
            ("flaky", format!("/flaky/{m}"), 1000),
            ("polite", format!("/retry-after/{m}"), 1000),
            ("redirected", "/redirect/0".to_owned(), 777),
            ("verified", format!("/files/{m}/good.bin"), 100),
        ] {
            let got = std::fs::read(d.file(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{run}"));
            assert!(got == content(&path, size), "{name} differs");
        }
        let records = manifest(&manifest_path);
        let record = |name: &str| records.iter().find(|r| r["path"] == name).unwrap().clone();
        assert_eq!(record("flaky")["attempts"], 3);
        assert_eq!(record("polite")["attempts"], 2);
        assert_eq!(record("missing")["attempts"], 1, "a 404 is not retried");
        assert_eq!(record("missing")["http_status"], 404);
        assert_eq!(record("big")["attempts"], 1, "too large is not retried");
        assert_eq!(
            record("tampered")["attempts"],
            1,
            "a checksum mismatch is not retried"
        );
        let polite = d.http.hits(&format!("/retry-after/{m}"));
        assert_eq!(polite.len(), 2);
        assert!(
            polite[1] - polite[0] >= Duration::from_millis(950),
            "Retry-After: 1 was not honoured: {:?}",
            polite[1] - polite[0]
        );
        assert_no_partials(&d.out);
        for name in ["flaky", "polite", "redirected", "verified"] {
            std::fs::remove_file(d.file(name)).unwrap();
        }
    }
    d.s.assert_clean();
}

#[test]
fn names_that_try_to_escape_stay_inside_the_output_directory() {
    let mut d = Downloads::new("dl_names");
    let _workers = d.workers(1);
    let lines = vec![
        d.http.url("/x/..%2F..%2Fescape.txt?size=10"),
        d.http.url("/a/img.jpg?size=11"),
        d.http.url("/b/IMG.jpg?size=12"),
        d.http.url("/c/ctl%00%0Aname?size=13"),
        format!("{} nested/dir/given.bin", d.http.url("/d/whatever?size=14")),
    ];
    let list = d.list("names.txt", &lines);
    for mode in [Mode::Broker, Mode::Shared] {
        let run = d.download(&list, mode, &[]).run();
        run.expect_success();
        assert_eq!(run.json()["succeeded"], 5, "{mode:?}: {run}");
        let mut names: Vec<String> = walk(&d.out)
            .into_iter()
            .map(|p| p.strip_prefix(&d.out).unwrap().to_str().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 5, "{mode:?}: {names:?}");
        assert!(names.contains(&".._.._escape.txt".to_owned()), "{names:?}");
        assert!(names.contains(&"ctl__name".to_owned()), "{names:?}");
        assert!(
            names.contains(&"nested/dir/given.bin".to_owned()),
            "{names:?}"
        );
        // The first keeps its name; the one that collides with it (on a
        // case-insensitive filesystem too) gets its URL's tag.
        assert!(names.contains(&"img.jpg".to_owned()), "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("IMG-") && n.ends_with(".jpg")),
            "{names:?}"
        );
        assert!(!d.s.dir.path().join("escape.txt").exists());
        assert_eq!(
            std::fs::read(d.file("nested/dir/given.bin")).unwrap(),
            content("/d/whatever", 14)
        );
        assert!(!d.out.join(".warren-tmp").exists(), "{mode:?}: left over");
        // Empty again for the other mode (workers share this directory).
        std::fs::remove_dir_all(&d.out).unwrap();
        std::fs::create_dir(&d.out).unwrap();
    }

    // A given name that escapes is refused before anything is published.
    let bad = Scenario::new("dl_bad_name");
    let list = d.list(
        "bad.txt",
        &[
            d.http.url("/files/ok?size=1"),
            format!("{} ../../evil.txt", d.http.url("/files/evil")),
        ],
    );
    let run = bad
        .producer(&["download", &list, "--out-dir", d.out.to_str().unwrap()])
        .run();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("bad.txt: line 2: unusable file name \"../../evil.txt\""),
        "{run}"
    );
    let queues = queues_with_prefix(&bad.prefix).expect(crate::support::RABBITMQCTL_NEEDED);
    assert!(queues.is_empty(), "something was published: {queues:?}");
    assert!(d.http.hits("/files/ok").is_empty(), "nothing was fetched");
    d.s.assert_clean();
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_worker_killed_mid_download_leaves_no_partial_file_and_the_file_arrives() {
    let mut d = Downloads::new("dl_sigkill");
    for mode in [Mode::Broker, Mode::Shared] {
        let path = format!("/trickle/{}", mode.name());
        let size = 6_000_000;
        let list = d.list(
            &format!("{}.txt", mode.name()),
            &[format!(
                "{} big.bin",
                d.http
                    .url(&format!("{path}?size={size}&chunk=65536&delay_ms=15"))
            )],
        );
        let mut first = d.worker("first");
        d.s.broker.wait_for_consumers(1);
        let producer = d.download(&list, mode, &[]).spawn();
        d.s.broker
            .wait_until(Duration::from_secs(30), "1 MB of the file was sent", |_| {
                d.http.bytes_sent(&path) >= 1_000_000
            });
        assert!(
            !d.file("big.bin").exists(),
            "a partial file sits under the final name"
        );
        first.kill_hard();
        let _second = d.worker("second");
        let run = producer.wait(Duration::from_secs(120));
        run.expect_success();
        assert_eq!(run.json()["succeeded"], 1, "{run}");
        assert!(
            std::fs::read(d.file("big.bin")).unwrap() == content(&path, size),
            "{mode:?}: the file differs"
        );
        assert!(d.http.hits(&path).len() >= 2, "the download was redone");
        assert_no_partials(&d.out);
        std::fs::remove_file(d.file("big.bin")).unwrap();
        drop(_second);
        d.s.broker.wait_for_consumers(0);
    }
    d.s.assert_clean();
}

#[test]
fn a_rerun_fetches_only_what_is_missing_or_failed() {
    let mut d = Downloads::new("dl_rerun");
    let _workers = d.workers(2);
    for mode in [Mode::Broker, Mode::Shared] {
        let m = mode.name();
        let mut lines: Vec<String> = (0..20)
            .map(|i| {
                d.http
                    .url(&format!("/files/{m}/r{i}.bin?size={}", 1000 + i))
            })
            .collect();
        lines.push(format!(
            "{} flaky.bin",
            d.http.url(&format!("/flaky/{m}?fail=1&status=500&size=50"))
        ));
        let list = d.list(&format!("{m}.txt"), &lines);
        let manifest_path = d.s.path(&format!("{m}.jsonl"));
        let manifest_arg = manifest_path.to_str().unwrap();
        let rerun = |extra: &[&str]| {
            let mut args = vec!["--manifest", manifest_arg];
            args.extend_from_slice(extra);
            d.download(&list, mode, &args).run()
        };

        let run = rerun(&["--attempts", "1"]);
        run.expect_code(1);
        assert_eq!(run.json()["succeeded"], 20, "{mode:?}: {run}");
        assert_eq!(failed_urls(&run).len(), 1);

        let run = rerun(&[]);
        run.expect_success();
        let json = run.json();
        assert_eq!(json["skipped"], 20, "{mode:?}: {run}");
        assert_eq!(json["succeeded"], 1);
        for i in 0..20 {
            assert_eq!(
                d.http.hits(&format!("/files/{m}/r{i}.bin")).len(),
                1,
                "r{i}.bin was fetched again"
            );
        }
        let records = manifest(&manifest_path);
        assert_eq!(
            records.iter().filter(|r| r["status"] == "skipped").count(),
            20
        );
        assert_eq!(records.iter().filter(|r| r["status"] == "ok").count(), 1);

        // A file changed since: never overwritten without --overwrite, and
        // refused again by every later run (regression: the second re-run
        // found no good record and skipped it).
        std::fs::write(d.file("r3.bin"), b"edited").unwrap();
        for _ in 0..2 {
            let run = rerun(&[]);
            run.expect_code(1);
            let failed = failed_urls(&run);
            assert_eq!(failed.len(), 1, "{mode:?}: {run}");
            assert!(failed[0].1.contains("pass --overwrite"), "{failed:?}");
            assert_eq!(run.json()["skipped"], 20, "{run}");
            assert_eq!(std::fs::read(d.file("r3.bin")).unwrap(), b"edited");
            assert_eq!(d.http.hits(&format!("/files/{m}/r3.bin")).len(), 1);
        }
        // Regression, issue 16 item 10: --overwrite replaces the file that
        // differs and skips the 20 that check out against the manifest.
        let hits_before = d.http.hits(&format!("/files/{m}/r5.bin")).len();
        let run = rerun(&["--overwrite"]);
        run.expect_success();
        assert_eq!(run.json()["succeeded"], 1, "{mode:?}: {run}");
        assert_eq!(run.json()["skipped"], 20, "{mode:?}: {run}");
        assert_eq!(
            std::fs::read(d.file("r3.bin")).unwrap(),
            content(&format!("/files/{m}/r3.bin"), 1003)
        );
        assert_eq!(
            d.http.hits(&format!("/files/{m}/r5.bin")).len(),
            hits_before,
            "--overwrite fetched a file that checks out"
        );

        // Without a manifest nothing durable vouches for the files (issue
        // 13): they are fetched again, found equal and kept.
        let run = d.download(&list, mode, &[]).run();
        run.expect_success();
        assert_eq!(run.json()["skipped"], 0, "{mode:?}: {run}");
        assert_eq!(run.json()["succeeded"], 21, "{mode:?}: {run}");
        assert_eq!(
            d.http.hits(&format!("/files/{m}/r5.bin")).len(),
            hits_before + 1,
            "fetched again to check it"
        );
        assert_eq!(
            std::fs::read(d.file("r5.bin")).unwrap(),
            content(&format!("/files/{m}/r5.bin"), 1005)
        );
        // A missing one is fetched.
        std::fs::remove_file(d.file("r5.bin")).unwrap();
        let run = rerun(&[]);
        run.expect_success();
        assert_eq!(run.json()["succeeded"], 1, "{mode:?}: {run}");
        assert_eq!(
            std::fs::read(d.file("r5.bin")).unwrap(),
            content(&format!("/files/{m}/r5.bin"), 1005)
        );
        assert_no_partials(&d.out);

        // Empty again for the other mode (workers share this directory).
        std::fs::remove_dir_all(&d.out).unwrap();
        std::fs::create_dir(&d.out).unwrap();
    }
    d.s.assert_clean();
}

#[test]
fn urls_on_the_command_line_and_lists_on_stdin() {
    let mut d = Downloads::new("dl_args");
    let _workers = d.workers(1);
    let out = d.out.to_str().unwrap().to_owned();
    let run =
        d.s.producer(&[
            "download",
            &d.http.url("/files/one?size=5"),
            &d.http.url("/files/two?size=6"),
            "-o",
            &out,
        ])
        .run();
    run.expect_success();
    assert!(run.stdout.starts_with("downloaded 2 file(s)"), "{run}");
    assert_eq!(
        std::fs::read(d.file("one")).unwrap(),
        content("/files/one", 5)
    );
    let list = d.list("stdin.txt", &[d.http.url("/files/three?size=7")]);
    let run =
        d.s.producer(&["download", "-", "-o", &out])
            .stdin_from(Path::new(&list))
            .run();
    run.expect_success();
    assert_eq!(
        std::fs::read(d.file("three")).unwrap(),
        content("/files/three", 7)
    );
    d.s.assert_clean();
}

#[test]
fn a_worker_without_shared_dir_says_so_and_how_to_fix_it() {
    let mut d = Downloads::new("dl_no_shared_dir");
    let _worker = d.s.start_worker("plain", &[]);
    d.s.broker.wait_for_consumers(1);
    let list = d.list("urls.txt", &[d.http.url("/files/a.bin?size=10")]);
    let run = d.download(&list, Mode::Shared, &[]).run();
    run.expect_code(1);
    let failed = failed_urls(&run);
    assert_eq!(failed.len(), 1, "{run}");
    for needle in ["worker plain has no --shared-dir", "start every worker"] {
        assert!(
            failed[0].1.contains(needle),
            "{:?} lacks {needle}",
            failed[0].1
        );
    }
    assert!(
        d.http.hits("/files/a.bin").is_empty(),
        "nothing was fetched"
    );
    d.s.assert_clean();
}

/// Issue 12: when a broker-mode job ended with file chunks in flight, each
/// returned 1 MiB chunk was logged with its body (89–119 MB of worker log
/// in one job). The worker now says that the job ended in a few lines.
#[test]
fn a_cancelled_broker_download_does_not_flood_the_worker_log_issue_12() {
    let mut d = Downloads::new("dl_log_flood");
    let path = "/trickle/flood";
    let size = 64 << 20;
    let list = d.list(
        "urls.txt",
        &[format!(
            "{} big.bin",
            d.http
                .url(&format!("{path}?size={size}&chunk=65536&delay_ms=1"))
        )],
    );
    let worker = d.worker("w");
    d.s.broker.wait_for_consumers(1);
    let producer = d.download(&list, Mode::Broker, &[]).spawn();
    d.s.broker
        .wait_until(Duration::from_secs(60), "4 MB of the file was sent", |_| {
            d.http.bytes_sent(path) >= 4_000_000
        });
    producer.signal(Signal::SIGINT);
    let run = producer.wait(Duration::from_secs(30));
    run.expect_code(130);
    // The worker drops the job's task and acks it: no message is left.
    // It logs why before it acks, so its log is complete from then on.
    let task_queue = d.s.broker.topology.task_queue();
    eventually(Duration::from_secs(60), || {
        let queues = queues_with_prefix(&d.s.prefix).expect(RABBITMQCTL_NEEDED);
        match queues.iter().find(|(name, _)| *name == task_queue) {
            Some((_, 0)) => Ok(()),
            other => Err(format!("the worker still holds the task: {other:?}")),
        }
    });
    let log = worker.log();
    // Whichever sees the end first: a returned chunk, or the worker's
    // check that the job's reply queue still exists.
    assert!(
        log.contains("job ended while the task ran") || log.contains("job is gone"),
        "{log}"
    );
    assert!(
        log.len() < 64 * 1024,
        "the worker logged {} bytes; the last lines:\n{}",
        log.len(),
        log.lines()
            .rev()
            .take(5)
            .map(|line| line.chars().take(300).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A job that ended is no failure of its tasks: nothing to warn about.
    assert!(!log.contains("WARN"), "{log}");
    drop(worker);
    d.s.broker.wait_for_consumers(0);
    assert_no_partials(&d.out);
    d.s.assert_clean();
}

#[test]
fn a_job_that_times_out_still_records_every_url_in_the_manifest() {
    let mut d = Downloads::new("dl_timeout");
    let mut lines: Vec<String> = (0..3)
        .map(|i| d.http.url(&format!("/files/t{i}.bin?size=10")))
        .collect();
    lines.push(lines[1].clone());
    let list = d.list("urls.txt", &lines);
    let manifest_path = d.s.path("manifest.jsonl");
    // No worker: nothing can finish.
    let run = d
        .download(
            &list,
            Mode::Broker,
            &[
                "--manifest",
                manifest_path.to_str().unwrap(),
                "--timeout",
                "2s",
            ],
        )
        .run();
    run.expect_code(2);
    assert!(run.stderr.contains("timed out after 2s"), "{run}");
    let records = manifest(&manifest_path);
    assert_eq!(records.len(), 4, "{records:?}");
    for line in &lines[..3] {
        let record = records
            .iter()
            .find(|r| r["url"] == line.as_str() && r["status"] == "failed")
            .unwrap_or_else(|| panic!("no failed line for {line}: {records:?}"));
        let error = record["error"].as_str().unwrap();
        assert!(
            error.starts_with("the job ended before it finished: timed out after 2s"),
            "{error}"
        );
    }
    let repeat = records
        .iter()
        .find(|r| r["status"] == "skipped")
        .unwrap_or_else(|| panic!("no line for the repeat: {records:?}"));
    assert_eq!(repeat["url"], lines[1].as_str());
    assert!(
        repeat["error"].as_str().unwrap().contains("urls.txt:2"),
        "{repeat}"
    );
    // The abandoned tasks wait in the queue until a worker comes and
    // drops them.
    let _workers = d.workers(1);
    d.s.assert_clean();
    assert_eq!(d.http.total_hits(), 0, "a task of the ended job was run");
    assert_no_partials(&d.out);
}

#[test]
fn a_download_slower_than_its_total_timeout_fails_and_leaves_nothing() {
    let mut d = Downloads::new("dl_total_timeout");
    let _workers = d.workers(1);
    for mode in [Mode::Broker, Mode::Shared] {
        // 200 kB in 4 kB pieces every 50 ms: about 2.5 s, with no pause
        // long enough for the idle timeout.
        let path = format!("/trickle/{}", mode.name());
        let list = d.list(
            &format!("{}.txt", mode.name()),
            &[format!(
                "{} slow.bin",
                d.http
                    .url(&format!("{path}?size=200000&chunk=4000&delay_ms=50"))
            )],
        );
        let manifest_path = d.s.path(&format!("{}.jsonl", mode.name()));
        let run = d
            .download(
                &list,
                mode,
                &[
                    "--download-timeout",
                    "1s",
                    "--attempts",
                    "1",
                    "--manifest",
                    manifest_path.to_str().unwrap(),
                ],
            )
            .run_within(Duration::from_secs(30));
        run.expect_code(1);
        let failed = failed_urls(&run);
        assert_eq!(failed.len(), 1, "{run}");
        assert!(
            failed[0]
                .1
                .contains("not complete within the total timeout of 1s"),
            "{failed:?}"
        );
        let sent = d.http.bytes_sent(&path);
        assert!(sent > 0 && sent < 200_000, "{sent} bytes were sent");
        assert!(!d.file("slow.bin").exists(), "{mode:?}: a partial file");
        assert_no_partials(&d.out);
        let records = manifest(&manifest_path);
        assert_eq!(records[0]["status"], "failed");
        assert_eq!(records[0]["attempts"], 1);
    }
    d.s.assert_clean();
}

/// Issue 16: twelve downloads failing the same way read as one failure
/// with a count and a few of the URLs, and the worker logs each failed
/// download once, with its task and reason.
#[test]
fn failures_with_one_reason_are_grouped_and_logged_by_the_worker_issue_16() {
    let mut d = Downloads::new("dl_grouped_failures");
    let workers = d.workers(1);
    let mut lines: Vec<String> = (0..12)
        .map(|i| format!("{} missing{i}", d.http.url(&format!("/status/404?{i}"))))
        .collect();
    lines.push(format!("{} gone", d.http.url("/status/410")));
    let list = d.list("urls.txt", &lines);
    let run =
        d.s.producer(&[
            "download",
            &list,
            "--out-dir",
            d.out.to_str().unwrap(),
            "--attempts",
            "1",
        ])
        .run();
    run.expect_code(1);
    let failed: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.starts_with("failed"))
        .collect();
    assert_eq!(failed.len(), 2, "{run}");
    assert!(
        failed[0].starts_with("failed: 12 URLs: ") && failed[0].contains("404"),
        "{run}"
    );
    assert!(
        failed[1].starts_with(&format!("failed: {} -> gone: ", d.http.url("/status/410"))),
        "{run}"
    );
    let listed = run
        .stdout
        .lines()
        .filter(|l| l.contains("/status/404?"))
        .count();
    assert_eq!(listed, 5, "five of the twelve URLs are shown:\n{run}");
    assert!(
        run.stdout
            .contains("  and 7 more (--json or --manifest lists every one)"),
        "{run}"
    );
    // Colour codes, if the log has them, split "reason" from its "=".
    let log = strip_colour(&workers[0].log());
    let logged: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("download failed"))
        .collect();
    assert_eq!(logged.len(), 13, "{log}");
    assert!(
        logged
            .iter()
            .all(|line| line.contains(" WARN ") && line.contains("reason=")),
        "{log}"
    );
    d.s.assert_clean();
}

/// `text` without ANSI colour sequences (ESC [ ... m).
fn strip_colour(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('\u{1b}') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = match rest.find('m') {
            Some(end) => &rest[end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// Issue 13: after a power cut, a file can sit under its final name with
/// the wrong contents (zeros, or cut short) while no durable manifest lists
/// it. A re-run never trusts it: it fetches it again and repairs it.
#[test]
fn a_file_a_power_cut_left_wrong_is_fetched_again_never_trusted() {
    let mut d = Downloads::new("dl_power_cut");
    let _workers = d.workers(2);
    for mode in [Mode::Broker, Mode::Shared] {
        let m = mode.name();
        let lines: Vec<String> = (0..10)
            .map(|i| {
                d.http
                    .url(&format!("/files/{m}/p{i}.bin?size={}", 5000 + i))
            })
            .collect();
        let list = d.list(&format!("{m}.txt"), &lines);
        let manifest_path = d.s.path(&format!("{m}.jsonl"));
        let partial = d.s.path(&format!("{m}.jsonl.partial"));
        let with_manifest = |extra: &[&str]| {
            let mut args = vec!["--manifest", manifest_path.to_str().unwrap()];
            args.extend_from_slice(extra);
            d.download(&list, mode, &args).run()
        };
        let good = |i: usize| content(&format!("/files/{m}/p{i}.bin"), 5000 + i);
        with_manifest(&[]).expect_success();
        assert!(!partial.exists(), "the manifest was committed");

        // The cut came before the job's sync: its manifest never became
        // durable (only the partial one is left), and two files lost their
        // data (one zeroed, one cut short).
        std::fs::rename(&manifest_path, &partial).unwrap();
        std::fs::write(d.file("p1.bin"), vec![0u8; 5001]).unwrap();
        std::fs::write(d.file("p2.bin"), &good(2)[..100]).unwrap();
        let run = with_manifest(&[]);
        run.expect_success();
        assert_eq!(run.json()["succeeded"], 2, "{mode:?}: {run}");
        assert_eq!(run.json()["skipped"], 8, "{mode:?}: {run}");
        for i in [1, 2] {
            assert_eq!(
                std::fs::read(d.file(&format!("p{i}.bin"))).unwrap(),
                good(i)
            );
            assert_eq!(d.http.hits(&format!("/files/{m}/p{i}.bin")).len(), 2);
        }
        assert_eq!(d.http.hits(&format!("/files/{m}/p0.bin")).len(), 1);
        assert!(
            !partial.exists() && manifest_path.exists(),
            "committed again"
        );

        // The cut lost even the partial manifest: nothing says warren put
        // the damaged file there, so it is fetched, found different and
        // neither trusted nor replaced without --overwrite.
        std::fs::remove_file(&manifest_path).unwrap();
        std::fs::write(d.file("p3.bin"), vec![0u8; 5003]).unwrap();
        let run = with_manifest(&[]);
        run.expect_code(1);
        let failed = failed_urls(&run);
        assert_eq!(failed.len(), 1, "{mode:?}: {run}");
        assert!(failed[0].0.contains("p3.bin"), "{failed:?}");
        assert!(failed[0].1.contains("pass --overwrite"), "{failed:?}");
        assert_eq!(run.json()["skipped"], 0, "nothing trusted unchecked: {run}");
        assert_eq!(run.json()["succeeded"], 9, "{run}");
        let records = manifest(&manifest_path);
        let p3 = records
            .iter()
            .find(|r| r["path"] == "p3.bin")
            .unwrap_or_else(|| panic!("{records:?}"));
        assert_eq!(p3["status"], "failed", "{p3}");
        let run = with_manifest(&["--overwrite"]);
        run.expect_success();
        assert_eq!(run.json()["succeeded"], 1, "{mode:?}: {run}");
        assert_eq!(run.json()["skipped"], 9, "{mode:?}: {run}");
        assert_eq!(std::fs::read(d.file("p3.bin")).unwrap(), good(3));
        assert_no_partials(&d.out);

        std::fs::remove_dir_all(&d.out).unwrap();
        std::fs::create_dir(&d.out).unwrap();
    }
    d.s.assert_clean();
}

/// `--fsync` (each file synced before it is reported) travels to the
/// workers in shared mode; both modes still land every file intact.
#[test]
fn downloads_with_fsync_arrive_complete_in_both_modes() {
    let mut d = Downloads::new("dl_fsync");
    let _workers = d.workers(1);
    for mode in [Mode::Broker, Mode::Shared] {
        let m = mode.name();
        let lines: Vec<String> = (0..5)
            .map(|i| {
                d.http
                    .url(&format!("/files/{m}-s{i}.bin?size={}", 70_000 + i))
            })
            .collect();
        let list = d.list(&format!("{m}.txt"), &lines);
        let run = d.download(&list, mode, &["--fsync"]).run();
        run.expect_success();
        assert_eq!(run.json()["succeeded"], 5, "{mode:?}: {run}");
        for i in 0..5 {
            assert_eq!(
                std::fs::read(d.file(&format!("{m}-s{i}.bin"))).unwrap(),
                content(&format!("/files/{m}-s{i}.bin"), 70_000 + i)
            );
        }
        assert_no_partials(&d.out);
    }
    d.s.assert_clean();
}

/// Issue 16 item 11: `--out-dir X --shared` while the workers store into
/// another `--shared-dir`. The workers find no job marker there and fetch
/// nothing; the producer says so once and exits 2.
#[test]
fn a_shared_dir_that_is_not_the_out_dir_is_detected_before_downloading() {
    let mut d = Downloads::new("dl_wrong_shared_dir");
    let elsewhere = d.s.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let _workers: Vec<Worker> = (0..2)
        .map(|i| {
            d.s.start_worker(
                &format!("w{i}"),
                &["--shared-dir", elsewhere.to_str().unwrap()],
            )
        })
        .collect();
    d.s.broker.wait_for_consumers(2);
    let lines: Vec<String> = (0..20)
        .map(|i| d.http.url(&format!("/files/m{i}.bin?size=100000")))
        .collect();
    let list = d.list("urls.txt", &lines);
    let run = d.download(&list, Mode::Shared, &[]).run();
    run.expect_code(2);
    let said = run.stderr.matches("cannot see this job's marker").count();
    assert_eq!(said, 1, "said once:\n{run}");
    for needle in ["--shared-dir", "--out-dir", "nothing was downloaded"] {
        assert!(run.stderr.contains(needle), "lacks {needle}:\n{run}");
    }
    assert_eq!(d.http.total_hits(), 0, "a worker downloaded: {run}");
    let stored = walk(&elsewhere)
        .into_iter()
        .filter(|p| p.is_file())
        .collect::<Vec<_>>();
    assert!(
        stored.is_empty(),
        "files in the workers' directory: {stored:?}"
    );
    assert_no_partials(&d.out);
    d.s.assert_clean();
}
