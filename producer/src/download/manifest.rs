//! The download manifest: one JSON line per URL saying what became of it.
//!
//! Lines are written as items finish, to `<manifest>.partial`, so a run
//! that is killed still leaves a record of what it did. When the run ends
//! (success, failures, Ctrl-C or timeout alike), the producer first makes
//! the job's files durable (one `syncfs` of the output file system, see
//! [`sync_file_system`]), then syncs the partial manifest and renames it
//! over the manifest, and syncs its directory. So the file under the
//! manifest's own name is always *durable*: every file it lists as `ok` or
//! `skipped` reached the disk before the manifest did, and survives a power
//! cut. A partial manifest, left by a run that never got that far, is a
//! record of files warren placed but did not make durable: a re-run may
//! check files against it, or replace them, but trusts nothing from it
//! without checking (see `plan`).
//!
//! The previous run's manifest (same path) is read first: it tells
//! whether a file already in the output directory is the one warren
//! downloaded, byte for byte. A `failed` line carries forward, in
//! `last_ok`, what warren last verified at its path, so that knowledge
//! survives runs that fail or refuse the file (the manifest is rewritten
//! by every run).
//!
//! The lines on disk are the run's only record of its URLs' outcomes: the
//! producer keeps counts and, for the failures, where their lines are
//! ([`Records`]), and reads those back for the summary, so its memory does
//! not grow with the list. Without `--manifest` the lines go to an
//! anonymous temporary file in the output directory, gone when the
//! producer exits.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warren::JobId;
use warren::filename::TEMP_DIR;

use super::urls::NamedEntry;
use crate::error::{Error, Result};

/// What became of one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// Downloaded and verified.
    Ok,
    /// Not downloaded; `error` says why.
    Failed,
    /// Already present and matching; not downloaded again.
    Skipped,
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// The URL as listed.
    pub url: String,
    /// The file, relative to the output directory.
    pub path: String,
    /// `ok`, `failed` or `skipped`.
    pub status: ItemStatus,
    /// Size of the file.
    pub bytes: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: Option<String>,
    /// The final HTTP status, if a response arrived.
    pub http_status: Option<u16>,
    /// Download attempts made (0 when skipped).
    pub attempts: u32,
    /// Why it failed.
    pub error: Option<String>,
    /// On a `failed` line: size and SHA-256 of the file warren last
    /// verified at `path` for this URL (in this run or an earlier one),
    /// when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok: Option<Verified>,
}

/// A file's content as warren verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Size.
    pub bytes: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

impl ManifestRecord {
    /// The record of `entry` before its outcome is known: failed, with
    /// nothing else said yet.
    pub(crate) fn for_entry(entry: NamedEntry<'_>) -> ManifestRecord {
        ManifestRecord {
            url: entry.url().to_owned(),
            path: entry.name().to_owned(),
            status: ItemStatus::Failed,
            bytes: 0,
            sha256: None,
            http_status: None,
            attempts: 0,
            error: None,
            last_ok: None,
        }
    }

    /// What this line says warren verified at `path`: the file itself for
    /// `ok` and `skipped`, the carried-forward `last_ok` for `failed`.
    pub fn verified(&self) -> Option<Verified> {
        match self.status {
            ItemStatus::Ok | ItemStatus::Skipped => self.sha256.as_ref().map(|sha256| Verified {
                bytes: self.bytes,
                sha256: sha256.clone(),
            }),
            ItemStatus::Failed => self.last_ok.clone(),
        }
    }
}

/// What a previous manifest knows, by URL and path.
pub(crate) type Previous = HashMap<(String, String), Verified>;

/// What earlier runs know about the output directory.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    /// From the (durable) manifest.
    pub(crate) durable: Previous,
    /// From a partial manifest left by a run that did not finish: files
    /// warren placed, not known to have reached the disk.
    pub(crate) pending: Previous,
}

impl History {
    /// Reads the manifest at `path` and the partial one beside it, if any.
    pub(crate) fn read(path: &Path) -> History {
        History {
            durable: read_previous(path),
            pending: read_previous(&partial_path(path)),
        }
    }
}

/// Where a run writes its manifest until it is made durable:
/// `<manifest>.partial`.
pub(crate) fn partial_path(manifest: &Path) -> PathBuf {
    let mut name = manifest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Reads a previous manifest: what warren last verified for each URL and
/// path. A missing file is an empty manifest; unreadable lines, and lines
/// that verified nothing, are skipped.
pub(crate) fn read_previous(path: &Path) -> Previous {
    let Ok(file) = File::open(path) else {
        return HashMap::new();
    };
    let mut known = HashMap::new();
    for line in BufReader::new(file)
        .lines()
        .map_while(std::result::Result::ok)
    {
        if let Ok(record) = serde_json::from_str::<ManifestRecord>(&line)
            && let Some(verified) = record.verified()
        {
            known.insert((record.url, record.path), verified);
        }
    }
    known
}

/// Makes everything written to the file system holding `dir` durable, in
/// one call: `syncfs(2)`, what `sync -f DIR` does. One call for the whole
/// job instead of one `fsync` per file (group commit). Blocking.
///
/// # Errors
/// [`Error::Write`] when `dir` cannot be opened or the file system reports
/// a write-back failure.
pub(crate) fn sync_file_system(dir: &Path) -> Result<()> {
    let write_error = |e: std::io::Error| Error::Write {
        output: dir.display().to_string(),
        source: e,
    };
    let handle = File::open(dir).map_err(write_error)?;
    rustix::fs::syncfs(&handle).map_err(|e| write_error(e.into()))
}

/// The job's one durability point: makes every file written to the output
/// file system durable with one `syncfs` (the workers' files in shared
/// mode too: they closed them, which handed their data to the file system,
/// and on NFS to the server), and only then the manifest that lists them,
/// so a manifest never names a file that a power cut can take back.
///
/// Returns what the run recorded.
///
/// # Errors
/// [`Error::Write`] when syncing or writing the manifest fails.
pub(crate) async fn make_durable(out_dir: &Path, mut manifest: ManifestWriter) -> Result<Records> {
    let out_dir = out_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        sync_file_system(&out_dir)?;
        manifest.commit()?;
        Ok(manifest.into_records())
    })
    .await
    .expect("syncing does not panic") // invariant: both calls return their failures
}

/// Syncs a directory, so that names just created or renamed in it survive
/// a power cut.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How many URLs ended each way in a run, and the bytes downloaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Downloaded and verified.
    pub ok: u64,
    /// Already present and matching, or exact repeats.
    pub skipped: u64,
    /// Not downloaded.
    pub failed: u64,
    /// Bytes downloaded (of the `ok` files).
    pub bytes: u64,
}

impl Tally {
    fn count(&mut self, record: &ManifestRecord) {
        match record.status {
            ItemStatus::Ok => {
                self.ok += 1;
                self.bytes += record.bytes;
            }
            ItemStatus::Skipped => self.skipped += 1,
            ItemStatus::Failed => self.failed += 1,
        }
    }
}

/// What a run recorded: its counts, and its manifest lines on disk, from
/// which the failures are read back in list order.
#[derive(Debug, Clone)]
pub struct Records {
    /// How many ended each way.
    pub tally: Tally,
    /// The file holding the lines (the manifest, or an anonymous file).
    file: Arc<File>,
    /// The failed lines: (the URL's place in the list, where its line
    /// starts), in list order. The writer's own `Vec`: made an
    /// `Arc<[_]>`, it would be copied, both copies held at once (16 MB
    /// each for a million failed URLs).
    failures: Arc<Vec<(u64, u64)>>,
}

impl Records {
    /// The failed records, in list order (exact repeats after the rest),
    /// read back from the file.
    pub fn failures(&self) -> impl Iterator<Item = std::io::Result<ManifestRecord>> + '_ {
        let mut reader = BufReader::new(&*self.file);
        // Where the reader is: lines are read near each other, mostly in
        // order, so a short seek keeps the buffer.
        let mut at: Option<u64> = None;
        let mut line = String::new();
        self.failures.iter().map(move |&(_, offset)| {
            use std::io::Seek;
            match at {
                Some(at) => reader.seek_relative(offset as i64 - at as i64)?,
                None => {
                    reader.seek(std::io::SeekFrom::Start(offset))?;
                }
            }
            line.clear();
            let read = reader.read_line(&mut line)?;
            at = Some(offset + read as u64);
            serde_json::from_str(&line).map_err(std::io::Error::other)
        })
    }
}

/// Appends records to the manifest as items finish (to its partial file),
/// or without `--manifest` to an anonymous temporary file; counts them.
#[derive(Debug)]
pub(crate) struct ManifestWriter {
    /// The manifest's own name; the lines go to its partial name until
    /// [`ManifestWriter::commit`]. `None`: no manifest.
    path: Option<PathBuf>,
    /// Where the lines are, when the file has a name (a manifest's partial
    /// file, or a job's records file): each line is flushed to it at once,
    /// so a killed run leaves them for `producer attach`.
    named: Option<PathBuf>,
    out: Option<BufWriter<File>>,
    /// The same file, to read the lines back.
    file: Arc<File>,
    /// Bytes written so far: where the next line starts.
    written: u64,
    tally: Tally,
    failures: Vec<(u64, u64)>,
}

impl ManifestWriter {
    /// A writer for `path` (its partial file is truncated), or, without
    /// one, for an anonymous file in `out_dir`.
    ///
    /// # Errors
    /// [`Error::Write`] when the file cannot be created.
    pub(crate) fn create(path: Option<&Path>, out_dir: &Path) -> Result<Self> {
        let file = match path {
            Some(path) => create_partial(path)?,
            None => anonymous_file(out_dir)?,
        };
        let named = path.map(partial_path);
        Self::writing_to(path, named, file, 0)
    }

    /// A writer for job `job`, which outlives its producer: the lines go
    /// to the manifest's partial file, or without `--manifest` to the
    /// job's records file in the temporary area (see [`records_path`]), so
    /// that `producer attach` finds them.
    ///
    /// # Errors
    /// [`Error::Write`] when the file cannot be created.
    pub(crate) fn create_for_job(path: Option<&Path>, out_dir: &Path, job: &JobId) -> Result<Self> {
        if path.is_some() {
            return Self::create(path, out_dir);
        }
        let named = records_path(out_dir, job);
        let file = create_lines_file(&named)?;
        Self::writing_to(None, Some(named), file, 0)
    }

    /// Takes up the lines a killed run left at `named` (see
    /// [`ManifestWriter::lines_path`]) for the manifest at `path`: keeps
    /// their first `length` bytes (the lines its checkpoint covers), drops
    /// the rest, and counts them again; `place_of` gives each failed
    /// line's place in the list.
    ///
    /// # Errors
    /// [`Error::Write`] when the file cannot be read, or is shorter than
    /// `length`.
    pub(crate) fn reopen(
        path: Option<&Path>,
        named: &Path,
        length: u64,
        place_of: impl Fn(&ManifestRecord) -> Option<usize>,
    ) -> Result<Self> {
        let write_error = |source| Error::Write {
            output: named.display().to_string(),
            source,
        };
        let mut file = File::options()
            .read(true)
            .write(true)
            .open(named)
            .map_err(write_error)?;
        let found = file.metadata().map_err(write_error)?.len();
        if found < length {
            return Err(write_error(std::io::Error::other(format!(
                "it holds {found} bytes, fewer than the {length} its job's checkpoint covers"
            ))));
        }
        file.set_len(length).map_err(write_error)?;
        let mut writer = Self::writing_to(
            path,
            Some(named.to_owned()),
            file.try_clone().map_err(write_error)?,
            0,
        )?;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(write_error)?;
        for line in BufReader::new(&file).split(b'\n') {
            let line = line.map_err(write_error)?;
            let record: ManifestRecord =
                serde_json::from_slice(&line).map_err(|e| write_error(std::io::Error::other(e)))?;
            if record.status == ItemStatus::Failed {
                let place = place_of(&record).unwrap_or(usize::MAX);
                writer.failures.push((place as u64, writer.written));
            }
            writer.written += line.len() as u64 + 1;
            writer.tally.count(&record);
        }
        if let Some(out) = &mut writer.out {
            out.get_mut()
                .seek(std::io::SeekFrom::End(0))
                .map_err(write_error)?;
        }
        Ok(writer)
    }

    fn writing_to(
        path: Option<&Path>,
        named: Option<PathBuf>,
        file: File,
        written: u64,
    ) -> Result<Self> {
        let reader = file.try_clone().map_err(|e| Error::Write {
            output: "the record of the downloads".into(),
            source: e,
        })?;
        Ok(ManifestWriter {
            path: path.map(Path::to_owned),
            named,
            out: Some(BufWriter::new(file)),
            file: Arc::new(reader),
            written,
            tally: Tally::default(),
            failures: Vec::new(),
        })
    }

    /// Makes room for `records` more records without growing.
    pub(crate) fn reserve(&mut self, records: usize) {
        self.failures.reserve_exact(records);
    }

    /// Where the lines are written, if the file has a name.
    pub(crate) fn lines_path(&self) -> Option<&Path> {
        self.named.as_deref()
    }

    /// Bytes of complete lines written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Syncs the lines written so far to disk (for a checkpoint that
    /// counts them).
    ///
    /// # Errors
    /// [`Error::Write`] on a local I/O failure.
    pub(crate) fn sync(&self) -> Result<()> {
        let Some(out) = &self.out else {
            return Ok(());
        };
        out.get_ref().sync_data().map_err(|e| Error::Write {
            output: self.output(),
            source: e,
        })
    }

    /// Where the lines are written, for error messages.
    fn output(&self) -> String {
        match &self.named {
            Some(path) => path.display().to_string(),
            None => "the temporary record of the downloads".into(),
        }
    }

    /// Writes the record of the URL at `place` in the list (exact repeats
    /// after the others), and flushes it to a manifest's partial file.
    pub(crate) fn record(&mut self, place: usize, record: &ManifestRecord) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| Error::Write {
            output: self.output(),
            source: e.into(),
        })?;
        line.push(b'\n');
        let Some(out) = &mut self.out else {
            return Err(Error::Write {
                output: self.output(),
                source: std::io::Error::other("the manifest was already committed"),
            });
        };
        let written = out.write_all(&line).and_then(|()| match self.named {
            // A killed run still leaves its lines.
            Some(_) => out.flush(),
            None => Ok(()),
        });
        if let Err(e) = written {
            return Err(Error::Write {
                output: self.output(),
                source: e,
            });
        }
        if record.status == ItemStatus::Failed {
            self.failures.push((place as u64, self.written));
        }
        self.written += line.len() as u64;
        self.tally.count(record);
        Ok(())
    }

    /// The counts so far.
    #[cfg(test)]
    pub(crate) fn tally(&self) -> Tally {
        self.tally
    }

    /// Makes the manifest durable under its own name: syncs the partial
    /// file, renames it over the manifest and syncs the directory. Call it
    /// only after the files it lists are durable ([`sync_file_system`]).
    /// Without a manifest, only flushes the lines. Blocking.
    ///
    /// # Errors
    /// [`Error::Write`] for a local I/O failure; the partial file is then
    /// left in place.
    pub(crate) fn commit(&mut self) -> Result<()> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let write_error = |path: &Path, e: std::io::Error| Error::Write {
            output: path.display().to_string(),
            source: e,
        };
        let Some(path) = &self.path else {
            out.into_inner().map(drop).map_err(|e| Error::Write {
                output: self.output(),
                source: e.into_error(),
            })?;
            // A job's records file: done with; still read through `file`.
            // Its temporary area goes too if that leaves it empty.
            if let Some(named) = &self.named {
                let _ = std::fs::remove_file(named);
                if let Some(temp_dir) = named.parent() {
                    let _ = std::fs::remove_dir(temp_dir);
                }
            }
            return Ok(());
        };
        let partial = partial_path(path);
        let file = out
            .into_inner()
            .map_err(|e| write_error(&partial, e.into_error()))?;
        file.sync_all().map_err(|e| write_error(&partial, e))?;
        std::fs::rename(&partial, path).map_err(|e| write_error(path, e))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        sync_dir(dir).map_err(|e| write_error(dir, e))
    }

    /// What was recorded, once [committed](ManifestWriter::commit).
    pub(crate) fn into_records(mut self) -> Records {
        self.failures.sort_unstable();
        Records {
            tally: self.tally,
            file: self.file,
            failures: Arc::new(self.failures),
        }
    }
}

/// A new file in `dir` that has no name: created under a unique one and
/// removed at once, so nothing is left behind whatever becomes of the
/// producer.
fn anonymous_file(dir: &Path) -> Result<File> {
    let path = dir.join(format!(".warren-records-{}", uuid::Uuid::new_v4().simple()));
    let write_error = |e| Error::Write {
        output: path.display().to_string(),
        source: e,
    };
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(write_error)?;
    std::fs::remove_file(&path).map_err(write_error)?;
    Ok(file)
}

/// Where a job that outlives its producer keeps its lines without
/// `--manifest`: `OUT/.warren-tmp/<job>-records`, removed with the job's
/// other temporary files.
pub(crate) fn records_path(out_dir: &Path, job: &JobId) -> PathBuf {
    out_dir.join(TEMP_DIR).join(format!("{job}-records"))
}

/// Creates (truncates) the partial file of the manifest at `path`.
fn create_partial(path: &Path) -> Result<File> {
    create_lines_file(&partial_path(path))
}

/// Creates (truncates) the file at `partial`, and its directory.
fn create_lines_file(partial: &Path) -> Result<File> {
    if let Some(parent) = partial.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::Write {
            output: parent.display().to_string(),
            source: e,
        })?;
    }
    // Read back for the summary, so opened for reading too.
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(partial)
        .map_err(|e| Error::Write {
            output: partial.display().to_string(),
            source: e,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(url: &str, status: ItemStatus) -> ManifestRecord {
        ManifestRecord {
            url: url.into(),
            path: "a.jpg".into(),
            status,
            bytes: 3,
            sha256: Some("ab".into()),
            http_status: Some(200),
            attempts: 1,
            error: None,
            last_ok: None,
        }
    }

    #[test]
    fn lines_are_pinned_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m/manifest.jsonl");
        let mut writer = ManifestWriter::create(Some(&path), dir.path()).unwrap();
        writer
            .record(0, &record("https://h/a", ItemStatus::Ok))
            .unwrap();
        writer
            .record(0, &record("https://h/b", ItemStatus::Failed))
            .unwrap();
        assert!(
            !path.exists(),
            "nothing under the manifest's name before commit"
        );
        let partial = std::fs::read_to_string(partial_path(&path)).unwrap();
        writer.commit().unwrap();
        assert!(!partial_path(&path).exists(), "renamed, not copied");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, partial);
        assert_eq!(
            text.lines().next().unwrap(),
            r#"{"url":"https://h/a","path":"a.jpg","status":"ok","bytes":3,"sha256":"ab","http_status":200,"attempts":1,"error":null}"#
        );
        std::fs::write(&path, format!("{text}not json\n")).unwrap();
        let previous = read_previous(&path);
        assert_eq!(
            previous.len(),
            1,
            "failed records without last_ok and bad lines are not kept"
        );
        assert_eq!(previous[&("https://h/a".into(), "a.jpg".into())].bytes, 3);
        assert!(read_previous(&dir.path().join("none")).is_empty());
    }

    #[test]
    fn a_failed_line_carries_the_last_verified_file_forward() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.jsonl");
        let mut writer = ManifestWriter::create(Some(&path), dir.path()).unwrap();
        let refused = ManifestRecord {
            bytes: 0,
            sha256: None,
            error: Some("differs".into()),
            last_ok: Some(Verified {
                bytes: 3,
                sha256: "ab".into(),
            }),
            ..record("https://h/a", ItemStatus::Failed)
        };
        writer.record(0, &refused).unwrap();
        writer.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim_end(),
            r#"{"url":"https://h/a","path":"a.jpg","status":"failed","bytes":0,"sha256":null,"http_status":200,"attempts":1,"error":"differs","last_ok":{"bytes":3,"sha256":"ab"}}"#
        );
        // The next run reads it back, and so on for every later run.
        let previous = History::read(&path).durable;
        assert_eq!(
            previous[&("https://h/a".into(), "a.jpg".into())],
            Verified {
                bytes: 3,
                sha256: "ab".into()
            }
        );
    }

    #[test]
    fn a_run_that_never_committed_leaves_only_a_partial_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.jsonl");
        let mut first = ManifestWriter::create(Some(&path), dir.path()).unwrap();
        first
            .record(0, &record("https://h/a", ItemStatus::Ok))
            .unwrap();
        first.commit().unwrap();
        // The next run is killed after one line: the durable manifest is
        // the first run's, and the killed run's line is only pending.
        let mut killed = ManifestWriter::create(Some(&path), dir.path()).unwrap();
        killed
            .record(
                0,
                &ManifestRecord {
                    sha256: Some("cd".into()),
                    ..record("https://h/a", ItemStatus::Ok)
                },
            )
            .unwrap();
        drop(killed);
        let history = History::read(&path);
        let key = ("https://h/a".to_owned(), "a.jpg".to_owned());
        assert_eq!(history.durable[&key].sha256, "ab");
        assert_eq!(history.pending[&key].sha256, "cd");
    }

    #[test]
    fn a_job_carried_on_keeps_the_lines_its_checkpoint_counts_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::parse("j").unwrap();
        let mut first = ManifestWriter::create_for_job(None, dir.path(), &job).unwrap();
        let lines = first.lines_path().unwrap().to_owned();
        assert_eq!(lines, records_path(dir.path(), &job));
        let failed = ManifestRecord {
            error: Some("gone".into()),
            ..record("https://h/b", ItemStatus::Failed)
        };
        first
            .record(0, &record("https://h/a", ItemStatus::Ok))
            .unwrap();
        first.record(1, &failed).unwrap();
        first.sync().unwrap();
        let checkpointed = first.written();
        // Written after the checkpoint, then the producer died.
        first
            .record(2, &record("https://h/c", ItemStatus::Ok))
            .unwrap();
        drop(first);

        let place_of = |r: &ManifestRecord| (r.url == "https://h/b").then_some(1);
        let mut again = ManifestWriter::reopen(None, &lines, checkpointed, place_of).unwrap();
        assert_eq!(again.written(), checkpointed);
        again
            .record(2, &record("https://h/d", ItemStatus::Ok))
            .unwrap();
        let text = std::fs::read_to_string(&lines).unwrap();
        let urls: Vec<&str> = text.lines().map(|l| &l[8..19]).collect();
        assert_eq!(urls, ["https://h/a", "https://h/b", "https://h/d"]);
        again.commit().unwrap();
        assert!(!lines.exists(), "a job's records file goes with the job");
        let records = again.into_records();
        let tally = Tally {
            ok: 2,
            failed: 1,
            bytes: 6,
            ..Tally::default()
        };
        assert_eq!(records.tally, tally);
        let failures: Vec<String> = records.failures().map(|r| r.unwrap().url).collect();
        assert_eq!(
            failures,
            ["https://h/b"],
            "read back after the file is gone"
        );
        let short = ManifestWriter::reopen(None, &dir.path().join("none"), 0, place_of);
        assert!(short.is_err());
    }

    #[test]
    fn the_output_file_system_can_be_synced() {
        let dir = tempfile::tempdir().unwrap();
        sync_file_system(dir.path()).unwrap();
        let err = sync_file_system(&dir.path().join("none")).unwrap_err();
        assert!(err.to_string().contains("none"), "{err}");
    }

    #[test]
    fn failures_are_read_back_in_list_order_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        for path in [Some(dir.path().join("manifest.jsonl")), None] {
            let mut writer = ManifestWriter::create(path.as_deref(), dir.path()).unwrap();
            // Written as outcomes come, not in list order.
            let failed = |url: &str| ManifestRecord {
                error: Some(format!("{url} failed")),
                ..record(url, ItemStatus::Failed)
            };
            writer.record(3, &failed("https://h/d")).unwrap();
            writer
                .record(0, &record("https://h/a", ItemStatus::Ok))
                .unwrap();
            writer.record(1, &failed("https://h/b")).unwrap();
            writer
                .record(2, &record("https://h/c", ItemStatus::Skipped))
                .unwrap();
            writer.commit().unwrap();
            let records = writer.into_records();
            let tally = Tally {
                ok: 1,
                skipped: 1,
                failed: 2,
                bytes: 3,
            };
            assert_eq!(records.tally, tally);
            let urls: Vec<String> = records.failures().map(|r| r.unwrap().url).collect();
            assert_eq!(urls, ["https://h/b", "https://h/d"], "{path:?}");
            // Read again, the same.
            assert_eq!(records.failures().count(), 2);
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["manifest.jsonl"], "the anonymous file has no name");
    }
}
