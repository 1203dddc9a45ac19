//! What to do about files already in the output directory, decided before
//! anything is published.
//!
//! A re-run trusts only what was made durable or what it verifies now
//! (docs/DOWNLOADS.md). A file that exists is skipped when its content
//! checks out: its SHA-256 equals the expected one when the list gives it,
//! or else its size and SHA-256 equal what warren verified there for that
//! URL, as the durable manifest says (carried forward through runs that
//! failed or refused it), or as the partial manifest of a run that never
//! finished says. Any other existing file is fetched again: a file nothing
//! is known about may be one a power cut left short or empty under its
//! final name, so it is never taken as complete unchecked. When the
//! download arrives, a file with the same content counts as done; one
//! with other content is replaced only with `--overwrite`, or when a run
//! that never finished put it there (warren's own, not made durable). A
//! file the durable manifest says warren downloaded, but which now holds
//! something else (edited since), is refused without `--overwrite`.
//! `--overwrite` still skips files that check out. Symbolic links are
//! never written through.
//!
//! [`Plan`] holds the outcome for the whole list: the entries and which
//! are to be fetched; the records of those skipped or refused go straight
//! to the manifest. Not here: reading the list ([`urls`](super::urls)) or
//! fetching.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::manifest::{History, ItemStatus, ManifestRecord, ManifestWriter, Verified};
use super::urls::{NamedEntry, UrlList};
use super::verify::hash_file;
use crate::error::Result;

/// What to do with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Download it.
    Fetch {
        /// What warren last verified at its name, to carry forward should
        /// the download fail (the file there may be edited meanwhile).
        last_ok: Option<Verified>,
        /// Whether the download may replace a file with other content at
        /// its name (`--overwrite`, or the file is one a run that never
        /// finished put there). Without it, such a file fails the download
        /// and stays.
        replace: bool,
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
    named: NamedEntry<'_>,
    history: &History,
    overwrite: bool,
) -> Decision {
    let target = named.path().under(out_dir);
    let key = (named.url().to_owned(), named.name().to_owned());
    let known = history.durable.get(&key).cloned();
    let pending = history.pending.get(&key);
    let refuse = |reason: String| Decision::Refuse {
        reason,
        last_ok: known.clone(),
    };
    if let Some(reason) = blocked_path(out_dir, named) {
        return refuse(reason);
    }
    let meta = match std::fs::symlink_metadata(&target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Decision::Fetch {
                last_ok: known,
                replace: overwrite,
            };
        }
        Err(e) => return refuse(format!("cannot inspect {}: {e}", target.display())),
    };
    if !meta.is_file() {
        return refuse(format!(
            "{} exists and is not a regular file",
            target.display()
        ));
    }
    match hash_file(&target) {
        Ok((bytes, sha256)) => {
            let found = Verified { bytes, sha256 };
            judge_existing(&target, named, found, known, pending, overwrite)
        }
        Err(e) => refuse(format!("cannot read {}: {e}", target.display())),
    }
}

/// Decides about the regular file at `target`, `found` to hold these bytes,
/// by what the list expects and what warren knows of its name: `known`
/// from the durable manifest, `pending` from a run that never finished.
fn judge_existing(
    target: &Path,
    named: NamedEntry<'_>,
    found: Verified,
    known: Option<Verified>,
    pending: Option<&Verified>,
    overwrite: bool,
) -> Decision {
    let Verified { bytes, sha256 } = found;
    let matches = |v: &Verified| v.bytes == bytes && v.sha256 == sha256;
    let fetch = |replace: bool| Decision::Fetch {
        last_ok: known.clone(),
        replace,
    };
    // Warren's own file from a run that never made it durable: checked
    // like any other, and repaired without asking if it is wrong.
    let ours = pending.is_some();
    let differs = |what: String| Decision::Refuse {
        reason: format!(
            "{} exists with other content ({what}); pass --overwrite to replace it",
            target.display()
        ),
        last_ok: known.clone(),
    };
    if let Some(expected) = named.sha256() {
        return if expected == sha256 {
            Decision::Skip { bytes, sha256 }
        } else if overwrite || ours {
            fetch(true)
        } else {
            differs(format!("sha256 {sha256}, expected {expected}"))
        };
    }
    if known.as_ref().is_some_and(matches) || pending.is_some_and(matches) {
        return Decision::Skip { bytes, sha256 };
    }
    if overwrite || ours {
        return fetch(true);
    }
    match &known {
        Some(verified) => differs(format!(
            "{bytes} bytes with sha256 {sha256}, but warren downloaded {} bytes with sha256 {} \
             from {}",
            verified.bytes,
            verified.sha256,
            named.url()
        )),
        // Nothing durable says what the file should hold: it may be one a
        // power cut damaged. Fetched again and compared when it arrives.
        None => fetch(false),
    }
}

/// Why the directories on the way to `named` cannot be used, if so: no
/// component may be a symbolic link (it could point outside the output
/// directory) or anything but a directory.
fn blocked_path(out_dir: &Path, named: NamedEntry<'_>) -> Option<String> {
    let mut on_the_way = out_dir.to_path_buf();
    let components: Vec<&str> = named.name().split('/').collect();
    for component in &components[..components.len() - 1] {
        on_the_way.push(component);
        match std::fs::symlink_metadata(&on_the_way) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Some(format!("{} is a symbolic link", on_the_way.display()));
            }
            Ok(meta) if !meta.is_dir() => {
                return Some(format!(
                    "{} exists and is not a directory",
                    on_the_way.display()
                ));
            }
            _ => {}
        }
    }
    None
}

/// The job's entries and, by slot (index in `named`), what is known of
/// each before anything is published. The outcomes are in the manifest,
/// not here: the plan's size is the list's, a few bytes a URL beyond the
/// entries themselves.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Every entry, in list order, exact repeats set apart (shared with
    /// the task publisher).
    pub(crate) named: Arc<UrlList>,
    /// Slots of the entries to download; task `i` is
    /// `named.get(to_fetch[i])`.
    pub(crate) to_fetch: Arc<Vec<u32>>,
    /// By slot, for the entries that have it: what warren last verified
    /// at the name ([`Decision::Fetch`]).
    pub(crate) last_ok: HashMap<usize, Verified>,
    /// By task: whether the download may replace other content at its
    /// name ([`Decision::Fetch`]).
    pub(crate) replace: Vec<bool>,
}

impl Plan {
    /// Decides for every entry, in order, with `decide` (which hashes the
    /// files that exist: blocking): skipped and refused ones get their
    /// record in `manifest` at once; the others are to fetch. The exact
    /// repeats get theirs after all the others.
    ///
    /// # Errors
    /// [`Error::Write`](crate::Error::Write) when the manifest cannot be
    /// written.
    pub(crate) fn new(
        named: UrlList,
        decide: impl Fn(NamedEntry<'_>) -> Decision,
        manifest: &mut ManifestWriter,
    ) -> Result<Plan> {
        // Room for every entry and record at once: a long list's vectors
        // never grow by copying (a copy leaves the old one's pages in the
        // heap), and room never written costs no memory.
        manifest.reserve(named.len() + named.repeats().count());
        let mut plan = Plan {
            to_fetch: Arc::default(),
            last_ok: HashMap::new(),
            replace: Vec::with_capacity(named.len()),
            named: Arc::default(),
        };
        let mut to_fetch = Vec::with_capacity(named.len());
        // Slots fit in `u32`: `UrlList` holds no more entries.
        for (slot, entry) in (0u32..).zip(named.iter()) {
            let record = match decide(entry) {
                Decision::Fetch { last_ok, replace } => {
                    to_fetch.push(slot);
                    plan.replace.push(replace);
                    if let Some(last_ok) = last_ok {
                        plan.last_ok.insert(slot as usize, last_ok);
                    }
                    continue;
                }
                Decision::Skip { bytes, sha256 } => ManifestRecord {
                    status: ItemStatus::Skipped,
                    bytes,
                    sha256: Some(sha256),
                    ..ManifestRecord::for_entry(entry)
                },
                Decision::Refuse { reason, last_ok } => ManifestRecord {
                    error: Some(reason),
                    last_ok,
                    ..ManifestRecord::for_entry(entry)
                },
            };
            manifest.record(slot as usize, &record)?;
        }
        record_repeats(&named, manifest)?;
        plan.named = Arc::new(named);
        plan.to_fetch = Arc::new(to_fetch);
        Ok(plan)
    }
}

/// Writes the records of the exact repeats in `named` to `manifest`,
/// each saying which entry it repeats, after every other entry.
///
/// # Errors
/// [`Error::Write`](crate::Error::Write) when the manifest cannot be
/// written.
fn record_repeats(named: &UrlList, manifest: &mut ManifestWriter) -> Result<()> {
    for (i, repeat) in named.repeats().enumerate() {
        let original = named.get(repeat.of);
        let record = ManifestRecord {
            url: repeat.entry.url().to_owned(),
            status: ItemStatus::Skipped,
            error: Some(format!("repeats {}: fetched once", original.origin())),
            ..ManifestRecord::for_entry(original)
        };
        manifest.record(named.len() + i, &record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::urls;
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;

    /// The list of one URL, `https://h/f`, saved as `name`.
    fn entry(name: &str, sha256: Option<String>) -> UrlList {
        let sha256 = sha256.map(|hex| format!(" sha256:{hex}"));
        let line = format!("https://h/f {name}{}", sha256.unwrap_or_default());
        let mut list = UrlList::default();
        urls::add_arguments(&[line], &mut list).unwrap();
        list
    }

    /// [`super::decide`] for the one entry of `list`.
    fn decide(out_dir: &Path, list: &UrlList, history: &History, overwrite: bool) -> Decision {
        super::decide(out_dir, list.get(0), history, overwrite)
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

    fn knowing(name: &str, data: &[u8]) -> History {
        History {
            durable: HashMap::from([(("https://h/f".to_owned(), name.to_owned()), verified(data))]),
            pending: HashMap::new(),
        }
    }

    /// What a run that never finished (killed, or a power cut) recorded.
    fn pending(name: &str, data: &[u8]) -> History {
        History {
            durable: HashMap::new(),
            pending: knowing(name, data).durable,
        }
    }

    fn fetch(last_ok: Option<Verified>, replace: bool) -> Decision {
        Decision::Fetch { last_ok, replace }
    }

    #[test]
    fn missing_files_are_fetched_and_verified_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let none = History::default();
        assert_eq!(
            decide(dir.path(), &entry("a", None), &none, false),
            fetch(None, false)
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
        // Regression, issue 16 item 10: --overwrite replaces only files
        // whose content differs; verified ones are skipped.
        assert_eq!(
            decide(dir.path(), &entry("a", None), &knowing("a", b"abc"), true),
            skip
        );
        assert_eq!(
            decide(dir.path(), &entry("a", Some(sha(b"abc"))), &none, true),
            skip
        );
        assert_eq!(
            decide(dir.path(), &entry("a", None), &knowing("a", b"xyz"), true),
            fetch(Some(verified(b"xyz")), true)
        );
        // Nothing to check it against: fetched, and replaced if it differs.
        assert_eq!(
            decide(dir.path(), &entry("a", None), &none, true),
            fetch(None, true)
        );
    }

    #[test]
    fn a_file_nothing_durable_vouches_for_is_fetched_again_never_trusted() {
        // Issue 13: after a power cut, a file can sit under its final name
        // with the wrong contents (short, zeros) and in no durable
        // manifest. It must not be skipped.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"\0\0\0").unwrap();
        assert_eq!(
            decide(dir.path(), &entry("a", None), &History::default(), false),
            fetch(None, false)
        );
        // What was verified for another name says nothing about this one.
        assert_eq!(
            decide(dir.path(), &entry("a", None), &knowing("b", b"xyz"), false),
            fetch(None, false)
        );
        // A run that never finished put it there and recorded other
        // content: warren's own file, damaged, so it is repaired.
        assert_eq!(
            decide(dir.path(), &entry("a", None), &pending("a", b"abc"), false),
            fetch(None, true)
        );
        // Its content checks out against that record: nothing to fetch.
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        assert_eq!(
            decide(dir.path(), &entry("a", None), &pending("a", b"abc"), false),
            Decision::Skip {
                bytes: 3,
                sha256: sha(b"abc"),
            }
        );
    }

    #[test]
    fn differing_files_are_not_overwritten_without_permission() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        let refused = decide(
            dir.path(),
            &entry("a", Some(sha(b"xyz"))),
            &History::default(),
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
            fetch(Some(verified(b"hello")), true)
        );
    }

    #[test]
    fn symlinks_and_directories_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let none = History::default();
        for name in ["link", "link/x", "d"] {
            let decision = decide(dir.path(), &entry(name, None), &none, true);
            assert!(
                matches!(decision, Decision::Refuse { .. }),
                "{name}: {decision:?}"
            );
        }
    }
}
