//! [`SumTask`], the metadata of a sum message: its elements travel as the
//! raw body, one task or a batch of consecutive ones.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::{
    CONTENT_TYPE_BINARY, JobId, MAX_TASKS_PER_MESSAGE, TaskKind, header, int_header, long_string,
    non_negative, string_header, task_properties,
};
use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// The metadata of a sum message; the elements themselves are the body.
///
/// One message carries one task, or, when chunks are small, a batch of
/// consecutive tasks (`tasks > 1`): task `index + i` is the `i`-th run of
/// `chunk` elements of the body, the last one taking what is left. Batching
/// saves the broker two messages per task; each task still gets its own
/// partial sum and is counted once by its own index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumTask {
    /// The job.
    pub job: JobId,
    /// Index of the (first) task within the job.
    pub index: u64,
    /// Element type.
    pub dtype: Dtype,
    /// Number of elements in the body.
    pub count: u64,
    /// Tasks in this message, at least 1.
    pub tasks: u64,
    /// Elements of each task but the last; equal to `count` for one task.
    pub chunk: u64,
}

impl SumTask {
    /// A message holding one task of `count` elements.
    pub fn single(job: JobId, index: u64, dtype: Dtype, count: u64) -> Self {
        SumTask {
            job,
            index,
            dtype,
            count,
            tasks: 1,
            chunk: count,
        }
    }

    /// A message holding `count` elements split into tasks of `chunk`
    /// elements (the last may be shorter), starting at task `first`.
    pub fn batch(job: JobId, first: u64, dtype: Dtype, count: u64, chunk: u64) -> Self {
        let chunk = chunk.max(1);
        let tasks = count.div_ceil(chunk).max(1);
        if tasks == 1 {
            return Self::single(job, first, dtype, count);
        }
        SumTask {
            job,
            index: first,
            dtype,
            count,
            tasks,
            chunk,
        }
    }

    /// Each task of the message: its index within the job and its number of
    /// elements.
    pub fn task_counts(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.tasks).map(move |i| {
            let start = i * self.chunk;
            (self.index + i, (self.count - start).min(self.chunk))
        })
    }

    /// The AMQP properties of this message, replying to `reply_to`.
    pub fn properties(&self, reply_to: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(header::DTYPE.into(), long_string(self.dtype.name()));
        headers.insert(
            header::COUNT.into(),
            AMQPValue::LongLongInt(self.count as i64),
        );
        if self.tasks > 1 {
            headers.insert(
                header::TASKS.into(),
                AMQPValue::LongLongInt(self.tasks as i64),
            );
            headers.insert(
                header::CHUNK.into(),
                AMQPValue::LongLongInt(self.chunk as i64),
            );
        }
        task_properties(
            &self.job,
            self.index,
            TaskKind::Sum,
            CONTENT_TYPE_BINARY,
            reply_to,
            headers,
        )
    }

    pub(super) fn decode(
        job: JobId,
        index: u64,
        headers: &FieldTable,
        body: &[u8],
    ) -> Result<SumTask> {
        let dtype = Dtype::from_wire(&string_header(headers, header::DTYPE)?)
            .map_err(|e| Error::malformed("task", e))?;
        let count = non_negative(int_header(headers, header::COUNT)?, header::COUNT)?;
        let expected = count.checked_mul(dtype.itemsize() as u64);
        if expected != Some(body.len() as u64) {
            return Err(Error::malformed(
                "task",
                format!(
                    "header {} says {count} {dtype} elements but the body has {} bytes",
                    header::COUNT,
                    body.len()
                ),
            ));
        }
        let tasks = match headers.inner().get(header::TASKS) {
            None => 1,
            Some(_) => non_negative(int_header(headers, header::TASKS)?, header::TASKS)?,
        };
        if !(1..=MAX_TASKS_PER_MESSAGE).contains(&tasks) {
            return Err(Error::malformed(
                "task",
                format!(
                    "header {} is {tasks}: a message carries 1 to {MAX_TASKS_PER_MESSAGE} tasks",
                    header::TASKS
                ),
            ));
        }
        if tasks == 1 {
            return Ok(SumTask::single(job, index, dtype, count));
        }
        let chunk = non_negative(int_header(headers, header::CHUNK)?, header::CHUNK)?;
        let fits = chunk > 0
            && (1..=MAX_TASKS_PER_MESSAGE).contains(&tasks)
            && (tasks - 1)
                .checked_mul(chunk)
                .is_some_and(|full| full < count)
            && tasks.checked_mul(chunk).is_some_and(|all| count <= all);
        if !fits {
            return Err(Error::malformed(
                "task",
                format!(
                    "{count} elements cannot be {tasks} tasks of {chunk} (headers {} and {})",
                    header::TASKS,
                    header::CHUNK
                ),
            ));
        }
        if index.checked_add(tasks).is_none() {
            return Err(Error::malformed("task", "task indices overflow"));
        }
        Ok(SumTask {
            job,
            index,
            dtype,
            count,
            tasks,
            chunk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Task;
    use crate::protocol::tests::{job, sum_task, with_header};

    #[test]
    fn sum_task_properties_are_pinned() {
        let props = sum_task().properties("warren.reply.0123456789abcdef0123456789abcdef");
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/octet-stream"
        );
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            "0123456789abcdef0123456789abcdef:7"
        );
        assert_eq!(
            props.correlation_id().as_ref().unwrap().as_str(),
            "0123456789abcdef0123456789abcdef"
        );
        let headers = props.headers().as_ref().unwrap().inner();
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "warren-count",
                "warren-dtype",
                "warren-job",
                "warren-kind",
                "warren-task",
                "warren-version"
            ]
        );
        assert_eq!(headers["warren-version"], AMQPValue::LongLongInt(1));
        assert_eq!(headers["warren-kind"], long_string("sum"));
        assert_eq!(headers["warren-dtype"], long_string("float64"));
        assert_eq!(headers["warren-task"], AMQPValue::LongLongInt(7));
        assert_eq!(headers["warren-count"], AMQPValue::LongLongInt(2));
    }

    #[test]
    fn batched_sum_tasks_split_into_their_tasks() {
        let batch = SumTask::batch(job(), 10, Dtype::Int32, 10, 4);
        assert_eq!(batch.tasks, 3);
        assert_eq!(
            batch.task_counts().collect::<Vec<_>>(),
            [(10, 4), (11, 4), (12, 2)]
        );
        let props = batch.properties("r");
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(headers["warren-tasks"], AMQPValue::LongLongInt(3));
        assert_eq!(headers["warren-chunk"], AMQPValue::LongLongInt(4));
        assert_eq!(Task::decode(&props, &[0u8; 40]).unwrap(), Task::Sum(batch));
        assert_eq!(
            SumTask::batch(job(), 0, Dtype::Int32, 3, 4),
            SumTask::single(job(), 0, Dtype::Int32, 3)
        );
        // Headers that do not add up are malformed.
        for (tasks, chunk) in [(3, 5), (3, 3), (2, 0), (0, 4), (70_000, 1)] {
            let mut headers = props.headers().clone().unwrap();
            headers.insert("warren-tasks".into(), AMQPValue::LongLongInt(tasks));
            headers.insert("warren-chunk".into(), AMQPValue::LongLongInt(chunk));
            let bad = props.clone().with_headers(headers);
            assert!(
                Task::decode(&bad, &[0u8; 40]).unwrap_err().is_poison(),
                "{tasks} × {chunk}"
            );
        }
    }

    #[test]
    fn sum_task_round_trips() {
        let props = sum_task().properties("r");
        assert_eq!(
            Task::decode(&props, &[0u8; 16]).unwrap(),
            Task::Sum(sum_task())
        );
    }

    /// Issue 12: 65537 tasks that add up otherwise were reported as
    /// elements that "cannot be 65537 tasks of 1".
    #[test]
    fn too_many_tasks_in_one_message_names_the_limit_issue_12() {
        let tasks = MAX_TASKS_PER_MESSAGE + 1;
        let props = with_header("warren-tasks", AMQPValue::LongLongInt(tasks as i64));
        let mut headers = props.headers().clone().unwrap();
        headers.insert("warren-chunk".into(), AMQPValue::LongLongInt(1));
        headers.insert("warren-count".into(), AMQPValue::LongLongInt(tasks as i64));
        let props = props.with_headers(headers);
        let body = vec![0u8; tasks as usize * 8];
        let err = Task::decode(&props, &body).unwrap_err();
        assert!(err.is_poison(), "{err}");
        assert!(
            err.to_string()
                .contains("header warren-tasks is 65537: a message carries 1 to 65536 tasks"),
            "{err}"
        );
    }
}
