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
