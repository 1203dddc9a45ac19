//! Broker delivery (the default): files put together from the body chunks
//! workers send back through the reply queue.
//!
//! A file appears under its final name only complete and verified: chunks
//! go to a temporary file in `OUT/.warren-tmp/`, hashed as they are
//! written; a worker's report then has it [verified](super::verify) (size
//! and SHA-256 against the report and the expected checksum), synced under
//! `--fsync`, and only then [placed](super::placement). Without `--fsync`
//! the job's files are made durable together at its end
//! (`manifest::sync_file_system`). Attempts (a worker's retry, a
//! redelivered task) are told apart here: a new one starts the file over,
//! a replaced one's chunks and reports no longer count. Not here: files
//! workers store themselves ([`shared`](super::shared)).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use warren::JobId;
use warren::filename::{RelativePath, TEMP_DIR};
use warren::protocol::BodyChunk;

use super::placement;
use super::verify::{self, Saved};
use crate::error::{Error, Result};

/// A file being received through the broker.
struct Incoming {
    attempt: String,
    temp: PathBuf,
    /// Unbuffered: chunks arrive as whole messages (up to `chunk_bytes`,
    /// 1 MiB by default), so each is one write, and no buffer is allocated
    /// (and faulted in) per file.
    file: File,
    written: u64,
    hasher: Sha256,
    /// Set when a chunk did not follow on from the previous one.
    broken: Option<String>,
}

/// A received and verified file, not yet under its final name.
#[derive(Debug)]
pub(crate) struct ReadyFile {
    temp: PathBuf,
    file: File,
    out_dir: PathBuf,
    name: RelativePath,
    /// `--fsync`: sync the file before placing it.
    fsync: bool,
    saved: Saved,
}

impl ReadyFile {
    /// Under `--fsync`, syncs the file (so that it is on disk before it
    /// is reported), then [places](placement::place) it, replacing a file
    /// with other content at its name only if `replace`. Blocking.
    ///
    /// # Errors
    /// [`Error::FileRejected`] fails the download (its name is taken);
    /// [`Error::Write`] is a local I/O failure.
    pub(crate) fn place(self, replace: bool) -> Result<Saved> {
        let ReadyFile {
            temp,
            file,
            out_dir,
            name,
            fsync,
            saved,
        } = self;
        let synced = if fsync {
            file.sync_all()
        } else {
            // The job's one sync at its end will find it (mostly) written.
            warren::writeback::start_writeback(&file);
            Ok(())
        };
        if let Err(e) = synced {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::Write {
                output: temp.display().to_string(),
                source: e,
            });
        }
        placement::place(&out_dir, &temp, &name, saved, replace)
    }
}

/// What became of one body chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChunkOutcome {
    /// Written; this many bytes.
    Written(u64),
    /// Not written: a replaced attempt's, out of order, or after a gap.
    Ignored,
}

/// What a worker's success report makes of a file.
#[derive(Debug)]
pub(crate) enum Completion {
    /// Complete and verified; still to be [placed](ReadyFile::place).
    Ready(ReadyFile),
    /// The report is from an attempt that a newer one replaced (the task
    /// was redelivered while its first worker was still at it): ignored,
    /// the newer attempt's report decides.
    Stale,
    /// None of the reported attempt's data reached this producer: lost,
    /// or taken by an earlier producer of a resumed job.
    Unseen,
}

/// Puts files together from body chunks.
pub(crate) struct Assembler {
    out_dir: PathBuf,
    temp_dir: PathBuf,
    job: JobId,
    /// Largest file accepted (`--max-size`).
    max_bytes: u64,
    /// `--fsync`: each file is synced before it is placed.
    fsync: bool,
    incoming: HashMap<u64, Incoming>,
    /// Attempts that were replaced by a newer one, per task: their late
    /// chunks are ignored.
    retired: HashMap<u64, HashSet<String>>,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler")
            .field("out_dir", &self.out_dir)
            .field("incoming", &self.incoming.len())
            .finish_non_exhaustive()
    }
}

impl Assembler {
    pub(crate) fn new(out_dir: &Path, job: JobId, max_bytes: u64, fsync: bool) -> Self {
        Assembler {
            out_dir: out_dir.to_owned(),
            temp_dir: out_dir.join(TEMP_DIR),
            job,
            max_bytes,
            fsync,
            incoming: HashMap::new(),
            retired: HashMap::new(),
        }
    }

    /// Whether `attempt` of `task` was replaced by a newer attempt: its
    /// chunks and reports, success or failure, no longer count.
    pub(crate) fn is_retired(&self, task: u64, attempt: &str) -> bool {
        self.retired
            .get(&task)
            .is_some_and(|retired| retired.contains(attempt))
    }

    /// Starts `task` over with a new attempt, retiring the current one.
    fn replace(&mut self, task: u64, attempt: &str) -> Result<()> {
        if let Some(old) = self.incoming.remove(&task) {
            self.retired
                .entry(task)
                .or_default()
                .insert(old.attempt.clone());
            discard(old);
        }
        let incoming = self.start(task, attempt)?;
        self.incoming.insert(task, incoming);
        Ok(())
    }

    /// Takes one chunk. A chunk at offset 0 of an attempt not seen before
    /// starts the file over (the worker retried, or the task was
    /// redelivered); chunks of replaced attempts are ignored.
    ///
    /// # Errors
    /// [`Error::FileRejected`] when the attempt sent more than the size
    /// limit: the download fails now (a worker enforces the limit itself,
    /// so only a faulty one gets here; the producer does not rely on it).
    /// [`Error::Write`] for a local I/O failure, which ends the job.
    pub(crate) fn chunk(&mut self, chunk: &BodyChunk, data: &[u8]) -> Result<ChunkOutcome> {
        let current = self
            .incoming
            .get(&chunk.task)
            .is_some_and(|incoming| incoming.attempt == chunk.attempt);
        if !current {
            if chunk.offset != 0 || self.is_retired(chunk.task, &chunk.attempt) {
                return Ok(ChunkOutcome::Ignored);
            }
            self.replace(chunk.task, &chunk.attempt)?;
        }
        let incoming = self
            .incoming
            .get_mut(&chunk.task)
            .expect("the current attempt was just found or inserted"); // invariant: see above
        if incoming.broken.is_some() {
            return Ok(ChunkOutcome::Ignored);
        }
        if chunk.offset != incoming.written {
            incoming.broken = Some(format!(
                "the file arrived damaged: a chunk at offset {} arrived when {} bytes were written",
                chunk.offset, incoming.written
            ));
            return Ok(ChunkOutcome::Ignored);
        }
        // Bounded here too, not only by the worker: the disk this writes
        // to is the producer's.
        if incoming.written.saturating_add(data.len() as u64) > self.max_bytes {
            let reason = format!(
                "more than the limit of {} bytes arrived for it (--max-size)",
                self.max_bytes
            );
            self.forget(chunk.task);
            return Err(Error::FileRejected { reason });
        }
        incoming.file.write_all(data).map_err(|e| Error::Write {
            output: incoming.temp.display().to_string(),
            source: e,
        })?;
        incoming.hasher.update(data);
        incoming.written += data.len() as u64;
        Ok(ChunkOutcome::Written(data.len() as u64))
    }

    fn start(&self, task: u64, attempt: &str) -> Result<Incoming> {
        std::fs::create_dir_all(&self.temp_dir).map_err(|e| Error::Write {
            output: self.temp_dir.display().to_string(),
            source: e,
        })?;
        let temp = self.temp_dir.join(format!("{}-{task}", self.job));
        let file = File::create(&temp)
            .or_else(|_| {
                // Another job sharing the directory may have just removed it.
                std::fs::create_dir_all(&self.temp_dir)?;
                File::create(&temp)
            })
            .map_err(|e| Error::Write {
                output: temp.display().to_string(),
                source: e,
            })?;
        Ok(Incoming {
            attempt: attempt.to_owned(),
            temp,
            file,
            written: 0,
            hasher: Sha256::new(),
            broken: None,
        })
    }

    /// Finishes a task whose worker reported success: checks that the
    /// reported attempt's bytes all arrived and match the reported (and
    /// expected) size and SHA-256. A [`Completion::Ready`] file still has
    /// to be [placed](ReadyFile::place), on a blocking thread.
    ///
    /// # Errors
    /// [`Error::FileRejected`] fails the download (nothing of it is kept);
    /// [`Error::Write`] is a local I/O failure, which ends the job.
    pub(crate) fn complete(
        &mut self,
        task: u64,
        name: &RelativePath,
        attempt: &str,
        (bytes, sha256): (u64, &str),
        expected_sha256: Option<&str>,
    ) -> Result<Completion> {
        if self.is_retired(task, attempt) {
            return Ok(Completion::Stale);
        }
        let current = self
            .incoming
            .get(&task)
            .is_some_and(|incoming| incoming.attempt == attempt);
        if !current {
            // Every chunk of an attempt is confirmed before its report is
            // sent, so a new attempt with a body has made itself current
            // by now. One that did not sent an empty body (no chunk at
            // all): it starts the file over like any new attempt.
            if bytes != 0 {
                return Ok(Completion::Unseen);
            }
            self.replace(task, attempt)?;
        }
        let incoming = self
            .incoming
            .remove(&task)
            .expect("the attempt is current or was just started"); // invariant: see above
        let checked = match incoming.broken.clone() {
            Some(reason) => Err(Error::FileRejected { reason }),
            None => {
                let got = hex::encode(incoming.hasher.clone().finalize());
                verify::received_file((incoming.written, got), (bytes, sha256), expected_sha256)
            }
        };
        let saved = match checked {
            Ok(saved) => saved,
            Err(rejected) => {
                discard(incoming);
                return Err(rejected);
            }
        };
        let Incoming { temp, file, .. } = incoming;
        Ok(Completion::Ready(ReadyFile {
            temp,
            file,
            out_dir: self.out_dir.clone(),
            name: name.clone(),
            fsync: self.fsync,
            saved,
        }))
    }

    /// Drops whatever was received for a task that failed.
    pub(crate) fn forget(&mut self, task: u64) {
        if let Some(incoming) = self.incoming.remove(&task) {
            discard(incoming);
        }
    }

    /// Removes every temporary file of this job, including those a killed
    /// worker left in a shared directory (all are named `<job>-...`), and
    /// the temporary directory if that leaves it empty.
    pub(crate) fn clean_up(&mut self) {
        for (_, incoming) in self.incoming.drain() {
            discard(incoming);
        }
        let ours = format!("{}-", self.job);
        if let Ok(entries) = std::fs::read_dir(&self.temp_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&ours) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.temp_dir);
    }
}

fn discard(incoming: Incoming) {
    let Incoming { temp, file, .. } = incoming;
    drop(file);
    let _ = std::fs::remove_file(temp);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(task: u64, attempt: &str, offset: u64) -> BodyChunk {
        BodyChunk {
            job: JobId::parse("j").unwrap(),
            task,
            attempt: attempt.into(),
            offset,
        }
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn assembler(dir: &Path) -> Assembler {
        Assembler::new(dir, JobId::parse("j").unwrap(), 1 << 20, false)
    }

    fn ready(completion: Completion) -> ReadyFile {
        match completion {
            Completion::Ready(ready) => ready,
            other => panic!("not ready: {other:?}"),
        }
    }

    /// Why the download was refused; panics on anything else.
    fn rejection<T: std::fmt::Debug>(outcome: Result<T>) -> String {
        match outcome {
            Err(Error::FileRejected { reason }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_new_attempt_starts_over_and_late_chunks_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let name = RelativePath::parse("sub/f.bin").unwrap();
        let mut assembler = assembler(dir.path());
        assembler.chunk(&chunk(0, "a", 0), b"hello ").unwrap();
        // The worker died; the task was redelivered: attempt b starts over.
        assembler.chunk(&chunk(0, "b", 0), b"good").unwrap();
        assert_eq!(
            assembler.chunk(&chunk(0, "a", 6), b"stale").unwrap(),
            ChunkOutcome::Ignored
        );
        assembler.chunk(&chunk(0, "b", 4), b"bye").unwrap();
        assert!(
            !name.under(dir.path()).exists(),
            "nothing under the final name before completion"
        );
        let ready = ready(
            assembler
                .complete(0, &name, "b", (7, &sha(b"goodbye")), Some(&sha(b"goodbye")))
                .unwrap(),
        );
        assert!(
            !name.under(dir.path()).exists(),
            "nothing under the final name before placing"
        );
        let saved = ready.place(false).unwrap();
        assert_eq!(saved.bytes, 7);
        assert_eq!(std::fs::read(name.under(dir.path())).unwrap(), b"goodbye");
        assembler.clean_up();
        assert!(!dir.path().join(TEMP_DIR).exists());
    }

    #[test]
    fn reported_and_expected_sha256_match_in_either_case() {
        let dir = tempfile::tempdir().unwrap();
        let name = RelativePath::parse("f").unwrap();
        let mut assembler = assembler(dir.path());
        assembler.chunk(&chunk(0, "a", 0), b"data").unwrap();
        let upper = sha(b"data").to_ascii_uppercase();
        let saved = ready(
            assembler
                .complete(0, &name, "a", (4, &upper), Some(&upper))
                .unwrap(),
        )
        .place(false)
        .unwrap();
        assert_eq!(saved.sha256, sha(b"data"), "the manifest keeps lowercase");
    }

    #[test]
    fn a_report_of_a_replaced_attempt_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let name = RelativePath::parse("f").unwrap();
        let mut assembler = assembler(dir.path());
        assembler.chunk(&chunk(0, "a", 0), b"old").unwrap();
        // The task was redelivered while its first worker was still at it.
        assembler.chunk(&chunk(0, "b", 0), b"new").unwrap();
        assert!(assembler.is_retired(0, "a"));
        assert!(!assembler.is_retired(0, "b"));
        assert!(matches!(
            assembler
                .complete(0, &name, "a", (3, &sha(b"old")), None)
                .unwrap(),
            Completion::Stale
        ));
        assembler.chunk(&chunk(0, "b", 3), b"er").unwrap();
        let saved = ready(
            assembler
                .complete(0, &name, "b", (5, &sha(b"newer")), None)
                .unwrap(),
        )
        .place(false)
        .unwrap();
        assert_eq!(saved.sha256, sha(b"newer"));
        assert_eq!(std::fs::read(name.under(dir.path())).unwrap(), b"newer");
    }

    #[test]
    fn an_empty_body_after_a_partial_attempt_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let name = RelativePath::parse("f").unwrap();
        let mut assembler = assembler(dir.path());
        assembler.chunk(&chunk(0, "a", 0), b"partial").unwrap();
        // Attempt a broke off; attempt b got an empty body: no chunk.
        let saved = ready(
            assembler
                .complete(0, &name, "b", (0, &sha(b"")), None)
                .unwrap(),
        )
        .place(false)
        .unwrap();
        assert_eq!(saved.bytes, 0);
        assert_eq!(std::fs::read(name.under(dir.path())).unwrap(), b"");
        // A report with a body whose chunks never came is told apart.
        assembler.chunk(&chunk(1, "a", 0), b"abc").unwrap();
        let unseen = assembler.complete(1, &name, "c", (3, &sha(b"abc")), None);
        assert!(matches!(unseen.unwrap(), Completion::Unseen));
        assembler.clean_up();
        assert!(!dir.path().join(TEMP_DIR).exists());
    }

    #[test]
    fn more_than_the_size_limit_fails_the_download_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut assembler = Assembler::new(dir.path(), JobId::parse("j").unwrap(), 5, false);
        assert_eq!(
            assembler.chunk(&chunk(0, "a", 0), b"abc").unwrap(),
            ChunkOutcome::Written(3)
        );
        let reason = rejection(assembler.chunk(&chunk(0, "a", 3), b"def"));
        assert!(reason.contains("limit of 5 bytes"), "{reason}");
        let temp = dir.path().join(TEMP_DIR);
        assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 0, "nothing kept");
        assembler.clean_up();
        assert!(!temp.exists());
    }

    #[test]
    fn mismatches_and_gaps_fail_the_download_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let name = RelativePath::parse("f").unwrap();
        let mut assembler = assembler(dir.path());
        assembler.chunk(&chunk(1, "a", 0), b"abc").unwrap();
        let failed = assembler.complete(1, &name, "a", (3, &sha(b"xyz")), None);
        assert!(rejection(failed).contains("incomplete or corrupted"));
        assembler.chunk(&chunk(2, "a", 0), b"abc").unwrap();
        assembler.chunk(&chunk(2, "a", 10), b"def").unwrap();
        let failed = assembler.complete(2, &name, "a", (13, &sha(b"abcdef")), None);
        assert!(rejection(failed).contains("damaged"));
        assembler.chunk(&chunk(3, "a", 0), b"abc").unwrap();
        let failed = assembler.complete(3, &name, "a", (3, &sha(b"abc")), Some(&sha(b"other")));
        assert!(rejection(failed).contains("checksum mismatch"));
        assert!(!name.under(dir.path()).exists());
        assembler.clean_up();
        assert!(!dir.path().join(TEMP_DIR).exists());
    }

    #[test]
    fn empty_bodies_make_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let name = RelativePath::parse("empty").unwrap();
        let mut assembler = assembler(dir.path());
        ready(
            assembler
                .complete(0, &name, "a", (0, &sha(b"")), None)
                .unwrap(),
        )
        .place(false)
        .unwrap();
        assert_eq!(std::fs::read(name.under(dir.path())).unwrap(), b"");
    }
}
