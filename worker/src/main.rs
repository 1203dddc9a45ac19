//! `worker`: parse flags, install logging and signal handling, run until a
//! signal, and turn the outcome into an exit status.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker::{Cli, Error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    warren::logging::install(cli.log.log_format, "info");
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    // Multi-threaded: sums run on blocking threads while the runtime keeps
    // acking, publishing and receiving on all cores.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = warren::shutdown::cancel_on_signals(
            shutdown.clone(),
            Some("signal received: finishing the tasks in hand (again to exit now)"),
        );
        tokio::spawn(async {
            signals.await;
            eprintln!("second signal: exiting now");
            // At once: no draining, no waiting for blocking threads; the
            // broker requeues the unacked tasks when the connection drops.
            std::process::exit(130);
        });
        worker::run(&config, shutdown).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &Error) -> ExitCode {
    warren::print_error(error, error.hint());
    ExitCode::from(2)
}
