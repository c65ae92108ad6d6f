//! Encoding of the repository's structured objects (trees, snapshots, config) as CBOR.
//!
//! CBOR is self-describing, so fields can be added later without a format break, and it carries
//! byte strings natively (non-UTF-8 names, ids). Decoding is bounded by the input: callers only
//! decode blobs whose size they have already checked.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes `value` as CBOR. Serialization into memory cannot fail for our types.
pub fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into memory");
    out
}

/// Decodes CBOR, turning any failure (truncation, wrong types, excess nesting) into a message.
pub fn from_cbor<T: DeserializeOwned>(data: &[u8]) -> Result<T, String> {
    ciborium::de::from_reader_with_recursion_limit(data, 64).map_err(|e| e.to_string())
}
