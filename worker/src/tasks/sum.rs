//! Sum tasks: the chunk's exact partial sum, computed on a blocking thread
//! so the async runtime keeps acking and publishing meanwhile.

use warren::exact;
use warren::protocol::{FailureKind, Outcome, SumTask, TaskFailure};

pub(crate) async fn run(task: &SumTask, body: Vec<u8>) -> Outcome {
    let dtype = task.dtype;
    let summed = tokio::task::spawn_blocking(move || exact::sum_chunk(dtype, &body)).await;
    match summed {
        Ok(Ok(partial)) => Outcome::Sum(partial),
        Ok(Err(e)) => Outcome::Error(TaskFailure {
            kind: FailureKind::Failed,
            message: warren::display_chain(&e),
        }),
        Err(join_error) => Outcome::Error(TaskFailure {
            kind: FailureKind::Failed,
            message: format!("the summing thread failed: {join_error}"),
        }),
    }
}
