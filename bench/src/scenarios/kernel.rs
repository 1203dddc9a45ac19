//! The exact-summation kernel on one core: the worker's per-chunk
//! accumulation and the producer's combine step, beside a naive `f64` loop
//! and Python's `math.fsum` on the same data.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use warren::exact::{Total, sum_chunk};
use warren::protocol::{Outcome, TaskResult};
use warren::{Dtype, JobId};

use crate::Scale;
use crate::cluster::Cluster;
use crate::report::{Row, Sample};

/// Bytes per chunk, as the producer's default.
const CHUNK: usize = 1 << 20;

pub fn run(cluster: &Cluster, scale: Scale, rows: &mut Vec<Row>) -> Result<()> {
    let count = 10_000_000usize;
    let mut rng = fastrand::Rng::with_seed(7);
    let values: Vec<f64> = (0..count).map(|_| rng.f64()).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let gigabytes = bytes.len() as f64 / 1e9;

    let mut exact = Vec::new();
    let mut naive = Vec::new();
    let mut partials = Vec::new();
    for _ in 0..scale.runs {
        let started = Instant::now();
        partials = bytes
            .chunks(CHUNK)
            .map(|chunk| sum_chunk(Dtype::Float64, chunk))
            .collect::<warren::Result<Vec<_>>>()?;
        exact.push(gigabytes / started.elapsed().as_secs_f64());
        let started = Instant::now();
        black_box(black_box(&values).iter().sum::<f64>());
        naive.push(gigabytes / started.elapsed().as_secs_f64());
    }
    rows.push(
        Row::new(
            "exact accumulation (worker), 1 core",
            "1e7 float64 in 1 MiB chunks",
            Sample::of(&exact),
            "GB/s",
        )
        .target(">= 2 GB/s", Sample::of(&exact).median >= 2.0),
    );
    rows.push(Row::new(
        "naive f64 loop, 1 core",
        "1e7 float64",
        Sample::of(&naive),
        "GB/s",
    ));

    // The combine step as the producer runs it: decode each result message
    // and add its partial to the total.
    let job = JobId::random();
    let messages: Vec<Vec<u8>> = partials
        .iter()
        .enumerate()
        .map(|(i, partial)| {
            TaskResult {
                version: warren::PROTOCOL_VERSION,
                job_id: job.clone(),
                task: Some(i as u64),
                worker: "bench".into(),
                elapsed_s: 0.001,
                outcome: Outcome::Sum(vec![partial.clone()]),
            }
            .to_json()
        })
        .collect();
    let mut combine = Vec::new();
    for _ in 0..scale.runs {
        let started = Instant::now();
        let mut total = Total::new(Dtype::Float64);
        for message in &messages {
            if let Outcome::Sum(partials) = TaskResult::decode(message)?.outcome {
                for partial in &partials {
                    total.add(partial)?;
                }
            }
        }
        black_box(total.answer());
        let seconds = started.elapsed().as_secs_f64();
        // As data rate: each result stands for one 1 MiB chunk.
        combine.push(messages.len() as f64 * CHUNK as f64 / 1e9 / seconds);
    }
    rows.push(Row::new(
        "combine step (producer), 1 core",
        &format!("{} results of 1 MiB chunks", messages.len()),
        Sample::of(&combine),
        "GB/s of data",
    ));

    // math.fsum on the same values, timed inside Python.
    let path = cluster.path("kernel.f64");
    std::fs::write(&path, &bytes)?;
    let script = format!(
        "import math, time, numpy as np\na = np.fromfile({:?}, dtype='<f8')\nbest = []\nfor _ in range({}):\n    t = time.perf_counter(); math.fsum(a); best.append(time.perf_counter() - t)\nprint(' '.join(str(a.nbytes / 1e9 / s) for s in best))",
        path.display().to_string(),
        scale.runs.min(3)
    );
    match std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
    {
        Ok(output) if output.status.success() => {
            let rates: Vec<f64> = String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if !rates.is_empty() {
                rows.push(Row::new(
                    "python3 math.fsum, 1 core",
                    "1e7 float64",
                    Sample::of(&rates),
                    "GB/s",
                ));
            }
        }
        _ => eprintln!("python3 with numpy is not available: no math.fsum reference"),
    }
    std::fs::remove_file(path)?;
    Ok(())
}
