//! The command line: clap structs holding the flags as typed, and their
//! conversion into a validated [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use warren::config::parse_duration;
use warren::logging::LogArgs;
use warren::size::parse_size;
use warren::{BrokerArgs, BrokerConfig};

use crate::error::{Error, Result};

const AFTER_HELP: &str = "\
Examples:
  worker                                          the local broker, 8 tasks at a time
  AMQP_URL=amqp://user:pass@broker:5672/%2f worker --concurrency 32
  worker --shared-dir /data/downloads             for `producer download --shared` jobs
  worker --metrics-addr 0.0.0.0:9090              Prometheus /metrics, /healthz, /readyz
  worker --queue-prefix tenant-a --log-format json

Stops gracefully on SIGINT or SIGTERM: takes no new task, finishes the tasks in
hand (up to --shutdown-timeout, then returns them to the queue) and exits 0. A
second signal exits at once with status 130; unfinished tasks then return to the
queue when the connection closes. A broker that cannot be reached is retried with
backoff for up to --broker-wait, then the worker exits with status 2; refused
credentials exit with status 2 at once.";

/// Tasks in hand at once unless `--concurrency` says otherwise.
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// Consumes warren tasks from RabbitMQ, runs them and publishes their
/// results. Run as many as you like, on any hosts.
#[derive(Debug, Parser)]
#[command(name = "worker", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Task messages in hand at once (the prefetch count); at most this
    /// many URLs are fetched at a time, however many a message carries;
    /// sums use at most one core each
    #[arg(long, short = 'c', env = "WARREN_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY, value_name = "N")]
    pub concurrency: u16,

    /// Directory shared by all workers and the producer (e.g. a docker
    /// volume): shared-directory download jobs write their files here
    #[arg(long, env = "WARREN_SHARED_DIR", value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// Name in results, logs and the broker's connection list [default:
    /// HOST:PID-XXXX, XXXX random: unique per start, even in a restarted
    /// container, whose host name and PID stay the same]
    #[arg(long, env = "WARREN_WORKER_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// Largest task message accepted; a larger one is dead-lettered before
    /// any work is done on it
    #[arg(long, env = "WARREN_MAX_TASK_SIZE", default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_task_size: u64,

    /// Serve Prometheus metrics on /metrics, liveness on /healthz and
    /// readiness on /readyz at this address (e.g. 0.0.0.0:9090)
    #[arg(long, env = "WARREN_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// On shutdown, how long to wait for tasks in hand before returning them
    /// to the queue
    #[arg(long, env = "WARREN_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    // Last: the broker and log flags set their own help headings, which
    // would otherwise carry over to the flags after them.
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten, next_help_heading = "Log options")]
    pub log: LogArgs,
}

/// Validated worker settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the broker is.
    pub broker: BrokerConfig,
    /// Tasks in hand at once.
    pub concurrency: u16,
    /// Where shared-directory downloads go (an existing directory).
    pub shared_dir: Option<PathBuf>,
    /// This worker's name.
    pub name: String,
    /// Bound on finishing tasks in hand at shutdown.
    pub shutdown_timeout: Duration,
    /// Where to serve metrics and health endpoints.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Largest task message accepted, in bytes.
    pub max_task_size: u64,
}

impl Cli {
    /// Validates the flags.
    ///
    /// # Errors
    /// [`Error::Usage`] or an invalid broker setting.
    pub fn into_config(self) -> Result<Config> {
        if self.concurrency == 0 {
            return Err(Error::Usage("--concurrency must be at least 1".into()));
        }
        let shared_dir = self.shared_dir.as_deref().map(existing_dir).transpose()?;
        let name = match self.name {
            Some(name) if name.trim().is_empty() => {
                return Err(Error::Usage("--name must not be empty".into()));
            }
            Some(name) => name,
            None => default_name(),
        };
        Ok(Config {
            broker: self.broker.to_config()?,
            concurrency: self.concurrency,
            shared_dir,
            name,
            shutdown_timeout: self.shutdown_timeout,
            metrics_addr: self.metrics_addr,
            max_task_size: self.max_task_size,
        })
    }
}

impl Config {
    /// A worker that another program runs inside its own process
    /// (`producer --workers N`): [`DEFAULT_CONCURRENCY`] tasks at a time, no
    /// metrics endpoint, no task size limit of its own; `shared_dir` is
    /// checked as `--shared-dir` is.
    ///
    /// # Errors
    /// [`Error::Usage`] when `shared_dir` is not an existing directory.
    pub fn local(
        broker: BrokerConfig,
        name: String,
        shared_dir: Option<&Path>,
        shutdown_timeout: Duration,
    ) -> Result<Config> {
        Ok(Config {
            broker,
            concurrency: DEFAULT_CONCURRENCY,
            shared_dir: shared_dir.map(existing_dir).transpose()?,
            name,
            shutdown_timeout,
            metrics_addr: None,
            max_task_size: u64::MAX,
        })
    }
}

/// `--shared-dir`, checked: an existing directory, made canonical.
fn existing_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(dir)
        .ok()
        .filter(|d| d.is_dir())
        .ok_or_else(|| {
            Error::Usage(format!(
                "--shared-dir {} is not an existing directory",
                dir.display()
            ))
        })
}

/// `HOST:PID-XXXX`. The random part tells starts apart where host name and
/// PID repeat: a restarted container keeps its host name and runs as PID 1,
/// and results counted per worker name would merge the two lives.
fn default_name() -> String {
    format!(
        "{}:{}-{:04x}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id(),
        fastrand::u16(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config for `args`, or clap's error or ours.
    fn parse(args: &[&str]) -> Result<Config, Box<dyn std::error::Error>> {
        let cli = Cli::try_parse_from(std::iter::once("worker").chain(args.iter().copied()))?;
        Ok(cli.into_config()?)
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(config.shared_dir, None);
        assert!(config.name.contains(':'));
        // Two starts in the same host and process (as a restarted container
        // would be) get different names, mostly: 1 in 65536 repeats.
        let names: std::collections::HashSet<String> = (0..8).map(|_| default_name()).collect();
        assert!(names.len() > 1, "{names:?}");
        assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.broker.prefix.as_str(), "warren");
    }

    #[test]
    fn flags() {
        let config = parse(&["-c", "8", "--name", "w1", "--shutdown-timeout", "2s"]).unwrap();
        assert_eq!(config.concurrency, 8);
        assert_eq!(config.name, "w1");
        assert_eq!(config.shutdown_timeout, Duration::from_secs(2));
        assert!(
            parse(&["--concurrency", "0"])
                .unwrap_err()
                .to_string()
                .contains("at least 1")
        );
        assert!(parse(&["--name", " "]).is_err());
        assert!(parse(&["--shutdown-timeout", "soon"]).is_err());
        assert!(
            parse(&["--shared-dir", "/no/such/dir"])
                .unwrap_err()
                .to_string()
                .contains("not an existing directory")
        );
        let dir = std::env::temp_dir();
        let config = parse(&["--shared-dir", dir.to_str().unwrap()]).unwrap();
        assert_eq!(config.shared_dir, Some(std::fs::canonicalize(dir).unwrap()));
    }
}
