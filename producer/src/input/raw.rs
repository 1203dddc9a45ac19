//! Raw binary input: elements of a dtype given by `--dtype`, with no
//! header, little-endian unless `--byte-order big` says otherwise. Big-endian
//! elements are byte-swapped here, as the `.npy` reader does, because a sum
//! task's body is always little-endian on the wire.

use std::io::BufRead;

use warren::Dtype;
use warren::protocol::ByteOrder;

use super::{Chunk, ChunkReader, Source, read_full};
use crate::error::{Error, Result};

/// Streams headerless binary input.
pub struct RawReader {
    input: String,
    reader: Box<dyn BufRead + Send>,
    dtype: Dtype,
    /// The input is big-endian: every element is reversed before sending.
    swap: bool,
    total: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for RawReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawReader")
            .field("input", &self.input)
            .field("dtype", &self.dtype)
            .field("swap", &self.swap)
            .finish_non_exhaustive()
    }
}

impl RawReader {
    /// Checks that a file's size is a whole number of elements.
    ///
    /// # Errors
    /// [`Error::BadInput`] when it is not.
    pub fn new(
        source: &Source,
        reader: Box<dyn BufRead + Send>,
        file_len: Option<u64>,
        dtype: Dtype,
        order: ByteOrder,
    ) -> Result<Self> {
        let total = match file_len {
            Some(len) => Some(whole_elements(&source.to_string(), len, dtype)?),
            None => None,
        };
        Ok(RawReader {
            input: source.to_string(),
            reader,
            dtype,
            swap: order == ByteOrder::Big && dtype.itemsize() > 1,
            total,
            done: false,
        })
    }
}

/// How many `dtype` elements `len` bytes of raw input hold.
///
/// # Errors
/// [`Error::BadInput`] naming the stray bytes when `len` is not a whole
/// number of elements.
pub fn whole_elements(input: &str, len: u64, dtype: Dtype) -> Result<u64> {
    let itemsize = dtype.itemsize() as u64;
    if !len.is_multiple_of(itemsize) {
        return Err(Error::BadInput {
            input: input.to_owned(),
            reason: format!(
                "has {len} bytes, which is not a multiple of the {itemsize}-byte {dtype} \
                 ({} stray bytes at the end)",
                len % itemsize
            ),
        });
    }
    Ok(len / itemsize)
}

impl ChunkReader for RawReader {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn total_elements(&self) -> Option<u64> {
        self.total
    }

    fn next_chunk(&mut self, max_elements: usize) -> Result<Option<Chunk>> {
        if self.done {
            return Ok(None);
        }
        let itemsize = self.dtype.itemsize();
        let mut bytes = vec![0u8; max_elements * itemsize];
        let got = read_full(&mut self.reader, &mut bytes).map_err(|source| Error::Read {
            input: self.input.clone(),
            source,
        })?;
        if got < bytes.len() {
            self.done = true;
        }
        if got % itemsize != 0 {
            return Err(Error::BadInput {
                input: self.input.clone(),
                reason: format!(
                    "ends with {} stray bytes: its size is not a multiple of the {itemsize}-byte {}",
                    got % itemsize,
                    self.dtype
                ),
            });
        }
        if got == 0 {
            return Ok(None);
        }
        bytes.truncate(got);
        if self.swap {
            for element in bytes.chunks_exact_mut(itemsize) {
                element.reverse();
            }
        }
        Ok(Some(Chunk {
            count: (got / itemsize) as u64,
            bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn chunks(bytes: Vec<u8>, dtype: Dtype, order: ByteOrder) -> Vec<u8> {
        let len = bytes.len() as u64;
        let mut reader = RawReader::new(
            &Source::Stdin,
            Box::new(Cursor::new(bytes)),
            Some(len),
            dtype,
            order,
        )
        .unwrap();
        let mut sent = Vec::new();
        while let Some(chunk) = reader.next_chunk(3).unwrap() {
            sent.extend(chunk.bytes);
        }
        sent
    }

    #[test]
    fn big_endian_raw_input_is_sent_little_endian() {
        let values = [1.5f64, -2.25, 1e300, 7.0];
        let big: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        let little: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(chunks(big, Dtype::Float64, ByteOrder::Big), little);
        assert_eq!(
            chunks(little.clone(), Dtype::Float64, ByteOrder::Little),
            little
        );
        let ints = [-3i16, 513, i16::MIN];
        let big: Vec<u8> = ints.iter().flat_map(|v| v.to_be_bytes()).collect();
        let little: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(chunks(big, Dtype::Int16, ByteOrder::Big), little);
    }
}
