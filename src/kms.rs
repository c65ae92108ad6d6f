//! AWS KMS envelope encryption of the master key.
//!
//! With KMS, the repository master key is a KMS data key: `GenerateDataKey` (AES_256) returns
//! it in the clear, used only in memory and zeroized, and wrapped (`CiphertextBlob`), stored in
//! a `kms` key file. Opening calls `Decrypt` once per run with the key id pinned. Every call
//! carries the encryption context `{app: s3bk, repo: <repository id>, purpose: master-key}`:
//! KMS binds it to the ciphertext as associated data (a key file moved to another repository
//! or edited does not decrypt), logs it in CloudTrail, and key policies can condition on it.
//! `rewrap` moves a wrap to another KMS key with `ReEncrypt`, so the master key never leaves
//! KMS on that path. KMS failures become [`Error::Kms`] with a message saying what to fix.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::keyfile::{KeyFile, Wrap};

/// A KMS client for wrapping and unwrapping repository master keys.
#[derive(Clone, Debug)]
pub struct Kms {
    client: aws_sdk_kms::Client,
}

/// The KMS operations s3bk uses, for error messages (which IAM action was refused).
#[derive(Clone, Copy, Debug)]
enum Op {
    GenerateDataKey,
    Decrypt,
    Encrypt,
    ReEncrypt,
}

impl Op {
    fn permission(self) -> &'static str {
        match self {
            Self::GenerateDataKey => "kms:GenerateDataKey",
            Self::Decrypt => "kms:Decrypt",
            Self::Encrypt => "kms:Encrypt",
            Self::ReEncrypt => "kms:ReEncryptFrom on the old key and kms:ReEncryptTo on the new one",
        }
    }
}

/// The encryption context of the master-key wrap of repository `repo`.
pub fn context(repo: &Id) -> BTreeMap<String, String> {
    [("app", "s3bk".to_owned()), ("repo", repo.to_hex()), ("purpose", "master-key".to_owned())]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn as_map(ctx: &BTreeMap<String, String>) -> HashMap<String, String> {
    ctx.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The error and its sources, each shown once (the SDK's own rendering adds a Debug dump).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Turns an SDK error into an [`Error::Kms`] that names the key and says what to fix.
fn kms_error<E>(op: Op, key_id: &str, err: SdkError<E, aws_smithy_runtime_api::http::Response>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = match err.as_service_error() {
        Some(e) => e.message().map_or_else(|| chain(&err), str::to_owned),
        None => chain(&err),
    };
    let msg = match err.as_service_error().and_then(|e| e.code()) {
        Some("NotFoundException") => format!(
            "KMS key {key_id} does not exist (in this account and region); check the key id or alias and \
             AWS_REGION"
        ),
        Some("DisabledException") => format!(
            "KMS key {key_id} is disabled; enable it (`aws kms enable-key`) or use another key that wraps \
             this repository"
        ),
        Some("AccessDeniedException") => format!(
            "access to KMS key {key_id} denied; the caller needs {} on it (check the key policy and IAM \
             policy)",
            op.permission()
        ),
        Some("InvalidCiphertextException") => format!(
            "KMS rejected the wrapped key: wrong encryption context or key (the key file was altered, comes \
             from another repository, or was not wrapped by {key_id})"
        ),
        Some("IncorrectKeyException") => format!("the key file was not wrapped by KMS key {key_id}"),
        Some("KMSInvalidStateException") => format!(
            "KMS key {key_id} cannot be used in its current state (pending deletion, or pending import); \
             cancel the deletion or use another key"
        ),
        Some("KeyUnavailableException") => format!("KMS key {key_id} is unavailable right now; try again later"),
        Some(
            "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "ExpiredToken",
        ) => format!(
            "AWS rejected the credentials ({detail}); refresh them or check AWS_ACCESS_KEY_ID, \
             AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or AWS_PROFILE"
        ),
        Some(code) => format!("{code} from KMS for key {key_id}: {detail}"),
        None if detail.contains("credentials") => format!(
            "no usable AWS credentials ({detail}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             AWS_PROFILE, or run where an IAM role is available"
        ),
        None => match &err {
            SdkError::ConstructionFailure(_) => {
                format!("cannot build the KMS request ({detail}); check AWS_REGION and AWS_ENDPOINT_URL_KMS")
            }
            SdkError::TimeoutError(_) => format!("KMS did not answer in time ({detail}); try again"),
            _ => format!(
                "cannot reach KMS ({detail}); check the network, AWS_REGION and any endpoint override \
                 (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_KMS)"
            ),
        },
    };
    tracing::debug!("KMS {op:?} on {key_id} failed: {}", DisplayErrorContext(&err));
    Error::Kms(msg)
}

/// Takes a returned plaintext data key and turns it into a master key, wiping the buffer.
fn master_from_plaintext(plain: Option<Blob>, key_id: &str) -> Result<MasterKey> {
    let bytes = Zeroizing::new(plain.map(Blob::into_inner).unwrap_or_default());
    let arr: [u8; 32] = bytes[..]
        .try_into()
        .map_err(|_| Error::Kms(format!("KMS key {key_id} returned a {}-byte data key, not 32", bytes.len())))?;
    Ok(MasterKey::from_bytes(arr))
}

impl Kms {
    /// A client configured by the standard AWS chain: region, profile, credentials and endpoint
    /// (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_KMS`, ...).
    pub async fn from_env() -> Result<Self> {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        if conf.region().is_none() {
            return Err(Error::Kms(
                "no AWS region configured; set AWS_REGION, or a region in the AWS profile (AWS_PROFILE)".into(),
            ));
        }
        Ok(Self::new(aws_sdk_kms::Client::new(&conf)))
    }

    /// A client from an SDK client (tests, custom configuration).
    pub fn new(client: aws_sdk_kms::Client) -> Self {
        Self { client }
    }

    /// A new master key for repository `repo`: a KMS data key under `key_id`, and the key file
    /// that wraps it.
    pub async fn generate_master(&self, key_id: &str, repo: &Id) -> Result<(MasterKey, KeyFile)> {
        let ctx = context(repo);
        let out = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(as_map(&ctx)))
            .send()
            .await
            .map_err(|e| kms_error(Op::GenerateDataKey, key_id, e))?;
        let ciphertext = out.ciphertext_blob.as_ref().map(|b| BASE64.encode(b.as_ref()));
        let master = master_from_plaintext(out.plaintext, key_id)?;
        let ciphertext = ciphertext.ok_or_else(|| Error::Kms("GenerateDataKey returned no ciphertext".into()))?;
        Ok((master, KeyFile::new(Wrap::Kms { key_id: key_id.to_owned(), ciphertext, context: ctx })))
    }

    /// Unwraps the master key in a `kms` key file (`Decrypt` with its key id pinned and its
    /// encryption context).
    pub async fn unwrap(&self, kf: &KeyFile) -> Result<MasterKey> {
        let Wrap::Kms { key_id, ciphertext, context } = &kf.wrap else {
            return Err(Error::Invalid(format!("a {} key file is not KMS-wrapped", kf.wrap.kind())));
        };
        let blob = BASE64.decode(ciphertext).map_err(|_| Error::corrupt("KMS key file", "ciphertext is not base64"))?;
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(blob))
            .set_encryption_context(Some(as_map(context)))
            .send()
            .await
            .map_err(|e| kms_error(Op::Decrypt, key_id, e))?;
        master_from_plaintext(out.plaintext, key_id)
    }

    /// The same master key wrapped under `new_key_id` instead (`ReEncrypt`: the plaintext
    /// never leaves KMS). The encryption context is kept.
    pub async fn rewrap(&self, kf: &KeyFile, new_key_id: &str) -> Result<KeyFile> {
        let Wrap::Kms { key_id, ciphertext, context } = &kf.wrap else {
            return Err(Error::Invalid(format!("a {} key file is not KMS-wrapped", kf.wrap.kind())));
        };
        let blob = BASE64.decode(ciphertext).map_err(|_| Error::corrupt("KMS key file", "ciphertext is not base64"))?;
        let out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(blob))
            .source_key_id(key_id)
            .set_source_encryption_context(Some(as_map(context)))
            .destination_key_id(new_key_id)
            .set_destination_encryption_context(Some(as_map(context)))
            .send()
            .await
            .map_err(|e| kms_error(Op::ReEncrypt, &format!("{key_id} → {new_key_id}"), e))?;
        let ciphertext = out
            .ciphertext_blob
            .map(|b| BASE64.encode(b.as_ref()))
            .ok_or_else(|| Error::Kms("ReEncrypt returned no ciphertext".into()))?;
        Ok(KeyFile::new(Wrap::Kms { key_id: new_key_id.to_owned(), ciphertext, context: context.clone() }))
    }

    /// Wraps an existing master key under `key_id` (`Encrypt`), for adding a KMS key to a
    /// repository opened some other way.
    pub async fn wrap(&self, master: &MasterKey, key_id: &str, repo: &Id) -> Result<KeyFile> {
        let ctx = context(repo);
        // The SDK takes the plaintext by value and does not wipe its request buffers; this copy
        // is the only one we control, and it is dropped with the request.
        let out = self
            .client
            .encrypt()
            .key_id(key_id)
            .plaintext(Blob::new(master.expose().to_vec()))
            .set_encryption_context(Some(as_map(&ctx)))
            .send()
            .await
            .map_err(|e| kms_error(Op::Encrypt, key_id, e))?;
        let ciphertext = out
            .ciphertext_blob
            .map(|b| BASE64.encode(b.as_ref()))
            .ok_or_else(|| Error::Kms("Encrypt returned no ciphertext".into()))?;
        Ok(KeyFile::new(Wrap::Kms { key_id: key_id.to_owned(), ciphertext, context: ctx }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_the_repository() {
        let id = Id::random();
        let ctx = context(&id);
        assert_eq!(ctx["app"], "s3bk");
        assert_eq!(ctx["purpose"], "master-key");
        assert_eq!(ctx["repo"], id.to_hex());
        assert_eq!(ctx.len(), 3);
    }

    #[test]
    fn short_or_missing_data_keys_are_refused() {
        assert!(matches!(master_from_plaintext(Some(Blob::new(vec![1; 16])), "k"), Err(Error::Kms(_))));
        assert!(matches!(master_from_plaintext(None, "k"), Err(Error::Kms(_))));
        let m = master_from_plaintext(Some(Blob::new(vec![7; 32])), "k").unwrap();
        assert_eq!(m.expose(), &[7; 32]);
    }
}
