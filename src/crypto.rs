//! Keys and authenticated encryption.
//!
//! A repository has one 256-bit master key. Two keys are derived from it with BLAKE3's key
//! derivation: the id key (blob ids are keyed BLAKE3 of the plaintext, so the storage owner
//! cannot test for known content) and the data-encryption key of each epoch. Sealed objects are
//! `epoch (u32 LE) || nonce (24) || XChaCha20-Poly1305 ciphertext+tag (16)`, with the epoch as
//! associated data. Key material is zeroized on drop.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use crate::id::Id;

/// Bytes a sealed object adds to its plaintext: epoch, nonce, tag.
pub const SEAL_OVERHEAD: usize = 4 + 24 + 16;

/// A sealed object failed to open: wrong key, or the bytes were altered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Shorter than the framing.
    #[error("sealed data is too short ({0} bytes)")]
    TooShort(usize),
    /// Sealed under an epoch this key set does not have.
    #[error("sealed with key epoch {0}, which this repository key does not know")]
    UnknownEpoch(u32),
    /// The MAC did not verify.
    #[error("authentication failed (wrong key or altered data)")]
    Mac,
}

/// The repository master key: 32 secret bytes.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::fill(&mut k[..]);
        Self(k)
    }

    /// Wraps existing key bytes (a KMS data key, an unwrapped key file).
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let k = Zeroizing::new(bytes);
        bytes.zeroize();
        Self(k)
    }

    /// The raw bytes, to wrap them in a key file.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key set derived from this master key, writing under `epoch`.
    pub fn keys(&self, epoch: u32) -> Keys {
        Keys {
            id_key: Zeroizing::new(blake3::derive_key("s3bk 2026-12 blob id key", &self.0[..])),
            master: self.clone(),
            epoch,
            cipher: XChaCha20Poly1305::new(&derive_data_key(&self.0, epoch).into()),
        }
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

fn derive_data_key(master: &[u8; 32], epoch: u32) -> [u8; 32] {
    let mut material = Zeroizing::new([0u8; 36]);
    material[..32].copy_from_slice(master);
    material[32..].copy_from_slice(&epoch.to_le_bytes());
    blake3::derive_key("s3bk 2026-12 data encryption key", &material[..])
}

/// Everything needed to name, seal and open repository data.
pub struct Keys {
    id_key: Zeroizing<[u8; 32]>,
    master: MasterKey,
    epoch: u32,
    cipher: XChaCha20Poly1305,
}

impl Keys {
    /// The id of a blob: keyed BLAKE3 over its plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// The epoch new data is sealed under.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Encrypts and authenticates `plaintext` under the current epoch with a random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rand::fill(&mut nonce);
        let aad = self.epoch.to_le_bytes();
        let ct = self
            .cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad: &aad })
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer");
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&aad);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Checks and decrypts a sealed object.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let (aad, rest) = sealed.split_at(4);
        let (nonce, ct) = rest.split_at(24);
        let epoch = u32::from_le_bytes(aad.try_into().expect("4 bytes"));
        let payload = Payload { msg: ct, aad };
        let nonce = XNonce::try_from(nonce).expect("24 bytes");
        if epoch == self.epoch {
            return self.cipher.decrypt(&nonce, payload).map_err(|_| CryptoError::Mac);
        }
        // Older (or newer) epochs derive from the same master key; derive on demand.
        if epoch > self.epoch.saturating_add(1024) {
            return Err(CryptoError::UnknownEpoch(epoch));
        }
        let cipher = XChaCha20Poly1305::new(&derive_data_key(self.master.expose(), epoch).into());
        cipher.decrypt(&nonce, payload).map_err(|_| CryptoError::Mac)
    }
}

/// Seals with a one-off key (a key-encryption key from a passphrase): `nonce || ct+tag`.
pub fn seal_with(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    rand::fill(&mut nonce);
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let ct = cipher.encrypt(&XNonce::from(nonce), plaintext).expect("in-memory encryption");
    [&nonce[..], &ct].concat()
}

/// Opens what [`seal_with`] sealed.
pub fn open_with(key: &[u8; 32], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < 24 + 16 {
        return Err(CryptoError::TooShort(sealed.len()));
    }
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let nonce = XNonce::try_from(&sealed[..24]).expect("24 bytes");
    cipher.decrypt(&nonce, &sealed[24..]).map(Zeroizing::new).map_err(|_| CryptoError::Mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seal_open_and_tamper() {
        let keys = MasterKey::generate().keys(0);
        let sealed = keys.seal(b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(keys.open(&sealed).unwrap(), b"hello");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(keys.open(&bad).is_err(), "flip at {i} accepted");
        }
        assert_eq!(keys.open(&sealed[..10]), Err(CryptoError::TooShort(10)));
        let other = MasterKey::generate().keys(0);
        assert_eq!(other.open(&sealed), Err(CryptoError::Mac));
    }

    #[test]
    fn epochs_rotate_but_old_data_stays_readable() {
        let master = MasterKey::generate();
        let old = master.keys(0).seal(b"old");
        let new_keys = master.keys(1);
        assert_eq!(new_keys.open(&old).unwrap(), b"old");
        let new = new_keys.seal(b"new");
        assert_eq!(&new[..4], &1u32.to_le_bytes());
        assert_eq!(master.keys(0).open(&new).unwrap(), b"new");
        // Ids do not depend on the epoch, so dedup survives rotation.
        assert_eq!(master.keys(0).blob_id(b"x"), new_keys.blob_id(b"x"));
    }

    #[test]
    fn ids_are_keyed() {
        let a = MasterKey::generate().keys(0);
        let b = MasterKey::generate().keys(0);
        assert_ne!(a.blob_id(b"same"), b.blob_id(b"same"));
        assert_ne!(a.blob_id(b"same"), Id::hash(b"same"));
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let keys = MasterKey::generate().keys(3);
            prop_assert_eq!(keys.open(&keys.seal(&data)).unwrap(), data.clone());
            let kek = [7u8; 32];
            prop_assert_eq!(&open_with(&kek, &seal_with(&kek, &data)).unwrap()[..], &data[..]);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let keys = MasterKey::generate().keys(0);
            prop_assert!(keys.open(&data).is_err());
            prop_assert!(open_with(&[1u8; 32], &data).is_err());
        }
    }
}
