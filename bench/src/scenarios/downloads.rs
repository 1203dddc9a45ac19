//! Downloads: many small files and a few large ones from a local HTTP
//! server (axum, in this process), fetched by two workers in both delivery
//! modes, beside the same files fetched by a plain concurrent reqwest loop
//! in one process (the no-broker ceiling). A second loop also does in one
//! process what warren guarantees for every file (its SHA-256, a temporary
//! file synced to disk, then renamed under its final name), to show what
//! those guarantees cost without any broker.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use warren_testkit::HttpFixture;

use crate::Scale;
use crate::cluster::Cluster;
use crate::cpu::CpuTimes;
use crate::report::{Row, Sample, human};

/// Concurrent fetches of the reqwest loop: what two workers with the
/// default concurrency of 8 run at once.
const CEILING_CONCURRENCY: usize = 16;

pub async fn run(cluster: &mut Cluster, scale: Scale, rows: &mut Vec<Row>) -> Result<()> {
    let http = HttpFixture::start();
    let shared = cluster.path("shared");
    std::fs::create_dir_all(&shared)?;
    let shared_arg = shared
        .to_str()
        .context("scratch paths are UTF-8")?
        .to_owned();
    let workers = cluster.workers(2, &["--shared-dir", &shared_arg]).await?;
    let worker_pids: Vec<u32> = workers.iter().filter_map(|w| w.pid()).collect();
    let sets: [(&str, usize, usize); 2] = if scale.quick {
        [
            ("100 × 256 KiB", 100, 256 << 10),
            ("10 × 8 MiB", 10, 8 << 20),
        ]
    } else {
        [
            ("200 × 256 KiB", 200, 256 << 10),
            ("20 × 8 MiB", 20, 8 << 20),
        ]
    };
    for (label, files, size) in sets {
        let urls: Vec<String> = (0..files)
            .map(|i| http.url(&format!("/files/bench/{size}/{i}.bin?size={size}")))
            .collect();
        let list = cluster.path(&format!("urls-{size}.txt"));
        std::fs::write(&list, urls.join("\n"))?;
        let list = list.to_str().context("scratch paths are UTF-8")?.to_owned();
        let megabytes = (files * size) as f64 / 1e6;

        // The references; the first run also fills the server's cache. Like
        // warren's runs, each starts with an empty directory: creating files
        // costs more than overwriting them.
        let target_dir = cluster.path("ceiling");
        fetch_all(&urls, &target_dir, Sync::No).await?;
        let mut references = Vec::new();
        for (scenario, sync) in [
            ("downloads: plain reqwest loop (no broker)", Sync::No),
            (
                "downloads: reqwest loop hashing, syncing and renaming each file (no broker)",
                Sync::EachFile,
            ),
        ] {
            let mut rates = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..scale.runs.min(3) {
                empty(&target_dir)?;
                let before = CpuTimes::now(&worker_pids);
                let started = Instant::now();
                fetch_all(&urls, &target_dir, sync).await?;
                rates.push(megabytes / started.elapsed().as_secs_f64());
                cpu.push(CpuTimes::now(&worker_pids).since(&before));
            }
            let sample = Sample::of(&rates);
            references.push(sample.median);
            rows.push(Row::new(scenario, label, sample, "MB/s"));
            rows.push(cpu_row(scenario, label, &cpu, megabytes));
        }
        std::fs::remove_dir_all(&target_dir)?;
        let reference = references[0];
        let durable = references[1];

        for (mode, out, extra, target) in [
            (
                "downloads through the broker, 2 workers",
                cluster.path("out"),
                None,
                0.6,
            ),
            (
                "downloads into a shared directory, 2 workers",
                shared.clone(),
                Some("--shared"),
                0.8,
            ),
        ] {
            let out_arg = out.to_str().context("scratch paths are UTF-8")?.to_owned();
            let mut rates = Vec::new();
            let mut file_rates = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..scale.runs.min(3) {
                empty(&out)?;
                let before = CpuTimes::now(&worker_pids);
                let mut args = vec![
                    "download",
                    list.as_str(),
                    "--out-dir",
                    out_arg.as_str(),
                    "--json",
                    "--quiet",
                ];
                args.extend(extra);
                let run = cluster.producer(&args).await?;
                ensure!(
                    run.json()?["succeeded"] == files,
                    "not every file arrived: {}",
                    run.stdout
                );
                rates.push(megabytes / run.wall.as_secs_f64());
                file_rates.push(files as f64 / run.wall.as_secs_f64());
                cpu.push(CpuTimes::now(&worker_pids).since(&before));
            }
            empty(&out)?;
            let row = Row::new(mode, label, Sample::of(&rates), "MB/s").against(
                format!("reqwest loop ({} MB/s)", human(reference)),
                reference,
            );
            let met = row.ratio.unwrap_or(0.0) >= target;
            rows.push(row.target(
                &format!(">= {:.0}% of the reqwest loop", target * 100.0),
                met,
            ));
            rows.push(Row::new(mode, label, Sample::of(&rates), "MB/s").against(
                format!(
                    "the loop with warren's guarantees ({} MB/s)",
                    human(durable)
                ),
                durable,
            ));
            rows.push(Row::new(mode, label, Sample::of(&file_rates), "files/s"));
            rows.push(cpu_row(mode, label, &cpu, megabytes));
        }
    }
    cluster.stop(workers).await
}

/// CPU milliseconds per megabyte, machine-wide, over `runs`, with where
/// they went (the mean of the runs).
fn cpu_row(scenario: &str, size: &str, runs: &[CpuTimes], megabytes: f64) -> Row {
    let per_run: Vec<f64> = runs.iter().map(|r| r.machine * 1e3 / megabytes).collect();
    let mut total = CpuTimes::default();
    for run in runs {
        total.add(run);
    }
    let mean = total.per(runs.len() as f64 * megabytes);
    Row::new(scenario, size, Sample::of(&per_run), "CPU ms/MB").note(mean.to_string())
}

/// Whether the reference loop only writes each file, or also does what
/// warren guarantees for it: hash it, sync it under a temporary name, then
/// rename it.
#[derive(Debug, Clone, Copy)]
enum Sync {
    No,
    EachFile,
}

/// Fetches every URL, `CEILING_CONCURRENCY` at a time, into files.
async fn fetch_all(urls: &[String], dir: &Path, sync: Sync) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(CEILING_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, url) in urls.iter().enumerate() {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let client = client.clone();
        let url = url.clone();
        let path = dir.join(format!("{i}.bin"));
        tasks.spawn(async move {
            let _permit = permit;
            let body = client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            match sync {
                Sync::No => {
                    let mut file = tokio::fs::File::create(&path).await?;
                    file.write_all(&body).await?;
                    file.flush().await?;
                }
                Sync::EachFile => {
                    let temp = path.with_extension("tmp");
                    let mut file = tokio::fs::File::create(&temp).await?;
                    file.write_all(&body).await?;
                    file.sync_all().await?;
                    std::hint::black_box(Sha256::digest(&body));
                    tokio::fs::rename(&temp, &path).await?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Removes everything inside `dir`, keeping `dir`.
fn empty(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(path)?;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}
