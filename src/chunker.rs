//! Content-defined chunking with FastCDC (2020), seeded per repository.
//!
//! The seed lives in the encrypted config, so chunk boundaries (and thus blob sizes) do not
//! reveal known files to the storage owner. Sizes: see [`ChunkerParams::default_with_seed`].

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};
use serde::{Deserialize, Serialize};

/// Chunk size limits and the gear seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk (except a file's last).
    pub min: u32,
    /// Target average chunk.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
    /// Seed of the gear table.
    pub seed: u64,
}

impl ChunkerParams {
    /// The defaults: 256 KiB / 1 MiB / 4 MiB.
    ///
    /// Why: a 1 MiB average keeps the index at about 45 bytes per MiB stored (45 MB per TB, so
    /// 10M+ blobs stay cheap), gives zstd enough context, and still confines a local edit of an
    /// office document to one or two chunks; the 4 MiB cap bounds the memory of each in-flight
    /// chunk. Measured in docs/performance.md.
    pub fn default_with_seed(seed: u64) -> Self {
        Self { min: 256 << 10, avg: 1 << 20, max: 4 << 20, seed }
    }

    /// Checks limits read from a (possibly hostile) config.
    pub fn validate(&self) -> Result<(), String> {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (fastcdc::v2020::MINIMUM_MIN..=fastcdc::v2020::MINIMUM_MAX).contains(&min)
            && (fastcdc::v2020::AVERAGE_MIN..=fastcdc::v2020::AVERAGE_MAX).contains(&avg)
            && (fastcdc::v2020::MAXIMUM_MIN..=fastcdc::v2020::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && max <= crate::compress::MAX_BLOB
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok { Ok(()) } else { Err(format!("invalid chunker sizes {min}/{avg}/{max}")) }
    }

    /// Splits everything `source` yields into chunks, each an owned buffer.
    pub fn chunks<R: Read>(&self, source: R) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
        StreamCDC::with_level_and_seed(
            source,
            self.min as usize,
            self.avg as usize,
            self.max as usize,
            Normalization::Level1,
            self.seed,
        )
        .map(|r| r.map(|c| c.data).map_err(std::io::Error::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small(seed: u64) -> ChunkerParams {
        ChunkerParams { min: 1024, avg: 4096, max: 16384, seed }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        ChunkerParams::default_with_seed(1).validate().unwrap();
        assert!(ChunkerParams { min: 3, avg: 1, max: 2, seed: 0 }.validate().is_err());
        assert!(ChunkerParams { min: 1 << 20, avg: 1 << 20, max: 1 << 30, seed: 0 }.validate().is_err());
    }

    #[test]
    fn local_edit_changes_few_chunks() {
        let p = small(42);
        let data = pseudo_random(1 << 20, 9);
        let before: Vec<Vec<u8>> = p.chunks(&data[..]).map(Result::unwrap).collect();
        let mut edited = data.clone();
        edited.splice(500_000..500_010, b"inserted text".iter().copied());
        let after: Vec<Vec<u8>> = p.chunks(&edited[..]).map(Result::unwrap).collect();
        let changed = after.iter().filter(|c| !before.contains(c)).count();
        assert!(changed <= 2, "{changed} chunks changed out of {}", after.len());
        assert!(before.len() > 100);
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = pseudo_random(1 << 18, 5);
        let a: Vec<usize> = small(1).chunks(&data[..]).map(|c| c.unwrap().len()).collect();
        let b: Vec<usize> = small(2).chunks(&data[..]).map(|c| c.unwrap().len()).collect();
        assert_ne!(a, b);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn chunks_concatenate_to_input(len in 0usize..100_000, seed in any::<u64>()) {
            let p = small(seed);
            let data = pseudo_random(len, seed);
            let chunks: Vec<Vec<u8>> = p.chunks(&data[..]).map(Result::unwrap).collect();
            prop_assert_eq!(chunks.concat(), data);
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(c.len() <= p.max as usize);
                prop_assert!(i + 1 == chunks.len() || c.len() >= p.min as usize);
            }
        }
    }
}
