//! `--shared` delivery: workers store each file themselves in the shared
//! directory's temporary area, `OUT/.warren-tmp/`, and the producer takes
//! it from there.
//!
//! Before any task goes out, the producer makes the job's marker file
//! there ([`make_marker`]); a worker downloads nothing until it finds it in
//! its own `--shared-dir`, so a worker on other storage fails at once
//! instead of storing files the producer never sees. When a worker
//! reports a stored file, the producer accepts only a temporary file of
//! that very task ([`stored_temp`]), [verifies](super::verify) it as it
//! sees it, and [places](super::placement) it. Not here: files that come
//! through the broker ([`assemble`](super::assemble)).

use std::path::{Path, PathBuf};

use warren::JobId;
use warren::filename::{RelativePath, TEMP_DIR};

use super::placement;
use super::verify::{self, Saved};
use crate::error::{Error, Result};

/// Makes the job's marker file in the output directory's temporary area,
/// which every worker must find in its own shared directory before it
/// downloads anything (see [`warren::protocol::marker_name`]), unless it is
/// there already as a file (a job carried on by `attach`). It is removed
/// with the job's other temporary files. Returns its name.
///
/// # Errors
/// [`Error::Write`] when it cannot be made.
pub(crate) fn make_marker(out_dir: &Path, job: &JobId) -> Result<String> {
    let temp_dir = out_dir.join(TEMP_DIR);
    let name = warren::protocol::marker_name(job);
    let path = temp_dir.join(&name);
    std::fs::create_dir_all(&temp_dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map(drop)
                .or_else(|e| match std::fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_file() => Ok(()),
                    _ => Err(e),
                })
        })
        .map_err(|e| Error::Write {
            output: path.display().to_string(),
            source: e,
        })?;
    Ok(name)
}

/// The temporary file a worker reports it stored for `task` of `job`, if
/// `path` names one: `.warren-tmp/<job>-<task>-<tag>`, the tag letters and
/// digits. Nothing else is accepted, so a faulty worker cannot have the
/// producer move any other file of the directory.
pub(crate) fn stored_temp(job: &JobId, task: u64, path: &str) -> Option<PathBuf> {
    let file = path.strip_prefix(TEMP_DIR)?.strip_prefix('/')?;
    let tag = file.strip_prefix(&format!("{job}-{task}-"))?;
    (!tag.is_empty() && tag.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| Path::new(TEMP_DIR).join(file))
}

/// Finishes a file a worker stored in the shared directory: verifies the
/// temporary file `temp` (relative to `out_dir`, from [`stored_temp`])
/// against the worker's report and the expected checksum, then
/// [places](placement::place) it under `name` (replacing a file with other
/// content there only if `replace`). The temporary file is gone
/// afterwards, whatever the outcome. Blocking.
///
/// # Errors
/// [`Error::FileRejected`] fails the download; [`Error::Write`] is a local
/// I/O failure while placing.
pub(crate) fn finish_stored(
    out_dir: &Path,
    temp: &Path,
    name: &RelativePath,
    report: (u64, &str),
    expected_sha256: Option<&str>,
    replace: bool,
) -> Result<Saved> {
    let temp = out_dir.join(temp);
    match verify::stored_file(out_dir, &temp, report, expected_sha256) {
        Ok(saved) => placement::place(out_dir, &temp, name, saved, replace),
        Err(rejected) => {
            let _ = std::fs::remove_file(&temp);
            Err(rejected)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// Why the download was refused; panics on anything else.
    fn rejection(outcome: Result<Saved>) -> String {
        match outcome {
            Err(Error::FileRejected { reason }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn only_temporary_files_of_the_task_are_taken_from_workers() {
        let job = JobId::parse("j1").unwrap();
        assert_eq!(
            stored_temp(&job, 3, ".warren-tmp/j1-3-123abc"),
            Some(PathBuf::from(".warren-tmp/j1-3-123abc"))
        );
        for bad in [
            "a.jpg",
            ".warren-tmp/j1-3-",
            ".warren-tmp/j1-4-1",
            ".warren-tmp/j2-3-1",
            ".warren-tmp/j1-3-1/../../x",
            ".warren-tmp/j1-3-1/x",
            ".warren-tmpx/j1-3-1",
            "/.warren-tmp/j1-3-1",
        ] {
            assert_eq!(stored_temp(&job, 3, bad), None, "{bad}");
        }
    }

    #[test]
    fn stored_files_are_verified_before_taking_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let name = RelativePath::parse("sub/s.bin").unwrap();
        let temp = Path::new(TEMP_DIR).join("j-0-1");
        std::fs::create_dir(dir.path().join(TEMP_DIR)).unwrap();
        let store = |data: &[u8]| std::fs::write(dir.path().join(&temp), data).unwrap();
        let finish = |report: (u64, &str), expected: Option<&str>| {
            finish_stored(dir.path(), &temp, &name, report, expected, false)
        };

        store(b"data");
        let reason = rejection(finish((5, &sha(b"data")), None));
        assert!(reason.contains("has 4 bytes"), "{reason}");
        store(b"data");
        let reason = rejection(finish((4, &sha(b"data")), Some(&sha(b"other"))));
        assert!(reason.contains("checksum mismatch"), "{reason}");
        assert!(
            !name.under(dir.path()).exists(),
            "nothing under the final name"
        );
        assert!(
            !dir.path().join(&temp).exists(),
            "the rejected file is removed"
        );

        let reason = rejection(finish((4, &sha(b"data")), None));
        assert!(reason.contains("same storage"), "{reason}");

        store(b"data");
        let saved = finish((4, &sha(b"data")), Some(&sha(b"data"))).unwrap();
        assert_eq!(saved.bytes, 4);
        assert_eq!(std::fs::read(name.under(dir.path())).unwrap(), b"data");
        assert!(!dir.path().join(&temp).exists());

        // A link in place of the file is not followed.
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), b"data").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(&temp)).unwrap();
        let other = RelativePath::parse("other.bin").unwrap();
        let reason = rejection(finish_stored(
            dir.path(),
            &temp,
            &other,
            (4, &sha(b"data")),
            None,
            false,
        ));
        assert!(reason.contains("not a file"), "{reason}");
        assert!(!other.under(dir.path()).exists());
    }
}
