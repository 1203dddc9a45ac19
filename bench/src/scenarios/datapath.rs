//! The sum data path: 1e7 and 1e8 float64 `.npy` files summed by two
//! workers, the chunk-size sweep behind the default chunk size, and what
//! checkpoints cost.

use std::path::Path;

use anyhow::{Result, ensure};

use super::ceiling::Ceiling;
use crate::Scale;
use crate::cluster::{Cluster, npy_file};
use crate::cpu::CpuTimes;
use crate::report::{Row, Sample, human};

pub async fn run(
    cluster: &mut Cluster,
    scale: Scale,
    ceiling: Option<Ceiling>,
    data_dir: &Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let workers = cluster.workers(2, &[]).await?;
    let small = npy_file(data_dir, 10_000_000)?;
    let large = npy_file(data_dir, 100_000_000)?;
    for (file, count, label) in [
        (&small, 10_000_000u64, "1e7 float64 (80 MB)"),
        (&large, 100_000_000, "1e8 float64 (800 MB)"),
    ] {
        let path = file.to_str().expect("data paths are UTF-8");
        let mut walls = Vec::new();
        for _ in 0..scale.runs {
            let run = cluster.producer(&["sum", path, "--json"]).await?;
            ensure!(
                run.json()?["count"] == count,
                "unexpected count: {}",
                run.stdout
            );
            walls.push(run.wall.as_secs_f64());
        }
        let rates: Vec<f64> = walls.iter().map(|w| count as f64 * 8.0 / w / 1e6).collect();
        let mut row = Row::new(
            "sum .npy end to end, 2 workers",
            label,
            Sample::of(&rates),
            "MB/s",
        );
        if let Some(ceiling) = ceiling {
            let reference = ceiling.large_bytes / 1e6;
            row = row.against(
                format!("ceiling at 1 MiB ({} MB/s)", human(reference)),
                reference,
            );
            let ratio = row.ratio.unwrap_or(0.0);
            row = row.target(">= 70% of ceiling", ratio >= 0.7);
        }
        rows.push(row);
        if count == 100_000_000 {
            let wall = Sample::of(&walls);
            let met = wall.median < 2.5;
            rows.push(
                Row::new("sum .npy end to end, 2 workers", label, wall, "s").target("< 2.5 s", met),
            );
        }
    }

    // The sweep: which chunk size moves data fastest.
    let (file, count) = if scale.quick {
        (&small, 10_000_000u64)
    } else {
        (&large, 100_000_000)
    };
    let path = file.to_str().expect("data paths are UTF-8");
    for chunk in [16_384usize, 65_536, 131_072, 262_144, 524_288, 1_048_576] {
        let mut rates = Vec::new();
        for _ in 0..scale.runs.min(3) {
            let run = cluster
                .producer(&["sum", path, "--chunk-size", &chunk.to_string(), "--json"])
                .await?;
            rates.push(count as f64 * 8.0 / run.wall.as_secs_f64() / 1e6);
        }
        rows.push(Row::new(
            "chunk-size sweep",
            &format!(
                "{} elements ({} KiB), {} values",
                human(chunk as f64),
                chunk * 8 / 1024,
                human(count as f64)
            ),
            Sample::of(&rates),
            "MB/s",
        ));
    }
    cluster.stop(workers).await
}

/// The pause before each run of [`checkpoints`].
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// What checkpoints cost the sum path: the same sum with them (the default)
/// and without (`--job-ttl 0`, a job that ends with its producer), measured
/// pair by pair (the order alternating within pairs, so that neither
/// always runs first), reported as the median of the pairs' ratios with
/// the CPU time each variant took by process. Small chunks make many more
/// results, and so many more checkpoints, per byte.
///
/// Each run starts [`SETTLE`] after the last one ended: right after a job
/// has pushed 800 MB through the quorum task queue, RabbitMQ 3.10 takes
/// 0.25–0.75 s to declare a quorum queue (its log is still busy with the
/// last job's messages), and only the durable job declares quorum queues at
/// its start, so back to back it would pay for the job before it.
pub async fn checkpoints(
    cluster: &mut Cluster,
    scale: Scale,
    data_dir: &Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let (count, label) = if scale.quick {
        (10_000_000u64, "1e7 float64")
    } else {
        (100_000_000, "1e8 float64")
    };
    let file = npy_file(data_dir, count)?;
    let workers = cluster.workers(2, &[]).await?;
    let worker_pids: Vec<u32> = workers.iter().filter_map(|w| w.pid()).collect();
    // Single runs vary by ±15% here, so ten pairs cannot tell a 5% cost
    // from none: thirty give an interval for the median a few % wide.
    let sum = PairedSum {
        path: file.to_str().expect("data paths are UTF-8"),
        count,
        pairs: scale.runs * 6,
        worker_pids: &worker_pids,
    };
    for chunk in ["131072", "16384"] {
        let pairs = sum.run(cluster, chunk).await?;
        rows.extend(pairs.rows(&format!("{label}, chunks of {chunk}")));
    }
    cluster.stop(workers).await
}

/// The sum that [`checkpoints`] runs in pairs, with and without them.
struct PairedSum<'a> {
    path: &'a str,
    count: u64,
    pairs: usize,
    worker_pids: &'a [u32],
}

/// What the pairs measured: `[with checkpoints, without]`.
struct Pairs {
    /// MB/s of each run.
    rates: [Vec<f64>; 2],
    cpu: [Vec<CpuTimes>; 2],
}

impl PairedSum<'_> {
    /// Runs the pairs at chunks of `chunk` elements.
    async fn run(&self, cluster: &Cluster, chunk: &str) -> Result<Pairs> {
        let mut measured = Pairs {
            rates: [Vec::new(), Vec::new()],
            cpu: [Vec::new(), Vec::new()],
        };
        for pair in 0..self.pairs {
            let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
            for variant in order {
                let ttl = ["10m", "0"][variant];
                tokio::time::sleep(SETTLE).await;
                let before = CpuTimes::now(self.worker_pids);
                let args = [
                    "sum",
                    self.path,
                    "--chunk-size",
                    chunk,
                    "--job-ttl",
                    ttl,
                    "--json",
                ];
                let run = cluster.producer(&args).await?;
                measured.cpu[variant].push(CpuTimes::now(self.worker_pids).since(&before));
                let count = self.count;
                ensure!(
                    run.json()?["count"] == count,
                    "unexpected count: {}",
                    run.stdout
                );
                let rate = count as f64 * 8.0 / run.wall.as_secs_f64() / 1e6;
                measured.rates[variant].push(rate);
            }
        }
        Ok(measured)
    }
}

impl Pairs {
    /// The median of the pairs' speed ratios with its interval (the
    /// target), the same for the whole machine's CPU time (what
    /// checkpoints make every process do), and each
    /// variant's speed with its CPU time by process.
    fn rows(&self, size: &str) -> Vec<Row> {
        let ratios = |of: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
            (0..self.rates[0].len())
                .map(|i| of(0, i) / of(1, i) * 100.0)
                .collect()
        };
        let speed = ratios(&|variant, i| self.rates[variant][i]);
        let cpu = ratios(&|variant, i| self.cpu[variant][i].machine);
        let interval = |values: &[f64]| {
            let (low, high) = Sample::median_interval(values);
            format!("95% interval of the median: {low:.1}–{high:.1}")
        };
        let paired = Sample::of(&speed);
        let met = paired.median >= 95.0;
        let mut rows = vec![
            Row::new(
                "sum with checkpoints, 2 workers: median of pair ratios",
                size,
                paired,
                "% of --job-ttl 0",
            )
            .note(interval(&speed))
            .target(">= 95% (cost <= 5%)", met),
            Row::new(
                "sum with checkpoints, 2 workers: CPU of the whole machine, median of pair ratios",
                size,
                Sample::of(&cpu),
                "% of --job-ttl 0's",
            )
            .note(interval(&cpu)),
        ];
        for (variant, name) in [
            (0, "sum with checkpoints (default), 2 workers"),
            (1, "sum with --job-ttl 0 (no checkpoints), 2 workers"),
        ] {
            let mut total = CpuTimes::default();
            for run in &self.cpu[variant] {
                total.add(run);
            }
            let per_run = total.per(self.cpu[variant].len() as f64);
            rows.push(
                Row::new(name, size, Sample::of(&self.rates[variant]), "MB/s")
                    .note(format!("CPU ms per run: {per_run}")),
            );
        }
        rows
    }
}
