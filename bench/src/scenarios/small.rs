//! Small tasks: 20,000 one-chunk sum tasks (8 floats each) through the
//! producer, two workers and back; and the producer's publish rate alone.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use super::ceiling::Ceiling;
use crate::Scale;
use crate::cluster::Cluster;
use crate::report::{Row, Sample, human};

const TASKS: u64 = 20_000;

pub async fn run(
    cluster: &mut Cluster,
    scale: Scale,
    ceiling: Option<Ceiling>,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let values = (TASKS * 8).to_string();
    let workers = cluster.workers(2, &[]).await?;
    // By default small tasks travel in batches; one task per message shows
    // what each message costs, against the ceiling's two messages per task.
    for (label, extra) in [
        ("small tasks end to end, 2 workers (default: batched)", None),
        (
            "small tasks end to end, 2 workers, one task per message",
            Some("1"),
        ),
    ] {
        let mut rates = Vec::new();
        for _ in 0..scale.runs {
            let mut args = vec![
                "sum",
                "--random",
                &values,
                "--seed",
                "1",
                "--chunk-size",
                "8",
                "--json",
            ];
            if let Some(n) = extra {
                args.extend(["--tasks-per-message", n]);
            }
            let run = cluster.producer(&args).await?;
            ensure!(
                run.json()?["chunks"] == TASKS,
                "unexpected chunk count: {}",
                run.stdout
            );
            rates.push(TASKS as f64 / run.wall.as_secs_f64());
        }
        let sample = Sample::of(&rates);
        let met = sample.median >= 10_000.0;
        let mut row = Row::new(label, "20,000 × 8 float64", sample, "tasks/s");
        match (extra, ceiling) {
            (None, _) => row = row.target(">= 10,000 tasks/s", met),
            (Some(_), Some(ceiling)) => {
                let reference = ceiling.small_msgs / 2.0;
                row = row.against(
                    format!("ceiling ÷ 2 messages ({})", human(reference)),
                    reference,
                );
                let ratio = row.ratio.unwrap_or(0.0);
                row = row.target(">= 50% of ceiling ÷ 2", ratio >= 0.5);
            }
            (Some(_), None) => {}
        }
        rows.push(row);
    }
    cluster.stop(workers).await?;

    // Publishing alone: no worker, a window large enough for every task.
    let mut rates = Vec::new();
    for _ in 0..scale.runs.min(3) {
        let window = TASKS.to_string();
        let mut producer = cluster.spawn_producer(&[
            "sum",
            "--random",
            &values,
            "--seed",
            "1",
            "--chunk-size",
            "8",
            "--max-in-flight",
            &window,
            "--tasks-per-message",
            "1",
            "--quiet",
        ])?;
        // Timed from the first message on the queue to the last, so that
        // start-up is not counted. Messages may carry several tasks: the
        // queue is full when it stops growing.
        let spawned = Instant::now();
        let mut first: Option<(Instant, u32)> = None;
        let mut last = (Instant::now(), 0u32);
        loop {
            let queued = cluster.queued().await?;
            if queued > last.1 {
                last = (Instant::now(), queued);
                first.get_or_insert(last);
            }
            if first.is_some() && last.0.elapsed() > Duration::from_millis(300) {
                break;
            }
            ensure!(
                spawned.elapsed() < Duration::from_secs(120),
                "publishing took over 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (start, already) = first.expect("the loop saw the queue fill");
        let (end, total) = last;
        let seconds = (end - start).as_secs_f64();
        // The tasks published after the first message was seen.
        let tasks = TASKS as f64 * f64::from(total - already) / f64::from(total);
        if seconds > 0.0 && tasks > 0.0 {
            rates.push(tasks / seconds);
        }
        let _ = producer.start_kill();
        let _ = producer.wait().await;
        // Its reply queue is gone; the next workers drop the tasks, but
        // purging now keeps the next scenario clean.
        let channel = warren::broker::open_channel(cluster.connection()).await?;
        let _ = channel
            .queue_purge(
                cluster.topology.task_queue().as_str().into(),
                Default::default(),
            )
            .await;
    }
    ensure!(!rates.is_empty(), "the publish rate could not be measured");
    let mut row = Row::new(
        "producer publish rate alone",
        "20,000 × 8 float64",
        Sample::of(&rates),
        "tasks/s",
    );
    if let Some(ceiling) = ceiling {
        row = row.against(
            format!("ceiling ({} msg/s)", human(ceiling.small_msgs)),
            ceiling.small_msgs,
        );
    }
    rows.push(row);
    Ok(())
}
