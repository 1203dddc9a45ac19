//! `.npy` input: numpy's header, then the elements in C order.
//!
//! The header is parsed by `npyz`; the data is streamed in chunks and
//! byte-swapped to little-endian when the file is big-endian. Anything warren
//! cannot sum exactly as stored (other dtypes, object or structured arrays,
//! Fortran order) is refused with a message naming the problem, and so is a
//! file shorter than its header declares.

use std::io::{self, BufRead, Read};

use npyz::{DType, NpyHeader, Order, TypeChar};
use warren::Dtype;

use super::{Chunk, ChunkReader, Source, read_full};
use crate::error::{Error, Result};

/// Streams the data of a `.npy` file.
pub struct NpyReader {
    input: String,
    reader: Box<dyn BufRead + Send>,
    dtype: Dtype,
    /// The file is big-endian: every element is reversed before sending.
    swap: bool,
    /// Byte offset of the first element: the header's length.
    data_offset: u64,
    total: u64,
    remaining: u64,
}

impl std::fmt::Debug for NpyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpyReader")
            .field("input", &self.input)
            .field("dtype", &self.dtype)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

/// Counts the bytes the header parser consumes, to find where data starts.
struct Counting<'a, R: ?Sized> {
    inner: &'a mut R,
    count: u64,
}

impl<R: Read + ?Sized> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

impl NpyReader {
    /// Parses and checks the header. `file_len` (known for regular files)
    /// lets a truncated file be refused before any task is published.
    ///
    /// # Errors
    /// [`Error::BadInput`] naming what is wrong.
    pub fn new(
        source: &Source,
        mut reader: Box<dyn BufRead + Send>,
        file_len: Option<u64>,
    ) -> Result<Self> {
        let input = source.to_string();
        let bad = |reason: String| Error::BadInput {
            input: input.clone(),
            reason,
        };
        let mut counting = Counting {
            inner: &mut reader,
            count: 0,
        };
        let header = NpyHeader::from_reader(&mut counting)
            .map_err(|e| bad(format!("has an invalid .npy header: {e}")))?;
        let header_len = counting.count;

        let (dtype, swap) = match header.dtype() {
            DType::Plain(type_str) => {
                if type_str.type_char() == TypeChar::Object {
                    return Err(bad(
                        "holds Python objects (dtype object), which cannot be summed".into(),
                    ));
                }
                let kind = type_str.type_char().to_str().chars().next().unwrap_or('?');
                let dtype = Dtype::from_numpy_kind(kind, type_str.size_field())
                    .filter(|_| {
                        matches!(
                            type_str.type_char(),
                            TypeChar::Float | TypeChar::Int | TypeChar::Uint
                        )
                    })
                    .ok_or_else(|| {
                        let names: Vec<&str> = Dtype::ALL.iter().map(|d| d.name()).collect();
                        bad(format!(
                            "has dtype {type_str}, which is not supported (supported: {})",
                            names.join(", ")
                        ))
                    })?;
                (
                    dtype,
                    type_str.endianness() == npyz::Endianness::Big && dtype.itemsize() > 1,
                )
            }
            other => {
                return Err(bad(format!(
                    "is a structured array (dtype {}), which cannot be summed",
                    other.descr()
                )));
            }
        };
        if header.order() == Order::Fortran && header.shape().iter().filter(|&&d| d > 1).count() > 1
        {
            return Err(bad(
                "is stored in Fortran order, which is not supported: save it with \
                 np.save(path, np.ascontiguousarray(a))"
                    .into(),
            ));
        }
        // npyz's own element count wraps around on absurd shapes.
        let total = header
            .shape()
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("declares an impossible shape {:?}", header.shape())))?;
        let data_len = total
            .checked_mul(dtype.itemsize() as u64)
            .ok_or_else(|| bad(format!("declares an impossible shape {:?}", header.shape())))?;
        if let Some(file_len) = file_len {
            let available = file_len.saturating_sub(header_len);
            if available < data_len {
                return Err(bad(format!(
                    "is truncated: its header declares {total} {dtype} elements \
                     ({data_len} bytes) but only {available} bytes of data follow"
                )));
            }
        }
        Ok(NpyReader {
            input,
            reader,
            dtype,
            swap,
            data_offset: header_len,
            total,
            remaining: total,
        })
    }
}

impl NpyReader {
    /// Byte offset of the first element in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Whether the file stores its elements big-endian.
    pub fn is_big_endian(&self) -> bool {
        self.swap
    }
}

impl ChunkReader for NpyReader {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn total_elements(&self) -> Option<u64> {
        Some(self.total)
    }

    fn next_chunk(&mut self, max_elements: usize) -> Result<Option<Chunk>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let count = self.remaining.min(max_elements as u64);
        let itemsize = self.dtype.itemsize();
        let mut bytes = vec![0u8; count as usize * itemsize];
        let got = read_full(&mut self.reader, &mut bytes).map_err(|source| Error::Read {
            input: self.input.clone(),
            source,
        })?;
        if got < bytes.len() {
            let read_so_far = (self.total - self.remaining) * itemsize as u64 + got as u64;
            return Err(Error::BadInput {
                input: self.input.clone(),
                reason: format!(
                    "is truncated: its header declares {} {} elements but the data ends after {read_so_far} bytes",
                    self.total, self.dtype
                ),
            });
        }
        if self.swap {
            for element in bytes.chunks_exact_mut(itemsize) {
                element.reverse();
            }
        }
        self.remaining -= count;
        Ok(Some(Chunk { bytes, count }))
    }
}
