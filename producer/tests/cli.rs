//! The `producer` binary's command line, run for real. (These tests also
//! make `cargo test --workspace` build the binary for the end-to-end tests.)

use std::process::Command;

fn producer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_producer"))
}

#[test]
fn help_lists_the_commands_and_exit_codes() {
    let output = producer().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "sum",
        "--amqp-url",
        "--queue-prefix",
        "AMQP_URL",
        "WARREN_QUEUE_PREFIX",
        "Exit status",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    assert!(
        !help.contains("guest:guest"),
        "--help shows a password:\n{help}"
    );
    let output = producer().args(["sum", "--help"]).output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--random",
        "--seed",
        "--chunk-size",
        "--json",
        "--timeout",
        "--dtype",
        "Examples",
    ] {
        assert!(help.contains(needle), "sum --help lacks {needle}:\n{help}");
    }
}

#[test]
fn a_bad_flag_exits_2() {
    let output = producer().args(["sum", "--no-such-flag"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = producer()
        .args(["sum", "x.npy", "--chunk-size", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("error: --chunk-size must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn messages_over_the_broker_limit_are_refused_up_front() {
    let output = producer()
        .args([
            "sum",
            "--random",
            "10",
            "--chunk-size",
            "1000000",
            "--tasks-per-message",
            "100",
        ])
        .env("AMQP_URL", "amqp://127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("over 16 MiB"), "{stderr}");
    assert!(!stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn a_bad_url_is_refused_without_echoing_the_password() {
    let output = producer()
        .args(["sum", "--random", "5"])
        .env("AMQP_URL", "http://user:hunter2@host/")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("invalid AMQP URL http://user:***@host/"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn a_url_with_another_scheme_is_refused_as_a_url() {
    let out = tempfile::tempdir().unwrap();
    let output = producer()
        .args(["download", "ftp://h/x", "-o"])
        .arg(out.path())
        // Refused before connecting: no broker is needed.
        .env("AMQP_URL", "amqp://127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("argument 1: unsupported scheme \"ftp\""),
        "{stderr}"
    );
}

/// Runs the producer with no broker reachable (nothing here may need one)
/// and returns its exit code and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let output = producer()
        .args(args)
        .env("AMQP_URL", "amqp://127.0.0.1:1/%2f")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The position of `needle` in `help`, failing with the help text.
fn position(help: &str, needle: &str) -> usize {
    help.find(needle)
        .unwrap_or_else(|| panic!("help lacks {needle}:\n{help}"))
}

#[test]
fn command_help_lists_its_own_flags_before_the_broker_and_log_flags_issue_16() {
    for (command, own) in [("sum", "--random"), ("download", "--out-dir")] {
        let output = producer().args([command, "--help"]).output().unwrap();
        assert!(output.status.success());
        let help = String::from_utf8(output.stdout).unwrap();
        let own = position(&help, own);
        let json = position(&help, "--json");
        let broker = position(&help, "\nBroker options:\n");
        let log = position(&help, "\nLog options:\n");
        assert!(own < broker && json < broker, "{command}:\n{help}");
        for global in ["--amqp-url", "--tls-ca-file", "--queue-prefix"] {
            let at = position(&help, global);
            assert!(broker < at && at < log, "{command}: {global}:\n{help}");
        }
        assert!(log < position(&help, "--log-format"), "{command}:\n{help}");
    }
}

#[test]
fn a_broker_url_without_a_scheme_or_with_an_empty_vhost_gets_a_hint_issue_16() {
    let (code, stderr) = refused(&["--amqp-url", "127.0.0.1:5672", "sum", "--random", "5"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(
            "invalid AMQP URL 127.0.0.1:5672: it has no scheme: write amqp://HOST:PORT/%2f"
        ),
        "{stderr}"
    );
    let (code, stderr) = refused(&[
        "--amqp-url",
        "amqp://guest:hunter2@127.0.0.1:5672/",
        "sum",
        "--random",
        "5",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("the virtual host is empty (the URL ends in '/'): end it in /%2f"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_download_argument_without_a_scheme_says_so_issue_16() {
    let out = tempfile::tempdir().unwrap();
    let out = out.path().to_str().unwrap();
    let (code, stderr) = refused(&["download", "127.0.0.1:8765/f.bin", "-o", out]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr.trim_end(),
        "error: argument 1: there is no file 127.0.0.1:8765/f.bin; a URL needs its scheme, \
         as in http://127.0.0.1:8765/f.bin"
    );
}

#[test]
fn dtype_takes_exactly_the_numpy_names_issue_16() {
    for name in ["float", "int", "f4", "double", "Float64"] {
        let (code, stderr) = refused(&["sum", "x.txt", "--dtype", name]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("[possible values: float64, float32, int64, int32, int16, int8, uint64, uint32, uint16, uint8]"),
            "{name}: {stderr}"
        );
    }
    let output = producer().args(["sum", "--help"]).output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("possible values: float64, float32"), "{help}");
}

#[test]
fn random_with_an_explicit_format_is_a_usage_error_issue_16() {
    let (code, stderr) = refused(&["sum", "--random", "10", "--format", "raw"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("the argument '--random <N>' cannot be used with '--format <FORMAT>'"),
        "{stderr}"
    );
}

#[test]
fn two_given_names_that_collide_are_an_error_naming_both_lines_issue_16() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt");
    std::fs::write(
        &list,
        "http://127.0.0.1:1/a a.jpg\nhttp://127.0.0.1:1/b A.JPG\n",
    )
    .unwrap();
    let list = list.to_str().unwrap();
    let out = dir.path().join("out");
    let (code, stderr) = refused(&["download", list, "-o", out.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: {list}:1 and {list}:2 both name the file A.JPG: give one of them another \
             name (names you give are never changed)"
        )
    );
}
