//! Index files: which pack holds each blob, at what offset and length.
//!
//! An index file lists packs with their blobs (the same facts as the packs' own headers, so the
//! index can always be rebuilt from the packs) and the index files it supersedes (for prune's
//! compaction). It is written only after all its packs are stored, and before any snapshot that
//! needs it. Encoding: `magic || version || supersedes || packs`, all counts bounded by the data.

use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::{BlobEntry, Reader};

const MAGIC: &[u8; 8] = b"s3bkindx";
const VERSION: u8 = 1;
const ENTRY_LEN: usize = 1 + 4 + 4 + 4 + 32;

/// The most blobs one index file holds; bigger sessions write several files.
pub const MAX_BLOBS_PER_FILE: usize = 200_000;

/// One pack and its blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPack {
    /// The pack's id.
    pub id: Id,
    /// Its blobs.
    pub blobs: Vec<BlobEntry>,
}

/// The decoded content of one index file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Index files whose content this one includes (they may be deleted once it is stored).
    pub supersedes: Vec<Id>,
    /// The packs it describes.
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    /// Number of blobs described.
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }

    /// Encodes the file's plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.blob_count() * ENTRY_LEN + self.packs.len() * 36);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for id in &self.supersedes {
            out.extend_from_slice(&id.0);
        }
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for b in &p.blobs {
                out.push(b.flags());
                out.extend_from_slice(&b.offset.to_le_bytes());
                out.extend_from_slice(&b.length.to_le_bytes());
                out.extend_from_slice(&b.raw_len.to_le_bytes());
                out.extend_from_slice(&b.id.0);
            }
        }
        out
    }

    /// Decodes and checks an index file's plaintext.
    pub fn decode(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "index file");
        if r.bytes(8)? != MAGIC || r.u8()? != VERSION {
            return Err(Error::corrupt("index file", "bad magic or version"));
        }
        let n = r.count(32)?;
        let supersedes = (0..n).map(|_| r.id()).collect::<Result<_>>()?;
        let n = r.count(36)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.id()?;
            let m = r.count(ENTRY_LEN)?;
            let mut blobs = Vec::with_capacity(m);
            for _ in 0..m {
                let (tpe, compressed) =
                    BlobEntry::from_flags(r.u8()?).ok_or_else(|| Error::corrupt("index file", "unknown blob flags"))?;
                let offset = r.u32()?;
                let length = r.u32()?;
                let raw_len = r.u32()?;
                if raw_len as usize > crate::compress::MAX_BLOB {
                    return Err(Error::corrupt("index file", "blob longer than the format allows"));
                }
                blobs.push(BlobEntry { id: r.id()?, tpe, offset, length, raw_len, compressed });
            }
            packs.push(IndexPack { id, blobs });
        }
        if r.remaining() != 0 {
            return Err(Error::corrupt("index file", "trailing bytes"));
        }
        Ok(Self { supersedes, packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::BlobType;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = BlobEntry> {
        (any::<[u8; 32]>(), any::<bool>(), any::<u32>(), any::<u32>(), 0u32..1000, any::<bool>()).prop_map(
            |(id, tree, offset, length, raw_len, compressed)| BlobEntry {
                id: Id(id),
                tpe: if tree { BlobType::Tree } else { BlobType::Data },
                offset,
                length,
                raw_len,
                compressed,
            },
        )
    }

    proptest! {
        #[test]
        fn round_trips(sup in proptest::collection::vec(any::<[u8; 32]>(), 0..3),
                       packs in proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec(arb_entry(), 0..10)), 0..10)) {
            let f = IndexFile {
                supersedes: sup.into_iter().map(Id).collect(),
                packs: packs.into_iter().map(|(id, blobs)| IndexPack { id: Id(id), blobs }).collect(),
            };
            prop_assert_eq!(IndexFile::decode(&f.encode()).unwrap(), f);
        }

        #[test]
        fn garbage_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = IndexFile::decode(&data);
            if data.len() > 9 { data[..8].copy_from_slice(MAGIC); data[8] = VERSION; }
            let _ = IndexFile::decode(&data);
        }
    }

    #[test]
    fn huge_counts_are_rejected_without_allocating() {
        let mut data = MAGIC.to_vec();
        data.push(VERSION);
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(IndexFile::decode(&data).is_err());
    }
}
