//! `producer`: parse flags, install logging and signal handling, run the
//! job, and turn its outcome into an exit status.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use producer::output::{error_json, json_requested, usage_error_text};
use producer::progress::Progress;
use producer::{Cli, Error};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Known before the flags parse: a script that asked for JSON gets an
    // object even when they do not.
    let json = json_requested(std::env::args_os());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_failure(&e, json),
    };
    warren::logging::install(cli.log.log_format, "warn");
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => return job_failure(&e, json, &Progress::hidden(), Duration::ZERO),
    };
    // Multi-threaded: the collector folds results while publishing and the
    // blocking input reader run beside it.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let progress = Progress::new(config.quiet);
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = warren::shutdown::cancel_on_signals(
            shutdown.clone(),
            Some("signal received: cancelling the job (again to exit without cleanup)"),
        );
        tokio::spawn(async {
            signals.await;
            eprintln!("interrupted again: exiting without cleanup");
            // At once, as asked: no cleanup, no waiting for a blocked reader.
            std::process::exit(130);
        });
        producer::run(&config, &progress, shutdown).await
    });
    // Don't wait for a blocked stdin reader on the way out.
    runtime.shutdown_background();
    match outcome {
        Ok(report) => print_report(&report, &config),
        Err(e) => job_failure(&e, config.json, &progress, started.elapsed()),
    }
}

/// Prints the job's notes and answer; the exit status the report gives.
fn print_report(report: &producer::Report, config: &producer::Config) -> ExitCode {
    for note in report.notes(config.quiet) {
        eprintln!("{note}");
    }
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let written = report
        .write_stdout(config.json, &mut stdout)
        .and_then(|()| stdout.flush());
    match written {
        // A reader that stopped reading (`| head -c0`) wanted nothing
        // more: the job itself went fine.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write the answer to stdout: {e}");
            ExitCode::from(2)
        }
        _ => ExitCode::from(report.exit_code()),
    }
}

/// A job (or its configuration) that failed: the JSON object when asked
/// for, the error on stderr, and its exit status.
fn job_failure(e: &Error, json: bool, progress: &Progress, elapsed: Duration) -> ExitCode {
    progress.finish();
    if json {
        print_json(&error_json(&warren::display_chain(e), progress, elapsed));
    }
    if e.is_cancelled() {
        eprintln!("cancelled: the job's queued tasks will be dropped by the workers");
        ExitCode::from(e.exit_code())
    } else {
        fail(e)
    }
}

/// Help and version as clap prints them; a flag error as clap prints it
/// (status 2), after its `--json` object on stdout when one was asked for.
fn usage_failure(error: &clap::Error, json: bool) -> ! {
    if json && error.use_stderr() {
        print_json(&error_json(
            &usage_error_text(error),
            &Progress::hidden(),
            Duration::ZERO,
        ));
    }
    error.exit()
}

/// The `--json` object of a failed run on stdout. Nothing more to tell when
/// stdout is gone: the exit status and stderr still say what happened.
fn print_json(object: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{object}");
    let _ = stdout.flush();
}

fn fail(error: &Error) -> ExitCode {
    warren::print_error(error, error.hint().as_deref());
    ExitCode::from(error.exit_code())
}
