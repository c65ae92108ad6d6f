//! Blob compression with zstd, kept only when it shrinks the data.
//!
//! Decompression is bounded by the plaintext length the index records, which itself is capped at
//! [`MAX_BLOB`], so a hostile blob cannot make us allocate without limit.

/// The largest plaintext blob the format allows (bounds every decode).
pub const MAX_BLOB: usize = 64 << 20;

use std::cell::RefCell;

thread_local! {
    // zstd contexts are costly to set up; each thread keeps one (of the last level used).
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data`; `None` when compression would not make it smaller.
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    compress_into(data, level, &mut out).then_some(out)
}

/// [`compress`] into `out` (cleared first, its allocation reused); false when compression
/// would not make `data` smaller (`out` then holds nothing useful).
pub fn compress_into(data: &[u8], level: i32, out: &mut Vec<u8>) -> bool {
    out.clear();
    if data.len() < 64 {
        return false;
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            let Ok(c) = zstd::bulk::Compressor::new(level) else { return false };
            *cell = Some((level, c));
        }
        let Some((_, c)) = cell.as_mut() else { return false };
        // Room for at least one byte less than the input: a frame that does not fit would not
        // be smaller (zstd then fails), and one that fits must still be smaller.
        out.reserve(data.len() - 1);
        match c.compress_to_buffer(data, out) {
            Ok(n) => n < data.len(),
            Err(_) => false,
        }
    })
}

/// Decompresses `data` that must expand to exactly `raw_len` bytes.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    decompress_into(data, raw_len, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (cleared first), reusing its allocation.
pub fn decompress_into(data: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    if raw_len > MAX_BLOB {
        return Err(format!("claimed length {raw_len} exceeds the {MAX_BLOB}-byte limit"));
    }
    out.clear();
    out.reserve_exact(raw_len);
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        let d = cell.as_mut().expect("just set");
        // Writes at most the buffer's capacity (raw_len, or more if reused): never allocates;
        // any length but raw_len is refused below.
        d.decompress_to_buffer(data, out).map_err(|e| format!("zstd: {e}"))
    })?;
    if out.len() != raw_len {
        return Err(format!("decompressed to {} bytes, expected {raw_len}", out.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reused_buffers_give_what_fresh_ones_give() {
        let text: Vec<u8> = b"a line of text that repeats. ".iter().copied().cycle().take(300_000).collect();
        let mut noise = vec![0u8; 200_000];
        rand::fill(&mut noise[..]);
        let (mut out, mut back) = (vec![9u8; 1 << 20], vec![7u8; 1 << 20]);
        assert!(compress_into(&text, 3, &mut out));
        assert_eq!(Some(out.clone()), compress(&text, 3));
        decompress_into(&out, text.len(), &mut back).unwrap();
        assert_eq!(back, text);
        // Incompressible input is refused even though the (reused) buffer has room to spare.
        assert!(!compress_into(&noise, 3, &mut out));
        assert_eq!(compress(&noise, 3), None);
        // A wrong length claim fails and leaves no stale bytes to be mistaken for output.
        let small = compress(&text[..1000], 3).unwrap();
        assert!(decompress_into(&small, 999, &mut back).is_err());
    }

    #[test]
    fn keeps_raw_when_not_smaller() {
        let mut random = vec![0u8; 4096];
        rand::fill(&mut random[..]);
        assert!(compress(&random, 3).is_none());
        let zeros = vec![0u8; 4096];
        let c = compress(&zeros, 3).unwrap();
        assert_eq!(decompress(&c, 4096).unwrap(), zeros);
        assert!(decompress(&c, 4095).is_err());
        assert!(decompress(&c, MAX_BLOB + 1).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(0u8..4, 0..10000)) {
            if let Some(c) = compress(&data, 3) {
                prop_assert_eq!(decompress(&c, data.len()).unwrap(), data);
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..100000) {
            let _ = decompress(&data, n);
        }
    }
}
