//! What to do about files already in the output directory, decided before
//! anything is published.
//!
//! A file that exists is skipped when it matches: its SHA-256 equals the
//! expected one when the list gives it, or else its size and SHA-256 equal
//! what the previous run's manifest recorded for that URL. With neither,
//! an existing file is taken as complete (warren only ever puts complete,
//! verified files under final names). A file that is known not to match is
//! never overwritten unless `--overwrite`. Symbolic links are never written
//! through.

use std::collections::HashMap;
use std::path::Path;

use super::files::hash_file;
use super::manifest::ManifestRecord;
use super::urls::NamedEntry;

/// What to do with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Download it.
    Fetch,
    /// It is there already.
    Skip {
        /// Size of the existing file.
        bytes: u64,
        /// SHA-256 of the existing file.
        sha256: String,
    },
    /// Neither download nor skip: the reason goes in the report.
    Refuse(String),
}

/// Decides for one entry.
pub(crate) fn decide(
    out_dir: &Path,
    named: &NamedEntry,
    previous: &HashMap<String, ManifestRecord>,
    overwrite: bool,
) -> Decision {
    let target = named.name.under(out_dir);
    // No component on the way may be a symbolic link: it could point
    // outside the output directory.
    let mut on_the_way = out_dir.to_path_buf();
    let components: Vec<&str> = named.name.as_str().split('/').collect();
    for component in &components[..components.len() - 1] {
        on_the_way.push(component);
        match std::fs::symlink_metadata(&on_the_way) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Decision::Refuse(format!("{} is a symbolic link", on_the_way.display()));
            }
            Ok(meta) if !meta.is_dir() => {
                return Decision::Refuse(format!(
                    "{} exists and is not a directory",
                    on_the_way.display()
                ));
            }
            _ => {}
        }
    }
    let meta = match std::fs::symlink_metadata(&target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Decision::Fetch,
        Err(e) => return Decision::Refuse(format!("cannot inspect {}: {e}", target.display())),
    };
    if !meta.is_file() {
        return Decision::Refuse(format!(
            "{} exists and is not a regular file",
            target.display()
        ));
    }
    if overwrite {
        return Decision::Fetch;
    }
    let (bytes, sha256) = match hash_file(&target) {
        Ok(found) => found,
        Err(e) => return Decision::Refuse(format!("cannot read {}: {e}", target.display())),
    };
    let differs = |what: String| {
        Decision::Refuse(format!(
            "{} exists with other content ({what}); pass --overwrite to replace it",
            target.display()
        ))
    };
    if let Some(expected) = &named.entry.sha256 {
        return if *expected == sha256 {
            Decision::Skip { bytes, sha256 }
        } else {
            differs(format!("sha256 {sha256}, expected {expected}"))
        };
    }
    if let Some(record) = previous.get(named.entry.url.as_str())
        && record.path == named.name.as_str()
        && (record.bytes != bytes || record.sha256.as_deref() != Some(sha256.as_str()))
    {
        return differs(format!(
            "{bytes} bytes, but the manifest recorded {} bytes for {}",
            record.bytes, record.url
        ));
    }
    Decision::Skip { bytes, sha256 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::manifest::ItemStatus;
    use crate::download::urls::UrlEntry;
    use sha2::{Digest, Sha256};
    use warren::filename::RelativePath;

    fn entry(name: &str, sha256: Option<String>) -> NamedEntry {
        NamedEntry {
            entry: UrlEntry {
                origin: "test".into(),
                url: url::Url::parse("https://h/f").unwrap(),
                name: None,
                sha256,
            },
            name: RelativePath::parse(name).unwrap(),
        }
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn missing_files_are_fetched_and_matching_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let none = HashMap::new();
        assert_eq!(
            decide(dir.path(), &entry("a", None), &none, false),
            Decision::Fetch
        );
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        assert_eq!(
            decide(dir.path(), &entry("a", None), &none, false),
            Decision::Skip {
                bytes: 3,
                sha256: sha(b"abc")
            }
        );
        assert!(matches!(
            decide(dir.path(), &entry("a", Some(sha(b"abc"))), &none, false),
            Decision::Skip { .. }
        ));
        assert_eq!(
            decide(dir.path(), &entry("a", None), &none, true),
            Decision::Fetch
        );
    }

    #[test]
    fn differing_files_are_not_overwritten_without_permission() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        let refused = decide(
            dir.path(),
            &entry("a", Some(sha(b"xyz"))),
            &HashMap::new(),
            false,
        );
        assert!(
            matches!(&refused, Decision::Refuse(r) if r.contains("--overwrite")),
            "{refused:?}"
        );
        let mut previous = HashMap::new();
        previous.insert(
            "https://h/f".to_owned(),
            ManifestRecord {
                url: "https://h/f".into(),
                path: "a".into(),
                status: ItemStatus::Ok,
                bytes: 5,
                sha256: Some(sha(b"hello")),
                http_status: Some(200),
                attempts: 1,
                error: None,
            },
        );
        let refused = decide(dir.path(), &entry("a", None), &previous, false);
        assert!(
            matches!(&refused, Decision::Refuse(r) if r.contains("manifest recorded 5 bytes")),
            "{refused:?}"
        );
        assert_eq!(
            decide(dir.path(), &entry("a", Some(sha(b"xyz"))), &previous, true),
            Decision::Fetch
        );
    }

    #[test]
    fn symlinks_and_directories_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let none = HashMap::new();
        for name in ["link", "link/x", "d"] {
            let decision = decide(dir.path(), &entry(name, None), &none, true);
            assert!(
                matches!(decision, Decision::Refuse(_)),
                "{name}: {decision:?}"
            );
        }
    }
}
