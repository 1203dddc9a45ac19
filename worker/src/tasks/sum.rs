//! Sum tasks: the chunk's exact partial sum, computed on a blocking thread
//! (holding one CPU permit) so the async runtime keeps acking and
//! publishing meanwhile.

use warren::exact;
use warren::protocol::{FailureKind, Outcome, SumTask, TaskFailure};

use super::TaskContext;

pub(crate) async fn run(context: &TaskContext, task: &SumTask, body: Vec<u8>) -> Outcome {
    let dtype = task.dtype;
    let Ok(permit) = context.cpu.clone().acquire_owned().await else {
        return failure("the CPU pool is closed".into());
    };
    let summed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        exact::sum_chunk(dtype, &body)
    })
    .await;
    match summed {
        Ok(Ok(partial)) => Outcome::Sum(partial),
        Ok(Err(e)) => failure(warren::display_chain(&e)),
        Err(join_error) => failure(format!("the summing thread failed: {join_error}")),
    }
}

fn failure(message: String) -> Outcome {
    Outcome::Error(TaskFailure {
        kind: FailureKind::Failed,
        message,
    })
}
