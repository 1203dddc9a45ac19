//! Signal handling both binaries share: the first SIGINT or SIGTERM
//! cancels a token, so the program winds down gracefully. What a second one
//! does is the binary's to decide (both exit at once with status 130): the
//! library never ends the process.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first signal (then logs `first_note` at info
/// level, if given: a reader of the log knows cancelling has begun) and
/// returns on the second, for the caller to stop at once.
pub async fn cancel_on_signals(shutdown: CancellationToken, first_note: Option<&'static str>) {
    wait_for_signal().await;
    shutdown.cancel();
    if let Some(note) = first_note {
        tracing::info!("{note}");
    }
    wait_for_signal().await;
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
