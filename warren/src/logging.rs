//! Logging set-up shared by both binaries: structured `tracing` logs on
//! stderr, human-readable by default or one JSON object per line with
//! `--log-format json`, the level from `RUST_LOG`.

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second installation (tests, local workers in the producer) keeps the
    // first one; nothing to report.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
