//! Logging set-up shared by both binaries: structured `tracing` logs on
//! stderr, human-readable by default or one JSON object per line with
//! `--log-format json`, the level from `RUST_LOG`. Colour only when stderr
//! is a terminal and `NO_COLOR` is unset (<https://no-color.org>): logs
//! that go to a file, a pipe or `docker compose logs` carry no escape codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Directive;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: aligned, colored on a terminal.
    Human,
    /// For machines: one JSON object per line with every span field.
    Json,
}

/// The logging flags of both binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr (the level comes from RUST_LOG)
    #[arg(
        long,
        env = "WARREN_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Human,
        global = true,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. `default_level` applies when `RUST_LOG`
/// is unset or invalid.
pub fn install(format: LogFormat, default_level: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(rust_log.as_deref(), default_level);
    let colour = wants_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    // A second installation (tests, local workers in the producer) keeps the
    // first one; nothing to report.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The filter for `RUST_LOG` (or `default_level` when it is unset or
/// invalid), with the lapin targets that must stay quiet whatever it says.
fn log_filter(rust_log: Option<&str>, default_level: &str) -> EnvFilter {
    // lapin logs each connection failure at ERROR from its I/O loop; warren
    // reports the same failure itself, once, with the URL and a hint.
    let default_filter = format!("{default_level},lapin=off");
    let filter = rust_log
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    // lapin logs every returned message at WARN with its whole body: 1 MiB
    // per file chunk still in flight when a download job ends (issue 12).
    // A body may also carry data that must not reach a log. Whoever
    // published the message learns of the return from its confirm.
    let filter = filter.add_directive(quiet("lapin::returned_messages"));
    // lapin logs every channel the broker closes at ERROR, the ordinary
    // "NOT_FOUND - no queue" of a finished job's reply queue included;
    // warren gets each such error back from the call and logs it at the
    // level it deserves (debug for a job that ended). lapin's own lines
    // appear only when RUST_LOG names lapin.
    match rust_log {
        Some(value) if value.contains("lapin") => filter,
        _ => filter.add_directive(quiet("lapin")),
    }
}

/// A directive that turns a target's logs off.
fn quiet(target: &str) -> Directive {
    format!("{target}=off")
        .parse()
        // Invariant: the callers pass fixed, valid target names.
        .expect("a target name with =off is a valid directive")
}

/// Whether human log lines get colour: only on a terminal, and never when
/// `NO_COLOR` is set to anything but the empty string (the no-color.org
/// rule).
pub fn wants_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::sync::{Arc, Mutex};

    /// What a subscriber with [`log_filter`] writes while `emit` runs.
    fn logged_with(rust_log: Option<&str>, emit: impl FnOnce()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(log_filter(rust_log, "info"))
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut buffer) = self.0.lock() {
                buffer.extend_from_slice(data);
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 12: a returned 1 MiB file chunk was logged with its body, once
    /// per chunk in flight, whenever RUST_LOG let lapin's warnings through.
    #[test]
    fn returned_message_bodies_never_reach_the_log_issue_12() {
        for rust_log in [None, Some("info"), Some("info,worker=debug"), Some("trace")] {
            let logged = logged_with(rust_log, || {
                tracing::warn!(
                    target: "lapin::returned_messages",
                    body = "SECRET-BODY-BYTES",
                    "Server returned us a message"
                );
                tracing::warn!(target: "worker::consume", "still logged");
            });
            assert!(
                !logged.contains("SECRET-BODY-BYTES"),
                "{rust_log:?}: {logged}"
            );
            assert!(logged.contains("still logged"), "{rust_log:?}: {logged}");
        }
    }

    /// Issue 12: workers logged the ordinary "no such queue" of a finished
    /// job at ERROR (lapin's "Channel closed") under RUST_LOG=info.
    #[test]
    fn a_finished_jobs_missing_queue_is_not_an_error_line_issue_12() {
        let closed = || {
            tracing::error!(
                target: "lapin::channel",
                "Channel closed: NOT_FOUND - no queue 'warren.reply.x'"
            );
        };
        for rust_log in [None, Some("info"), Some("debug"), Some("info,worker=debug")] {
            let logged = logged_with(rust_log, closed);
            assert!(!logged.contains("NOT_FOUND"), "{rust_log:?}: {logged}");
        }
        // Asked for by name, lapin's lines are there.
        let logged = logged_with(Some("info,lapin=debug"), closed);
        assert!(logged.contains("NOT_FOUND"), "{logged}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(wants_colour(true, None));
        assert!(!wants_colour(false, None), "files and pipes get plain text");
        assert!(!wants_colour(true, Some(OsStr::new("1"))));
        assert!(!wants_colour(false, Some(OsStr::new("1"))));
        // An empty NO_COLOR counts as unset.
        assert!(wants_colour(true, Some(OsStr::new(""))));
    }
}
