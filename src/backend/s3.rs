//! The S3 backend: a repository is the objects under `s3://bucket/prefix/`, laid out exactly as
//! [`Handle::path`] says. It owns the mapping of backend calls onto S3 requests (create-only puts
//! as `If-None-Match: *`, ranged GETs, paginated listings), multipart uploads of large objects,
//! end-to-end CRC64NVME checksums, the capability probe for conditional writes, and the mapping of
//! S3 errors onto [`BackendError`] with a message that says what to fix.
//!
//! Works with AWS S3 and S3-compatible stores (moto, Garage, MinIO). Servers differ in what they
//! honour: Garage ignores `If-None-Match`, storage classes and SSE-KMS headers, which is why
//! [`Backend::supports_create_only`] probes instead of assuming.

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
    StorageClass,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{Backend, BackendError, FileInfo, FileType, Handle, PutMode, check_handle, valid_name};

/// Objects above this size are uploaded in parts (a single PUT of a 16 MiB pack is cheaper).
pub const MULTIPART_THRESHOLD: usize = 64 << 20;
/// Size of each part of a multipart upload (10,000 parts: objects up to 156 GiB).
pub const PART_SIZE: usize = 16 << 20;
/// Parts of one upload in flight at once: bounds memory and leaves connections to other puts.
const PARTS_IN_FLIGHT: usize = 4;

/// How an [`S3Backend`] writes.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Storage class of pack objects; everything else is always STANDARD (small, read often).
    pub storage_class: StorageClass,
    /// SSE-KMS key (id, ARN or alias) to request on every put; `None` for the bucket default.
    pub sse_kms_key_id: Option<String>,
    /// Requests in flight at once.
    pub connections: usize,
    /// Path-style URLs (`endpoint/bucket/key`); `None` for "when a custom endpoint is set".
    pub path_style: Option<bool>,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            storage_class: StorageClass::IntelligentTiering,
            sse_kms_key_id: None,
            connections: 16,
            path_style: None,
        }
    }
}

/// A backend storing a repository under a prefix of an S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Backend {
    client: Client,
    bucket: String,
    /// Empty, or ending with `/`.
    prefix: String,
    opts: S3Options,
}

/// Normalizes a key prefix: no leading or trailing `/`, then one trailing `/` unless empty.
fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() { String::new() } else { format!("{p}/") }
}

/// `err` and its sources, joined with `: `, skipping a source its parent already quotes (the
/// SDK's errors nest wrappers that repeat their cause).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// The CRC64NVME of `data`, base64-encoded as S3 headers carry it.
fn crc64nvme(data: &[u8]) -> String {
    let mut c = aws_smithy_checksums::ChecksumAlgorithm::Crc64Nvme.into_impl();
    c.update(data);
    base64::engine::general_purpose::STANDARD.encode(c.finalize())
}

impl S3Backend {
    /// A backend for `s3://bucket/prefix`, with a client built once from `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, bucket: impl Into<String>, prefix: &str, opts: S3Options) -> Self {
        // Custom endpoints (MinIO, Garage, moto) rarely have wildcard DNS for bucket subdomains.
        let path_style = opts.path_style.unwrap_or(sdk.endpoint_url().is_some());
        let config = aws_sdk_s3::config::Builder::from(sdk).force_path_style(path_style).build();
        Self { client: Client::from_conf(config), bucket: bucket.into(), prefix: normalize_prefix(prefix), opts }
    }

    /// The S3 client (for tests and tools that need a raw request).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(&self, h: &Handle) -> String {
        format!("{}{}", self.prefix, h.path())
    }

    fn url(&self, h: &Handle) -> String {
        format!("s3://{}/{}", self.bucket, self.key(h))
    }

    fn storage_class(&self, h: &Handle) -> StorageClass {
        // Metadata is small and read on every run: archive or IA classes would cost more in
        // per-request and minimum-size fees than they save.
        if h.tpe == FileType::Pack { self.opts.storage_class.clone() } else { StorageClass::Standard }
    }

    /// Maps an SDK error from doing `what` (on `h`, when the request was about one object).
    fn error<E>(&self, err: SdkError<E, HttpResponse>, h: Option<&Handle>, what: &str) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let context = match h {
            Some(h) => format!("{what} {}", self.url(h)),
            None => format!("{what} {}", self.location()),
        };
        let permanent = |why: String| BackendError::Permanent { context: context.clone(), source: why.into() };
        let transient = |why: String| BackendError::Transient { context: context.clone(), source: why.into() };
        let credentials = |detail: &str| {
            permanent(format!(
                "access denied; check credentials: AWS_PROFILE (or --aws-profile), or AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), and that they allow s3:GetObject, s3:PutObject \
                 and s3:ListBucket on s3://{}/{} ({detail})",
                self.bucket, self.prefix
            ))
        };
        let SdkError::ServiceError(se) = &err else {
            let detail = error_chain(&err);
            return match err {
                // No credentials anywhere in the chain: retrying will not find any.
                _ if detail.to_ascii_lowercase().contains("credentials") => credentials(&detail),
                SdkError::DispatchFailure(_) => transient(format!(
                    "cannot reach the S3 endpoint; check --endpoint-url (or AWS_ENDPOINT_URL), the network and \
                     proxies ({detail})"
                )),
                SdkError::TimeoutError(_) | SdkError::ResponseError(_) => transient(detail),
                _ => permanent(detail),
            };
        };
        let status = se.raw().status().as_u16();
        let code = se.err().code().unwrap_or("");
        let detail = match (code, se.err().message()) {
            ("", None) if se.raw().status().is_success() => format!("HTTP {status}: {}", DisplayErrorContext(se.err())),
            ("", None) => format!("HTTP {status}, no error details"),
            (_, m) => format!("HTTP {status} {code}{}", m.map(|m| format!(": {m}")).unwrap_or_default()),
        };
        let bucket_region = se.raw().headers().get("x-amz-bucket-region").map(str::to_owned);
        match (status, code) {
            (_, "NoSuchBucket") => permanent(format!(
                "bucket {:?} does not exist (or not at this endpoint); create it (`aws s3 mb s3://{}`) or run \
                 `s3bk bootstrap` ({detail})",
                self.bucket, self.bucket
            )),
            (_, "NoSuchUpload") => transient(detail),
            (404, _) | (_, "NoSuchKey" | "NotFound") if h.is_some() => {
                BackendError::NotFound(h.expect("checked").clone())
            }
            (412, _) | (_, "PreconditionFailed") if h.is_some() => {
                BackendError::AlreadyExists(h.expect("checked").clone())
            }
            // A concurrent conditional write on the same key: S3 asks for a retry.
            (409, _) | (_, "ConditionalRequestConflict") => transient(detail),
            (403, _)
            | (
                _,
                "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"
                | "InvalidClientTokenId",
            ) => credentials(&detail),
            // A bare 400 is what a HEAD (no error body) gets for a request signed for another
            // region, by far the most common way to get a 400 from a well-formed request.
            (301, _)
            | (400, "")
            | (_, "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException") => {
                permanent(match bucket_region {
                    Some(r) => format!(
                        "bucket {:?} is in region {r}; pass --region {r} or set AWS_REGION={r} ({detail})",
                        self.bucket
                    ),
                    None => format!(
                        "wrong region for bucket {:?}; pass --region with the bucket's region (for Garage, its \
                         s3_region) ({detail})",
                        self.bucket
                    ),
                })
            }
            (416, _) | (_, "InvalidRange") => permanent(format!("range is not within the object ({detail})")),
            (429 | 500.., _)
            | (
                _,
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestTimeout"
                | "InternalError"
                | "ServiceUnavailable",
            ) => transient(detail),
            _ => permanent(detail),
        }
    }

    /// Sets the storage class, SSE and checksum headers every upload carries.
    async fn put_single(&self, h: &Handle, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(h))
            .storage_class(self.storage_class(h))
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_crc64_nvme(crc64nvme(&data))
            .body(ByteStream::from(data));
        if mode == PutMode::CreateOnly {
            req = req.if_none_match("*");
        }
        if let Some(key) = &self.opts.sse_kms_key_id {
            req = req.server_side_encryption(ServerSideEncryption::AwsKms).ssekms_key_id(key);
        }
        // A 412 on a retry whose first attempt landed also reads as AlreadyExists: for a
        // content-addressed name that is "already stored", which is what callers assume.
        req.send().await.map_err(|e| self.error(e, Some(h), "writing"))?;
        Ok(())
    }

    async fn put_multipart(&self, h: &Handle, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        let key = self.key(h);
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .storage_class(self.storage_class(h))
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_type(ChecksumType::FullObject);
        if let Some(k) = &self.opts.sse_kms_key_id {
            req = req.server_side_encryption(ServerSideEncryption::AwsKms).ssekms_key_id(k);
        }
        let created = req.send().await.map_err(|e| self.error(e, Some(h), "starting a multipart upload of"))?;
        let upload_id = created.upload_id().ok_or_else(|| BackendError::Permanent {
            context: format!("starting a multipart upload of {}", self.url(h)),
            source: "the server returned no upload id".into(),
        })?;
        let result = self.upload_parts(h, &key, upload_id, data, mode).await;
        if result.is_err() {
            // Parts of an unfinished upload are billed until aborted.
            if let Err(e) =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(&key).upload_id(upload_id).send().await
            {
                tracing::warn!(object = %self.url(h), error = %DisplayErrorContext(&e), "cannot abort multipart upload");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        h: &Handle,
        key: &str,
        upload_id: &str,
        data: Bytes,
        mode: PutMode,
    ) -> Result<(), BackendError> {
        let full_crc = crc64nvme(&data);
        let len = data.len();
        let parts: Vec<CompletedPart> = futures::stream::iter((0..len).step_by(PART_SIZE).enumerate())
            .map(|(i, start)| {
                let part = data.slice(start..(start + PART_SIZE).min(len));
                let number = i as i32 + 1;
                async move {
                    let crc = crc64nvme(&part);
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                        .checksum_crc64_nvme(&crc)
                        .body(ByteStream::from(part))
                        .send()
                        .await
                        .map_err(|e| self.error(e, Some(h), &format!("uploading part {number} of")))?;
                    Ok::<_, BackendError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_owned))
                            .checksum_crc64_nvme(crc)
                            .build(),
                    )
                }
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .checksum_crc64_nvme(&full_crc)
            .checksum_type(ChecksumType::FullObject)
            .mpu_object_size(len as i64);
        if mode == PutMode::CreateOnly {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(()),
            // A 2xx whose body the SDK cannot parse (moto answers with the wrong XML root): the
            // upload may well be complete, so check what is stored instead of guessing.
            Err(SdkError::ServiceError(se)) if se.raw().status().is_success() && se.err().code().is_none() => {
                self.check_completed(h, key, &full_crc, len).await
            }
            Err(e) => Err(self.error(e, Some(h), "completing the multipart upload of")),
        }
    }

    /// Succeeds if `key` holds `len` bytes with the full-object CRC64NVME `crc`.
    async fn check_completed(&self, h: &Handle, key: &str, crc: &str, len: usize) -> Result<(), BackendError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| self.error(e, Some(h), "checking the completed multipart upload of"))?;
        if out.content_length() == Some(len as i64) && out.checksum_crc64_nvme() == Some(crc) {
            return Ok(());
        }
        Err(BackendError::Transient {
            context: format!("completing the multipart upload of {}", self.url(h)),
            source: format!(
                "the server's answer was unreadable and the stored object is not the one uploaded ({:?} bytes, \
                 CRC64NVME {:?}; want {len} bytes, {crc})",
                out.content_length(),
                out.checksum_crc64_nvme()
            )
            .into(),
        })
    }

    /// Lists every key under `dir` (relative to the prefix, ending with `/`), with sizes.
    async fn list_keys(&self, dir: &str) -> Result<Vec<(String, u64, Option<SystemTime>)>, BackendError> {
        let full = format!("{}{dir}", self.prefix);
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(e, None, &format!("listing {full} in")))?;
            for obj in page.contents() {
                if let Some(rest) = obj.key().and_then(|k| k.strip_prefix(&full)) {
                    let modified = obj.last_modified().and_then(|t| SystemTime::try_from(*t).ok());
                    out.push((rest.to_owned(), obj.size().unwrap_or(0).max(0) as u64, modified));
                }
            }
        }
        Ok(out)
    }
}

/// The largest buffer a GET reserves up front from the announced length (larger objects grow it
/// as bytes arrive): a pack run is at most 16 MiB plus gaps.
const MAX_PREALLOCATION: u64 = 64 << 20;

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }

    fn connections(&self) -> usize {
        self.opts.connections.max(1)
    }

    async fn create(&self) -> Result<(), BackendError> {
        // S3 has no folders; only the bucket must exist (creating it is `bootstrap`'s job, with
        // the versioning and lifecycle settings a backup bucket needs).
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let missing = matches!(&e, SdkError::ServiceError(se) if se.raw().status().as_u16() == 404);
                let err = self.error(e, None, "checking bucket");
                if missing {
                    // HEAD responses have no body, so no NoSuchBucket code to go by.
                    Err(BackendError::Permanent {
                        context: format!("checking bucket {}", self.bucket),
                        source: format!(
                            "bucket {:?} does not exist (or not at this endpoint); create it (`aws s3 mb s3://{}`) \
                             or run `s3bk bootstrap`",
                            self.bucket, self.bucket
                        )
                        .into(),
                    })
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn put(&self, h: &Handle, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        check_handle(h)?;
        if data.len() > MULTIPART_THRESHOLD {
            self.put_multipart(h, data, mode).await
        } else {
            self.put_single(h, data, mode).await
        }
    }

    async fn get(&self, h: &Handle, range: Option<Range<u64>>) -> Result<Bytes, BackendError> {
        check_handle(h)?;
        let mut req = self.client.get_object().bucket(&self.bucket).key(self.key(h));
        let out_of_range = |len: u64| BackendError::Permanent {
            context: format!("reading {} bytes {:?}", self.url(h), range),
            source: format!("range is not within the {len}-byte object").into(),
        };
        match &range {
            None => req = req.checksum_mode(ChecksumMode::Enabled),
            Some(r) if r.start > r.end => return Err(out_of_range(self.stat(h).await?.size)),
            // HTTP cannot ask for zero bytes; the range only has to be within the object.
            Some(r) if r.start == r.end => {
                let size = self.stat(h).await?.size;
                return if r.end <= size { Ok(Bytes::new()) } else { Err(out_of_range(size)) };
            }
            // HTTP ranges are inclusive.
            Some(r) => req = req.range(format!("bytes={}-{}", r.start, r.end - 1)),
        }
        let out = req.send().await.map_err(|e| self.error(e, Some(h), "reading"))?;
        let total = out.content_range().and_then(|cr| cr.rsplit_once('/')).and_then(|(_, n)| n.parse::<u64>().ok());
        // Read straight into one buffer of the announced size: collecting the body's segments
        // and then joining them would hold every byte twice (restore keeps up to 32 MiB per core in
        // flight). The announcement is only a hint, capped, so a lying server cannot make us
        // allocate more than it sends.
        let announced = out.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let mut data = Vec::with_capacity(announced.min(MAX_PREALLOCATION) as usize);
        let mut body = out.body;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| BackendError::Transient { context: format!("reading {}", self.url(h)), source: e.into() })?
        {
            data.extend_from_slice(&chunk);
        }
        let data = Bytes::from(data);
        if let Some(r) = &range {
            // S3 answers a range running past the end with the part that exists.
            if data.len() as u64 != r.end - r.start {
                return Err(out_of_range(total.unwrap_or(r.start + data.len() as u64)));
            }
        }
        Ok(data)
    }

    async fn stat(&self, h: &Handle) -> Result<FileInfo, BackendError> {
        check_handle(h)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(h))
            .send()
            .await
            .map_err(|e| self.error(e, Some(h), "checking"))?;
        Ok(FileInfo {
            handle: h.clone(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            modified: out.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
        })
    }

    async fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>, BackendError> {
        if tpe == FileType::Config {
            return match self.stat(&Handle::config()).await {
                Ok(info) => Ok(vec![info]),
                Err(e) if e.is_not_found() => Ok(Vec::new()),
                Err(e) => Err(e),
            };
        }
        let keys = self.list_keys(&format!("{}/", tpe.dirname())).await?;
        Ok(keys
            .into_iter()
            .filter_map(|(rest, size, modified)| {
                let name = match tpe {
                    // `xx/<name>` where xx is the name's first two digits; anything else is stray.
                    FileType::Pack => {
                        let (dir, name) = rest.split_once('/')?;
                        (name.get(..2) == Some(dir)).then_some(name)?
                    }
                    _ => rest.as_str(),
                };
                // The capability probe is this backend's own machinery, not a lock.
                let probe = tpe == FileType::Lock && name == crate::backend::CREATE_ONLY_PROBE;
                (valid_name(tpe, name) && !probe).then(|| FileInfo { handle: Handle::new(tpe, name), size, modified })
            })
            .collect())
    }

    async fn delete(&self, h: &Handle) -> Result<(), BackendError> {
        // S3 answers 204 for a missing key; the contract wants NotFound.
        self.stat(h).await?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(h))
            .send()
            .await
            .map_err(|e| self.error(e, Some(h), "deleting"))?;
        Ok(())
    }

    async fn supports_create_only(&self) -> Result<bool, BackendError> {
        // A fixed name, never deleted: a backup-only credential has no s3:DeleteObject, and a
        // random name would leave one object behind per run. If the probe already exists, a
        // 412 on the first put is itself the proof; otherwise the second put must get one.
        let probe = Handle::new(FileType::Lock, crate::backend::CREATE_ONLY_PROBE);
        let body = Bytes::from_static(b"s3bk capability probe: If-None-Match on PUT\n");
        match self.put_single(&probe, body.clone(), PutMode::CreateOnly).await {
            Err(BackendError::AlreadyExists(_)) => return Ok(true),
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        match self.put_single(&probe, body, PutMode::CreateOnly).await {
            Err(BackendError::AlreadyExists(_)) => Ok(true),
            Ok(()) => {
                tracing::info!(location = %self.location(), "the server ignores If-None-Match: create-only puts are not atomic");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_checksums() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("a/b/"), "a/b/");
        assert_eq!(normalize_prefix("/a/b"), "a/b/");
        // CRC64NVME check value of "123456789" (the reference vector), big-endian, base64.
        let want = base64::engine::general_purpose::STANDARD.encode(0xae8b_1486_0a79_9888_u64.to_be_bytes());
        assert_eq!(crc64nvme(b"123456789"), want);
    }
}
