use std::time::Duration;

use crate::support::Scenario;
use crate::support::broker::queues_with_prefix;
use crate::support::python::reference;

/// Asserts a run failed with status 2 and a one-line error containing
/// every `needle`.
fn assert_clear_error(run: &crate::support::Run, needles: &[&str]) {
    run.expect_code(2);
    let error_lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(error_lines.len(), 1, "expected one error line:\n{run}");
    for needle in needles {
        assert!(
            error_lines[0].contains(needle),
            "error lacks {needle:?}:\n{run}"
        );
    }
    assert!(
        run.stdout.is_empty(),
        "no answer on stdout after an error:\n{run}"
    );
}

/// Nothing of the prefix exists on the broker at all.
fn assert_untouched(s: &Scenario) {
    let queues = queues_with_prefix(&s.prefix).expect(crate::support::RABBITMQCTL_NEEDED);
    assert!(queues.is_empty(), "the broker was touched: {queues:?}");
}

#[test]
fn bad_npy_files_are_refused_before_anything_is_published() {
    let s = Scenario::new("bad_npy");
    for (kind, needles) in [
        (
            "complex",
            &["complex.npy", "dtype <c16", "not supported"][..],
        ),
        ("fortran", &["Fortran order"]),
        ("object", &["Python objects"]),
        ("structured", &["structured array"]),
        ("float16", &["dtype <f2", "not supported"]),
        ("truncated", &["truncated", "1000 float64 elements"]),
        ("corrupt-header", &["invalid .npy header"]),
    ] {
        let name = format!("{kind}.npy");
        reference(&["bad-npy", &s.path_str(&name), kind]);
        let run = s
            .producer(&["sum", &s.path_str(&name)])
            .run_within(Duration::from_secs(20));
        assert_clear_error(&run, needles);
    }
    std::fs::write(s.path("fake.npy"), b"not numpy at all").unwrap();
    let run = s.producer(&["sum", &s.path_str("fake.npy")]).run();
    assert_clear_error(&run, &["fake.npy", "not a .npy file"]);
    assert_untouched(&s);
}

#[test]
fn missing_files_and_directories_are_clear_errors() {
    let s = Scenario::new("missing");
    let run = s.producer(&["sum", "no-such-file.txt"]).run();
    assert_clear_error(&run, &["cannot open no-such-file.txt", "No such file"]);
    let run = s.producer(&["sum", s.dir.path().to_str().unwrap()]).run();
    assert_clear_error(&run, &["is a directory"]);
    assert_untouched(&s);
}

#[test]
fn raw_input_must_fit_its_dtype() {
    let mut s = Scenario::new("raw_bad");
    std::fs::write(s.path("odd.bin"), [0u8; 20]).unwrap();
    let run = s
        .producer(&[
            "sum",
            &s.path_str("odd.bin"),
            "--format",
            "raw",
            "--dtype",
            "float64",
        ])
        .run();
    assert_clear_error(
        &run,
        &[
            "odd.bin",
            "20 bytes",
            "not a multiple of the 8-byte float64",
        ],
    );
    let run = s
        .producer(&["sum", &s.path_str("odd.bin"), "--format", "raw"])
        .run();
    assert_clear_error(&run, &["raw input needs --dtype"]);
    assert_untouched(&s);
    let _worker = s.workers(1);
    let run = s
        .producer(&["sum", "-", "--format", "raw", "--dtype", "int32"])
        .stdin_from(&s.path("odd.bin"))
        .run();
    assert_eq!(
        run.expect_success().answer(),
        "0",
        "20 bytes are 5 int32 zeros"
    );
    std::fs::write(s.path("odd7.bin"), [1u8; 7]).unwrap();
    let run = s
        .producer(&["sum", "-", "--format", "raw", "--dtype", "int32"])
        .stdin_from(&s.path("odd7.bin"))
        .run();
    assert_clear_error(&run, &["stdin", "ends with 3 stray bytes"]);
    s.assert_clean();
}

#[test]
fn bad_text_is_refused_with_its_line_number() {
    let s = Scenario::new("bad_text");
    std::fs::write(s.path("bad.txt"), "1.5\n2.5, 3\n4 x5 6\n").unwrap();
    let run = s.producer(&["sum", &s.path_str("bad.txt")]).run();
    assert_clear_error(&run, &["bad.txt: line 3: \"x5\" is not a number"]);
    std::fs::write(s.path("gap.csv"), "1,2\n3,,4\n").unwrap();
    let run = s.producer(&["sum", &s.path_str("gap.csv")]).run();
    assert_clear_error(&run, &["gap.csv: line 2: empty value before a comma"]);
    std::fs::write(s.path("big.txt"), "1\n300\n").unwrap();
    let run = s
        .producer(&["sum", &s.path_str("big.txt"), "--dtype", "uint8"])
        .run();
    assert_clear_error(&run, &["line 2: 300 is out of range for uint8"]);
    // Errors within the first message are found before connecting.
    assert_untouched(&s);
}

#[test]
fn a_late_input_error_is_reported_even_with_no_worker_running() {
    let mut s = Scenario::new("late_error_no_worker");
    let mut text = "1.5\n".repeat(300);
    text.push_str("oops\n");
    text.push_str(&"2.5\n".repeat(1000));
    std::fs::write(s.path("late.txt"), text).unwrap();
    // Tasks of 100 lines, two at a time: tasks 0 and 1 fill the window and
    // no worker frees it; the publisher holds task 2, waiting. The reader
    // may read ahead a little, and finds the bad line in task 3: the error
    // must not wait behind the full window.
    let run = s
        .producer(&[
            "sum",
            &s.path_str("late.txt"),
            "--chunk-size",
            "100",
            "--max-in-flight",
            "2",
            "--tasks-per-message",
            "1",
        ])
        .run_within(Duration::from_secs(30));
    assert_clear_error(&run, &["late.txt: line 301: \"oops\" is not a number"]);
    let _worker = s.workers(1);
    s.assert_clean();
}

#[test]
fn a_bad_token_deep_in_the_input_cancels_the_published_job() {
    let mut s = Scenario::new("deep_bad_token");
    let mut text = String::new();
    for i in 0..200_000 {
        text.push_str(&format!("{}.25\n", i % 1000));
    }
    text.push_str("12\noops\n3\n");
    std::fs::write(s.path("deep.txt"), text).unwrap();
    let _worker = s.workers(1);
    let run = s
        .producer(&["sum", &s.path_str("deep.txt"), "--chunk-size", "1000"])
        .run();
    assert_clear_error(&run, &["deep.txt: line 200002: \"oops\" is not a number"]);
    // The job's reply queue is gone and the worker drops whatever of the job
    // was still queued: nothing is left.
    s.assert_clean();
}
