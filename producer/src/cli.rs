//! The command line: clap structs holding the flags as typed, and their
//! conversion into a validated [`Config`] (`config.rs`). The library takes
//! `Config`, never argv, so tests build one directly.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use warren::config::parse_duration;
use warren::logging::LogArgs;
use warren::size::parse_size;
use warren::{BrokerArgs, BrokerConfig, Dtype, JobId};

use warren::protocol::{ByteOrder, DownloadLimits, FileRoute, MAX_TASKS_PER_MESSAGE};

use crate::config::{Config, JobConfig};
use crate::download::{DEFAULT_DOWNLOADS_IN_FLIGHT, DownloadConfig, UrlInput};
use crate::error::{Error, Result};
use crate::input::{Format, InputSpec, Source};
use crate::reference::{Location, ReferenceSpec};
use crate::status::StatusConfig;
use crate::sum::{DEFAULT_CHUNK_SIZE, SumConfig, check_message_size};

/// Bound on `--max-in-flight`: far beyond any useful window.
const MAX_IN_FLIGHT: usize = 1_000_000;

const EXIT_CODES: &str = "\
Exit status:
  0    the job finished and printed its answer
  1    the job finished without a complete answer: the exact sum overflows float64,
       or some downloads failed (they are listed)
  2    usage, input, broker or task error (the message says which)
  130  cancelled with Ctrl-C or SIGTERM, or by `producer cancel`; the job's
       queued tasks are dropped and its running ones stopped";

const EXAMPLES: &str = "\
Examples:
  producer sum readings.npy                 exact sum of a .npy file, with progress
  producer sum readings.npy --workers 2     with two workers inside this process
  producer sum readings.npy --json          one JSON object: job_id, sum, count, ...
  producer sum --random 1e8 --seed 7        like np.random.seed(7); np.random.rand(10**8)
  producer sum values.txt --dtype int64     numbers separated by spaces, commas or newlines
  cat data.f32 | producer sum - --format raw --dtype float32

By reference (workers read their own ranges; the broker carries only control):
  producer sum /data/x.npy --shared --shared-dir /data    workers run with --shared-dir /data
  producer sum https://host/x.npy                         a server with Range support
  producer sum s3://bucket/x.npy                          AWS_* variables as for AWS's tools";

const OVERVIEW: &str = "\
Examples:
  producer sum readings.npy                     exact sum, with a progress bar
  producer sum --random 1e8 --seed 7 --workers 2    no separate workers needed
  producer download urls.txt --out-dir images/ --manifest images.jsonl
  producer status                               queues, work in hand, running jobs

Run `producer <command> --help` for each command's flags and examples.";

/// Distributes work over RabbitMQ to `worker` processes and gathers the
/// answer.
#[derive(Debug, Parser)]
#[command(name = "producer", version, about, after_help = format!("{OVERVIEW}\n\n{EXIT_CODES}"))]
pub struct Cli {
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten, next_help_heading = "Log options")]
    pub log: LogArgs,

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

    /// Download URLs with the workers into --out-dir: every file complete
    /// and verified, failures listed, a re-run fetches only what is missing
    #[command(after_help = format!("{DOWNLOAD_EXAMPLES}\n\n{DOWNLOAD_EXIT_CODES}"))]
    Download(DownloadArgs),

    /// Show what is queued, in work and dead-lettered under the queue
    /// prefix, and which jobs are running
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),

    /// List the jobs (sums and downloads) that outlive their producer and
    /// can be attached to: id, kind, progress, age, whether a producer is
    /// attached
    #[command(after_help = JOBS_EXAMPLES)]
    Jobs(StatusArgs),

    /// Carry on a job whose producer stopped (killed, lost its machine):
    /// prints what that producer would have printed, with the same exit
    /// status
    #[command(after_help = format!("{ATTACH_EXAMPLES}\n\n{EXIT_CODES}"))]
    Attach(AttachArgs),

    /// End a job everywhere: its queued tasks are dropped, its producer (if
    /// one is attached) stops
    Cancel(CancelArgs),
}

const JOBS_EXAMPLES: &str = "\
Listing needs RabbitMQ's management API (rabbitmq-plugins enable
rabbitmq_management). Reading a job's record counts as using it: its TTL
starts again.

Examples:
  producer jobs
  producer jobs --json";

const ATTACH_EXAMPLES: &str = "\
A sum or download job lives on without its producer for its --job-ttl (10
minutes by default) and can be carried on from its last checkpoint. Ctrl-C on the
attached producer cancels the job, as on the first.

Examples:
  producer attach 5c6f0d8e2b7a4e0f9a1d3c2b1a0f9e8d
  producer attach 5c6f0d8e2b7a4e0f9a1d3c2b1a0f9e8d --json --workers 4";

/// Flags of `producer attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The job's id, as the producer that started it printed it
    #[arg(value_name = "JOB_ID")]
    pub job_id: String,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Flags of `producer cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job's id
    #[arg(value_name = "JOB_ID")]
    pub job_id: String,
}

const STATUS_EXAMPLES: &str = "\
In-work counts and the job list come from RabbitMQ's management API
(rabbitmq-plugins enable rabbitmq_management); without it, status shows what
AMQP alone tells.

Examples:
  producer status
  producer status --json
  producer --queue-prefix tenant-a status --management-url http://broker:15672";

/// Flags of `producer status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Base URL of RabbitMQ's management API, or several separated by
    /// commas, asked in order until one answers [default: each broker
    /// URL's host, port 15672]
    #[arg(long, env = "WARREN_MANAGEMENT_URL", value_name = "URL")]
    pub management_url: Option<String>,

    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

const DOWNLOAD_EXAMPLES: &str = "\
URL lists have one entry per line: URL [NAME] [sha256:HEX]; # starts a comment.

Examples:
  producer download urls.txt --out-dir images/
  producer download urls.txt --out-dir images/ --manifest images.jsonl --json
  producer download https://example.com/a.jpg https://example.com/b.jpg -o pics/
  producer download urls.txt -o /data/images --shared    (workers run with --shared-dir /data/images)
  producer download urls.txt -o /data/images --shared --detach    prints the job's id; `producer attach ID` collects";

const DOWNLOAD_EXIT_CODES: &str = "\
Exit status:
  0    every URL was downloaded (or was already there)
  1    the job finished but some URLs failed; they are listed
  2    usage, list, broker or output error (nothing or only part was attempted)
  130  cancelled with Ctrl-C or SIGTERM, or by `producer cancel`";

/// Flags of `producer download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// URL list files (- for stdin), or URLs (any argument with :// in it)
    #[arg(value_name = "URLS_FILE|URL", required = true)]
    pub inputs: Vec<String>,

    /// Directory the files land in (created if missing)
    #[arg(long, short = 'o', env = "WARREN_OUT_DIR", value_name = "DIR")]
    pub out_dir: PathBuf,

    /// Workers store files straight into their --shared-dir, which must be
    /// this same directory (a shared volume) [default: the bytes come back
    /// through the broker]
    #[arg(long)]
    pub shared: bool,

    /// Write one JSON line per URL here: url, path, status, bytes, sha256,
    /// http_status, attempts, error (and last_ok on failures); a re-run
    /// with the same manifest skips the files it verifies
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// Replace existing files whose content differs from the download
    /// (files that check out against --manifest or their listed sha256 are
    /// skipped, as without it)
    #[arg(long)]
    pub overwrite: bool,

    /// Sync each file to disk before it is reported [default: one sync of
    /// the output file system when the job ends, before the manifest is
    /// written; see docs/DOWNLOADS.md]
    #[arg(long)]
    pub fsync: bool,

    /// Largest file accepted; a larger body is cut off and reported
    #[arg(long, default_value = "2GiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_size: u64,

    /// Attempts per URL; transient failures (timeouts, connection errors,
    /// 408, 429, 5xx) are retried with backoff
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub attempts: u32,

    /// Time to establish an HTTP connection
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub http_connect_timeout: Duration,

    /// Give up on a download that receives nothing for this long
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Longest one download attempt may take
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub download_timeout: Duration,

    /// Downloads queued or in work at once
    #[arg(long, env = "WARREN_MAX_IN_FLIGHT", default_value_t = DEFAULT_DOWNLOADS_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// How long the job lives on if its producer stops, for `producer
    /// attach` to carry it on; after that without a producer its queued
    /// tasks are dropped. 0: the job ends with its producer
    #[arg(long, env = "WARREN_JOB_TTL", value_parser = parse_duration, value_name = "DURATION", default_value = "10m")]
    pub job_ttl: Duration,

    /// Publish every download, print the job's id and exit: `producer
    /// attach JOB_ID` collects the files later (within --job-ttl). Needs
    /// --shared: without it the files come back through the producer
    #[arg(long, conflicts_with = "workers")]
    pub detach: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Flags of `producer sum`.
#[derive(Debug, Args)]
pub struct SumArgs {
    /// Input file (.npy, text, or raw with --format raw); - reads stdin.
    /// An http(s):// or s3://BUCKET/KEY source, or a file with --shared, is
    /// read by the workers themselves, in ranges
    #[arg(
        value_name = "INPUT",
        required_unless_present = "random",
        conflicts_with = "random"
    )]
    pub input: Option<PathBuf>,

    /// Workers read the file themselves from their --shared-dir, which must
    /// be the same storage as the producer's --shared-dir; only its header
    /// passes through the producer [default: the data goes through the
    /// broker]
    #[arg(long, conflicts_with = "random")]
    pub shared: bool,

    /// The directory shared with the workers (their --shared-dir), for
    /// --shared
    #[arg(long, env = "WARREN_SHARED_DIR", value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// Bytes of input per task when the workers read it themselves
    #[arg(long, env = "WARREN_RANGE_SIZE", default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    pub range_size: u64,

    /// Byte order of raw input (little-endian when not given; .npy files
    /// name their own)
    #[arg(long, value_enum, value_name = "ORDER")]
    pub byte_order: Option<ByteOrderArg>,

    /// Input format (--random generates its own input and takes none)
    // A default counts as not given, so only an explicit --format conflicts.
    #[arg(long, value_enum, default_value_t = Format::Auto, conflicts_with = "random")]
    pub format: Format,

    /// Element type for raw and text input, as numpy names it [default for
    /// text: float64]
    #[arg(long, value_enum, value_name = "DTYPE")]
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
    /// [default: as many as fit in 64 MiB, from 64 to 16384]
    #[arg(long, env = "WARREN_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,

    /// How long the job lives on if its producer stops, for `producer
    /// attach` to carry it on; after that without a producer its queued
    /// tasks are dropped
    #[arg(long, env = "WARREN_JOB_TTL", value_parser = parse_duration, value_name = "DURATION", default_value = "10m")]
    pub job_ttl: Duration,

    /// Publish every task, print the job's id and exit: `producer attach
    /// JOB_ID` collects the answer later (within --job-ttl). Needs an input
    /// the workers read themselves (--shared, an http(s):// or s3:// source)
    #[arg(long, conflicts_with = "workers")]
    pub detach: bool,

    /// Tasks carried by one message; each still gets its own result
    /// [default: chunks under 4 MiB travel together in messages of about 4 MiB, up to 256 per message]
    #[arg(long, value_name = "N")]
    pub tasks_per_message: Option<usize>,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--byte-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ByteOrderArg {
    /// Least significant byte first (x86, ARM; numpy's <)
    Little,
    /// Most significant byte first (numpy's >)
    Big,
}

impl From<ByteOrderArg> for ByteOrder {
    fn from(arg: ByteOrderArg) -> ByteOrder {
        match arg {
            ByteOrderArg::Little => ByteOrder::Little,
            ByteOrderArg::Big => ByteOrder::Big,
        }
    }
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

    /// Fail the job, naming its unanswered tasks, when every task is out,
    /// no reply came for this long and the task queue holds nothing, ready
    /// or in work (a consumer acked tasks without answering). Needs the
    /// broker's management API to see in-work counts
    #[arg(long, env = "WARREN_STALL_TIMEOUT", value_parser = parse_duration, value_name = "DURATION", default_value = "60s")]
    pub stall_timeout: Duration,

    /// Also run N workers inside this producer for the duration of the job,
    /// through the same broker (like multiprocessing.Pool(N)); workers
    /// elsewhere still join in
    #[arg(
        long,
        short = 'w',
        env = "WARREN_LOCAL_WORKERS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub workers: u16,
}

impl Cli {
    /// Validates the flags.
    ///
    /// # Errors
    /// [`Error::Usage`] or an invalid broker setting.
    pub fn into_config(self) -> Result<Config> {
        let broker = self.broker.to_config()?;
        match self.command {
            Command::Status(args) => {
                if let Some(url) = &args.management_url {
                    crate::management::ManagementApi::for_broker(&broker, Some(url))?;
                }
                Ok(Config {
                    broker,
                    job: JobConfig::Status(StatusConfig {
                        management_url: args.management_url,
                    }),
                    json: args.json,
                    quiet: true,
                    local_workers: 0,
                })
            }
            Command::Jobs(args) => Ok(Config {
                broker,
                job: JobConfig::Jobs(StatusConfig {
                    management_url: args.management_url,
                }),
                json: args.json,
                quiet: true,
                local_workers: 0,
            }),
            Command::Attach(args) => Ok(Config {
                broker,
                job: JobConfig::Attach {
                    job: job_id(&args.job_id)?,
                    timeout: args.output.timeout,
                    stall_timeout: args.output.stall_timeout,
                },
                json: args.output.json,
                quiet: args.output.quiet,
                local_workers: args.output.workers,
            }),
            Command::Cancel(args) => Ok(Config {
                broker,
                job: JobConfig::Cancel(job_id(&args.job_id)?),
                json: false,
                quiet: true,
                local_workers: 0,
            }),
            Command::Download(args) => download_config(args, broker),
            Command::Sum(args) => sum_config(args, broker),
        }
    }
}

/// A job id as given on the command line.
fn job_id(arg: &str) -> Result<JobId> {
    JobId::parse(arg.trim()).map_err(|e| Error::Usage(format!("{arg:?} is not a job id: {e}")))
}

/// `producer download`'s flags, checked.
fn download_config(args: DownloadArgs, broker: BrokerConfig) -> Result<Config> {
    check_max_in_flight(args.max_in_flight)?;
    if !(1..=DownloadLimits::MAX_ATTEMPTS).contains(&args.attempts) {
        return Err(Error::Usage(format!(
            "--attempts must be 1 to {}",
            DownloadLimits::MAX_ATTEMPTS
        )));
    }
    for (flag, value) in [
        ("--http-connect-timeout", args.http_connect_timeout),
        ("--idle-timeout", args.idle_timeout),
        ("--download-timeout", args.download_timeout),
    ] {
        if value.is_zero() {
            return Err(Error::Usage(format!("{flag} must be longer than 0")));
        }
        // Workers refuse longer ones as malformed: say so now.
        if value > DownloadLimits::MAX_TIMEOUT {
            return Err(Error::Usage(format!("{flag} must be at most 1 day")));
        }
    }
    let inputs = args
        .inputs
        .iter()
        .enumerate()
        .map(|(i, arg)| download_input(i + 1, arg))
        .collect::<Result<_>>()?;
    Ok(Config {
        broker,
        job: JobConfig::Download(DownloadConfig {
            inputs,
            out_dir: args.out_dir,
            delivery: if args.shared {
                FileRoute::Shared
            } else {
                FileRoute::Broker
            },
            manifest: args.manifest,
            overwrite: args.overwrite,
            fsync: args.fsync,
            limits: DownloadLimits {
                max_bytes: args.max_size,
                connect_timeout_s: args.http_connect_timeout.as_secs_f64(),
                idle_timeout_s: args.idle_timeout.as_secs_f64(),
                total_timeout_s: args.download_timeout.as_secs_f64(),
                max_attempts: args.attempts,
                ..DownloadLimits::default()
            },
            max_in_flight: args.max_in_flight,
            timeout: args.output.timeout,
            stall_timeout: args.output.stall_timeout,
            job_ttl: args.job_ttl,
            detach: args.detach,
        }),
        json: args.output.json,
        quiet: args.output.quiet,
        local_workers: args.output.workers,
    })
}

/// `producer sum`'s flags, checked.
fn sum_config(args: SumArgs, broker: BrokerConfig) -> Result<Config> {
    if args.chunk_size == 0 {
        return Err(Error::Usage("--chunk-size must be at least 1".into()));
    }
    if let Some(n) = args.max_in_flight {
        check_max_in_flight(n)?;
    }
    if let Some(n) = args.tasks_per_message
        && !(1..=MAX_TASKS_PER_MESSAGE as usize).contains(&n)
    {
        return Err(Error::Usage(format!(
            "--tasks-per-message must be 1 to {MAX_TASKS_PER_MESSAGE}"
        )));
    }
    let (input, seed) = match (args.random, args.input.clone()) {
        (Some(count), _) => {
            if args.dtype.is_some_and(|d| d != Dtype::Float64) {
                return Err(Error::Usage("--random generates float64 only".into()));
            }
            let seed = args.seed.unwrap_or_else(random_seed);
            (InputSpec::Random { count, seed }, Some(seed))
        }
        (None, Some(path)) => (sum_input(&args, path)?, None),
        (None, None) => {
            return Err(Error::Usage("give an INPUT file or --random N".into()));
        }
    };
    // The widest element is 8 bytes; the job checks again once
    // it knows the real one.
    check_message_size(
        args.chunk_size,
        args.tasks_per_message.unwrap_or(1),
        args.dtype.unwrap_or(Dtype::Float64),
    )?;
    Ok(Config {
        broker,
        job: JobConfig::Sum {
            config: SumConfig {
                input,
                chunk_size: args.chunk_size,
                max_in_flight: args.max_in_flight,
                tasks_per_message: args.tasks_per_message,
                timeout: args.output.timeout,
                stall_timeout: args.output.stall_timeout,
                job_ttl: args.job_ttl,
                detach: args.detach,
            },
            seed,
        },
        json: args.output.json,
        quiet: args.output.quiet,
        local_workers: args.output.workers,
    })
}

/// What `producer sum INPUT` reads: a stream through the broker, or a
/// source the workers read themselves (a URL, an `s3://` object, or a file
/// with `--shared`).
fn sum_input(args: &SumArgs, path: PathBuf) -> Result<InputSpec> {
    let arg = path.to_string_lossy();
    let location = match Location::remote(&arg)? {
        Some(remote) => Some(remote),
        None if args.shared => {
            let dir = args.shared_dir.clone().ok_or_else(|| {
                Error::Usage(
                    "--shared needs the directory shared with the workers: --shared-dir DIR \
                     or WARREN_SHARED_DIR"
                        .into(),
                )
            })?;
            if path == std::path::Path::new("-") {
                return Err(Error::Usage(
                    "--shared reads a file the workers can see, not stdin".into(),
                ));
            }
            Some(Location::Shared {
                path: path.clone(),
                dir,
            })
        }
        None => None,
    };
    let Some(location) = location else {
        return Ok(InputSpec::Read {
            source: Source::from_arg(&path),
            format: args.format,
            dtype: args.dtype,
            byte_order: args.byte_order.map(ByteOrder::from),
        });
    };
    if args.range_size == 0 {
        return Err(Error::Usage("--range-size must be at least 1 byte".into()));
    }
    Ok(InputSpec::Reference(ReferenceSpec {
        location,
        format: args.format,
        dtype: args.dtype,
        byte_order: args.byte_order.map(ByteOrder::from),
        range_size: args.range_size,
    }))
}

/// One argument of `producer download`: a URL, or a URL list file.
///
/// # Errors
/// [`Error::Usage`] for a missing file that reads as a URL without its
/// scheme (`127.0.0.1:8765/f.bin`): "cannot open" would not say what to fix.
fn download_input(position: usize, arg: &str) -> Result<UrlInput> {
    // Anything that looks like a URL is one, whatever its scheme:
    // `ftp://h/x` then gets the scheme error, not "cannot open", and
    // `HTTP://h/x` is downloaded.
    if arg.contains("://") {
        return Ok(UrlInput::Url(arg.to_owned()));
    }
    let path = std::path::Path::new(arg);
    if arg != "-" && !path.exists() && lacks_only_a_scheme(arg) {
        return Err(Error::Usage(format!(
            "argument {position}: there is no file {arg}; a URL needs its scheme, \
             as in http://{arg}"
        )));
    }
    Ok(UrlInput::List(Source::from_arg(path)))
}

/// True for `host:port/...`, `host:port` and `name.domain/...`: text that
/// is a URL once `http://` is put in front.
fn lacks_only_a_scheme(arg: &str) -> bool {
    let (authority, path) = arg.split_once('/').unwrap_or((arg, ""));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let has_port = match port {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => true,
        Some(_) => return false,
        None => false,
    };
    let is_host_name = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && !host.starts_with(['.', '-'])
        && !host.ends_with('.');
    is_host_name && (has_port || (host.contains('.') && !path.is_empty()))
}

fn check_max_in_flight(n: usize) -> Result<()> {
    if (1..=MAX_IN_FLIGHT).contains(&n) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--max-in-flight must be 1 to {MAX_IN_FLIGHT}"
        )))
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
    fn download_flags() {
        let config = parse(&[
            "download",
            "urls.txt",
            "https://h/x.jpg",
            "-o",
            "out",
            "--max-size",
            "10MB",
            "--attempts",
            "2",
            "--idle-timeout",
            "5s",
            "--shared",
            "--manifest",
            "m.jsonl",
            "--fsync",
        ])
        .unwrap();
        let JobConfig::Download(config) = config.job else {
            panic!("not a download job");
        };
        assert!(config.fsync);
        assert_eq!(
            config.inputs,
            [
                UrlInput::List(Source::File("urls.txt".into())),
                UrlInput::Url("https://h/x.jpg".into())
            ]
        );
        assert_eq!(config.delivery, FileRoute::Shared);
        assert_eq!(config.limits.max_bytes, 10_000_000);
        assert_eq!(config.limits.max_attempts, 2);
        assert_eq!(config.limits.idle_timeout_s, 5.0);
        assert_eq!(config.manifest, Some("m.jsonl".into()));
        let config = parse(&["download", "HTTP://h/a", "ftp://h/b", "-o", "out"]).unwrap();
        let JobConfig::Download(config) = config.job else {
            panic!("not a download job");
        };
        assert!(!config.fsync, "one sync per job by default");
        assert_eq!(
            config.inputs,
            [
                UrlInput::Url("HTTP://h/a".into()),
                UrlInput::Url("ftp://h/b".into())
            ]
        );
        assert!(
            parse(&["download", "u.txt"])
                .unwrap_err()
                .contains("--out-dir")
        );
        assert!(
            parse(&["download", "u.txt", "-o", "d", "--download-timeout", "25h"])
                .unwrap_err()
                .contains("--download-timeout must be at most 1 day")
        );
        assert!(parse(&["download", "u.txt", "-o", "d", "--idle-timeout", "1day"]).is_ok());
        assert!(
            parse(&["download", "u.txt", "-o", "d", "--attempts", "0"])
                .unwrap_err()
                .contains("--attempts")
        );
    }

    #[test]
    fn a_download_argument_without_a_scheme_gets_a_hint() {
        for arg in [
            "127.0.0.1:8765/f.bin",
            "localhost:8080",
            "example.com/a.jpg",
        ] {
            let err = parse(&["download", arg, "-o", "out"]).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "argument 1: there is no file {arg}; a URL needs its scheme, as in http://{arg}"
                )
            );
        }
        // Plain missing files keep the "cannot open" error, when opened.
        for arg in ["urls.txt", "lists/urls.txt", "./a.b/urls", "-", "C:/x"] {
            assert!(!lacks_only_a_scheme(arg), "{arg}");
        }
        assert!(parse(&["download", "no-such-urls.txt", "-o", "out"]).is_ok());
    }

    #[test]
    fn random_with_seed() {
        let config = parse(&["sum", "--random", "1e3", "--seed", "7"]).unwrap();
        let JobConfig::Sum { config, seed } = config.job else {
            panic!("not a sum job");
        };
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
        assert!(
            parse(&["sum", "x", "--max-in-flight", "18446744073709551615"])
                .unwrap_err()
                .contains("1 to")
        );
    }

    #[test]
    fn dtype_and_timeout_parse() {
        let config = parse(&[
            "sum",
            "-",
            "--format",
            "raw",
            "--dtype",
            "float32",
            "--timeout",
            "3s",
        ])
        .unwrap();
        let JobConfig::Sum { config, .. } = config.job else {
            panic!("not a sum job");
        };
        assert_eq!(config.timeout, Some(Duration::from_secs(3)));
        assert_eq!(
            config.input,
            InputSpec::Read {
                source: Source::Stdin,
                format: Format::Raw,
                dtype: Some(Dtype::Float32),
                byte_order: None,
            }
        );
        for other in ["complex", "float", "int", "f4"] {
            let err = parse(&["sum", "x", "--dtype", other]).unwrap_err();
            assert!(err.contains("possible values: float64, float32"), "{err}");
        }
    }

    #[test]
    fn random_refuses_an_explicit_format() {
        let err = parse(&["sum", "--random", "10", "--format", "raw"]).unwrap_err();
        assert!(
            err.contains("the argument '--random <N>' cannot be used with '--format <FORMAT>'"),
            "{err}"
        );
        assert!(parse(&["sum", "--random", "10", "--dtype", "float64"]).is_ok());
    }
}
