//! Signal handling both binaries share: the first SIGINT or SIGTERM
//! cancels a token, so the program winds down gracefully; a second one
//! exits at once with status 130.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first signal (then logs `first_note` at info
/// level, if given: a reader of the log knows cancelling has begun) and
/// exits the process with status 130 on the second (after printing
/// `second_note` to stderr). Runs until then; spawn it.
pub async fn cancel_on_signals(
    shutdown: CancellationToken,
    first_note: Option<&'static str>,
    second_note: &'static str,
) {
    wait_for_signal().await;
    shutdown.cancel();
    if let Some(note) = first_note {
        tracing::info!("{note}");
    }
    wait_for_signal().await;
    eprintln!("{second_note}");
    std::process::exit(130);
}

/// The next SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action (exit) applies: nothing to
        // wait for.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
