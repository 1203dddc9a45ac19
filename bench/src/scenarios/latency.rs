//! One-chunk latency: from starting `producer sum --random 8` to its
//! answer, with two warm workers.

use anyhow::Result;

use crate::Scale;
use crate::cluster::Cluster;
use crate::report::{Row, Sample};

pub async fn run(cluster: &mut Cluster, scale: Scale, rows: &mut Vec<Row>) -> Result<()> {
    let runs = if scale.quick { 30 } else { 100 };
    let workers = cluster.workers(2, &[]).await?;
    // Warm up: connections, page cache, the worker's HTTP-free paths.
    cluster
        .producer(&["sum", "--random", "8", "--seed", "1"])
        .await?;
    let mut millis = Vec::new();
    for _ in 0..runs {
        let run = cluster
            .producer(&["sum", "--random", "8", "--seed", "1"])
            .await?;
        millis.push(run.wall.as_secs_f64() * 1e3);
    }
    cluster.stop(workers).await?;
    let p99 = Sample::quantile(&millis, 0.99);
    let sample = Sample::of(&millis);
    let met = sample.median < 30.0;
    rows.push(
        Row::new(
            "one-chunk latency, warm workers",
            &format!("median of {runs}"),
            sample,
            "ms",
        )
        .target("median < 30 ms", met),
    );
    rows.push(Row::new(
        "one-chunk latency, warm workers",
        &format!("p99 of {runs}"),
        Sample::of(&[p99]),
        "ms",
    ));
    Ok(())
}
