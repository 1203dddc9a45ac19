//! Sums by reference (issue 11): the workers read their own ranges, so the
//! broker carries only control. Measured in one run against:
//!
//! - **the limit**: this machine reading the same file from the page cache
//!   and summing it with the exact kernel, one thread per core over
//!   disjoint halves, positioned reads in 1 MiB blocks: the best plain loop;
//! - **the through-broker path** on the same file and workers;
//! - **a plain reqwest loop** fetching the same ranges over HTTP at the
//!   same concurrency and dropping the bytes;
//! - **N × a per-connection rate cap**: the file server caps each response
//!   at 25 MB/s (one host's link) and each worker reads one range at a time,
//!   so N workers can reach at most N × 25 MB/s.
//!
//! Plus the largest worker's peak memory while summing the biggest file.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use warren::Dtype;
use warren::exact::BlockSum;
use warren_testkit::FileServer;

use crate::Scale;
use crate::cluster::{Cluster, npy_file};
use crate::report::{Row, Sample, human};

const BLOCK: usize = 1 << 20;
/// The per-response cap of the scaling rows: one host's link.
const LINK_RATE: u64 = 25_000_000;

pub async fn run(
    cluster: &mut Cluster,
    scale: Scale,
    data_dir: &Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let count = if scale.quick {
        10_000_000u64
    } else {
        100_000_000
    };
    let file = npy_file(data_dir, count)?;
    let path = file.to_str().context("data paths are UTF-8")?.to_owned();
    let dir = data_dir
        .to_str()
        .context("data paths are UTF-8")?
        .to_owned();
    let bytes = count as f64 * 8.0;
    let label = format!("{count:.0e} float64 ({:.0} MB)", bytes / 1e6);

    let limit = Sample::of(&repeat(scale.runs, || page_cache_limit(&file))?);
    rows.push(Row::new(
        "limit: page-cache read + exact sum, 1 thread per core",
        &label,
        limit.clone(),
        "MB/s",
    ));

    let server = FileServer::start(data_dir);
    let url = server.url(
        file.file_name()
            .and_then(|n| n.to_str())
            .context("a file name")?,
    );
    let measured = with_two_workers(cluster, scale, count, &path, &dir, &url).await?;
    let plain = Sample::of(&repeat_async(scale.runs, || plain_http_loop(&url, count)).await?);
    push_rows(rows, &label, &limit, measured, plain);
    scaling(cluster, scale, &server, &url, count, &label, rows).await
}

/// What two workers did, in MB/s, and the larger worker's peak RSS.
struct TwoWorkers {
    shared: Sample,
    through_broker: Sample,
    http: Sample,
    worker_peak: u64,
}

/// The same file summed by two workers: by reference from the shared
/// directory, through the broker, and by reference over HTTP.
async fn with_two_workers(
    cluster: &mut Cluster,
    scale: Scale,
    count: u64,
    path: &str,
    dir: &str,
    url: &str,
) -> Result<TwoWorkers> {
    let workers = cluster.workers(2, &["--shared-dir", dir]).await?;
    let shared_args = ["sum", path, "--shared", "--shared-dir", dir, "--json"];
    let shared = producer_rates(cluster, scale, count, &shared_args).await?;
    let through_broker = producer_rates(cluster, scale, count, &["sum", path, "--json"]).await?;
    let http = producer_rates(cluster, scale, count, &["sum", url, "--json"]).await?;
    let worker_peak = workers.iter().map(|w| w.peak_rss()).max().unwrap_or(0);
    cluster.stop(workers).await?;
    Ok(TwoWorkers {
        shared,
        through_broker,
        http,
        worker_peak,
    })
}

/// The rows of the two-worker runs, each against its reference.
fn push_rows(rows: &mut Vec<Row>, label: &str, limit: &Sample, run: TwoWorkers, plain: Sample) {
    let ratio = run.shared.median / limit.median;
    let speedup = run.shared.median / run.through_broker.median;
    rows.push(
        Row::new(
            "sum by reference, shared path, 2 workers",
            label,
            run.shared,
            "MB/s",
        )
        .against(
            format!("limit ({} MB/s)", human(limit.median)),
            limit.median,
        )
        .target(">= 50% of the limit", ratio >= 0.5),
    );
    rows.push(
        Row::new(
            "sum through the broker, 2 workers",
            label,
            run.through_broker,
            "MB/s",
        )
        .note(format!(
            "by reference is {speedup:.1}x this (target >= 5x: {})",
            met(speedup >= 5.0)
        )),
    );
    let http_ratio = run.http.median / plain.median;
    let plain_median = plain.median;
    rows.push(Row::new(
        "plain reqwest loop, the same 64 MiB ranges, 16 at once",
        label,
        plain,
        "MB/s",
    ));
    rows.push(
        Row::new("sum by reference, HTTP, 2 workers", label, run.http, "MB/s")
            .against(
                format!("plain loop ({} MB/s)", human(plain_median)),
                plain_median,
            )
            .target(">= 60% of the plain loop", http_ratio >= 0.6),
    );
    rows.push(
        Row::new(
            "peak RSS, worker (largest of 2), by reference",
            label,
            Sample::of(&[run.worker_peak as f64 / 1e6]),
            "MB",
        )
        .target("< 64 MB", (run.worker_peak as f64) < 64e6),
    );
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}

/// Each row: N workers reading one range at a time through links capped
/// at [`LINK_RATE`].
async fn scaling(
    cluster: &mut Cluster,
    scale: Scale,
    server: &FileServer,
    url: &str,
    count: u64,
    label: &str,
    rows: &mut Vec<Row>,
) -> Result<()> {
    server.cap_rate(LINK_RATE);
    // Enough ranges that 8 workers go through several rounds each.
    let range = if scale.quick { "2MiB" } else { "8MiB" };
    for n in [1usize, 2, 4, 8] {
        let workers = cluster.workers(n, &["--concurrency", "1"]).await?;
        let rates = producer_rates(
            cluster,
            Scale { runs: 1, ..scale },
            count,
            &["sum", url, "--range-size", range, "--json"],
        )
        .await?;
        cluster.stop(workers).await?;
        let cap = n as f64 * LINK_RATE as f64 / 1e6;
        let ratio = rates.median / cap;
        rows.push(
            Row::new(
                &format!(
                    "scaling over {} MB/s links, {n} worker(s)",
                    LINK_RATE / 1_000_000
                ),
                label,
                rates,
                "MB/s",
            )
            .against(format!("{n} x link ({} MB/s)", human(cap)), cap)
            .target(">= 85% of N x link", ratio >= 0.85),
        );
    }
    server.cap_rate(0);
    Ok(())
}

/// MB/s of `runs` producer runs (at least one).
async fn producer_rates(
    cluster: &Cluster,
    scale: Scale,
    count: u64,
    args: &[&str],
) -> Result<Sample> {
    let mut rates = Vec::new();
    for _ in 0..scale.runs.max(1) {
        let run = cluster.producer(args).await?;
        ensure!(
            run.json()?["count"] == count,
            "unexpected count: {}",
            run.stdout
        );
        rates.push(count as f64 * 8.0 / run.wall.as_secs_f64() / 1e6);
    }
    Ok(Sample::of(&rates))
}

fn repeat(runs: usize, mut measure: impl FnMut() -> Result<f64>) -> Result<Vec<f64>> {
    (0..runs).map(|_| measure()).collect()
}

async fn repeat_async<F: std::future::Future<Output = Result<f64>>>(
    runs: usize,
    mut measure: impl FnMut() -> F,
) -> Result<Vec<f64>> {
    let mut values = Vec::new();
    for _ in 0..runs {
        values.push(measure().await?);
    }
    Ok(values)
}

/// MB/s of reading the data part of `file` from the page cache and summing
/// it exactly, one thread per core over disjoint parts.
fn page_cache_limit(file: &Path) -> Result<f64> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let len = std::fs::metadata(file)?.len();
    // The header is 128 bytes; the rest is whole float64 values.
    let data = (len - 128) / 8;
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..cores)
            .map(|i| {
                let first = data * i / cores;
                let end = data * (i + 1) / cores;
                scope.spawn(move || -> Result<u64> {
                    let file = std::fs::File::open(file)?;
                    let mut buf = vec![0u8; BLOCK];
                    let mut sum = BlockSum::new(Dtype::Float64);
                    let mut at = 128 + first * 8;
                    let stop = 128 + end * 8;
                    while at < stop {
                        let n = ((stop - at) as usize).min(BLOCK);
                        file.read_exact_at(&mut buf[..n], at)?;
                        sum.add_le_bytes(&buf[..n])?;
                        at += n as u64;
                    }
                    Ok(sum.count())
                })
            })
            .collect();
        let mut summed = 0;
        for handle in handles {
            summed += handle
                .join()
                .map_err(|_| anyhow::anyhow!("a thread panicked"))??;
        }
        ensure!(summed == data, "summed {summed} of {data}");
        Ok(())
    })?;
    Ok(data as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e6)
}

/// MB/s of fetching the data in 64 MiB ranges, 16 requests at once, and
/// dropping the bytes: what a plain client does at warren's concurrency
/// (2 workers × 8).
async fn plain_http_loop(url: &str, count: u64) -> Result<f64> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let len = 128 + count * 8;
    let range = 64u64 << 20;
    let starts: Vec<u64> = (128..len).step_by(range as usize).collect();
    let started = Instant::now();
    let mut fetched = 0u64;
    for batch in starts.chunks(16) {
        let handles: Vec<_> = batch
            .iter()
            .map(|&start| {
                let client = client.clone();
                let url = url.to_owned();
                tokio::spawn(async move {
                    let end = (start + range).min(len) - 1;
                    let mut response = client
                        .get(&url)
                        .header("Range", format!("bytes={start}-{end}"))
                        .send()
                        .await?
                        .error_for_status()?;
                    let mut got = 0u64;
                    while let Some(chunk) = response.chunk().await? {
                        got += chunk.len() as u64;
                    }
                    anyhow::Ok(got)
                })
            })
            .collect();
        for handle in handles {
            fetched += handle.await??;
        }
    }
    ensure!(fetched == len - 128, "fetched {fetched} of {}", len - 128);
    Ok(fetched as f64 / started.elapsed().as_secs_f64() / 1e6)
}
