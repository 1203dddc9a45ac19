//! Reading the sources of sums by reference, for the producer (the header
//! and the version pin) and the workers (their ranges): files under a
//! shared directory, `http(s)://` URLs with Range support, and S3 objects.
//!
//! HTTP and S3 go through `object_store` (Apache Arrow's), which does range
//! requests, request signing and S3-compatible endpoints; S3 is configured
//! from the environment the way AWS's own tools are (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`). Shared files
//! are opened with `openat2(RESOLVE_BENEATH)`, so neither `..` nor a
//! symbolic link can lead out of the shared directory, and read with
//! positioned reads.
//!
//! This module neither retries nor sums: callers decide both. Its errors
//! say what went wrong in the caller's terms: [`Error::SourceChanged`],
//! [`Error::SourceRefused`] (retrying cannot help), [`Error::SourceRead`]
//! (another attempt may succeed).

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, RetryConfig};

use crate::error::{Error, Result};
use crate::protocol::{SourceRef, VersionPin};

/// Longest a single range request may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Time to establish a connection to an HTTP server or S3 endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The object stores in use, one per HTTP origin or S3 bucket, so that
/// connections are pooled across the tasks of a job.
#[derive(Default)]
pub struct Stores {
    by_base: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// A remote source: its store and its path there.
#[derive(Debug, Clone)]
pub struct RemoteObject {
    /// The store (HTTP origin or S3 bucket).
    pub store: Arc<dyn ObjectStore>,
    /// The object's path within the store.
    pub path: ObjectPath,
    /// The source, as shown to users.
    pub name: String,
}

impl Stores {
    /// The store and path of an HTTP or S3 source.
    ///
    /// # Errors
    /// [`Error::SourceRefused`] for a shared source, an unusable URL or an
    /// S3 configuration `object_store` refuses.
    pub fn remote(&self, source: &SourceRef) -> Result<RemoteObject> {
        let name = source.to_string();
        let refused = |reason: String| Error::SourceRefused {
            input: name.clone(),
            reason,
        };
        let (base, path) = match source {
            SourceRef::Shared { .. } => {
                return Err(refused("a shared file is not a remote object".into()));
            }
            SourceRef::Http { url } => {
                let parsed = url::Url::parse(url).map_err(|e| refused(e.to_string()))?;
                let origin = parsed.origin().ascii_serialization();
                let path = ObjectPath::from_url_path(parsed.path())
                    .map_err(|e| refused(format!("its path cannot be read: {e}")))?;
                (origin, path)
            }
            SourceRef::S3 { bucket, key } => {
                let path = ObjectPath::parse(key)
                    .map_err(|e| refused(format!("its key cannot be used: {e}")))?;
                (format!("s3://{bucket}"), path)
            }
        };
        let mut stores = self.by_base.lock().unwrap_or_else(PoisonError::into_inner);
        let store = match stores.get(&base) {
            Some(store) => Arc::clone(store),
            None => {
                let store = build_store(source, &base).map_err(|e| {
                    refused(format!(
                        "cannot set up its client: {}",
                        crate::display_chain(&e)
                    ))
                })?;
                stores.insert(base, Arc::clone(&store));
                store
            }
        };
        Ok(RemoteObject { store, path, name })
    }
}

/// Plain `http://` is allowed: an `http://` URL, or an S3-compatible store
/// named by an `http://` `AWS_ENDPOINT_URL`, is what the user asked for.
fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_allow_http(true)
}

/// No retries inside `object_store`: the callers retry whole ranges, with
/// their own bound and backoff, so that one mechanism decides.
fn no_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        retry_timeout: Duration::ZERO,
        ..RetryConfig::default()
    }
}

fn build_store(
    source: &SourceRef,
    base: &str,
) -> std::result::Result<Arc<dyn ObjectStore>, object_store::Error> {
    Ok(match source {
        SourceRef::S3 { bucket, .. } => {
            let builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(client_options())
                .with_retry(no_retries());
            Arc::new(builder.build()?)
        }
        _ => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(base)
                .with_client_options(client_options())
                .with_retry(no_retries())
                .build()?,
        ),
    })
}

impl RemoteObject {
    /// Starts reading `range`: the object's metadata as the response
    /// describes it (size, ETag, Last-Modified) and the bytes as a stream.
    /// With `pin`, the object must still be that version.
    ///
    /// # Errors
    /// [`Error::SourceRefused`] when the server ignores Range requests,
    /// [`Error::SourceChanged`] when the object is another version,
    /// [`Error::SourceRead`] for anything else (not found, denied, I/O).
    pub async fn get_range(
        &self,
        range: Range<u64>,
        pin: Option<&VersionPin>,
    ) -> Result<(ObjectMeta, BoxStream<'static, object_store::Result<Bytes>>)> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: pin.and_then(|p| p.etag.clone()),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&self.path, options)
            .await
            .map_err(|e| self.classify(range.clone(), e))?;
        if let Some(pin) = pin {
            check_remote_pin(pin, &result.meta, &self.name)?;
        }
        let meta = result.meta.clone();
        Ok((meta, result.into_stream()))
    }

    /// The object's version and its first `len` bytes (fewer if it is
    /// shorter), with one range request.
    ///
    /// # Errors
    /// As [`RemoteObject::get_range`].
    pub async fn read_prefix(&self, len: u64) -> Result<(VersionPin, Vec<u8>)> {
        use futures_util::StreamExt;
        let (meta, mut stream) = self.get_range(0..len, None).await?;
        let mut head = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.read_error(0..len, e))?;
            head.extend_from_slice(&chunk);
        }
        Ok((remote_pin(&meta), head))
    }

    /// The error for a failed read of `range`.
    pub fn read_error(
        &self,
        range: Range<u64>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::SourceRead {
            input: self.name.clone(),
            start: range.start,
            end: range.end,
            source: cause.into(),
        }
    }

    fn classify(&self, range: Range<u64>, error: object_store::Error) -> Error {
        match error {
            object_store::Error::NotSupported { .. } => Error::SourceRefused {
                input: self.name.clone(),
                reason: "the server ignores HTTP Range requests (it sent the whole file for a \
                         range): workers read their own slices with Range requests, so serve the \
                         file from a server that supports them (206 Partial Content)"
                    .into(),
            },
            object_store::Error::Precondition { .. } => Error::SourceChanged {
                input: self.name.clone(),
                detail: "(its ETag no longer matches)".into(),
            },
            other => self.read_error(range, other),
        }
    }
}

/// The version of a remote object as a response describes it. Without an
/// ETag, the Last-Modified date; `object_store` reports a missing one as
/// the epoch, which pins nothing.
pub fn remote_pin(meta: &ObjectMeta) -> VersionPin {
    let last_modified = (meta.e_tag.is_none() && meta.last_modified.timestamp() != 0)
        .then(|| httpdate::fmt_http_date(SystemTime::from(meta.last_modified)));
    VersionPin {
        size: meta.size,
        mtime_ns: None,
        etag: meta.e_tag.clone(),
        last_modified,
    }
}

/// Whether a pin can tell one version from another beyond its size.
pub fn pins_a_version(pin: &VersionPin) -> bool {
    pin.mtime_ns.is_some() || pin.etag.is_some() || pin.last_modified.is_some()
}

/// [`Error::SourceChanged`] for `input`, saying what differs.
fn changed(input: &str, detail: String) -> Error {
    Error::SourceChanged {
        input: input.to_owned(),
        detail,
    }
}

/// [`Error::SourceRead`] for a shared file that cannot be opened or
/// examined (no byte range is involved yet).
fn file_error(input: &str, source: std::io::Error) -> Error {
    Error::SourceRead {
        input: input.to_owned(),
        start: 0,
        end: 0,
        source: Box::new(source),
    }
}

/// Checks the size every pin has.
fn check_size(pin: &VersionPin, size: u64, input: &str) -> Result<()> {
    if size != pin.size {
        return Err(changed(
            input,
            format!("(it was {} bytes, now {size})", pin.size),
        ));
    }
    Ok(())
}

/// Checks a remote object's metadata against the pin.
///
/// # Errors
/// [`Error::SourceChanged`] naming what differs.
pub fn check_remote_pin(pin: &VersionPin, meta: &ObjectMeta, input: &str) -> Result<()> {
    check_size(pin, meta.size, input)?;
    if let Some(etag) = &pin.etag
        && meta.e_tag.as_ref() != Some(etag)
    {
        let now = meta.e_tag.as_deref().unwrap_or("none");
        return Err(changed(input, format!("(its ETag was {etag}, now {now})")));
    }
    if let Some(date) = &pin.last_modified {
        let now = httpdate::fmt_http_date(SystemTime::from(meta.last_modified));
        if &now != date {
            return Err(changed(input, format!("(last modified {date}, now {now})")));
        }
    }
    Ok(())
}

/// Opens `relative` inside `dir` for reading. The kernel resolves the path
/// beneath `dir` (`RESOLVE_BENEATH`): `..` or a symbolic link that leads
/// out of it is refused, whatever the path's spelling.
///
/// # Errors
/// [`Error::SourceRefused`] for a path that leads out of `dir` or is not a
/// regular file, [`Error::SourceRead`] when the file cannot be opened.
pub fn open_shared(dir: &Path, relative: &str) -> Result<File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};
    let input = format!("shared:{relative}");
    let dir_file = File::open(dir).map_err(|e| file_error(&input, e))?;
    let opened = openat2(
        &dir_file,
        relative,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    );
    let file = match opened {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::XDEV) => {
            return Err(Error::SourceRefused {
                input,
                reason: format!(
                    "the path leads out of this worker's shared directory {} \
                     (through .. or a symbolic link)",
                    dir.display()
                ),
            });
        }
        // No openat2 (a kernel before 5.6, or a seccomp filter that denies
        // it): check the resolved path instead.
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            open_checked(dir, relative, &input)?
        }
        Err(errno) => return Err(file_error(&input, errno.into())),
    };
    let meta = file.metadata().map_err(|e| file_error(&input, e))?;
    if !meta.is_file() {
        return Err(Error::SourceRefused {
            input,
            reason: "it is not a regular file".into(),
        });
    }
    Ok(file)
}

/// The fallback of [`open_shared`]: the canonical path must lie in the
/// canonical directory.
fn open_checked(dir: &Path, relative: &str, input: &str) -> Result<File> {
    let read_error = |source| file_error(input, source);
    let dir = std::fs::canonicalize(dir).map_err(&read_error)?;
    let path = std::fs::canonicalize(dir.join(relative)).map_err(&read_error)?;
    if !path.starts_with(&dir) {
        return Err(Error::SourceRefused {
            input: input.to_owned(),
            reason: format!(
                "the path leads out of this worker's shared directory {}",
                dir.display()
            ),
        });
    }
    File::open(&path).map_err(read_error)
}

/// A shared file's version: its size and modification time.
///
/// # Errors
/// The `fstat` error.
pub fn file_pin(file: &File) -> std::io::Result<VersionPin> {
    let meta = file.metadata()?;
    Ok(VersionPin {
        size: meta.len(),
        mtime_ns: Some(meta.mtime() * 1_000_000_000 + meta.mtime_nsec()),
        etag: None,
        last_modified: None,
    })
}

/// Checks an open shared file against the pin.
///
/// # Errors
/// [`Error::SourceChanged`] naming what differs, [`Error::SourceRead`] when
/// the file cannot be examined.
pub fn check_file_pin(pin: &VersionPin, file: &File, input: &str) -> Result<()> {
    let found = file_pin(file).map_err(|e| file_error(input, e))?;
    check_size(pin, found.size, input)?;
    if pin.mtime_ns.is_some() && found.mtime_ns != pin.mtime_ns {
        return Err(changed(input, "(its modification time changed)".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_paths_cannot_leave_the_directory() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.npy"), b"x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/in.bin"), b"12345678").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.npy"), dir.path().join("out"))
            .unwrap();
        std::os::unix::fs::symlink("sub/in.bin", dir.path().join("inside")).unwrap();

        assert!(open_shared(dir.path(), "sub/in.bin").is_ok());
        // A link that stays inside is fine.
        assert!(open_shared(dir.path(), "inside").is_ok());
        for escaping in ["out", "../x", "sub/../../x"] {
            let err = open_shared(dir.path(), escaping).unwrap_err();
            assert!(
                matches!(err, Error::SourceRefused { .. }),
                "{escaping}: {err}"
            );
            assert!(err.to_string().contains("leads out"), "{err}");
        }
        let err = open_shared(dir.path(), "sub").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = open_shared(dir.path(), "missing").unwrap_err();
        assert!(matches!(err, Error::SourceRead { .. }), "{err}");
    }

    #[test]
    fn a_changed_file_no_longer_matches_its_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        std::fs::write(&path, b"12345678").unwrap();
        let file = File::open(&path).unwrap();
        let pin = file_pin(&file).unwrap();
        check_file_pin(&pin, &file, "shared:x.bin").unwrap();
        std::fs::write(&path, b"123456789").unwrap();
        let err = check_file_pin(&pin, &file, "shared:x.bin").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the input changed while it was being summed: shared:x.bin"),
            "{err}"
        );
        // Same size, new modification time.
        let same_size = VersionPin {
            size: 9,
            ..pin.clone()
        };
        let err = check_file_pin(&same_size, &file, "shared:x.bin").unwrap_err();
        assert!(err.to_string().contains("modification time"), "{err}");
    }
}
