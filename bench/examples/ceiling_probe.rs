//! Settings of the broker-ceiling loop side by side, in alternation: which
//! one the ceiling should use. `cargo run --release -p warren-bench
//! --example ceiling_probe -- [ROUNDS] [quorum64|classic256k|classic1m|quorum1m]`
//! prints each setting's rate per round and the median.

use anyhow::Result;
use warren_bench::cluster::Cluster;
use warren_bench::report::Sample;
use warren_bench::scenarios::ceiling::{Acking, Message, QueueType, Shape, measure};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let which = args.next().unwrap_or_else(|| "quorum64".to_owned());
    let shapes = shapes(&which)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let cluster = Cluster::new(warren::DEFAULT_AMQP_URL).await?;
        let mut rates = vec![Vec::new(); shapes.len()];
        for round in 0..rounds {
            // Each round in another order, so that no setting always
            // follows the same one.
            for offset in 0..shapes.len() {
                let i = (round + offset) % shapes.len();
                let (name, shape) = &shapes[i];
                let rate = measure(&cluster, shape).await?;
                println!(
                    "round {round} {name}: {rate:.0} msg/s, {:.1} MB/s",
                    rate * shape.body as f64 / 1e6
                );
                rates[i].push(rate);
            }
        }
        for ((name, shape), rates) in shapes.iter().zip(&rates) {
            let s = Sample::of(rates);
            println!(
                "{name}: median {:.0} msg/s ({:.0}-{:.0}), {:.1} MB/s",
                s.median,
                s.min,
                s.max,
                s.median * shape.body as f64 / 1e6
            );
        }
        cluster.clean_up().await;
        anyhow::Ok(())
    })
}

fn shapes(which: &str) -> Result<Vec<(String, Shape)>> {
    // As the ceiling rows measure them: sum tasks on a quorum queue,
    // download chunks on a classic one.
    let (queue, message, body, count) = match which {
        "quorum64" => (QueueType::Quorum, Message::SumTask, 64, 40_000),
        "quorum1m" => (QueueType::Quorum, Message::SumTask, 1 << 20, 800),
        "classic256k" => (QueueType::Classic, Message::BodyChunk, 256 << 10, 2_000),
        "classic1m" => (QueueType::Classic, Message::BodyChunk, 1 << 20, 800),
        other => anyhow::bail!("unknown shape {other}"),
    };
    let best = Shape::best(queue, message, body, count);
    let mut shapes = vec![("best".to_owned(), best)];
    for (window, prefetch, acking) in [
        (2_000, 1_000, Acking::EachDelivery),
        (2_000, 1_000, Acking::Multiple(250)),
        (2_000, 1_000, Acking::Multiple(50)),
        (500, 1_000, Acking::Multiple(250)),
        (8_000, 2_000, Acking::Multiple(500)),
        (64, 64, Acking::Multiple(16)),
        (16, 16, Acking::Multiple(4)),
        (256, 100, Acking::Multiple(25)),
    ] {
        let window = window.min(count as usize);
        shapes.push((
            format!("window {window}, prefetch {prefetch}, {acking:?}"),
            Shape {
                window,
                prefetch,
                acking,
                ..best
            },
        ));
    }
    Ok(shapes)
}
