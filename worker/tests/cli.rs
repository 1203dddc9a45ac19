//! The `worker` binary's command line, run for real. (These tests also make
//! `cargo test --workspace` build the binary for the end-to-end tests.)

use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker"))
}

#[test]
fn help_lists_the_flags() {
    let output = worker().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--concurrency",
        "--shutdown-timeout",
        "--name",
        "--amqp-url",
        "WARREN_CONCURRENCY",
        "SIGTERM",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    assert!(
        !help.contains("guest:guest"),
        "--help shows a password:\n{help}"
    );
}

#[test]
fn a_bad_flag_exits_2() {
    let output = worker().arg("--no-such-flag").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = worker().args(["--concurrency", "0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn help_lists_the_workers_own_flags_before_the_broker_and_log_flags_issue_16() {
    let output = worker().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let at = |needle: &str| {
        help.find(needle)
            .unwrap_or_else(|| panic!("--help lacks {needle}:\n{help}"))
    };
    let broker = at("\nBroker options:\n");
    let log = at("\nLog options:\n");
    for own in ["--concurrency", "--shared-dir", "--shutdown-timeout"] {
        assert!(at(own) < broker, "{own}:\n{help}");
    }
    for global in ["--amqp-url", "--tls-ca-file", "--queue-prefix"] {
        assert!(broker < at(global) && at(global) < log, "{global}:\n{help}");
    }
    assert!(log < at("--log-format"), "{help}");
}
