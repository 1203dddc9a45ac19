//! warren's benchmark suite.
//!
//! It measures the broker's own ceiling (raw lapin, same queue type and
//! message size as warren uses) and then warren end to end against it, with
//! the real binaries and workers it starts itself, and prints one table.
//! It is a benchmark, not a test: it asserts nothing, but reports each
//! target from the project's goals as met or not.
//!
//! - [`cluster`]: the binaries, workers, producer runs, memory sampling.
//! - [`cpu`]: CPU time by process, to say where a run's time went.
//! - [`scenarios`]: one module per scenario.
//! - [`report`]: samples, rows, and the Markdown table.

pub mod cluster;
pub mod cpu;
pub mod report;
pub mod scenarios;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, ValueEnum};

use cluster::Cluster;
use report::Row;

/// Measures warren against the broker's own ceiling.
///
/// Build everything first (`cargo build --release --workspace`), then run
/// `target/release/warren-bench`. It needs the broker and, for the fsum
/// reference, python3 with numpy.
#[derive(Debug, Parser)]
#[command(name = "warren-bench", version, about)]
pub struct Options {
    /// Fewer runs and smaller inputs: under 2 minutes instead of about 10
    #[arg(long)]
    pub quick: bool,

    /// Print the rows as JSON instead of a table
    #[arg(long)]
    pub json: bool,

    /// Run only these scenarios
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,

    /// The broker [default: amqp://guest:***@127.0.0.1:5672/%2f]
    #[arg(long, env = "AMQP_URL", default_value = warren::DEFAULT_AMQP_URL, hide_default_value = true, hide_env_values = true)]
    pub amqp_url: String,

    /// Where generated input files are kept between runs
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
}

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// The broker's own ceiling (the reference for the others)
    Ceiling,
    /// 20,000 one-chunk sum tasks end to end
    Small,
    /// 1e7 and 1e8 float64 .npy sums, and the chunk-size sweep
    Sum,
    /// The same sum with checkpoints and with --job-ttl 0, pair by pair
    Checkpoints,
    /// The exact-summation kernel and the combine step
    Kernel,
    /// One-chunk job latency with warm workers
    Latency,
    /// Downloads in both delivery modes against a plain reqwest loop
    Download,
    /// Peak memory of producer and worker on big inputs
    Memory,
    /// Sums by reference: shared path, HTTP, scaling over capped links
    Reference,
}

/// How big and how often, by mode.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub quick: bool,
    /// Repetitions of each measurement.
    pub runs: usize,
}

/// Runs the selected scenarios and prints the table.
///
/// # Errors
/// When the broker, the binaries or a run fails.
pub fn run(options: &Options) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_async(options))
}

async fn run_async(options: &Options) -> Result<()> {
    let started = Instant::now();
    let stolen_before = cpu::stolen_seconds();
    let scale = Scale {
        quick: options.quick,
        runs: if options.quick { 3 } else { 5 },
    };
    let selected = |s: Scenario| options.only.is_empty() || options.only.contains(&s);
    let mut cluster = Cluster::new(&options.amqp_url).await?;
    eprintln!("{}", machine());
    let mut rows: Vec<Row> = Vec::new();
    let outcome = async {
        // The ceiling is measured in the same run: every ratio refers to it.
        let ceiling = if selected(Scenario::Ceiling)
            || selected(Scenario::Small)
            || selected(Scenario::Sum)
            || selected(Scenario::Download)
        {
            let with_relay = selected(Scenario::Ceiling) || selected(Scenario::Download);
            Some(scenarios::ceiling::run(&mut cluster, scale, with_relay, &mut rows).await?)
        } else {
            None
        };
        if selected(Scenario::Small) {
            scenarios::small::run(&mut cluster, scale, ceiling, &mut rows).await?;
        }
        if selected(Scenario::Sum) {
            scenarios::datapath::run(&mut cluster, scale, ceiling, &options.data_dir, &mut rows)
                .await?;
        }
        if selected(Scenario::Checkpoints) {
            scenarios::datapath::checkpoints(&mut cluster, scale, &options.data_dir, &mut rows)
                .await?;
        }
        if selected(Scenario::Kernel) {
            scenarios::kernel::run(&cluster, scale, &mut rows)?;
        }
        if selected(Scenario::Latency) {
            scenarios::latency::run(&mut cluster, scale, &mut rows).await?;
        }
        if selected(Scenario::Download) {
            scenarios::downloads::run(&mut cluster, scale, ceiling, &mut rows).await?;
        }
        if selected(Scenario::Reference) {
            scenarios::reference::run(&mut cluster, scale, &options.data_dir, &mut rows).await?;
        }
        if selected(Scenario::Memory) {
            scenarios::memory::run(&mut cluster, scale, &options.data_dir, &mut rows).await?;
        }
        anyhow::Ok(())
    }
    .await;
    cluster.clean_up().await;
    outcome?;
    let elapsed = started.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Of the machine's capacity during the run, the share the hypervisor
    // gave elsewhere: figures from runs with much steal are not comparable.
    let stolen = (cpu::stolen_seconds() - stolen_before) / (elapsed * cores);
    if options.json {
        println!(
            "{}",
            serde_json::json!({"machine": machine(), "stolen": stolen, "rows": rows})
        );
    } else {
        println!("{}", report::markdown(&rows));
        println!(
            "({elapsed:.0} s in all; {:.1}% of the CPU time was stolen by the hypervisor)",
            stolen * 100.0
        );
    }
    Ok(())
}

/// One line describing the machine and broker.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or_else(
            || "?".to_owned(),
            |kb| format!("{:.0} GiB", kb as f64 / 1048576.0),
        );
    let broker = std::process::Command::new("rabbitmqctl")
        .args(["--quiet", "version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "?".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    format!("machine: {cores} cores, {memory}; RabbitMQ {broker}")
}
