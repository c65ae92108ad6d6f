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
    if data.len() < 64 {
        return None;
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            *cell = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = cell.as_mut()?;
        // A buffer one byte short of the input: if the frame does not fit, it would not be smaller.
        let mut out = Vec::with_capacity(data.len() - 1);
        c.compress_to_buffer(data, &mut out).ok()?;
        Some(out)
    })
}

/// Decompresses `data` that must expand to exactly `raw_len` bytes.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    if raw_len > MAX_BLOB {
        return Err(format!("claimed length {raw_len} exceeds the {MAX_BLOB}-byte limit"));
    }
    let out = DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        let d = cell.as_mut().expect("just set");
        d.decompress(data, raw_len).map_err(|e| format!("zstd: {e}"))
    })?;
    if out.len() != raw_len {
        return Err(format!("decompressed to {} bytes, expected {raw_len}", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
