//! Reading a sum job's input as a stream of chunks.
//!
//! Every format yields [`Chunk`]s of at most `chunk_size` elements as
//! little-endian bytes, the form they travel in, so memory stays bounded by
//! the chunk size whatever the input size. Problems found before the first
//! chunk (a bad `.npy` header, a file whose size does not fit its dtype) are
//! reported by [`open`], before anything is published; problems found later
//! (a bad token deep in a text file) come from [`ChunkReader::next_chunk`],
//! and the job is cancelled.
//!
//! - [`npy`]: `.npy` files as numpy writes them.
//! - [`raw`]: headerless binary with a given dtype.
//! - [`text`]: numbers separated by whitespace or commas.
//! - [`random`]: uniform [0, 1) doubles, the same stream as numpy's
//!   `np.random.seed(S); np.random.rand(N)`.

pub mod npy;
pub mod random;
pub mod raw;
pub mod text;

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use warren::Dtype;
use warren::protocol::ByteOrder;

use crate::error::{Error, Result};

/// One chunk: `count` elements as little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The elements, little-endian.
    pub bytes: Vec<u8>,
    /// Number of elements.
    pub count: u64,
}

/// A source of chunks, read on a blocking thread.
pub trait ChunkReader: Send {
    /// The element type.
    fn dtype(&self) -> Dtype;

    /// Total elements, when known before reading (files with a header or a
    /// size; random input). `None` for text and stdin.
    fn total_elements(&self) -> Option<u64>;

    /// The next chunk of at most `max_elements` elements, or `None` at the
    /// end of the input.
    ///
    /// # Errors
    /// A read error, or input that turns out malformed.
    fn next_chunk(&mut self, max_elements: usize) -> Result<Option<Chunk>>;
}

/// Where input bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Standard input (`-` on the command line).
    Stdin,
    /// A file.
    File(PathBuf),
}

impl Source {
    /// `-` means stdin; anything else is a path.
    pub fn from_arg(arg: &Path) -> Source {
        if arg == Path::new("-") {
            Source::Stdin
        } else {
            Source::File(arg.to_owned())
        }
    }

    fn open(&self) -> Result<(Box<dyn BufRead + Send>, Option<u64>)> {
        match self {
            Source::Stdin => Ok((
                Box::new(BufReader::with_capacity(1 << 20, io::stdin())),
                None,
            )),
            Source::File(path) => {
                let file = File::open(path).map_err(|source| Error::Open {
                    input: self.to_string(),
                    source,
                })?;
                let metadata = file.metadata().map_err(|source| Error::Open {
                    input: self.to_string(),
                    source,
                })?;
                if metadata.is_dir() {
                    return Err(Error::BadInput {
                        input: self.to_string(),
                        reason: "is a directory".into(),
                    });
                }
                // Pipes and devices have no meaningful length.
                let len = metadata.is_file().then_some(metadata.len());
                Ok((Box::new(BufReader::with_capacity(1 << 20, file)), len))
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Stdin => f.write_str("stdin"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How to read the input.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `.npy` if the input starts with numpy's magic bytes, else text
    Auto,
    /// A `.npy` file
    Npy,
    /// Headerless binary; needs --dtype (little-endian unless --byte-order big)
    Raw,
    /// Numbers separated by whitespace, commas or newlines; `#` starts a comment
    Text,
}

/// A fully specified input. A job's record keeps it (see
/// `crate::durable`), except a reference, which is kept as its plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputSpec {
    /// Read `source` in `format`; `dtype` is required for raw input and
    /// selects the parsed type for text (float64 by default).
    Read {
        /// Where the bytes come from.
        source: Source,
        /// How to read them.
        format: Format,
        /// The element type, where the format does not carry one.
        dtype: Option<Dtype>,
        /// `--byte-order`, for raw input only (little-endian when `None`).
        byte_order: Option<ByteOrder>,
    },
    /// A source the workers read themselves, in ranges: only its header
    /// passes through the producer (see [`crate::reference`]).
    #[serde(skip)]
    Reference(crate::reference::ReferenceSpec),
    /// `count` uniform [0, 1) doubles from numpy's legacy MT19937 stream.
    Random {
        /// How many.
        count: u64,
        /// The MT19937 seed, as `np.random.seed(seed)`.
        seed: u32,
    },
}

/// The magic bytes every `.npy` file starts with.
pub(crate) const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Opens an input and checks everything that can be checked up front.
///
/// # Errors
/// [`Error::Open`] when the input cannot be opened, [`Error::BadInput`] when
/// its header or size is wrong.
pub fn open(spec: &InputSpec) -> Result<Box<dyn ChunkReader>> {
    match spec {
        InputSpec::Random { count, seed } => Ok(Box::new(random::RandomReader::new(*count, *seed))),
        InputSpec::Reference(_) => Err(Error::ReadByWorkers),
        InputSpec::Read {
            source,
            format,
            dtype,
            byte_order,
        } => {
            let (reader, len) = source.open()?;
            let (head, reader) = read_head(source, reader)?;
            let format = match format {
                Format::Auto => detect(source, &head)?,
                explicit => *explicit,
            };
            match format {
                Format::Npy | Format::Text if byte_order.is_some() => Err(Error::Usage(
                    "--byte-order applies to raw input only: a .npy file names its own byte \
                     order and text has none"
                        .into(),
                )),
                Format::Npy => {
                    if let Some(dtype) = dtype {
                        return Err(Error::Usage(format!(
                            "--dtype {dtype} cannot be used with a .npy input: the file names its own dtype"
                        )));
                    }
                    Ok(Box::new(npy::NpyReader::new(source, reader, len)?))
                }
                Format::Raw => {
                    let dtype = dtype.ok_or_else(|| {
                        Error::Usage("raw input needs --dtype (e.g. --dtype float64)".into())
                    })?;
                    Ok(Box::new(raw::RawReader::new(
                        source,
                        reader,
                        len,
                        dtype,
                        byte_order.unwrap_or_default(),
                    )?))
                }
                Format::Text => Ok(Box::new(text::TextReader::new(
                    source,
                    reader,
                    dtype.unwrap_or(Dtype::Float64),
                ))),
                Format::Auto => unreachable!("detect never answers Auto"),
            }
        }
    }
}

/// Auto-detection: numpy's magic means `.npy`; a `.npy` name without it is
/// a corrupt file, not text; anything else is text.
fn detect(source: &Source, head: &[u8]) -> Result<Format> {
    if head == NPY_MAGIC {
        return Ok(Format::Npy);
    }
    if let Source::File(path) = source
        && path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("npy"))
    {
        return Err(Error::BadInput {
            input: source.to_string(),
            reason: "is not a .npy file: it does not start with numpy's magic bytes \\x93NUMPY"
                .into(),
        });
    }
    Ok(Format::Text)
}

/// Reads the first few bytes (as many as the magic, fewer only at the end
/// of the input, however the input arrives: a pipe may deliver one byte at
/// a time) and puts them back in front of the rest.
fn read_head(
    source: &Source,
    mut reader: Box<dyn BufRead + Send>,
) -> Result<(Vec<u8>, Box<dyn BufRead + Send>)> {
    let mut head = vec![0u8; NPY_MAGIC.len()];
    let got = read_full(&mut reader, &mut head).map_err(|e| Error::Read {
        input: source.to_string(),
        source: e,
    })?;
    head.truncate(got);
    let rest = io::Cursor::new(head.clone()).chain(reader);
    Ok((head, Box::new(BufReader::with_capacity(1 << 20, rest))))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub(crate) fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe that delivers one byte per read.
    struct Trickle(io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let end = buf.len().min(1);
            self.0.read(&mut buf[..end])
        }
    }

    fn npy_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut text = header.to_owned();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        let mut bytes = NPY_MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn detection_does_not_depend_on_how_the_bytes_arrive() {
        let data: Vec<u8> = [1.5f64, 2.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let file = npy_bytes(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
            &data,
        );
        let reader: Box<dyn BufRead + Send> =
            Box::new(BufReader::with_capacity(1, Trickle(io::Cursor::new(file))));
        let (head, rest) = read_head(&Source::Stdin, reader).unwrap();
        assert_eq!(detect(&Source::Stdin, &head).unwrap(), Format::Npy);
        let mut npy = npy::NpyReader::new(&Source::Stdin, rest, None).unwrap();
        assert_eq!(npy.next_chunk(10).unwrap().unwrap().bytes, data);
    }

    #[test]
    fn impossible_shapes_are_refused() {
        let file = npy_bytes(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
            &[0u8; 32],
        );
        let reader: Box<dyn BufRead + Send> = Box::new(io::Cursor::new(file));
        let err = npy::NpyReader::new(&Source::Stdin, reader, None).unwrap_err();
        assert!(err.to_string().contains("impossible shape"), "{err}");
    }
}
