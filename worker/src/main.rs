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
        tokio::spawn(stop_on_signal(shutdown.clone()));
        worker::run(&config, shutdown).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &Error) -> ExitCode {
    eprintln!("error: {}", warren::display_chain(error));
    if let Some(hint) = error.hint() {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(2)
}

/// The first SIGINT or SIGTERM starts a graceful shutdown; a second one
/// exits at once (unacked tasks return to the queue when the connection
/// drops).
async fn stop_on_signal(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("signal received: finishing the tasks in hand (again to exit now)");
    shutdown.cancel();
    wait_for_signal().await;
    eprintln!("second signal: exiting now");
    std::process::exit(130);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
