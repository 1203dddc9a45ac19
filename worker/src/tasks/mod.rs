//! Running a decoded task. Each kind lives in its own module; this one only
//! dispatches.

mod sum;

use warren::protocol::{Outcome, Task};

/// Runs a task on its body and returns what to report.
pub(crate) async fn run(task: &Task, body: Vec<u8>) -> Outcome {
    match task {
        Task::Sum(sum) => sum::run(sum, body).await,
    }
}
