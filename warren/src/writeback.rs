//! Starting a downloaded file's writeback early, for the group commit.
//!
//! Without `--fsync`, a download job makes its files durable with one
//! `syncfs` when it ends (docs/DOWNLOADS.md). Left alone, the kernel writes
//! a file's data back some seconds after it was written, so that final sync
//! would find most of the job's bytes still to write, and the job would wait
//! for all of them at its end. Both sides that write downloaded files (a
//! worker storing into the shared directory, the producer putting chunks
//! together) therefore start each file's writeback as soon as the file is
//! complete, without waiting for it: the disk works while the job goes on,
//! and the final sync waits only for the last few files.

use std::fs::File;

/// Asks the kernel to start writing `file`'s data to disk now, without
/// waiting for it.
///
/// `posix_fadvise(POSIX_FADV_DONTNEED)` starts the writeback of the dirty
/// pages of the range (as `sync_file_range(SYNC_FILE_RANGE_WRITE)` would;
/// PostgreSQL's `pg_flush_data` uses the same call where that one is
/// missing). Pages still dirty stay cached. It is advice: a failure
/// changes nothing but speed, so it is ignored.
pub fn start_writeback(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}
