//! Moving a complete, verified file from `OUT/.warren-tmp/` to its final
//! name: the last step of every download, in both delivery modes, and the
//! only one that touches final names.
//!
//! Directories on the way are created one by one and never followed
//! through symbolic links (one could point outside the output directory).
//! Unless the caller allows replacing (`--overwrite`, or a file a run that
//! never finished left there), a final name is never replaced: the file is
//! linked under it, which fails if the name was taken in the meantime (by
//! another program, or a concurrent run), and the temporary name is then
//! removed. A name taken by a file with the same content counts as done;
//! any other is a failed download that says so. Not what the temporary
//! file's contents are: the caller verified them.

use std::io::ErrorKind;
use std::path::Path;

use warren::filename::RelativePath;

use super::verify::{Saved, hash_file};
use crate::error::{Error, Result};

/// Places the verified file at `temp` under `name` in `out_dir`, and
/// removes `temp` whatever happens. Blocking.
///
/// # Errors
/// [`Error::FileRejected`] fails the download (the name is taken by other
/// content, or a symbolic link or a file is in the way); [`Error::Write`]
/// is a local I/O failure, which ends the job.
pub(crate) fn place(
    out_dir: &Path,
    temp: &Path,
    name: &RelativePath,
    saved: Saved,
    overwrite: bool,
) -> Result<Saved> {
    let target = name.under(out_dir);
    let placed = make_parents(out_dir, name, &target).and_then(|()| {
        if overwrite {
            replace(temp, &target).map(|()| saved)
        } else {
            link_new(temp, &target, saved)
        }
    });
    // Gone after a rename; after a link, or a failure, still to be removed.
    let _ = std::fs::remove_file(temp);
    placed
}

/// A local I/O failure while placing the file at `target`.
fn write_error(target: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        output: target.display().to_string(),
        source,
    }
}

fn rejected(reason: String) -> Error {
    Error::FileRejected { reason }
}

/// Creates the directories of `name` under `out_dir` (on the way to
/// `target`), refusing to go through a symbolic link or anything that is
/// not a directory.
fn make_parents(out_dir: &Path, name: &RelativePath, target: &Path) -> Result<()> {
    let mut dir = out_dir.to_path_buf();
    let components: Vec<&str> = name.as_str().split('/').collect();
    for component in &components[..components.len() - 1] {
        dir.push(component);
        let Some(meta) = make_dir(&dir).map_err(write_error(target))? else {
            continue;
        };
        if meta.file_type().is_symlink() {
            return Err(rejected(format!(
                "{} is a symbolic link; not written through",
                dir.display()
            )));
        }
        if !meta.is_dir() {
            return Err(rejected(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Creates `dir` if it is missing (`None`); otherwise says what is there.
fn make_dir(dir: &Path) -> std::io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == ErrorKind::NotFound => match std::fs::create_dir(dir) {
            Ok(()) => Ok(None),
            // Made by someone else just now: look at what it is.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                std::fs::symlink_metadata(dir).map(Some)
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// `--overwrite`: replaces a file (or a symbolic link itself, which a
/// rename does not follow), never a directory.
fn replace(temp: &Path, target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => Err(rejected(format!(
            "{} exists and is a directory",
            target.display()
        ))),
        _ => std::fs::rename(temp, target).map_err(write_error(target)),
    }
}

/// Puts the file under a name that must be free (or hold the same
/// content already).
fn link_new(temp: &Path, target: &Path, saved: Saved) -> Result<Saved> {
    // A hard link never replaces an existing name, unlike a rename.
    match std::fs::hard_link(temp, target) {
        Ok(()) => return Ok(saved),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::Unsupported | ErrorKind::PermissionDenied
            ) =>
        {
            if rename_if_free(temp, target).map_err(write_error(target))? {
                return Ok(saved);
            }
        }
        Err(e) => return Err(write_error(target)(e)),
    }
    let meta = std::fs::symlink_metadata(target).map_err(write_error(target))?;
    let found = if meta.is_file() {
        Some(hash_file(target).map_err(write_error(target))?)
    } else {
        None
    };
    if found == Some((saved.bytes, saved.sha256.clone())) {
        return Ok(saved);
    }
    Err(rejected(format!(
        "{} exists with other content, which nothing warren made durable vouches for (or it \
         appeared while the job ran); pass --overwrite to replace it",
        target.display()
    )))
}

/// For file systems without hard links (a few network and FUSE ones):
/// checks that `target` is free, then renames. A file appearing between
/// the two is replaced there; nothing better is possible without links.
/// Whether the file was placed (`false`: the name is taken).
fn rename_if_free(temp: &Path, target: &Path) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(target) {
        Err(missing) if missing.kind() == ErrorKind::NotFound => {
            std::fs::rename(temp, target)?;
            Ok(true)
        }
        Err(other) => Err(other),
        Ok(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn saved(data: &[u8]) -> Saved {
        Saved {
            bytes: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
        }
    }

    /// Why placing was refused; panics on success or a local failure.
    fn rejection(placed: Result<Saved>) -> String {
        match placed {
            Err(Error::FileRejected { reason }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn temp(dir: &Path, data: &[u8]) -> std::path::PathBuf {
        let path = dir.join("temp");
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn a_free_name_gets_the_file_and_directories_are_made() {
        let dir = tempfile::tempdir().unwrap();
        let name = RelativePath::parse("a/b/f").unwrap();
        let temp = temp(dir.path(), b"data");
        let placed = place(dir.path(), &temp, &name, saved(b"data"), false).unwrap();
        assert_eq!(placed, saved(b"data"));
        assert_eq!(std::fs::read(dir.path().join("a/b/f")).unwrap(), b"data");
        assert!(!temp.exists());
    }

    #[test]
    fn a_name_taken_after_planning_is_never_replaced_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let name = RelativePath::parse("f").unwrap();
        std::fs::write(dir.path().join("f"), b"someone else's").unwrap();
        let temp = temp(dir.path(), b"data");
        let reason = rejection(place(dir.path(), &temp, &name, saved(b"data"), false));
        assert!(reason.contains("pass --overwrite"), "{reason}");
        assert_eq!(
            std::fs::read(dir.path().join("f")).unwrap(),
            b"someone else's"
        );
        assert!(!temp.exists(), "the temporary file is removed");

        // The same content there already is as good as placed.
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        let temp = self::temp(dir.path(), b"data");
        let placed = place(dir.path(), &temp, &name, saved(b"data"), false).unwrap();
        assert_eq!(placed, saved(b"data"));
        assert!(!temp.exists());

        // --overwrite replaces it.
        std::fs::write(dir.path().join("f"), b"old").unwrap();
        let temp = self::temp(dir.path(), b"new");
        let placed = place(dir.path(), &temp, &name, saved(b"new"), true).unwrap();
        assert_eq!(placed, saved(b"new"));
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"new");
    }

    #[test]
    fn symbolic_links_and_files_on_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        for (name, needle) in [
            ("link/f", "symbolic link"),
            ("file/f", "not a directory"),
            ("dir", "is a directory"),
        ] {
            let name = RelativePath::parse(name).unwrap();
            for overwrite in [false, true] {
                let temp = temp(dir.path(), b"data");
                let reason = rejection(place(dir.path(), &temp, &name, saved(b"data"), overwrite));
                assert!(
                    reason.contains(needle) || reason.contains("other content"),
                    "{reason}"
                );
                assert!(!temp.exists());
            }
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
