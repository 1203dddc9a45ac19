//! Raw binary input: little-endian elements of a dtype given by `--dtype`,
//! with no header.

use std::io::BufRead;

use warren::Dtype;

use super::{Chunk, ChunkReader, Source, read_full};
use crate::error::{Error, Result};

/// Streams headerless binary input.
pub struct RawReader {
    input: String,
    reader: Box<dyn BufRead + Send>,
    dtype: Dtype,
    total: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for RawReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawReader")
            .field("input", &self.input)
            .field("dtype", &self.dtype)
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
    ) -> Result<Self> {
        let itemsize = dtype.itemsize() as u64;
        if let Some(len) = file_len
            && len % itemsize != 0
        {
            return Err(Error::BadInput {
                input: source.to_string(),
                reason: format!(
                    "has {len} bytes, which is not a multiple of the {itemsize}-byte {dtype} \
                     ({} stray bytes at the end)",
                    len % itemsize
                ),
            });
        }
        Ok(RawReader {
            input: source.to_string(),
            reader,
            dtype,
            total: file_len.map(|len| len / itemsize),
            done: false,
        })
    }
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
        Ok(Some(Chunk {
            count: (got / itemsize) as u64,
            bytes,
        }))
    }
}
