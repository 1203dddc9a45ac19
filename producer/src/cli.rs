//! The command line: clap structs holding the flags as typed, and their
//! conversion into a validated [`Config`]. The library takes `Config`, never
//! argv, so tests build one directly.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use warren::config::parse_duration;
use warren::{BrokerArgs, BrokerConfig, Dtype};

use crate::error::{Error, Result};
use crate::input::{Format, InputSpec, Source};
use crate::sum::{DEFAULT_CHUNK_SIZE, DEFAULT_MAX_IN_FLIGHT, SumConfig};

/// RabbitMQ refuses messages over 128 MiB by default; stay well below.
const MAX_CHUNK_BYTES: usize = 64 << 20;

const EXIT_CODES: &str = "\
Exit status:
  0    the job finished and printed its answer
  1    the job finished but its answer is not a finite number it could print exactly
       (the exact sum overflows float64)
  2    usage, input, broker or task error (the message says which)
  130  cancelled with Ctrl-C or SIGTERM; the job's queued tasks are dropped";

const EXAMPLES: &str = "\
Examples:
  producer sum readings.npy                 exact sum of a .npy file, with progress
  producer sum readings.npy --json          one JSON object: job_id, sum, count, ...
  producer sum --random 1e8 --seed 7        like np.random.seed(7); np.random.rand(10**8)
  producer sum values.txt --dtype int64     numbers separated by spaces, commas or newlines
  cat data.f32 | producer sum - --format raw --dtype float32";

/// Distributes work over RabbitMQ to `worker` processes and gathers the
/// answer.
#[derive(Debug, Parser)]
#[command(name = "producer", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sum numbers exactly: the result is the exact sum rounded once, the
    /// same bits as Python's math.fsum, whatever the chunking or worker count
    #[command(after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
    Sum(SumArgs),
}

/// Flags of `producer sum`.
#[derive(Debug, Args)]
pub struct SumArgs {
    /// Input file (.npy, text, or raw with --format raw); - reads stdin
    #[arg(
        value_name = "INPUT",
        required_unless_present = "random",
        conflicts_with = "random"
    )]
    pub input: Option<PathBuf>,

    /// Input format
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,

    /// Element type for raw and text input: float64, float32, int64, int32,
    /// int16, int8, uint64, uint32, uint16, uint8 [default for text: float64]
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<Dtype>,

    /// Sum N uniform [0, 1) doubles generated on the fly, numpy's
    /// np.random.rand(N) stream (N may be written 1e8)
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub random: Option<u64>,

    /// Seed for --random, as np.random.seed(SEED) [default: a random seed, reported]
    #[arg(long, value_name = "SEED", requires = "random")]
    pub seed: Option<u32>,

    /// Elements per task
    #[arg(long, env = "WARREN_CHUNK_SIZE", default_value_t = DEFAULT_CHUNK_SIZE, value_parser = parse_count_usize)]
    pub chunk_size: usize,

    /// Tasks queued or in work at once; bounds memory on the broker
    #[arg(long, env = "WARREN_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Flags every job kind shares.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print one JSON object instead of the bare answer
    #[arg(long)]
    pub json: bool,

    /// Hide the progress bar and notes (warnings and errors still show)
    #[arg(long, short)]
    pub quiet: bool,

    /// Give up if the job has not finished after this long (e.g. 30s, 10m)
    #[arg(long, env = "WARREN_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

/// Validated settings of one producer run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the broker is.
    pub broker: BrokerConfig,
    /// The job to run.
    pub job: JobConfig,
    /// `--json`.
    pub json: bool,
    /// `--quiet`.
    pub quiet: bool,
}

/// One job of any kind.
#[derive(Debug, Clone)]
pub enum JobConfig {
    /// `producer sum`.
    Sum {
        /// The job's settings.
        config: SumConfig,
        /// The seed used for `--random`, to report it.
        seed: Option<u32>,
    },
}

impl Cli {
    /// Validates the flags.
    ///
    /// # Errors
    /// [`Error::Usage`] or an invalid broker setting.
    pub fn into_config(self) -> Result<Config> {
        let broker = self.broker.to_config()?;
        match self.command {
            Command::Sum(args) => {
                if args.chunk_size == 0 {
                    return Err(Error::Usage("--chunk-size must be at least 1".into()));
                }
                if args.max_in_flight == 0 {
                    return Err(Error::Usage("--max-in-flight must be at least 1".into()));
                }
                let (input, seed) = match (args.random, args.input) {
                    (Some(count), _) => {
                        if args.dtype.is_some_and(|d| d != Dtype::Float64) {
                            return Err(Error::Usage("--random generates float64 only".into()));
                        }
                        let seed = args.seed.unwrap_or_else(random_seed);
                        (InputSpec::Random { count, seed }, Some(seed))
                    }
                    (None, Some(path)) => (
                        InputSpec::Read {
                            source: Source::from_arg(&path),
                            format: args.format,
                            dtype: args.dtype,
                        },
                        None,
                    ),
                    (None, None) => {
                        return Err(Error::Usage("give an INPUT file or --random N".into()));
                    }
                };
                // The widest element is 8 bytes; check against the real one
                // where it is known.
                let itemsize = args.dtype.map_or(8, |d| d.itemsize());
                if args.chunk_size.saturating_mul(itemsize) > MAX_CHUNK_BYTES {
                    return Err(Error::Usage(format!(
                        "--chunk-size {} makes messages over {} MiB; RabbitMQ refuses large messages",
                        args.chunk_size,
                        MAX_CHUNK_BYTES >> 20
                    )));
                }
                Ok(Config {
                    broker,
                    job: JobConfig::Sum {
                        config: SumConfig {
                            input,
                            chunk_size: args.chunk_size,
                            max_in_flight: args.max_in_flight,
                            timeout: args.output.timeout,
                        },
                        seed,
                    },
                    json: args.output.json,
                    quiet: args.output.quiet,
                })
            }
        }
    }
}

fn random_seed() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// Parses a count written as `100000000`, `100_000_000` or `1e8`.
fn parse_count(text: &str) -> std::result::Result<u64, String> {
    let cleaned = text.trim().replace('_', "");
    if let Ok(n) = cleaned.parse::<u64>() {
        return Ok(n);
    }
    match cleaned.parse::<f64>() {
        Ok(x) if x >= 0.0 && x.fract() == 0.0 && x <= 2f64.powi(63) => Ok(x as u64),
        _ => Err(format!(
            "{text:?} is not a whole number (examples: 1000, 1e8)"
        )),
    }
}

fn parse_count_usize(text: &str) -> std::result::Result<usize, String> {
    parse_count(text).and_then(|n| usize::try_from(n).map_err(|_| format!("{text} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("producer").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn counts_accept_scientific_and_underscores() {
        assert_eq!(parse_count("1e8"), Ok(100_000_000));
        assert_eq!(parse_count("100_000"), Ok(100_000));
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("-3").is_err());
    }

    #[test]
    fn random_with_seed() {
        let config = parse(&["sum", "--random", "1e3", "--seed", "7"]).unwrap();
        let JobConfig::Sum { config, seed } = config.job;
        assert_eq!(
            config.input,
            InputSpec::Random {
                count: 1000,
                seed: 7
            }
        );
        assert_eq!(seed, Some(7));
    }

    #[test]
    fn input_or_random_is_required_and_exclusive() {
        assert!(parse(&["sum"]).is_err());
        assert!(parse(&["sum", "a.npy", "--random", "5"]).is_err());
        assert!(parse(&["sum", "--seed", "5"]).is_err());
    }

    #[test]
    fn broker_flags_go_before_or_after_the_subcommand() {
        let config = parse(&[
            "--queue-prefix",
            "t1",
            "sum",
            "x.txt",
            "--amqp-url",
            "amqp://h:1/%2f",
        ])
        .unwrap();
        assert_eq!(config.broker.prefix.as_str(), "t1");
        assert_eq!(config.broker.url.to_string(), "amqp://h:1/%2f");
    }

    #[test]
    fn chunk_size_limits() {
        assert!(
            parse(&["sum", "x", "--chunk-size", "0"])
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            parse(&["sum", "x", "--chunk-size", "1e8"])
                .unwrap_err()
                .contains("MiB")
        );
        assert!(parse(&["sum", "x", "--chunk-size", "1e6"]).is_ok());
    }

    #[test]
    fn dtype_and_timeout_parse() {
        let config = parse(&[
            "sum",
            "-",
            "--format",
            "raw",
            "--dtype",
            "f4",
            "--timeout",
            "3s",
        ])
        .unwrap();
        let JobConfig::Sum { config, .. } = config.job;
        assert_eq!(config.timeout, Some(Duration::from_secs(3)));
        assert_eq!(
            config.input,
            InputSpec::Read {
                source: Source::Stdin,
                format: Format::Raw,
                dtype: Some(Dtype::Float32)
            }
        );
        assert!(
            parse(&["sum", "x", "--dtype", "complex"])
                .unwrap_err()
                .contains("unsupported dtype")
        );
    }
}
