//! Content-defined chunking with FastCDC (2020), seeded per repository.
//!
//! The seed lives in the encrypted config, so chunk boundaries (and thus blob sizes) do not
//! reveal known files to the storage owner. Sizes: see [`ChunkerParams::default_with_seed`].

use std::io::Read;

use fastcdc::v2020::Normalization;
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

    /// Splits everything `source` yields into chunks, each an owned buffer (tests, tools).
    pub fn chunks<R: Read>(&self, source: R) -> std::io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        Chunker::new(self).chunk_reader(source, &mut Vec::new(), |c| {
            out.push(c.to_vec());
            Ok::<_, std::io::Error>(())
        })?;
        Ok(out)
    }
}

/// A ready-to-run chunker: masks and seeded gear tables computed once per repository.
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Vec<u64>,
    gear_ls: Vec<u64>,
}

impl Chunker {
    /// Prepares the tables for `p` (which must be valid).
    pub fn new(p: &ChunkerParams) -> Self {
        let (mask_s, mask_l) = fastcdc::v2020::select_masks(p.avg as usize, Normalization::Level1);
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(p.seed);
        Self {
            min: p.min as usize,
            avg: p.avg as usize,
            max: p.max as usize,
            mask_s,
            mask_l,
            gear: gear.into_owned(),
            gear_ls: gear_ls.into_owned(),
        }
    }

    /// Calls `f` with each chunk of everything `source` yields, in order.
    ///
    /// `buf` is scratch space, reused across calls (it grows to twice the largest chunk), so a
    /// reader thread allocates once however many files it reads. Each cut looks at most `max`
    /// bytes past the chunk's start, exactly as FastCDC's streaming form does, so boundaries
    /// do not depend on how reads happen to be split.
    pub fn chunk_reader<R: Read, E: From<std::io::Error>>(
        &self,
        mut source: R,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        buf.resize(2 * self.max, 0);
        let (mut start, mut end, mut eof) = (0usize, 0usize, false);
        loop {
            if end - start < self.max && !eof {
                if buf.len() - start < self.max {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                while end < buf.len() {
                    match source.read(&mut buf[end..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => end += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if start == end {
                return Ok(());
            }
            let window = &buf[start..end.min(start + self.max)];
            let (_, n) = fastcdc::v2020::cut_gear(
                window,
                self.min,
                self.avg,
                self.max,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
                &self.gear,
                &self.gear_ls,
            );
            f(&buf[start..start + n])?;
            start += n;
        }
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
        let before = p.chunks(&data[..]).unwrap();
        let mut edited = data.clone();
        edited.splice(500_000..500_010, b"inserted text".iter().copied());
        let after = p.chunks(&edited[..]).unwrap();
        let changed = after.iter().filter(|c| !before.contains(c)).count();
        assert!(changed <= 2, "{changed} chunks changed out of {}", after.len());
        assert!(before.len() > 100);
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = pseudo_random(1 << 18, 5);
        let a: Vec<usize> = small(1).chunks(&data[..]).unwrap().iter().map(Vec::len).collect();
        let b: Vec<usize> = small(2).chunks(&data[..]).unwrap().iter().map(Vec::len).collect();
        assert_ne!(a, b);
    }

    /// Reads in odd-sized pieces, to show boundaries do not depend on read sizes.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 7919 + 1;
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn matches_fastcdc_streaming_boundaries() {
        let p = small(99);
        let data = pseudo_random(300_000, 3);
        let ours = p.chunks(Trickle(&data, 0)).unwrap();
        let reference: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::with_level_and_seed(
            &data[..],
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            Normalization::Level1,
            p.seed,
        )
        .map(|c| c.unwrap().data)
        .collect();
        assert_eq!(ours, reference);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn chunks_concatenate_to_input(len in 0usize..100_000, seed in any::<u64>()) {
            let p = small(seed);
            let data = pseudo_random(len, seed);
            let chunks = p.chunks(&data[..]).unwrap();
            prop_assert_eq!(chunks.concat(), data);
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(c.len() <= p.max as usize);
                prop_assert!(i + 1 == chunks.len() || c.len() >= p.min as usize);
            }
        }
    }
}
