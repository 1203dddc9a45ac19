//! The system under test: the real `producer` and `worker` binaries (from
//! the same target directory as this benchmark) on the local broker, under
//! a queue prefix of the benchmark's own, deleted at the end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lapin::Connection;
use lapin::options::ExchangeDeleteOptions;
use tokio::process::{Child, Command};
use warren::broker::{self, QueueProbe};
use warren::{BrokerConfig, Topology};

/// Where the binaries are: next to this executable (`target/release/`).
fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("the benchmark has a directory")?
        .join(name);
    ensure!(
        path.is_file(),
        "{} is missing: build everything first with `cargo build --release --workspace`",
        path.display()
    );
    Ok(path)
}

/// Peak resident memory of a running process, in bytes (`VmHWM`).
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A finished producer run.
#[derive(Debug)]
pub struct ProducerRun {
    pub wall: Duration,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Peak RSS in bytes, as last sampled before it exited.
    pub peak_rss: u64,
}

impl ProducerRun {
    /// stdout parsed as `--json` output.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(self.stdout.trim())
            .with_context(|| format!("not JSON: {}", self.stdout))
    }
}

/// A worker process.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Its peak RSS so far, in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.child.id().and_then(peak_rss).unwrap_or(0)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// The broker, the binaries and the benchmark's queue prefix.
pub struct Cluster {
    pub url: String,
    pub prefix: String,
    pub topology: Topology,
    connection: Connection,
    probe: QueueProbe,
    producer: PathBuf,
    worker: PathBuf,
    pub scratch: tempfile::TempDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to the broker and finds the binaries.
    pub async fn new(url: &str) -> Result<Cluster> {
        let prefix = format!("bench-{}-{}", std::process::id(), fastrand::u32(..));
        let config = BrokerConfig::local(url, &prefix)?;
        let connection = broker::connect(&config, "warren-bench")
            .await
            .map_err(|e| anyhow::anyhow!("{}", warren::display_chain(&e)))
            .context("the benchmark needs a RabbitMQ broker (rabbitmq-server -detached)")?;
        Ok(Cluster {
            url: url.to_owned(),
            prefix,
            topology: Topology::new(config.prefix),
            connection,
            probe: QueueProbe::new(),
            producer: binary("producer")?,
            worker: binary("worker")?,
            scratch: tempfile::Builder::new().prefix("warren-bench-").tempdir()?,
        })
    }

    /// The broker connection, for raw measurements.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Starts `n` workers with `args` and waits until all consume.
    pub async fn workers(&mut self, n: usize, args: &[&str]) -> Result<Vec<WorkerProcess>> {
        let mut workers = Vec::new();
        for i in 0..n {
            let child = Command::new(&self.worker)
                .args([
                    "--queue-prefix",
                    &self.prefix,
                    "--name",
                    &format!("bench-w{i}"),
                ])
                .args(args)
                .env("AMQP_URL", &self.url)
                .env("RUST_LOG", "warn")
                .env("NO_PROXY", "127.0.0.1,localhost")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker")?;
            workers.push(WorkerProcess { child });
        }
        self.wait_for_consumers(n as u32).await?;
        Ok(workers)
    }

    /// Stops workers and waits until the broker sees them gone.
    pub async fn stop(&mut self, workers: Vec<WorkerProcess>) -> Result<()> {
        for mut worker in workers {
            let _ = worker.child.start_kill();
            let _ = worker.child.wait().await;
        }
        self.wait_for_consumers(0).await
    }

    async fn wait_for_consumers(&mut self, n: u32) -> Result<()> {
        let queue = self.topology.task_queue();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let consumers = self
                .probe
                .inspect(&self.connection, &queue)
                .await?
                .map_or(0, |stats| stats.consumers);
            if consumers == n {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{n} workers did not come up within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ready messages in the task queue.
    pub async fn queued(&mut self) -> Result<u32> {
        let queue = self.topology.task_queue();
        Ok(self
            .probe
            .inspect(&self.connection, &queue)
            .await?
            .map_or(0, |stats| stats.ready))
    }

    /// Starts a producer without waiting for it.
    pub fn spawn_producer(&self, args: &[&str]) -> Result<Child> {
        Command::new(&self.producer)
            .args(["--queue-prefix", &self.prefix])
            .args(args)
            .env("AMQP_URL", &self.url)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the producer")
    }

    /// Runs a producer to its end, sampling its memory; a producer that
    /// fails is an error.
    pub async fn producer(&self, args: &[&str]) -> Result<ProducerRun> {
        let run = self.producer_outcome(args).await?;
        if !run.status.success() {
            bail!(
                "producer {} failed ({}): {}",
                args.join(" "),
                run.status,
                run.stderr
            );
        }
        Ok(run)
    }

    /// Runs a producer to its end, sampling its memory, whatever its exit
    /// status (a job whose downloads all fail exits with 1).
    pub async fn producer_outcome(&self, args: &[&str]) -> Result<ProducerRun> {
        let started = Instant::now();
        let child = self.spawn_producer(args)?;
        let pid = child.id();
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            while let Some(rss) = pid.and_then(peak_rss) {
                peak = peak.max(rss);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        let output = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
            .await
            .context("the producer ran for over 10 minutes")??;
        let wall = started.elapsed();
        let peak_rss = sampler.await.unwrap_or(0);
        Ok(ProducerRun {
            wall,
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            peak_rss,
        })
    }

    /// A path in the benchmark's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Deletes the benchmark's queues and exchange.
    pub async fn clean_up(&self) {
        let Ok(channel) = broker::open_channel(&self.connection).await else {
            return;
        };
        for queue in [
            self.topology.task_queue(),
            self.topology.dead_letter_queue(),
        ] {
            let _ = broker::delete_queue(&channel, &queue).await;
        }
        let _ = channel
            .exchange_delete(
                self.topology.dead_letter_exchange().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Writes `count` uniform [0, 1) float64 values as a `.npy` file, unless
/// a file of that name and size is already there (kept between runs).
pub fn npy_file(dir: &Path, count: u64) -> Result<PathBuf> {
    use std::io::Write;
    let path = dir.join(format!("uniform-{count}.npy"));
    let header = {
        let mut text = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({count},), }}");
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        text
    };
    let total = 10 + header.len() as u64 + count * 8;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == total) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(&path)?);
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    let mut rng = fastrand::Rng::with_seed(count);
    let mut block = Vec::with_capacity(1 << 20);
    let mut left = count;
    while left > 0 {
        let n = left.min(1 << 17);
        block.clear();
        for _ in 0..n {
            block.extend_from_slice(&rng.f64().to_le_bytes());
        }
        out.write_all(&block)?;
        left -= n;
    }
    out.flush()?;
    Ok(path)
}
