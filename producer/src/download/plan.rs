//! What to do about files already in the output directory, decided before
//! anything is published.
//!
//! A file that exists is skipped when it matches what is known about it:
//! its SHA-256 equals the expected one when the list gives it, or else its
//! size and SHA-256 equal what warren last verified there for that URL (as
//! the previous run's manifest says, carried forward through runs that
//! failed or refused it). With neither, an existing file is taken as
//! complete: warren only ever puts complete, verified files under final
//! names, and re-running the same command must not fetch everything again.
//! A file known not to match is never overwritten unless `--overwrite`.
//! Symbolic links are never written through.

use std::path::Path;

use super::files::hash_file;
use super::manifest::{Previous, Verified};
use super::urls::NamedEntry;

/// What to do with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Download it.
    Fetch {
        /// What warren last verified at its name, to carry forward should
        /// the download fail (the file there may be edited meanwhile).
        last_ok: Option<Verified>,
    },
    /// It is there already.
    Skip {
        /// Size of the existing file.
        bytes: u64,
        /// SHA-256 of the existing file.
        sha256: String,
    },
    /// Neither download nor skip: the reason goes in the report.
    Refuse {
        /// Why.
        reason: String,
        /// As for [`Decision::Fetch`].
        last_ok: Option<Verified>,
    },
}

/// Decides for one entry.
pub(crate) fn decide(
    out_dir: &Path,
    named: &NamedEntry,
    previous: &Previous,
    overwrite: bool,
) -> Decision {
    let target = named.name.under(out_dir);
    let known = previous
        .get(&(
            named.entry.url.as_str().to_owned(),
            named.name.as_str().to_owned(),
        ))
        .cloned();
    let refuse = |reason: String| Decision::Refuse {
        reason,
        last_ok: known.clone(),
    };
    // No component on the way may be a symbolic link: it could point
    // outside the output directory.
    let mut on_the_way = out_dir.to_path_buf();
    let components: Vec<&str> = named.name.as_str().split('/').collect();
    for component in &components[..components.len() - 1] {
        on_the_way.push(component);
        match std::fs::symlink_metadata(&on_the_way) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return refuse(format!("{} is a symbolic link", on_the_way.display()));
            }
            Ok(meta) if !meta.is_dir() => {
                return refuse(format!(
                    "{} exists and is not a directory",
                    on_the_way.display()
                ));
            }
            _ => {}
        }
    }
    let meta = match std::fs::symlink_metadata(&target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Decision::Fetch { last_ok: None };
        }
        Err(e) => return refuse(format!("cannot inspect {}: {e}", target.display())),
    };
    if !meta.is_file() {
        return refuse(format!(
            "{} exists and is not a regular file",
            target.display()
        ));
    }
    if overwrite {
        return Decision::Fetch { last_ok: known };
    }
    let (bytes, sha256) = match hash_file(&target) {
        Ok(found) => found,
        Err(e) => return refuse(format!("cannot read {}: {e}", target.display())),
    };
    let differs = |what: String| {
        refuse(format!(
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
    match &known {
        Some(verified) if verified.bytes == bytes && verified.sha256 == sha256 => {
            Decision::Skip { bytes, sha256 }
        }
        Some(verified) => differs(format!(
            "{bytes} bytes with sha256 {sha256}, but warren downloaded {} bytes with sha256 {} \
             from {}",
            verified.bytes, verified.sha256, named.entry.url
        )),
        // Nothing says what the file should hold: it was put there
        // complete (by warren, or by the user), so it stays.
        None => Decision::Skip { bytes, sha256 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::urls::UrlEntry;
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
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

    fn verified(data: &[u8]) -> Verified {
        Verified {
            bytes: data.len() as u64,
            sha256: sha(data),
        }
    }

    fn knowing(name: &str, data: &[u8]) -> Previous {
        HashMap::from([(("https://h/f".to_owned(), name.to_owned()), verified(data))])
    }

    #[test]
    fn missing_files_are_fetched_and_verified_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let none = HashMap::new();
        assert_eq!(
            decide(dir.path(), &entry("a", None), &none, false),
            Decision::Fetch { last_ok: None }
        );
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        let skip = Decision::Skip {
            bytes: 3,
            sha256: sha(b"abc"),
        };
        assert_eq!(
            decide(dir.path(), &entry("a", None), &knowing("a", b"abc"), false),
            skip
        );
        assert_eq!(
            decide(dir.path(), &entry("a", Some(sha(b"abc"))), &none, false),
            skip
        );
        assert_eq!(
            decide(dir.path(), &entry("a", None), &knowing("a", b"abc"), true),
            Decision::Fetch {
                last_ok: Some(verified(b"abc"))
            }
        );
    }

    #[test]
    fn a_file_nothing_is_known_about_is_taken_as_complete() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        let skip = Decision::Skip {
            bytes: 3,
            sha256: sha(b"abc"),
        };
        assert_eq!(
            decide(dir.path(), &entry("a", None), &HashMap::new(), false),
            skip
        );
        // What was verified for another name says nothing about this one.
        assert_eq!(
            decide(dir.path(), &entry("a", None), &knowing("b", b"xyz"), false),
            skip
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
            matches!(&refused, Decision::Refuse { reason, .. } if reason.contains("--overwrite")),
            "{refused:?}"
        );
        let previous = knowing("a", b"hello");
        let refused = decide(dir.path(), &entry("a", None), &previous, false);
        let Decision::Refuse { reason, last_ok } = &refused else {
            panic!("{refused:?}");
        };
        assert!(reason.contains("but warren downloaded 5 bytes"), "{reason}");
        // The refusal keeps what the file should be, for the next run.
        assert_eq!(last_ok, &Some(verified(b"hello")));
        assert_eq!(
            decide(dir.path(), &entry("a", Some(sha(b"xyz"))), &previous, true),
            Decision::Fetch {
                last_ok: Some(verified(b"hello"))
            }
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
                matches!(decision, Decision::Refuse { .. }),
                "{name}: {decision:?}"
            );
        }
    }
}
