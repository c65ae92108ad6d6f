//! Keys and authenticated encryption.
//!
//! A repository has one 256-bit master key. The id key is derived from it with BLAKE3's key
//! derivation (blob ids are keyed BLAKE3 of the plaintext, so the storage owner cannot test for
//! known content). Data is sealed under the key of an **epoch**: epoch 0's key is derived from
//! the master key; every later epoch (`key rotate`) has a random key, kept in the repository
//! sealed under a key-ring key derived from the master key. Sealed objects are
//! `epoch (u32 LE) || nonce (24) || XChaCha20-Poly1305 ciphertext+tag (16)`, with the epoch as
//! associated data, so a reader picks the key by the prefix and nothing is ever re-encrypted.
//! Key material is zeroized on drop.

use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::collections::BTreeMap;

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
    #[error(
        "sealed with key epoch {0}, which this key set does not know (a `key rotate` after the repository \
         was opened? open it again; else the epoch's key-ring entry in keys/ is missing)"
    )]
    UnknownEpoch(u32),
    /// An epoch key-ring entry claims another epoch than the one it was sealed for.
    #[error("key-ring entry for epoch {claimed} is sealed for epoch {sealed}")]
    EpochMismatch {
        /// The epoch the entry's JSON names.
        claimed: u32,
        /// The epoch in its sealed prefix.
        sealed: u32,
    },
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

    /// The key set of this master key with epoch 0 only (add later epochs with
    /// [`Keys::add_epoch`]).
    pub fn keys(&self) -> Keys {
        let mut ring = BTreeMap::new();
        ring.insert(0, XChaCha20Poly1305::new(&derive_data_key(&self.0, 0).into()));
        Keys { id_key: Zeroizing::new(blake3::derive_key("s3bk 2026-12 blob id key", &self.0[..])), ring, epoch: 0 }
    }

    /// Seals the random key of `epoch` (>= 1) for its key-ring entry:
    /// `u32 epoch || nonce || XChaCha20-Poly1305(K_ring, nonce, key, aad = u32 epoch)`.
    pub fn seal_epoch_key(&self, epoch: u32, key: &EpochKey) -> Vec<u8> {
        seal_raw(&self.ring_cipher(), epoch, &key.0[..])
    }

    /// Opens a key-ring entry sealed by [`Self::seal_epoch_key`] and checks it is for `epoch`.
    pub fn open_epoch_key(&self, epoch: u32, sealed: &[u8]) -> Result<EpochKey, CryptoError> {
        let (sealed_epoch, plain) = open_raw(&self.ring_cipher(), sealed)?;
        let plain = Zeroizing::new(plain);
        if sealed_epoch != epoch {
            return Err(CryptoError::EpochMismatch { claimed: epoch, sealed: sealed_epoch });
        }
        let key: [u8; 32] = plain[..].try_into().map_err(|_| CryptoError::Mac)?;
        Ok(EpochKey::from_bytes(key))
    }

    fn ring_cipher(&self) -> XChaCha20Poly1305 {
        // A key of its own: an epoch record is never confused with repository data.
        let k = Zeroizing::new(blake3::derive_key("s3bk 2026-12 epoch key-ring key", &self.0[..]));
        XChaCha20Poly1305::new(&(*k).into())
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The random data key of one epoch after 0.
pub struct EpochKey(Zeroizing<[u8; 32]>);

impl EpochKey {
    /// A fresh random epoch key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::fill(&mut k[..]);
        Self(k)
    }

    fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let k = Zeroizing::new(bytes);
        bytes.zeroize();
        Self(k)
    }
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EpochKey(..)")
    }
}

fn derive_data_key(master: &[u8; 32], epoch: u32) -> [u8; 32] {
    let mut material = Zeroizing::new([0u8; 36]);
    material[..32].copy_from_slice(master);
    material[32..].copy_from_slice(&epoch.to_le_bytes());
    blake3::derive_key("s3bk 2026-12 data encryption key", &material[..])
}

/// Everything needed to name, seal and open repository data: the id key and the key ring.
pub struct Keys {
    id_key: Zeroizing<[u8; 32]>,
    ring: BTreeMap<u32, XChaCha20Poly1305>,
    epoch: u32,
}

/// `u32 epoch || nonce || XChaCha20-Poly1305(cipher, nonce, plaintext, aad = u32 epoch)`.
fn seal_raw(cipher: &XChaCha20Poly1305, epoch: u32, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    rand::fill(&mut nonce);
    let aad = epoch.to_le_bytes();
    // Encrypted in place in the output: one allocation and one copy per sealed object.
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    out.extend_from_slice(&aad);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(nonce), &aad, (&mut out[4 + 24..]).into())
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer");
    out.extend_from_slice(&tag);
    out
}

/// The epoch prefix of a sealed object.
fn sealed_epoch(sealed: &[u8]) -> Result<u32, CryptoError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(CryptoError::TooShort(sealed.len()));
    }
    Ok(u32::from_le_bytes(sealed[..4].try_into().expect("4 bytes")))
}

/// Opens what [`seal_raw`] sealed; returns the epoch prefix and the plaintext.
fn open_raw(cipher: &XChaCha20Poly1305, sealed: &[u8]) -> Result<(u32, Vec<u8>), CryptoError> {
    let mut plain = Vec::new();
    let epoch = open_raw_into(cipher, sealed, &mut plain)?;
    Ok((epoch, plain))
}

/// Opens what [`seal_raw`] sealed into `plain` (cleared first; its allocation is reused).
fn open_raw_into(cipher: &XChaCha20Poly1305, sealed: &[u8], plain: &mut Vec<u8>) -> Result<u32, CryptoError> {
    let epoch = sealed_epoch(sealed)?;
    let (aad, rest) = sealed.split_at(4);
    let (nonce, rest) = rest.split_at(24);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let nonce = XNonce::try_from(nonce).expect("24 bytes");
    let tag = chacha20poly1305::Tag::try_from(tag).expect("16 bytes");
    plain.clear();
    plain.extend_from_slice(ct);
    let opened = cipher.decrypt_inout_detached(&nonce, aad, (&mut plain[..]).into(), &tag);
    if opened.is_err() {
        plain.clear();
        return Err(CryptoError::Mac);
    }
    Ok(epoch)
}

impl Keys {
    /// The id of a blob: keyed BLAKE3 over its plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// The epoch new data is sealed under: the highest one in the ring.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The epochs this key set can open, ascending.
    pub fn epochs(&self) -> Vec<u32> {
        self.ring.keys().copied().collect()
    }

    /// Adds the key of `epoch` (from its key-ring entry); new data is sealed under the highest
    /// epoch known. Epoch 0 is always the derived key and is never replaced.
    pub fn add_epoch(&mut self, epoch: u32, key: &EpochKey) {
        if epoch == 0 {
            return;
        }
        self.ring.insert(epoch, XChaCha20Poly1305::new(&(*key.0).into()));
        self.epoch = self.epoch.max(epoch);
    }

    /// Encrypts and authenticates `plaintext` under the current epoch with a random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        seal_raw(&self.ring[&self.epoch], self.epoch, plaintext)
    }

    /// Checks and decrypts a sealed object, with the key of the epoch in its prefix.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut plain = Vec::new();
        self.open_into(sealed, &mut plain)?;
        Ok(plain)
    }

    /// [`Self::open`] into `plain` (cleared first), reusing its allocation.
    pub fn open_into(&self, sealed: &[u8], plain: &mut Vec<u8>) -> Result<(), CryptoError> {
        let epoch = sealed_epoch(sealed)?;
        let cipher = self.ring.get(&epoch).ok_or(CryptoError::UnknownEpoch(epoch))?;
        open_raw_into(cipher, sealed, plain).map(|_| ())
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
    fn open_into_reuses_its_buffer_and_refuses_tampering() {
        let keys = MasterKey::generate().keys();
        let mut buf = vec![5u8; 4096];
        let sealed = keys.seal(b"short");
        keys.open_into(&sealed, &mut buf).unwrap();
        assert_eq!(buf, b"short");
        let mut bad = keys.seal(&[1u8; 3000]);
        bad[100] ^= 1;
        assert!(matches!(keys.open_into(&bad, &mut buf), Err(CryptoError::Mac)));
        assert!(buf.is_empty(), "nothing of a forged object is left in the buffer");
    }

    #[test]
    fn seal_open_and_tamper() {
        let keys = MasterKey::generate().keys();
        let sealed = keys.seal(b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(keys.open(&sealed).unwrap(), b"hello");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(keys.open(&bad).is_err(), "flip at {i} accepted");
        }
        assert_eq!(keys.open(&sealed[..10]), Err(CryptoError::TooShort(10)));
        let other = MasterKey::generate().keys();
        assert_eq!(other.open(&sealed), Err(CryptoError::Mac));
    }

    #[test]
    fn epochs_rotate_but_old_data_stays_readable() {
        let master = MasterKey::generate();
        let old_keys = master.keys();
        let old = old_keys.seal(b"old");
        assert_eq!(&old[..4], &0u32.to_le_bytes());

        let e1 = EpochKey::generate();
        let record = master.seal_epoch_key(1, &e1);
        let mut new_keys = master.keys();
        new_keys.add_epoch(1, &master.open_epoch_key(1, &record).unwrap());
        assert_eq!(new_keys.epoch(), 1);
        assert_eq!(new_keys.epochs(), [0, 1]);
        assert_eq!(new_keys.open(&old).unwrap(), b"old");
        let new = new_keys.seal(b"new");
        assert_eq!(&new[..4], &1u32.to_le_bytes());
        // A key set that has not seen the rotation says so instead of failing the MAC.
        assert_eq!(old_keys.open(&new), Err(CryptoError::UnknownEpoch(1)));
        // Relabelling the epoch prefix does not pick another key's plaintext.
        let mut relabelled = new.clone();
        relabelled[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(new_keys.open(&relabelled), Err(CryptoError::Mac));
        // Epoch 0 stays derived: a record cannot replace it.
        let mut k = master.keys();
        k.add_epoch(0, &EpochKey::generate());
        assert_eq!(k.open(&old).unwrap(), b"old");
        // Ids do not depend on the epoch, so dedup survives rotation.
        assert_eq!(old_keys.blob_id(b"x"), new_keys.blob_id(b"x"));
    }

    #[test]
    fn tampered_or_foreign_epoch_records_are_rejected() {
        let master = MasterKey::generate();
        let record = master.seal_epoch_key(2, &EpochKey::generate());
        assert!(master.open_epoch_key(2, &record).is_ok());
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 1;
            assert!(master.open_epoch_key(2, &bad).is_err(), "flip at {i} accepted");
        }
        // The JSON says epoch 3 but the record was sealed for 2.
        assert_eq!(
            master.open_epoch_key(3, &record).unwrap_err(),
            CryptoError::EpochMismatch { claimed: 3, sealed: 2 }
        );
        // Another repository's master key cannot open it.
        assert_eq!(MasterKey::generate().open_epoch_key(2, &record).unwrap_err(), CryptoError::Mac);
        // A record is not repository data: the data keys do not open it, nor it them.
        let mut keys = master.keys();
        keys.add_epoch(2, &master.open_epoch_key(2, &record).unwrap());
        assert!(keys.open(&record).is_err());
        assert!(master.open_epoch_key(2, &keys.seal(&[0u8; 32])).is_err());
    }

    #[test]
    fn ids_are_keyed() {
        let a = MasterKey::generate().keys();
        let b = MasterKey::generate().keys();
        assert_ne!(a.blob_id(b"same"), b.blob_id(b"same"));
        assert_ne!(a.blob_id(b"same"), Id::hash(b"same"));
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let master = MasterKey::generate();
            let mut keys = master.keys();
            keys.add_epoch(3, &EpochKey::generate());
            prop_assert_eq!(keys.open(&keys.seal(&data)).unwrap(), data.clone());
            let kek = [7u8; 32];
            prop_assert_eq!(&open_with(&kek, &seal_with(&kek, &data)).unwrap()[..], &data[..]);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let keys = MasterKey::generate().keys();
            prop_assert!(keys.open(&data).is_err());
            prop_assert!(open_with(&[1u8; 32], &data).is_err());
        }
    }
}
