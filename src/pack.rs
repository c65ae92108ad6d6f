//! Pack files: many sealed blobs of one type followed by an encrypted header.
//!
//! Layout: `blob_1 || … || blob_n || sealed(header) || header_len (u32 LE)`. The header lists,
//! in order, each blob's type and compression flags, stored length, plaintext length and id, so a
//! pack can be written as a stream and re-indexed from itself alone (`repair index`). A pack is
//! named by the plain BLAKE3 hash of its bytes. Entry encoding is shared with index files.

use bytes::Bytes;

use crate::crypto::{Keys, SEAL_OVERHEAD};
use crate::error::{Error, Result};
use crate::id::Id;

const MAGIC: &[u8; 8] = b"s3bkpack";
const VERSION: u8 = 1;
/// Encoded size of one header entry.
pub const HEADER_ENTRY_LEN: usize = 1 + 4 + 4 + 32;

/// What a blob holds; data and tree blobs never share a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum BlobType {
    /// File content.
    Data,
    /// An encoded directory tree.
    Tree,
}

/// Where a blob lives inside its pack, and how to decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// The blob's id (keyed hash of its plaintext).
    pub id: Id,
    /// Data or tree.
    pub tpe: BlobType,
    /// Byte offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub length: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
    /// Whether the sealed bytes hold zstd-compressed plaintext.
    pub compressed: bool,
}

impl BlobEntry {
    pub(crate) fn flags(&self) -> u8 {
        u8::from(self.tpe == BlobType::Tree) | (u8::from(self.compressed) << 1)
    }

    pub(crate) fn from_flags(flags: u8) -> Option<(BlobType, bool)> {
        if flags & !3 != 0 {
            return None;
        }
        let tpe = if flags & 1 == 1 { BlobType::Tree } else { BlobType::Data };
        Some((tpe, flags & 2 == 2))
    }

    /// The range of the pack this blob occupies.
    pub fn range(&self) -> std::ops::Range<u64> {
        u64::from(self.offset)..u64::from(self.offset) + u64::from(self.length)
    }
}

/// Little-endian reader over untrusted bytes; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    what: &'a str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'a str) -> Self {
        Self { data, what }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(Error::corrupt(self.what, "truncated"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn id(&mut self) -> Result<Id> {
        Ok(Id::from_slice(self.bytes(32)?).expect("32 bytes"))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len()
    }

    /// A count of items of `item_len` bytes each that must fit in what is left.
    pub(crate) fn count(&mut self, item_len: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_len) > self.remaining() {
            return Err(Error::corrupt(self.what, format!("count {n} exceeds the data")));
        }
        Ok(n)
    }
}

/// Accumulates sealed blobs of one type into a pack.
pub struct PackBuilder {
    tpe: BlobType,
    buf: Vec<u8>,
    entries: Vec<BlobEntry>,
}

/// A pack ready to upload, with the index entries it will contribute.
pub struct FinishedPack {
    /// The pack's id (hash of `data`).
    pub id: Id,
    /// The pack's bytes.
    pub data: Bytes,
    /// Its blobs, offsets included.
    pub entries: Vec<BlobEntry>,
}

impl PackBuilder {
    /// An empty pack for blobs of `tpe`, expecting about `capacity` bytes.
    pub fn new(tpe: BlobType, capacity: usize) -> Self {
        Self { tpe, buf: Vec::with_capacity(capacity), entries: Vec::new() }
    }

    /// Appends one sealed blob.
    pub fn add(&mut self, id: Id, raw_len: u32, compressed: bool, sealed: &[u8]) {
        let offset = u32::try_from(self.buf.len()).expect("packs stay below 4 GiB");
        let length = u32::try_from(sealed.len()).expect("blobs stay below 4 GiB");
        self.entries.push(BlobEntry { id, tpe: self.tpe, offset, length, raw_len, compressed });
        self.buf.extend_from_slice(sealed);
    }

    /// Bytes of blobs so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Blobs so far.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Appends the encrypted header and names the pack.
    pub fn finish(mut self, keys: &Keys) -> FinishedPack {
        let mut header = Vec::with_capacity(13 + self.entries.len() * HEADER_ENTRY_LEN);
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            header.push(e.flags());
            header.extend_from_slice(&e.length.to_le_bytes());
            header.extend_from_slice(&e.raw_len.to_le_bytes());
            header.extend_from_slice(&e.id.0);
        }
        let sealed = keys.seal(&header);
        self.buf.extend_from_slice(&sealed);
        self.buf.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        let data = Bytes::from(self.buf);
        FinishedPack { id: Id::hash(&data), data, entries: self.entries }
    }
}

/// The length of the sealed header, from the pack's last 4 bytes; checked against the pack size.
pub fn header_len(tail: &[u8], pack_len: u64) -> Result<u64> {
    let n = tail.len();
    if n < 4 {
        return Err(Error::corrupt("pack", "shorter than its length field"));
    }
    let len = u64::from(u32::from_le_bytes(tail[n - 4..].try_into().expect("4 bytes")));
    if len + 4 > pack_len || len < SEAL_OVERHEAD as u64 {
        return Err(Error::corrupt("pack", format!("header length {len} does not fit the pack")));
    }
    Ok(len)
}

/// Reads the blob list from a pack's tail (at least `header_len + 4` bytes of its end).
pub fn read_header(keys: &Keys, tail: &[u8], pack_len: u64) -> Result<Vec<BlobEntry>> {
    let hlen = header_len(tail, pack_len)? as usize;
    if tail.len() < hlen + 4 {
        return Err(Error::corrupt("pack", "tail too short for its header"));
    }
    let sealed = &tail[tail.len() - 4 - hlen..tail.len() - 4];
    let header = keys.open(sealed).map_err(|e| Error::corrupt("pack header", e.to_string()))?;
    let mut r = Reader::new(&header, "pack header");
    if r.bytes(8)? != MAGIC || r.u8()? != VERSION {
        return Err(Error::corrupt("pack header", "bad magic or version"));
    }
    let count = r.count(HEADER_ENTRY_LEN)?;
    let data_len = pack_len - hlen as u64 - 4;
    let mut offset = 0u64;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let (tpe, compressed) =
            BlobEntry::from_flags(r.u8()?).ok_or_else(|| Error::corrupt("pack header", "unknown flags"))?;
        let length = r.u32()?;
        let raw_len = r.u32()?;
        let id = r.id()?;
        if offset + u64::from(length) > data_len {
            return Err(Error::corrupt("pack header", "blob extends past the data"));
        }
        entries.push(BlobEntry { id, tpe, offset: offset as u32, length, raw_len, compressed });
        offset += u64::from(length);
    }
    if offset != data_len {
        return Err(Error::corrupt("pack header", "blobs do not fill the pack"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let keys = MasterKey::generate().keys();
            let mut b = PackBuilder::new(BlobType::Tree, 0);
            for blob in &blobs {
                b.add(keys.blob_id(blob), blob.len() as u32, false, &keys.seal(blob));
            }
            let pack = b.finish(&keys);
            prop_assert_eq!(pack.id, Id::hash(&pack.data));
            let entries = read_header(&keys, &pack.data, pack.data.len() as u64).unwrap();
            prop_assert_eq!(&entries, &pack.entries);
            for (e, blob) in entries.iter().zip(&blobs) {
                let sealed = &pack.data[e.range().start as usize..e.range().end as usize];
                prop_assert_eq!(&keys.open(sealed).unwrap(), blob);
            }
        }

        #[test]
        fn hostile_tails_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), len in 0u64..1000) {
            let keys = MasterKey::generate().keys();
            let _ = read_header(&keys, &data, len);
        }
    }

    #[test]
    fn truncated_or_flipped_pack_is_rejected() {
        let keys = MasterKey::generate().keys();
        let mut b = PackBuilder::new(BlobType::Data, 0);
        b.add(keys.blob_id(b"x"), 1, false, &keys.seal(b"x"));
        let pack = b.finish(&keys);
        let n = pack.data.len();
        assert!(read_header(&keys, &pack.data[1..], (n - 1) as u64).is_err());
        let mut bad = pack.data.to_vec();
        bad[n - 10] ^= 0x40;
        assert!(read_header(&keys, &bad, n as u64).is_err());
    }
}
