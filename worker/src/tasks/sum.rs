//! Sum tasks: one exact partial sum per task of the message. Large bodies
//! are summed on a blocking thread holding one CPU permit, so the async
//! runtime keeps acking and publishing meanwhile; small ones inline, where
//! the hop to another thread would cost more than the sum.

use warren::exact::{self, PartialSum};
use warren::protocol::{FailureKind, Outcome, SumTask, TaskFailure};

use super::TaskContext;

/// Bodies up to this size are summed on the runtime thread (a few µs).
const INLINE_BYTES: usize = 64 << 10;

pub(crate) async fn run(context: &TaskContext, task: &SumTask, body: Vec<u8>) -> Outcome {
    let task = task.clone();
    let summed = if body.len() <= INLINE_BYTES {
        sum_tasks(&task, &body)
    } else {
        let Ok(permit) = context.cpu.clone().acquire_owned().await else {
            return failure("the CPU pool is closed".into());
        };
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            sum_tasks(&task, &body)
        })
        .await;
        match joined {
            Ok(summed) => summed,
            Err(join_error) => return failure(format!("the summing thread failed: {join_error}")),
        }
    };
    match summed {
        Ok(partials) => Outcome::Sum(partials),
        Err(e) => failure(warren::display_chain(&e)),
    }
}

/// Splits the body into its tasks and sums each.
fn sum_tasks(task: &SumTask, body: &[u8]) -> warren::Result<Vec<PartialSum>> {
    let itemsize = task.dtype.itemsize();
    let mut offset = 0;
    task.task_counts()
        .map(|(_, count)| {
            let len = count as usize * itemsize;
            // In bounds: decoding checked that the counts add up to the
            // body's length.
            let slice = &body[offset..offset + len];
            offset += len;
            exact::sum_chunk(task.dtype, slice)
        })
        .collect()
}

fn failure(message: String) -> Outcome {
    Outcome::Error(TaskFailure {
        kind: FailureKind::Failed,
        message,
    })
}
