//! Downloads: many small files and a few large ones from a local HTTP
//! server (axum, in this process), fetched by two workers in each delivery
//! mode, each against its own reference (issue 13):
//!
//! - into a shared directory, default policy (SHA-256 in the same pass,
//!   a rename, one `syncfs` per job): against a plain concurrent reqwest
//!   loop in one process, the best of several concurrencies;
//! - into a shared directory with `--fsync` (each file synced before it is
//!   reported): against the same loop hashing, syncing and renaming each
//!   file;
//! - through the broker: against the broker's own ceiling for the body
//!   chunks' message size and queue type (a quorum queue, the reply queue
//!   of a job that outlives its producer; see [`super::ceiling`]), measured
//!   in the same run; and with `--job-ttl 0` (a classic reply queue, the
//!   job ends with its producer) against the classic queue's ceiling, for
//!   what a job that outlives its producer costs. Beside the ceiling, each
//!   is also measured against the plain relay loop on the same queue type
//!   ([`super::relay_loop`]: fetch, publish, consume, write and hash, one
//!   sync), which does the work the ceiling leaves out.
//!
//! Runs of all eight alternate, round by round, so that drift on the shared
//! machine hits them alike. Last, a one-file job measures the fixed cost
//! of a download job, whatever its size.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};
use warren_testkit::HttpFixture;

use super::ceiling::{Ceiling, QueueType, RelayCeiling};
use super::relay_loop::time_relay_loop;
use crate::Scale;
use crate::cluster::Cluster;
use crate::cpu::CpuTimes;
use crate::report::{Row, Sample, human};

/// Concurrencies tried for the plain loop; the fastest is its reference.
/// Two workers with the default concurrency of 8 run 16 fetches at once.
const LOOP_CONCURRENCIES: [usize; 4] = [4, 8, 16, 64];

/// What one set of files is measured with.
struct FileSet {
    label: &'static str,
    files: usize,
    size: usize,
    urls: Vec<String>,
    list: String,
}

impl FileSet {
    fn megabytes(&self) -> f64 {
        (self.files * self.size) as f64 / 1e6
    }
}

/// One thing measured per round: a reference loop or a warren run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    PlainLoop,
    DurableLoop,
    RelayLoop,
    RelayLoopNoTtl,
    Broker,
    BrokerNoTtl,
    Shared,
    SharedFsync,
}

impl Variant {
    const ALL: [Variant; 8] = [
        Variant::PlainLoop,
        Variant::DurableLoop,
        Variant::RelayLoop,
        Variant::RelayLoopNoTtl,
        Variant::Broker,
        Variant::BrokerNoTtl,
        Variant::Shared,
        Variant::SharedFsync,
    ];

    fn scenario(self) -> &'static str {
        match self {
            Variant::PlainLoop => "downloads: plain reqwest loop (no broker)",
            Variant::DurableLoop => {
                "downloads: reqwest loop hashing, syncing and renaming each file (no broker)"
            }
            Variant::RelayLoop => {
                "downloads: plain relay loop through a quorum queue (fetch, publish, consume, write, hash; no warren)"
            }
            Variant::RelayLoopNoTtl => {
                "downloads: plain relay loop through a classic queue (fetch, publish, consume, write, hash; no warren)"
            }
            Variant::Broker => "downloads through the broker, 2 workers",
            Variant::BrokerNoTtl => {
                "downloads through the broker, 2 workers, --job-ttl 0 (ends with its producer)"
            }
            Variant::Shared => "downloads into a shared directory, 2 workers (default policy)",
            Variant::SharedFsync => "downloads into a shared directory, 2 workers, --fsync",
        }
    }
}

/// What each variant measured over the rounds.
#[derive(Default)]
struct Measured {
    rates: Vec<f64>,
    cpu: Vec<CpuTimes>,
}

pub async fn run(
    cluster: &mut Cluster,
    scale: Scale,
    ceiling: Option<Ceiling>,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let http = HttpFixture::start();
    let shared = cluster.path("shared");
    std::fs::create_dir_all(&shared)?;
    let shared_arg = utf8(&shared)?;
    let workers = cluster.workers(2, &["--shared-dir", &shared_arg]).await?;
    let worker_pids: Vec<u32> = workers.iter().filter_map(|w| w.pid()).collect();
    // Issue 13's two sets, then ten times as many files of each size: the
    // fixed cost of a job (see `fixed_cost`) weighs little there, so those
    // say what each file costs.
    let sets: [(&'static str, usize, usize); 4] = if scale.quick {
        [
            ("100 × 256 KiB", 100, 256 << 10),
            ("10 × 8 MiB", 10, 8 << 20),
            ("1,000 × 256 KiB", 1_000, 256 << 10),
            ("100 × 8 MiB", 100, 8 << 20),
        ]
    } else {
        [
            ("200 × 256 KiB", 200, 256 << 10),
            ("20 × 8 MiB", 20, 8 << 20),
            ("2,000 × 256 KiB", 2_000, 256 << 10),
            ("200 × 8 MiB", 200, 8 << 20),
        ]
    };
    for (label, files, size) in sets {
        let set = FileSet::new(cluster, &http, label, files, size)?;
        let target_dir = cluster.path("loop");
        // The first pass also fills the server's cache.
        let concurrency = Concurrency {
            plain: fastest_concurrency(&set, &target_dir).await?,
            relay: [
                fastest_relay(cluster, &set, &target_dir, QueueType::Quorum).await?,
                fastest_relay(cluster, &set, &target_dir, QueueType::Classic).await?,
            ],
        };
        let rounds = scale.runs.min(3);
        let measured = measure_rounds(cluster, &set, concurrency, &worker_pids, rounds).await?;
        std::fs::remove_dir_all(&target_dir)?;
        push_rows(rows, &set, concurrency, ceiling, &measured);
    }
    let one_file = FileSet::new(cluster, &http, "1 × 256 KiB", 1, 256 << 10)?;
    rows.extend(fixed_cost(cluster, &one_file, &shared).await?);
    cluster.stop(workers).await
}

impl FileSet {
    /// `files` files of `size` bytes from `http`, listed in a file.
    fn new(
        cluster: &Cluster,
        http: &HttpFixture,
        label: &'static str,
        files: usize,
        size: usize,
    ) -> Result<FileSet> {
        let urls: Vec<String> = (0..files)
            .map(|i| http.url(&format!("/files/bench/{size}/{i}.bin?size={size}")))
            .collect();
        let list = cluster.path(&format!("urls-{files}x{size}.txt"));
        std::fs::write(&list, urls.join("\n"))?;
        Ok(FileSet {
            label,
            files,
            size,
            urls,
            list: utf8(&list)?,
        })
    }
}

/// The reference loops' concurrencies for one set: each the fastest of
/// [`LOOP_CONCURRENCIES`] for that loop.
#[derive(Debug, Clone, Copy)]
struct Concurrency {
    /// The plain loop's (also the durable loop's).
    plain: usize,
    /// The relay loop's, through a quorum queue and through a classic one.
    relay: [usize; 2],
}

/// Every variant, `rounds` times, alternating round by round.
async fn measure_rounds(
    cluster: &Cluster,
    set: &FileSet,
    concurrency: Concurrency,
    worker_pids: &[u32],
    rounds: usize,
) -> Result<Vec<Measured>> {
    let loop_dir = cluster.path("loop");
    let shared = cluster.path("shared");
    let mut measured: Vec<Measured> = Variant::ALL.iter().map(|_| Measured::default()).collect();
    for _ in 0..rounds {
        for (variant, m) in Variant::ALL.iter().zip(&mut measured) {
            let before = CpuTimes::now(worker_pids);
            let rate = match variant {
                Variant::PlainLoop => {
                    time_loop(set, &loop_dir, concurrency.plain, Sync::No).await?
                }
                Variant::DurableLoop => {
                    time_loop(set, &loop_dir, concurrency.plain, Sync::EachFile).await?
                }
                Variant::RelayLoop => {
                    let fetches = concurrency.relay[0];
                    time_relay(cluster, set, &loop_dir, fetches, QueueType::Quorum).await?
                }
                Variant::RelayLoopNoTtl => {
                    let fetches = concurrency.relay[1];
                    time_relay(cluster, set, &loop_dir, fetches, QueueType::Classic).await?
                }
                Variant::Broker => time_warren(cluster, set, &cluster.path("out"), &[]).await?,
                Variant::BrokerNoTtl => {
                    let no_ttl = ["--job-ttl", "0"];
                    time_warren(cluster, set, &cluster.path("out"), &no_ttl).await?
                }
                Variant::Shared => time_warren(cluster, set, &shared, &["--shared"]).await?,
                Variant::SharedFsync => {
                    time_warren(cluster, set, &shared, &["--shared", "--fsync"]).await?
                }
            };
            m.rates.push(rate);
            m.cpu.push(CpuTimes::now(worker_pids).since(&before));
        }
    }
    Ok(measured)
}

/// The fixed cost of a download job, whatever its size: a one-file job
/// into the shared directory from process start to exit (connection,
/// queues, the marker, the final sync and manifest), in milliseconds; five
/// runs by default (a job that outlives its producer) alternating with
/// five with `--job-ttl 0`: the difference is what durability adds to
/// every job (quorum queues declared and deleted, the first record).
async fn fixed_cost(cluster: &Cluster, set: &FileSet, shared: &Path) -> Result<[Row; 2]> {
    let mut millis = [Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (variant, extra) in [&["--shared"][..], &["--shared", "--job-ttl", "0"]]
            .into_iter()
            .enumerate()
        {
            let rate = time_warren(cluster, set, shared, extra).await?;
            millis[variant].push(set.megabytes() / rate * 1e3);
        }
    }
    let [durable, with_producer] = millis;
    Ok([
        Row::new(
            "a one-file download job into a shared directory (the fixed cost per job)",
            set.label,
            Sample::of(&durable),
            "ms",
        ),
        Row::new(
            "a one-file download job into a shared directory, --job-ttl 0",
            set.label,
            Sample::of(&with_producer),
            "ms",
        ),
    ])
}

/// The plain loop's concurrency that fetches this set fastest (one run of
/// each, after one that fills the server's cache).
async fn fastest_concurrency(set: &FileSet, dir: &Path) -> Result<usize> {
    time_loop(set, dir, 16, Sync::No).await?;
    fastest(async |concurrency| time_loop(set, dir, concurrency, Sync::No).await).await
}

/// The relay loop's concurrency that moves this set fastest through a
/// queue of type `queue` (one run of each).
async fn fastest_relay(
    cluster: &Cluster,
    set: &FileSet,
    dir: &Path,
    queue: QueueType,
) -> Result<usize> {
    fastest(async |concurrency| time_relay(cluster, set, dir, concurrency, queue).await).await
}

/// Which of [`LOOP_CONCURRENCIES`] gives the highest rate, one `run` of
/// each.
async fn fastest(mut run: impl AsyncFnMut(usize) -> Result<f64>) -> Result<usize> {
    let mut best = (0.0, LOOP_CONCURRENCIES[0]);
    for concurrency in LOOP_CONCURRENCIES {
        let rate = run(concurrency).await?;
        if rate > best.0 {
            best = (rate, concurrency);
        }
    }
    Ok(best.1)
}

/// One run of the relay loop into an empty directory: MB/s.
async fn time_relay(
    cluster: &Cluster,
    set: &FileSet,
    dir: &Path,
    concurrency: usize,
    queue: QueueType,
) -> Result<f64> {
    empty(dir)?;
    time_relay_loop(cluster, &set.urls, set.size, dir, concurrency, queue).await
}

/// One run of a reference loop into an empty directory (creating files
/// costs more than overwriting them, and warren's runs start empty too):
/// MB/s.
async fn time_loop(set: &FileSet, dir: &Path, concurrency: usize, sync: Sync) -> Result<f64> {
    empty(dir)?;
    let started = Instant::now();
    fetch_all(&set.urls, dir, concurrency, sync).await?;
    Ok(set.megabytes() / started.elapsed().as_secs_f64())
}

/// One `producer download` of the set into an empty `out`: MB/s.
async fn time_warren(cluster: &Cluster, set: &FileSet, out: &Path, extra: &[&str]) -> Result<f64> {
    empty(out)?;
    let out_arg = utf8(out)?;
    let mut args = vec![
        "download",
        set.list.as_str(),
        "--out-dir",
        out_arg.as_str(),
        "--json",
        "--quiet",
    ];
    args.extend(extra);
    let run = cluster.producer(&args).await?;
    ensure!(
        run.json()?["succeeded"] == set.files,
        "not every file arrived: {}",
        run.stdout
    );
    empty(out)?;
    Ok(set.megabytes() / run.wall.as_secs_f64())
}

/// The rows of one set: each variant's MB/s against its reference (with
/// issue 13's targets), files/s, and CPU per MB.
fn push_rows(
    rows: &mut Vec<Row>,
    set: &FileSet,
    concurrency: Concurrency,
    ceiling: Option<Ceiling>,
    measured: &[Measured],
) {
    // Variant::ALL's order: the plain loop, the durable one, the two
    // relay loops.
    let median = |i: usize| Sample::of(&measured[i].rates).median;
    let (plain, durable) = (median(0), median(1));
    let relay = [median(2), median(3)];
    for (&variant, m) in Variant::ALL.iter().zip(measured) {
        let name = variant.scenario();
        let rates = Sample::of(&m.rates);
        let row = Row::new(name, set.label, rates.clone(), "MB/s");
        let fetches = match variant {
            Variant::PlainLoop => Some(concurrency.plain),
            Variant::RelayLoop => Some(concurrency.relay[0]),
            Variant::RelayLoopNoTtl => Some(concurrency.relay[1]),
            _ => None,
        };
        rows.push(
            match (fetches, variant.reference(set, plain, durable, ceiling)) {
                (Some(fetches), _) => row.note(format!(
                    "{fetches} fetches at once, the fastest of {LOOP_CONCURRENCIES:?}"
                )),
                (None, Some(reference)) => {
                    let row = row.against(reference.name, reference.value);
                    let met = row.ratio.unwrap_or(0.0) >= reference.target;
                    let target = format!(">= {:.0}% of {}", reference.target * 100.0, reference.of);
                    row.target(&target, met)
                }
                (None, None) => row,
            },
        );
        rows.extend(beside_rows(variant, set, &rates, plain, relay, ceiling));
        if !matches!(variant, Variant::PlainLoop | Variant::DurableLoop) {
            let files: Vec<f64> = m
                .rates
                .iter()
                .map(|r| r * set.files as f64 / set.megabytes())
                .collect();
            rows.push(Row::new(name, set.label, Sample::of(&files), "files/s"));
        }
        rows.push(cpu_row(name, set.label, &m.cpu, set.megabytes()));
    }
}

/// The broker-mode rows beside their targets' reference: warren against
/// the plain loop, for scale, and against the relay loop on its queue type
/// (the reference this bench proposes for broker mode); each relay loop
/// against its ceiling, for what fetching and writing cost.
fn beside_rows(
    variant: Variant,
    set: &FileSet,
    rates: &Sample,
    plain: f64,
    relay: [f64; 2],
    ceiling: Option<Ceiling>,
) -> Vec<Row> {
    let name = variant.scenario();
    let row = || Row::new(name, set.label, rates.clone(), "MB/s");
    let (queue, relay) = match variant {
        Variant::Broker | Variant::RelayLoop => ("quorum", relay[0]),
        Variant::BrokerNoTtl | Variant::RelayLoopNoTtl => ("classic", relay[1]),
        _ => return Vec::new(),
    };
    if matches!(variant, Variant::RelayLoop | Variant::RelayLoopNoTtl) {
        let Some(relay_ceiling) = ceiling.and_then(|c| c.relay) else {
            return Vec::new();
        };
        let on_queue = match variant {
            Variant::RelayLoop => relay_ceiling.quorum,
            _ => relay_ceiling.classic,
        };
        let (bytes, message) = on_queue.for_file_size(set.size);
        let value = bytes / 1e6;
        let reference = format!(
            "the broker ceiling, {queue}, {message} ({} MB/s)",
            human(value)
        );
        return vec![row().against(reference, value)];
    }
    let against_relay = row().against(
        format!("the relay loop, {queue} ({} MB/s)", human(relay)),
        relay,
    );
    let met = against_relay.ratio.unwrap_or(0.0) >= 0.7;
    vec![
        row().against(format!("the plain loop ({} MB/s)", human(plain)), plain),
        against_relay.target(">= 70% of the relay loop (proposed)", met),
    ]
}

/// What a warren variant is measured against, and its target (issue 13).
struct Reference {
    name: String,
    value: f64,
    target: f64,
    /// The reference in the target's words.
    of: &'static str,
}

impl Variant {
    /// This variant's reference: the plain loop (MB/s `plain`), the loop
    /// that syncs each file (`durable`), or the broker's ceiling for its
    /// chunks' size and queue type; `None` for the loops themselves.
    fn reference(
        self,
        set: &FileSet,
        plain: f64,
        durable: f64,
        ceiling: Option<Ceiling>,
    ) -> Option<Reference> {
        let loop_reference = |name: String, value: f64| Reference {
            name,
            value,
            target: 0.8,
            of: "the loop",
        };
        let broker_reference = |queue: &str, relay: RelayCeiling| {
            let (bytes, message) = relay.for_file_size(set.size);
            let value = bytes / 1e6;
            Reference {
                name: format!(
                    "the broker ceiling, {queue}, {message} ({} MB/s)",
                    human(value)
                ),
                value,
                target: 0.7,
                of: "ceiling",
            }
        };
        let relay = ceiling.and_then(|c| c.relay);
        match self {
            Variant::PlainLoop
            | Variant::DurableLoop
            | Variant::RelayLoop
            | Variant::RelayLoopNoTtl => None,
            Variant::Shared => Some(loop_reference(
                format!("the plain loop ({} MB/s)", human(plain)),
                plain,
            )),
            Variant::SharedFsync => Some(loop_reference(
                format!(
                    "the loop hashing, syncing, renaming ({} MB/s)",
                    human(durable)
                ),
                durable,
            )),
            Variant::Broker => relay.map(|r| broker_reference("quorum", r.quorum)),
            Variant::BrokerNoTtl => relay.map(|r| broker_reference("classic", r.classic)),
        }
    }
}

fn utf8(path: &Path) -> Result<String> {
    Ok(path.to_str().context("scratch paths are UTF-8")?.to_owned())
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
/// warren's `--fsync` guarantees for it: hash it, sync it under a
/// temporary name, then rename it.
#[derive(Debug, Clone, Copy)]
enum Sync {
    No,
    EachFile,
}

/// Fetches every URL, `concurrency` at a time, into files: the whole body
/// in memory, then one blocking write (and, with [`Sync::EachFile`], a
/// hash, a sync and a rename) on tokio's blocking pool.
async fn fetch_all(urls: &[String], dir: &Path, concurrency: usize, sync: Sync) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
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
            tokio::task::spawn_blocking(move || store(&path, &body, sync)).await??;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Writes one fetched file as the loop's `sync` says.
fn store(path: &Path, body: &[u8], sync: Sync) -> Result<()> {
    match sync {
        Sync::No => std::fs::write(path, body)?,
        Sync::EachFile => {
            use std::io::Write;
            let temp = path.with_extension("tmp");
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(body)?;
            std::hint::black_box(Sha256::digest(body));
            file.sync_all()?;
            std::fs::rename(&temp, path)?;
        }
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
