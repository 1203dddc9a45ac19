//! [`FileSink`]: a download's body written into the worker's
//! `--shared-dir`, after [`check_marker`] found the job's marker there (so
//! the directory is the producer's output directory). The file goes to
//! the temporary area under a name unique to the attempt; the producer
//! verifies it and moves it under its final name.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use warren::filename::TEMP_DIR;
use warren::protocol::{DownloadErrorKind, DownloadTask};

use super::failure::Failure;
use crate::tasks::TaskContext;

/// Body pieces queued for the writer thread of one download.
const WRITE_QUEUE: usize = 16;

/// Writes the body to a temporary file in the shared directory's
/// temporary area, where it stays, complete (and synced under `--fsync`),
/// for the producer:
/// the producer verifies it and moves it under its final name, so nothing
/// a worker writes ever sits under a final name unverified, and workers
/// never create directories (or follow links) among the final names.
///
/// The writing happens on a blocking thread fed through a small bounded
/// channel: a slow disk (or a network filesystem under a shared volume)
/// then slows this download down instead of stalling the async runtime
/// that all the worker's tasks share.
pub(super) struct FileSink {
    temp: PathBuf,
    /// `temp` relative to the shared directory, as reported.
    relative: String,
    /// Set once the file is complete: it is the producer's from then on.
    keep: bool,
    chunks: Option<mpsc::Sender<Bytes>>,
    writer: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl FileSink {
    /// The sink of one attempt of a `--shared` download, once this worker
    /// has a shared directory and sees the job's marker in it.
    pub(super) async fn open(
        context: &TaskContext,
        task: &DownloadTask,
        attempt: &str,
    ) -> Result<FileSink, Failure> {
        // Permanent, not requeued: requeuing would bounce the task
        // between workers (and back to this one) until the delivery
        // limit dead-letters it, and the fix is in the deployment.
        let Some(shared) = &context.shared_dir else {
            return Err(Failure::permanent(
                DownloadErrorKind::Storage,
                format!(
                    "worker {} has no --shared-dir, so it cannot store files for a --shared \
                     job: start every worker of the queue with --shared-dir on the storage \
                     of the producer's --out-dir, or download without --shared",
                    context.worker
                ),
            ));
        };
        check_marker(context, shared, task).await?;
        FileSink::create(shared, task, attempt).await
    }

    async fn create(
        shared: &Path,
        task: &DownloadTask,
        attempt: &str,
    ) -> Result<FileSink, Failure> {
        let temp_dir = shared.join(TEMP_DIR);
        // Unique per attempt (the attempt id starts with the task index),
        // so two workers holding the same task never share a file.
        let file_name = format!("{}-{attempt}", task.job);
        let temp = temp_dir.join(&file_name);
        let (chunks, received) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let (opened_tx, opened) = oneshot::channel();
        let path = temp.clone();
        let fsync = task.spec.fsync;
        let writer = tokio::task::spawn_blocking(move || {
            write_file(&temp_dir, &path, fsync, opened_tx, received)
        });
        match opened.await {
            Ok(Ok(())) => Ok(FileSink {
                temp,
                relative: format!("{TEMP_DIR}/{file_name}"),
                keep: false,
                chunks: Some(chunks),
                writer: Some(writer),
            }),
            Ok(Err(e)) => Err(storage_failure(
                &format!("cannot create {}", temp.display()),
                &e,
            )),
            Err(_) => Err(Failure::permanent(
                DownloadErrorKind::Storage,
                "the file writer thread failed".into(),
            )),
        }
    }

    pub(super) async fn write(&mut self, data: Bytes) -> Result<(), Failure> {
        let sent = match &self.chunks {
            Some(chunks) => chunks.send(data).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped early: its error says why.
        Err(self.writer_error().await)
    }

    async fn writer_error(&mut self) -> Failure {
        self.chunks = None;
        let reason = match self.writer.take() {
            Some(writer) => match writer.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "the writer stopped".into(),
                Err(e) => e.to_string(),
            },
            None => "the writer stopped".into(),
        };
        Failure::permanent(
            DownloadErrorKind::Storage,
            format!("cannot write {}: {reason}", self.temp.display()),
        )
    }

    /// Waits for the writer (flush, and sync under `--fsync`) and hands the file over:
    /// returns its path relative to the shared directory.
    pub(super) async fn finish(mut self) -> Result<String, Failure> {
        self.chunks = None;
        let written = match self.writer.take() {
            Some(writer) => writer.await,
            None => Ok(Ok(())),
        };
        match written {
            Ok(Ok(())) => {
                self.keep = true;
                Ok(std::mem::take(&mut self.relative))
            }
            Ok(Err(e)) => Err(storage_failure(
                &format!("cannot write {}", self.temp.display()),
                &e,
            )),
            Err(e) => Err(Failure::permanent(
                DownloadErrorKind::Storage,
                format!("the file writer thread failed: {e}"),
            )),
        }
    }
}

impl Drop for FileSink {
    /// An attempt that failed or was abandoned leaves no temporary file; a
    /// finished one is left for the producer. (A writer still running sees
    /// its channel close and stops by itself.)
    fn drop(&mut self) {
        self.chunks = None;
        if !self.keep {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The writer thread of a [`FileSink`]: creates the file (telling `opened`
/// whether it could), writes what arrives until the sink closes the
/// channel, then flushes it, and syncs it under `--fsync`.
fn write_file(
    temp_dir: &Path,
    path: &Path,
    fsync: bool,
    opened: oneshot::Sender<io::Result<()>>,
    mut received: mpsc::Receiver<Bytes>,
) -> io::Result<()> {
    let file = match create_temp_file(temp_dir, path) {
        Ok(file) => {
            let _ = opened.send(Ok(()));
            file
        }
        Err(e) => {
            let _ = opened.send(Err(e));
            return Ok(());
        }
    };
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    while let Some(chunk) = received.blocking_recv() {
        io::Write::write_all(&mut out, &chunk)?;
    }
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    // `--fsync`: synced before it is reported, so the file is on
    // disk when the producer hears of it. Otherwise closing it
    // hands the data to the file system (on NFS, to the server),
    // and the producer's one `syncfs` at the end of the job makes
    // it durable with all the others; its writeback starts now, so
    // that the final sync has little left to do.
    if fsync {
        file.sync_all()
    } else {
        warren::writeback::start_writeback(&file);
        Ok(())
    }
}

/// Creates the attempt's file in the temporary area, making the area
/// first if needed.
fn create_temp_file(temp_dir: &Path, path: &Path) -> io::Result<File> {
    // create_new: never opens (or follows) something already there.
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    make_temp_dir(temp_dir)?;
    open().or_else(|e| {
        // A producer finishing another job may have just
        // removed the (empty) temporary directory.
        if e.kind() != io::ErrorKind::NotFound {
            return Err(e);
        }
        make_temp_dir(temp_dir)?;
        open()
    })
}

/// Creates the temporary area if needed and checks that it is a real
/// directory: through a symbolic link, files would land elsewhere.
fn make_temp_dir(temp_dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(temp_dir)?;
    let meta = std::fs::symlink_metadata(temp_dir)?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} is not a directory (a symbolic link?)",
            temp_dir.display()
        )))
    }
}

/// Checks, before anything is fetched, that this worker's shared
/// directory is the producer's output directory: the job's marker file,
/// which the producer made there before publishing, must be in its
/// temporary area. Otherwise every download would land where the producer
/// never looks.
async fn check_marker(
    context: &TaskContext,
    shared: &Path,
    task: &DownloadTask,
) -> Result<(), Failure> {
    // A producer older than the marker sends none: nothing to check.
    let Some(marker) = &task.spec.marker else {
        return Ok(());
    };
    let path = shared.join(TEMP_DIR).join(marker);
    match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) if meta.is_file() => Ok(()),
        found => {
            let why = match found {
                Ok(_) => "not a regular file".to_owned(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => "not found".to_owned(),
                Err(e) => e.to_string(),
            };
            Err(Failure::permanent(
                DownloadErrorKind::SharedDirMismatch,
                format!(
                    "worker {} cannot see this job's marker {} ({why}): its --shared-dir {} is \
                     not the storage of the producer's --out-dir; nothing was downloaded",
                    context.worker,
                    path.display(),
                    shared.display()
                ),
            ))
        }
    }
}

fn storage_failure(what: &str, error: &io::Error) -> Failure {
    Failure::permanent(DownloadErrorKind::Storage, format!("{what}: {error}"))
}
