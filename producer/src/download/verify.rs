//! Checking a file's content: its size and SHA-256 against what the worker
//! reported and what the list expects.
//!
//! Used by every step that must trust a file: [`plan`](super::plan) hashes
//! files already in the output directory, [`assemble`](super::assemble)
//! checks a file put together from chunks (hashed as it was written),
//! [`shared`](super::shared) checks one a worker stored, and
//! [`placement`](super::placement) compares a name taken meanwhile. Not
//! where files are moved or named.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use warren::filename::TEMP_DIR;

use crate::error::{Error, Result};

/// A file's size and SHA-256 (lowercase hex), verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Saved {
    pub(crate) bytes: u64,
    pub(crate) sha256: String,
}

/// SHA-256 and size of a file, read in 1 MiB blocks.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    thread_local! {
        /// The read buffer, kept per (blocking) thread: zeroing a fresh
        /// 1 MiB for every file cost more than reading a small file.
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 1 << 20]);
    }
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    BUFFER.with_borrow_mut(|buffer| {
        loop {
            let n = file.read(buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
        }
        Ok::<_, std::io::Error>(())
    })?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Checks `got`, a file's SHA-256, against the checksum the list gives, if
/// it gives one (either case matches).
///
/// # Errors
/// [`Error::FileRejected`] on a mismatch.
pub(crate) fn check_expected(expected_sha256: Option<&str>, got: &str) -> Result<()> {
    match expected_sha256 {
        Some(expected) if !expected.eq_ignore_ascii_case(got) => Err(Error::FileRejected {
            reason: format!("checksum mismatch: expected sha256 {expected}, got {got}"),
        }),
        _ => Ok(()),
    }
}

/// Checks a file put together from body chunks, `written` bytes with
/// SHA-256 `got` (hashed as they were written), against the worker's
/// report (`bytes`, `sha256`) and the expected checksum.
///
/// # Errors
/// [`Error::FileRejected`] when it differs.
pub(crate) fn received_file(
    (written, got): (u64, String),
    (bytes, sha256): (u64, &str),
    expected_sha256: Option<&str>,
) -> Result<Saved> {
    if written != bytes || !got.eq_ignore_ascii_case(sha256) {
        return Err(Error::FileRejected {
            reason: format!(
                "the file arrived incomplete or corrupted: {written} bytes with sha256 {got}, \
                 but the worker sent {bytes} bytes with sha256 {sha256}"
            ),
        });
    }
    check_expected(expected_sha256, &got)?;
    Ok(Saved { bytes, sha256: got })
}

/// Checks a file a worker stored at `temp` (under `out_dir`), as the
/// producer sees it, against the worker's report (`bytes`, `sha256`) and
/// the expected checksum. Blocking.
///
/// The content is not read again: the worker computed its SHA-256 in the
/// one pass that wrote it (issue 13: one pass over the bytes). What the
/// producer checks is that the file is there, as a regular file in a real
/// temporary directory, with the reported size: a worker whose
/// `--shared-dir` is other storage, or a file cut short on its way to
/// shared storage, is caught here.
///
/// # Errors
/// [`Error::FileRejected`] when the file is not there as a regular file,
/// or its size or checksum differs.
pub(crate) fn stored_file(
    out_dir: &Path,
    temp: &Path,
    (bytes, sha256): (u64, &str),
    expected_sha256: Option<&str>,
) -> Result<Saved> {
    let rejected = |reason: String| Error::FileRejected { reason };
    // Only a real directory and a regular file: a link could make the
    // producer move a file from elsewhere.
    let temp_dir_is_real =
        std::fs::symlink_metadata(out_dir.join(TEMP_DIR)).is_ok_and(|meta| meta.is_dir());
    let size = match std::fs::symlink_metadata(temp) {
        Ok(meta) if temp_dir_is_real && meta.is_file() => meta.len(),
        _ => {
            return Err(rejected(format!(
                "the worker stored the file but {} is not a file here: do --out-dir and the \
                 workers' --shared-dir point at the same storage?",
                temp.display()
            )));
        }
    };
    if size != bytes {
        return Err(rejected(format!(
            "the stored file has {size} bytes, but the worker stored {bytes} bytes"
        )));
    }
    let got = sha256.to_ascii_lowercase();
    check_expected(expected_sha256, &got)?;
    Ok(Saved { bytes, sha256: got })
}
