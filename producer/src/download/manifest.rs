//! The download manifest: one JSON line per URL saying what became of it.
//!
//! Lines are written as items finish, so a manifest is useful even after a
//! crash. The previous run's manifest (same path) is read first: it tells
//! whether a file already in the output directory is the one warren
//! downloaded, byte for byte. A `failed` line carries forward, in
//! `last_ok`, what warren last verified at its path, so that knowledge
//! survives runs that fail or refuse the file (the manifest is rewritten
//! by every run).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// Appends records to the manifest as items finish.
#[derive(Debug)]
pub(crate) struct ManifestWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl ManifestWriter {
    /// A writer for `path` (truncated), or one that writes nothing.
    pub(crate) fn create(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(ManifestWriter {
                path: PathBuf::new(),
                out: None,
            });
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::Write {
                output: parent.display().to_string(),
                source: e,
            })?;
        }
        let file = File::create(path).map_err(|e| Error::Write {
            output: path.display().to_string(),
            source: e,
        })?;
        Ok(ManifestWriter {
            path: path.to_owned(),
            out: Some(BufWriter::new(file)),
        })
    }

    /// Writes one line and flushes it.
    pub(crate) fn record(&mut self, record: &ManifestRecord) -> Result<()> {
        let Some(out) = &mut self.out else {
            return Ok(());
        };
        serde_json::to_writer(&mut *out, record)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush())
            .map_err(|e| Error::Write {
                output: self.path.display().to_string(),
                source: e,
            })
    }
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
        let mut writer = ManifestWriter::create(Some(&path)).unwrap();
        writer
            .record(&record("https://h/a", ItemStatus::Ok))
            .unwrap();
        writer
            .record(&record("https://h/b", ItemStatus::Failed))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
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
        let mut writer = ManifestWriter::create(Some(&path)).unwrap();
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
        writer.record(&refused).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim_end(),
            r#"{"url":"https://h/a","path":"a.jpg","status":"failed","bytes":0,"sha256":null,"http_status":200,"attempts":1,"error":"differs","last_ok":{"bytes":3,"sha256":"ab"}}"#
        );
        // The next run reads it back, and so on for every later run.
        let previous = read_previous(&path);
        assert_eq!(
            previous[&("https://h/a".into(), "a.jpg".into())],
            Verified {
                bytes: 3,
                sha256: "ab".into()
            }
        );
    }
}
