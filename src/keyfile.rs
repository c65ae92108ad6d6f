//! Key files (`keys/<id>`): the master key wrapped by a passphrase (Argon2id) or by an AWS KMS
//! key, and the key ring's epoch entries.
//!
//! A key file is plaintext JSON, tagged by `kind`, so that it can be inspected and so kinds can
//! be added. Every master-key wrap (`passphrase`, `kms`) of a repository wraps the same master
//! key; opening tries each until one unwraps. `epoch` entries are not wraps: they hold the
//! random data key of a rotated epoch, sealed under the master key (see `crypto`). KDF
//! parameters are read from the file but bounded, so a hostile file cannot demand gigabytes of
//! memory. The KMS calls themselves live in `kms`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, EpochKey, MasterKey};
use crate::error::{Error, Result};

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes: RFC 9106's second recommended option. The lanes are filled
    /// in parallel, so on two cores a derivation takes about half the time of one lane (key
    /// files are opened on every run) for the same memory hardness.
    fn default() -> Self {
        Self { m_cost: 64 * 1024, t_cost: 3, p_cost: 4 }
    }
}

const MAX_M_COST: u32 = 4 * 1024 * 1024; // 4 GiB
const MAX_T_COST: u32 = 100;

/// How the master key is wrapped.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Wrap {
    /// By a key derived from a passphrase with Argon2id.
    Passphrase {
        /// Cost parameters.
        kdf: KdfParams,
        /// Random salt, hex.
        salt: String,
        /// `seal_with(kek, master)`, hex.
        wrapped: String,
    },
    /// By an AWS KMS key (envelope encryption: the master key is a KMS data key).
    Kms {
        /// The KMS key as given by the user (key id, key ARN, alias name or alias ARN).
        key_id: String,
        /// The `CiphertextBlob` KMS returned, base64.
        ciphertext: String,
        /// The encryption context (KMS's associated data): `app`, `repo`, `purpose`.
        context: BTreeMap<String, String>,
    },
    /// Not a wrap: the random data key of `epoch` (>= 1), sealed under the master key.
    Epoch {
        /// The epoch.
        epoch: u32,
        /// `MasterKey::seal_epoch_key`, hex.
        sealed: String,
    },
}

impl Wrap {
    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Passphrase { .. } => "passphrase",
            Self::Kms { .. } => "kms",
            Self::Epoch { .. } => "epoch",
        }
    }

    /// Whether this wraps the master key (an `epoch` entry does not).
    pub fn is_master_wrap(&self) -> bool {
        !matches!(self, Self::Epoch { .. })
    }
}

/// One key file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    /// Format version of the key file.
    pub version: u32,
    /// When it was made (RFC 3339).
    pub created: String,
    /// Host that made it.
    pub hostname: String,
    /// User that made it.
    pub username: String,
    /// The wrapping.
    #[serde(flatten)]
    pub wrap: Wrap,
}

fn derive_kek(passphrase: &[u8], salt: &[u8], kdf: KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    if kdf.m_cost > MAX_M_COST || kdf.t_cost > MAX_T_COST || kdf.p_cost == 0 || kdf.p_cost > 64 {
        return Err(Error::corrupt("key file", "KDF parameters out of bounds"));
    }
    let params = argon2::Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| Error::corrupt("key file", format!("KDF parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut kek = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, &mut kek[..])
        .map_err(|e| Error::corrupt("key file", format!("KDF: {e}")))?;
    Ok(kek)
}

impl KeyFile {
    /// A key file made now, here, by this user.
    pub fn new(wrap: Wrap) -> Self {
        Self {
            version: 1,
            created: jiff::Timestamp::now().to_string(),
            hostname: crate::host::hostname(),
            username: crate::host::username(),
            wrap,
        }
    }

    /// The key-ring entry for `epoch`.
    pub fn epoch(master: &MasterKey, epoch: u32, key: &EpochKey) -> Self {
        Self::new(Wrap::Epoch { epoch, sealed: hex::encode(master.seal_epoch_key(epoch, key)) })
    }

    /// Opens a key-ring entry; `Ok(None)` when this is not one.
    pub fn open_epoch(&self, master: &MasterKey) -> Result<Option<(u32, EpochKey)>> {
        let Wrap::Epoch { epoch, sealed } = &self.wrap else {
            return Ok(None);
        };
        if *epoch == 0 {
            return Err(Error::corrupt("key-ring entry", "epoch 0 is derived, not stored"));
        }
        let sealed = hex::decode(sealed).map_err(|_| Error::corrupt("key-ring entry", "not hex"))?;
        let key = master
            .open_epoch_key(*epoch, &sealed)
            .map_err(|e| Error::corrupt(format!("key-ring entry for epoch {epoch}"), e.to_string()))?;
        Ok(Some((*epoch, key)))
    }

    /// Wraps `master` under `passphrase`.
    pub fn passphrase(master: &MasterKey, passphrase: &[u8], kdf: KdfParams) -> Result<Self> {
        let mut salt = [0u8; 32];
        rand::fill(&mut salt);
        let kek = derive_kek(passphrase, &salt, kdf)?;
        Ok(Self::new(Wrap::Passphrase {
            kdf,
            salt: hex::encode(salt),
            wrapped: hex::encode(crypto::seal_with(&kek, master.expose())),
        }))
    }

    /// Unwraps the master key; `Ok(None)` when the passphrase does not fit this file or it is
    /// not a passphrase file.
    pub fn unwrap_passphrase(&self, passphrase: &[u8]) -> Result<Option<MasterKey>> {
        let Wrap::Passphrase { kdf, salt, wrapped } = &self.wrap else {
            return Ok(None);
        };
        let salt = hex::decode(salt).map_err(|_| Error::corrupt("key file", "salt is not hex"))?;
        let wrapped = hex::decode(wrapped).map_err(|_| Error::corrupt("key file", "key is not hex"))?;
        let kek = derive_kek(passphrase, &salt, *kdf)?;
        match crypto::open_with(&kek, &wrapped) {
            Ok(bytes) => {
                let arr: [u8; 32] =
                    bytes[..].try_into().map_err(|_| Error::corrupt("key file", "wrapped key is not 32 bytes"))?;
                Ok(Some(MasterKey::from_bytes(arr)))
            }
            Err(_) => Ok(None),
        }
    }

    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key file serializes")
    }

    /// Decodes JSON (at most 64 KiB; key files are tiny).
    pub fn decode(data: &[u8]) -> Result<Self> {
        if data.len() > 64 << 10 {
            return Err(Error::corrupt("key file", "too large"));
        }
        let kf: Self = serde_json::from_slice(data).map_err(|e| Error::corrupt("key file", e.to_string()))?;
        if kf.version != 1 {
            return Err(Error::UnsupportedVersion { found: kf.version, supported: 1 });
        }
        Ok(kf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 };

    #[test]
    fn wrap_unwrap_and_wrong_passphrase() {
        let master = MasterKey::generate();
        let kf = KeyFile::passphrase(&master, b"secret", CHEAP).unwrap();
        let kf = KeyFile::decode(&kf.encode()).unwrap();
        assert_eq!(kf.unwrap_passphrase(b"secret").unwrap().unwrap().expose(), master.expose());
        assert!(kf.unwrap_passphrase(b"Secret").unwrap().is_none());
    }

    #[test]
    fn hostile_kdf_parameters_are_refused() {
        let master = MasterKey::generate();
        let mut kf = KeyFile::passphrase(&master, b"x", CHEAP).unwrap();
        let Wrap::Passphrase { kdf, .. } = &mut kf.wrap else { unreachable!() };
        kdf.m_cost = u32::MAX;
        assert!(matches!(kf.unwrap_passphrase(b"x"), Err(Error::Corrupt { .. })));
        assert!(KeyFile::decode(b"{").is_err());
    }

    #[test]
    fn kinds_round_trip_and_epoch_entries_are_not_wraps() {
        let master = MasterKey::generate();
        let kms = KeyFile::new(Wrap::Kms {
            key_id: "alias/s3bk".into(),
            ciphertext: "AAAA".into(),
            context: [("app".to_owned(), "s3bk".to_owned())].into(),
        });
        let json: serde_json::Value = serde_json::from_slice(&kms.encode()).unwrap();
        assert_eq!(json["kind"], "kms");
        assert_eq!(json["key_id"], "alias/s3bk");
        assert_eq!(json["context"]["app"], "s3bk");
        let back = KeyFile::decode(&kms.encode()).unwrap();
        assert!(back.wrap.is_master_wrap());
        assert!(back.unwrap_passphrase(b"x").unwrap().is_none());

        let e = KeyFile::decode(&KeyFile::epoch(&master, 4, &EpochKey::generate()).encode()).unwrap();
        assert_eq!(e.wrap.kind(), "epoch");
        assert!(!e.wrap.is_master_wrap());
        assert!(e.unwrap_passphrase(b"x").unwrap().is_none());
        assert_eq!(e.open_epoch(&master).unwrap().unwrap().0, 4);
        assert!(matches!(e.open_epoch(&MasterKey::generate()), Err(Error::Corrupt { .. })));
        // Claiming another epoch than the sealed one is refused.
        let mut relabelled = e.clone();
        let Wrap::Epoch { epoch, .. } = &mut relabelled.wrap else { unreachable!() };
        *epoch = 5;
        assert!(matches!(relabelled.open_epoch(&master), Err(Error::Corrupt { .. })));
        assert!(kms.open_epoch(&master).unwrap().is_none());
    }
}
