//! Key files (`keys/<id>`): the master key wrapped by a passphrase (Argon2id).
//!
//! A key file is plaintext JSON so that it can be inspected and so a KMS-wrapped kind can be
//! added beside the passphrase kind. Every key file of a repository wraps the same master key;
//! opening tries each until one unwraps. KDF parameters are read from the file but bounded, so
//! a hostile file cannot demand gigabytes of memory.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, MasterKey};
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
    /// 64 MiB, 3 passes, 1 lane: about 0.2 s on one core, above OWASP's Argon2id minimum.
    fn default() -> Self {
        Self { m_cost: 64 * 1024, t_cost: 3, p_cost: 1 }
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
    /// Wraps `master` under `passphrase`.
    pub fn passphrase(master: &MasterKey, passphrase: &[u8], kdf: KdfParams) -> Result<Self> {
        let mut salt = [0u8; 32];
        rand::fill(&mut salt);
        let kek = derive_kek(passphrase, &salt, kdf)?;
        Ok(Self {
            version: 1,
            created: jiff::Timestamp::now().to_string(),
            hostname: crate::host::hostname(),
            username: crate::host::username(),
            wrap: Wrap::Passphrase {
                kdf,
                salt: hex::encode(salt),
                wrapped: hex::encode(crypto::seal_with(&kek, master.expose())),
            },
        })
    }

    /// Unwraps the master key; `Ok(None)` when the passphrase does not fit this file.
    pub fn unwrap_passphrase(&self, passphrase: &[u8]) -> Result<Option<MasterKey>> {
        let Wrap::Passphrase { kdf, salt, wrapped } = &self.wrap;
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
        let Wrap::Passphrase { kdf, .. } = &mut kf.wrap;
        kdf.m_cost = u32::MAX;
        assert!(matches!(kf.unwrap_passphrase(b"x"), Err(Error::Corrupt { .. })));
        assert!(KeyFile::decode(b"{").is_err());
    }
}
