//! `--random N --seed S`: uniform [0, 1) doubles generated on the fly.
//!
//! The stream is numpy's legacy one, so `producer sum --random N --seed S`
//! sums exactly the array `np.random.seed(S); np.random.rand(N)` (or
//! `np.random.RandomState(S).random_sample(N)`): MT19937 seeded with
//! `init_genrand(S)`, and each double built from two 32-bit outputs as
//! `((a >> 5) * 2^26 + (b >> 6)) / 2^53`, numpy's `random_sample`.

use rand_mt::Mt;
use warren::Dtype;

use super::{Chunk, ChunkReader};
use crate::error::Result;

/// Generates the numpy-compatible uniform stream.
pub struct RandomReader {
    rng: Mt,
    remaining: u64,
    total: u64,
}

impl std::fmt::Debug for RandomReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RandomReader")
            .field("total", &self.total)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl RandomReader {
    /// `count` values from the stream seeded with `seed`.
    pub fn new(count: u64, seed: u32) -> Self {
        RandomReader {
            rng: Mt::new(seed),
            remaining: count,
            total: count,
        }
    }

    fn next_double(&mut self) -> f64 {
        let a = self.rng.next_u32() >> 5;
        let b = self.rng.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) / 9_007_199_254_740_992.0
    }
}

impl ChunkReader for RandomReader {
    fn dtype(&self) -> Dtype {
        Dtype::Float64
    }

    fn total_elements(&self) -> Option<u64> {
        Some(self.total)
    }

    fn next_chunk(&mut self, max_elements: usize) -> Result<Option<Chunk>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let count = self.remaining.min(max_elements as u64);
        let mut bytes = Vec::with_capacity(count as usize * 8);
        for _ in 0..count {
            bytes.extend_from_slice(&self.next_double().to_le_bytes());
        }
        self.remaining -= count;
        Ok(Some(Chunk { bytes, count }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_legacy_stream() {
        // python3 -c "import numpy as np; np.random.seed(7); print(np.random.rand(3).tolist())"
        let expected = [0.07630828937395717, 0.7799187922401146, 0.4384092314408935];
        let mut reader = RandomReader::new(3, 7);
        let chunk = reader.next_chunk(10).unwrap().unwrap();
        let values: Vec<f64> = chunk
            .bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, expected);
        assert_eq!(reader.next_chunk(10).unwrap(), None);
    }

    #[test]
    fn chunking_does_not_change_the_stream() {
        let mut whole = RandomReader::new(10, 3);
        let all = whole.next_chunk(100).unwrap().unwrap().bytes;
        let mut pieces = RandomReader::new(10, 3);
        let mut joined = Vec::new();
        while let Some(chunk) = pieces.next_chunk(3).unwrap() {
            joined.extend(chunk.bytes);
        }
        assert_eq!(all, joined);
    }
}
