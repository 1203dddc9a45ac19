//! Logging set-up shared by both binaries: structured `tracing` logs on
//! stderr, human-readable by default or one JSON object per line with
//! `--log-format json`, the level from `RUST_LOG`. Colour only when stderr
//! is a terminal and `NO_COLOR` is unset (<https://no-color.org>): logs
//! that go to a file, a pipe or `docker compose logs` carry no escape codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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
    // lapin logs each connection failure at ERROR from its I/O loop; warren
    // reports the same failure itself, once, with the URL and a hint.
    let default_filter = format!("{default_level},lapin=off");
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
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
