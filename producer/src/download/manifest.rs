//! The download manifest: one JSON line per URL saying what became of it.
//!
//! Lines are written as items finish, so a manifest is useful even after a
//! crash. The previous run's manifest (same path) is read first: it tells
//! whether a file already in the output directory is the one warren
//! downloaded, byte for byte.

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
}

/// Reads a previous manifest: the last good record (`ok` or `skipped`) of
/// each URL. A missing file is an empty manifest; unreadable lines are
/// skipped.
pub(crate) fn read_previous(path: &Path) -> HashMap<String, ManifestRecord> {
    let Ok(file) = File::open(path) else {
        return HashMap::new();
    };
    let mut records = HashMap::new();
    for line in BufReader::new(file)
        .lines()
        .map_while(std::result::Result::ok)
    {
        if let Ok(record) = serde_json::from_str::<ManifestRecord>(&line)
            && record.status != ItemStatus::Failed
        {
            records.insert(record.url.clone(), record);
        }
    }
    records
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
            "failed records and bad lines are not kept"
        );
        assert_eq!(previous["https://h/a"].bytes, 3);
        assert!(read_previous(&dir.path().join("none")).is_empty());
    }
}
