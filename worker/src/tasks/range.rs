//! Sum tasks by reference: the worker reads its own byte range of a shared
//! file, an HTTP URL or an S3 object and sums it exactly, in bounded blocks
//! (memory does not grow with the range).
//!
//! The source must still be the version the producer pinned, checked before
//! and after a shared file is read and on every HTTP or S3 response: a
//! changed input fails the task, never a silently mixed sum. A failed read
//! (I/O error, 404, 403, a short read) is retried a few times with backoff,
//! then fails the task naming the source and the range.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use warren::exact::{BlockSum, PartialSum};
use warren::protocol::{
    ByteOrder, FailureKind, Outcome, RangeSpec, RangeTask, SourceRef, TaskFailure,
};
use warren::source;
use warren::{ExponentialBackoff, Jitter};

use super::TaskContext;

/// Attempts at reading one range before the task fails.
const ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubles for each next one, up to
/// [`LAST_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Wait before the third (and last) attempt.
const LAST_RETRY_DELAY: Duration = Duration::from_millis(400);
/// Bytes read from a shared file at once: large enough for few system
/// calls, small enough to stay in the CPU's caches between read and sum.
const BLOCK_BYTES: usize = 1 << 20;

pub(crate) async fn run(context: &TaskContext, task: &RangeTask) -> Outcome {
    let spec = &task.spec;
    let mut attempt = 1;
    // No jitter: a few quick retries of this worker's own read.
    let mut backoff = ExponentialBackoff::new(FIRST_RETRY_DELAY, LAST_RETRY_DELAY, Jitter::None);
    loop {
        let summed = match &spec.source {
            SourceRef::Shared { path } => sum_shared(context, path, spec).await,
            SourceRef::Http { .. } | SourceRef::S3 { .. } => sum_remote(context, spec).await,
        };
        match summed {
            Ok(partial) => return Outcome::Sum(vec![partial]),
            Err(e @ warren::Error::SourceRead { .. }) if attempt < ATTEMPTS => {
                let delay = backoff.next_delay();
                tracing::info!(
                    attempt,
                    "{}; retrying in {delay:?}",
                    warren::display_chain(&e)
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                let mut message = warren::display_chain(&e);
                if matches!(e, warren::Error::SourceRead { .. }) {
                    message.push_str(&format!(" (after {attempt} attempts)"));
                }
                return Outcome::Error(TaskFailure {
                    kind: FailureKind::Failed,
                    message,
                });
            }
        }
    }
}

/// Reads and sums a range of a file in the shared directory, on a blocking
/// thread holding one CPU permit.
async fn sum_shared(
    context: &TaskContext,
    path: &str,
    spec: &RangeSpec,
) -> warren::Result<PartialSum> {
    let Some(dir) = context.shared_dir.clone() else {
        return Err(warren::Error::SourceRefused {
            input: spec.source.to_string(),
            reason: format!(
                "worker {} has no --shared-dir (WARREN_SHARED_DIR); run the workers of this \
                 queue with the directory the producer's --shared-dir names",
                context.worker
            ),
        });
    };
    let Ok(permit) = context.cpu.clone().acquire_owned().await else {
        return Err(warren::Error::SourceRefused {
            input: spec.source.to_string(),
            reason: "the worker is shutting down".into(),
        });
    };
    let input = spec.source.to_string();
    let path = path.to_owned();
    let spec = spec.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        sum_shared_blocking(&dir, &path, &spec)
    })
    .await;
    joined.unwrap_or_else(|join_error| {
        Err(warren::Error::SourceRefused {
            input,
            reason: format!("the summing thread failed: {join_error}"),
        })
    })
}

fn sum_shared_blocking(dir: &Path, path: &str, spec: &RangeSpec) -> warren::Result<PartialSum> {
    let input = spec.source.to_string();
    let file = source::open_shared(dir, path).map_err(|e| with_range(e, spec))?;
    source::check_file_pin(&spec.pin, &file, &input)?;
    let summed = read_blocks(&file, spec).map_err(|e| warren::Error::SourceRead {
        input: input.clone(),
        start: spec.offset,
        end: spec.bytes().end,
        source: Box::new(e),
    })?;
    // Again after reading: a file rewritten during the read has a new
    // modification time (or size), and what was read may mix versions.
    source::check_file_pin(&spec.pin, &file, &input)?;
    Ok(summed)
}

thread_local! {
    /// One read buffer per blocking thread, reused across tasks.
    static BLOCK: RefCell<Vec<u8>> = RefCell::new(vec![0; BLOCK_BYTES]);
}

/// Positioned reads of the range in blocks, each summed as it arrives.
fn read_blocks(file: &File, spec: &RangeSpec) -> std::io::Result<PartialSum> {
    BLOCK.with_borrow_mut(|block| {
        let itemsize = spec.dtype.itemsize();
        // Whole elements per block.
        let block_len = BLOCK_BYTES / itemsize * itemsize;
        let mut sum = BlockSum::new(spec.dtype);
        let range = spec.bytes();
        let mut at = range.start;
        while at < range.end {
            let len = (range.end - at).min(block_len as u64) as usize;
            let buf = &mut block[..len];
            file.read_exact_at(buf, at).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    std::io::Error::new(
                        e.kind(),
                        format!("the file ends before byte {}", at + len as u64),
                    )
                } else {
                    e
                }
            })?;
            add_block(&mut sum, buf, spec.byte_order);
            at += len as u64;
        }
        Ok(sum.to_partial())
    })
}

/// Adds whole elements in the source's byte order.
fn add_block(sum: &mut BlockSum, block: &mut [u8], order: ByteOrder) {
    // Blocks hold whole elements (the callers cut them so): no error.
    let _ = match order {
        ByteOrder::Little => sum.add_le_bytes(block),
        ByteOrder::Big => sum.add_be_bytes(block),
    };
}

/// Streams a range of an HTTP or S3 object and sums it as it arrives,
/// straight from the received buffers: only an element split between two
/// of them (and big-endian data, turned around) is copied.
async fn sum_remote(context: &TaskContext, spec: &RangeSpec) -> warren::Result<PartialSum> {
    let object = context.stores.remote(&spec.source)?;
    let range = spec.bytes();
    let (_, mut stream) = object.get_range(range.clone(), Some(&spec.pin)).await?;
    let itemsize = spec.dtype.itemsize();
    let mut sum = BlockSum::new(spec.dtype);
    // The first bytes of an element whose rest is in the next buffer.
    let mut split: Vec<u8> = Vec::with_capacity(itemsize);
    let mut scratch: Vec<u8> = Vec::new();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| object.read_error(range.clone(), e))?;
        received += chunk.len() as u64;
        if received > spec.len() {
            return Err(object.read_error(range, "the server sent more bytes than asked for"));
        }
        let mut data: &[u8] = &chunk;
        if !split.is_empty() {
            let take = (itemsize - split.len()).min(data.len());
            split.extend_from_slice(&data[..take]);
            data = &data[take..];
            if split.len() == itemsize {
                add_slice(&mut sum, &split, spec.byte_order, &mut scratch);
                split.clear();
            }
        }
        let whole = data.len() / itemsize * itemsize;
        add_slice(&mut sum, &data[..whole], spec.byte_order, &mut scratch);
        split.extend_from_slice(&data[whole..]);
    }
    if received != spec.len() {
        return Err(object.read_error(
            range,
            format!(
                "the response ended after {received} of {} bytes",
                spec.len()
            ),
        ));
    }
    Ok(sum.to_partial())
}

/// Adds whole elements from a shared buffer: little-endian ones in place,
/// big-endian ones through `scratch`.
fn add_slice(sum: &mut BlockSum, data: &[u8], order: ByteOrder, scratch: &mut Vec<u8>) {
    match order {
        // Whole elements (the caller cuts them so): no error.
        ByteOrder::Little => {
            let _ = sum.add_le_bytes(data);
        }
        ByteOrder::Big => {
            scratch.clear();
            scratch.extend_from_slice(data);
            let _ = sum.add_be_bytes(scratch);
        }
    }
}

/// A shared file's open error, with the task's range named.
fn with_range(error: warren::Error, spec: &RangeSpec) -> warren::Error {
    match error {
        warren::Error::SourceRead { input, source, .. } => warren::Error::SourceRead {
            input,
            start: spec.offset,
            end: spec.bytes().end,
            source,
        },
        other => other,
    }
}
