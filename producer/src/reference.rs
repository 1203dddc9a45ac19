//! Sums by reference, the producer's side: find the source (a file in the
//! shared directory, an `http(s)://` URL, an `s3://` object), read only its
//! header, pin the version it saw, and cut the data into byte ranges that
//! the workers read themselves. The broker carries a few hundred bytes per
//! range, not the data.
//!
//! Everything here happens before the job touches the broker, so a bad
//! source (outside the shared directory, a server without Range support,
//! text input) leaves nothing behind.

use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use warren::Dtype;
use warren::protocol::{ByteOrder, RangeSpec, SourceRef, VersionPin};
use warren::source::{self, Stores};

use crate::error::{Error, Result};
use crate::input::npy::NpyReader;
use crate::input::raw::whole_elements;
use crate::input::{Format, NPY_MAGIC, Source};

/// Bytes per range task unless `--range-size` says otherwise: 1 TB makes
/// about 16,000 tasks.
pub const DEFAULT_RANGE_SIZE: u64 = 64 << 20;

/// Range tasks queued or in work at once unless `--max-in-flight` says
/// otherwise. Each is a small message, so this bounds only how far ahead
/// of the workers the queue runs.
pub const DEFAULT_RANGES_IN_FLIGHT: usize = 1024;

/// Bytes read first: enough for any `.npy` header numpy writes for
/// ordinary shapes.
const FIRST_READ: u64 = 4096;
/// The longest `.npy` header accepted.
const MAX_HEADER: u64 = 1 << 20;

/// Where a sum by reference reads, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local path that the workers see under their own `--shared-dir`.
    Shared {
        /// The file.
        path: PathBuf,
        /// The producer's shared directory.
        dir: PathBuf,
    },
    /// An HTTP(S) URL or an S3 object.
    Remote(SourceRef),
}

impl Location {
    /// Reads an `http://`, `https://` or `s3://` argument; `None` for
    /// anything else.
    ///
    /// # Errors
    /// [`Error::Usage`] for an `s3://` URL without bucket or key.
    pub fn remote(arg: &str) -> Result<Option<Location>> {
        let lower = arg.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let source = SourceRef::Http {
                url: arg.to_owned(),
            };
            source.validate().map_err(|source| Error::Reference {
                input: arg.to_owned(),
                source,
            })?;
            return Ok(Some(Location::Remote(source)));
        }
        if let Some(rest) = arg.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                    Ok(Some(Location::Remote(SourceRef::S3 {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                    })))
                }
                _ => Err(Error::BadInput {
                    input: arg.to_owned(),
                    reason: "an S3 source is s3://BUCKET/KEY".to_owned(),
                }),
            };
        }
        Ok(None)
    }
}

/// A sum by reference as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceSpec {
    /// The source.
    pub location: Location,
    /// `--format`: auto (`.npy` by its magic bytes), npy or raw.
    pub format: Format,
    /// `--dtype`, for raw input.
    pub dtype: Option<Dtype>,
    /// `--byte-order`, for raw input.
    pub byte_order: Option<ByteOrder>,
    /// `--range-size`, in bytes.
    pub range_size: u64,
}

/// The source's layout and version, and how it is cut into ranges. A job's
/// record keeps it, so that a resumed job reads the same version.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RangePlan {
    /// What the tasks name.
    pub(crate) source: SourceRef,
    /// The version every task pins.
    pub(crate) pin: VersionPin,
    pub(crate) dtype: Dtype,
    pub(crate) byte_order: ByteOrder,
    /// Byte offset of the first element.
    pub(crate) offset: u64,
    /// Elements in all.
    pub(crate) count: u64,
    /// Elements per range (the last may have fewer).
    pub(crate) per_range: u64,
}

impl RangePlan {
    /// Number of range tasks.
    pub(crate) fn tasks(&self) -> u64 {
        self.count.div_ceil(self.per_range)
    }

    /// Each task's index and range.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, RangeSpec)> + '_ {
        let itemsize = self.dtype.itemsize() as u64;
        (0..self.tasks()).map(move |index| {
            let first = index * self.per_range;
            let count = (self.count - first).min(self.per_range);
            let spec = RangeSpec {
                source: self.source.clone(),
                pin: self.pin.clone(),
                dtype: self.dtype,
                byte_order: self.byte_order,
                offset: self.offset + first * itemsize,
                count,
            };
            (index, spec)
        })
    }
}

/// Finds the source, reads its header and pins its version.
///
/// # Errors
/// [`Error::Usage`] for a shared path outside the shared directory or
/// flags that do not fit the format; [`Error::BadInput`] for text input or
/// a bad header; [`Error::Warren`] for a source that cannot be read or
/// serves no Range requests.
pub(crate) async fn plan(spec: &ReferenceSpec) -> Result<RangePlan> {
    let (source, pin, head) = match &spec.location {
        Location::Shared { path, dir } => {
            let (path, dir) = (path.clone(), dir.clone());
            tokio::task::spawn_blocking(move || read_shared_head(&path, &dir))
                .await
                .map_err(|source| Error::Blocking {
                    what: "reading the header",
                    source,
                })??
        }
        Location::Remote(source) => read_remote_head(source).await?,
    };
    if !source::pins_a_version(&pin) {
        tracing::warn!(
            "{source} comes with neither an ETag nor a Last-Modified date: warren can only \
             check that its size stays the same while the job runs"
        );
    }
    let name = source.to_string();
    let (dtype, byte_order, offset, count) = layout(spec, &name, &head, pin.size)?;
    let itemsize = dtype.itemsize() as u64;
    Ok(RangePlan {
        source,
        pin,
        dtype,
        byte_order,
        offset,
        count,
        per_range: (spec.range_size / itemsize).max(1),
    })
}

/// The data's dtype, byte order, offset and element count, from the head
/// of the source.
fn layout(
    spec: &ReferenceSpec,
    name: &str,
    head: &[u8],
    size: u64,
) -> Result<(Dtype, ByteOrder, u64, u64)> {
    let is_npy = head.starts_with(NPY_MAGIC);
    let format = match spec.format {
        Format::Auto if is_npy => Format::Npy,
        Format::Auto if name.to_ascii_lowercase().ends_with(".npy") => {
            return Err(Error::BadInput {
                input: name.to_owned(),
                reason: "is not a .npy file: it does not start with numpy's magic bytes \\x93NUMPY"
                    .into(),
            });
        }
        Format::Auto | Format::Text => {
            return Err(Error::BadInput {
                input: name.to_owned(),
                reason: "looks like text, which cannot be summed by reference: a worker could \
                         not tell where the numbers of its byte range begin. Save it as .npy \
                         (np.save) or raw binary (--format raw --dtype D), or sum it through the \
                         broker (a local copy, without --shared)"
                    .into(),
            });
        }
        other => other,
    };
    match format {
        Format::Npy => {
            if spec.dtype.is_some() || spec.byte_order.is_some() {
                return Err(Error::Usage(
                    "--dtype and --byte-order cannot be used with a .npy input: the file names \
                     its own dtype and byte order"
                        .into(),
                ));
            }
            let input = Source::File(PathBuf::from(name));
            let reader = Box::new(Cursor::new(head.to_vec()));
            let npy = NpyReader::new(&input, reader, Some(size))?;
            let order = if npy.is_big_endian() {
                ByteOrder::Big
            } else {
                ByteOrder::Little
            };
            let count = crate::input::ChunkReader::total_elements(&npy).unwrap_or(0);
            Ok((
                crate::input::ChunkReader::dtype(&npy),
                order,
                npy.data_offset(),
                count,
            ))
        }
        _ => {
            let dtype = spec.dtype.ok_or_else(|| {
                Error::Usage("raw input needs --dtype (e.g. --dtype float64)".into())
            })?;
            let count = whole_elements(name, size, dtype)?;
            Ok((dtype, spec.byte_order.unwrap_or_default(), 0, count))
        }
    }
}

/// How many bytes the `.npy` header in `head` says the whole header takes,
/// if `head` holds enough of it to tell.
fn npy_header_len(head: &[u8]) -> Option<u64> {
    if !head.starts_with(NPY_MAGIC) || head.len() < 12 {
        return None;
    }
    Some(match head[6] {
        1 => 10 + u64::from(u16::from_le_bytes([head[8], head[9]])),
        _ => 12 + u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]])),
    })
}

/// Resolves a shared file, checks that it lies in the shared directory,
/// and reads its pin and head.
fn read_shared_head(path: &Path, dir: &Path) -> Result<(SourceRef, VersionPin, Vec<u8>)> {
    let input = path.display().to_string();
    let open_error = |source: std::io::Error| Error::Open {
        input: input.clone(),
        source,
    };
    let dir = std::fs::canonicalize(dir).map_err(|source| Error::Open {
        input: format!("the shared directory {}", dir.display()),
        source,
    })?;
    let canonical = std::fs::canonicalize(path).map_err(open_error)?;
    let Ok(relative) = canonical.strip_prefix(&dir) else {
        return Err(Error::OutsideSharedDir {
            input: input.clone(),
            dir,
        });
    };
    let relative = relative
        .to_str()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Error::BadInput {
            input: input.clone(),
            reason: "has a name that is not UTF-8, which the task cannot carry".into(),
        })?
        .to_owned();
    let file = std::fs::File::open(&canonical).map_err(open_error)?;
    let pin = source::file_pin(&file).map_err(open_error)?;
    if !file.metadata().map_err(open_error)?.is_file() {
        return Err(Error::BadInput {
            input,
            reason: "is not a regular file".into(),
        });
    }
    let mut head = vec![0u8; FIRST_READ.min(pin.size) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|source| Error::Read {
            input: input.clone(),
            source,
        })?;
    if let Some(len) = npy_header_len(&head).filter(|&len| len > FIRST_READ) {
        head.resize(len.min(MAX_HEADER).min(pin.size) as usize, 0);
        file.read_exact_at(&mut head, 0)
            .map_err(|source| Error::Read { input, source })?;
    }
    Ok((SourceRef::Shared { path: relative }, pin, head))
}

/// Reads the head of an HTTP or S3 source with a range request, which also
/// tells whether the server honours Range and what version it serves.
async fn read_remote_head(source: &SourceRef) -> Result<(SourceRef, VersionPin, Vec<u8>)> {
    let object = Stores::default().remote(source)?;
    let (pin, mut head) = object.read_prefix(FIRST_READ).await?;
    if let Some(len) = npy_header_len(&head).filter(|&len| len > FIRST_READ) {
        head = object.read_prefix(len.min(MAX_HEADER)).await?.1;
    }
    Ok((source.clone(), pin, head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_locations_are_recognized() {
        assert_eq!(
            Location::remote("s3://bucket/dir/x.npy").unwrap(),
            Some(Location::Remote(SourceRef::S3 {
                bucket: "bucket".into(),
                key: "dir/x.npy".into()
            }))
        );
        assert!(matches!(
            Location::remote("HTTPS://h/x.npy").unwrap(),
            Some(Location::Remote(SourceRef::Http { .. }))
        ));
        assert_eq!(Location::remote("data/x.npy").unwrap(), None);
        assert!(Location::remote("s3://bucket").is_err());
        assert!(Location::remote("http://h/x?sig=1").is_err());
    }

    #[test]
    fn ranges_cover_the_data_once() {
        let plan = RangePlan {
            source: SourceRef::Shared { path: "x".into() },
            pin: VersionPin {
                size: 128 + 8 * 10,
                mtime_ns: Some(1),
                etag: None,
                last_modified: None,
            },
            dtype: Dtype::Float64,
            byte_order: ByteOrder::Little,
            offset: 128,
            count: 10,
            per_range: 4,
        };
        let ranges: Vec<(u64, u64, u64)> = plan
            .ranges()
            .map(|(i, spec)| (i, spec.offset, spec.count))
            .collect();
        assert_eq!(ranges, [(0, 128, 4), (1, 160, 4), (2, 192, 2)]);
    }

    #[test]
    fn text_is_refused_by_reference_with_what_to_do() {
        let spec = ReferenceSpec {
            location: Location::Remote(SourceRef::Http {
                url: "http://h/x.txt".into(),
            }),
            format: Format::Auto,
            dtype: None,
            byte_order: None,
            range_size: DEFAULT_RANGE_SIZE,
        };
        let err = layout(&spec, "http://h/x.txt", b"1.5 2.5\n", 8).unwrap_err();
        assert!(
            err.to_string().contains("cannot be summed by reference"),
            "{err}"
        );
        assert!(err.to_string().contains("np.save"), "{err}");
    }
}
