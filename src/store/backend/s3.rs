//! A store in an S3 bucket (AWS, MinIO, SeaweedFS, Ceph RGW, ...), through aws-sdk-s3.
//!
//! put-if-absent is `PutObject` with `If-None-Match: *`: the server answers 412 when the object
//! exists. The SDK's own retries are off; [`super::retry::Retrying`] retries what is transient.

use super::{Backend, BackendError, ObjectInfo, Result, Retention, RetentionMode};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use std::time::Duration;

/// Where an S3 store lives. Credentials come from the standard AWS chain (environment
/// variables, profile, web identity, instance metadata).
#[derive(Debug, Clone, Default)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing slash ("" for the bucket root).
    pub prefix: String,
    /// Custom endpoint (MinIO, SeaweedFS, ...); `AWS_ENDPOINT_URL` when `None`.
    pub endpoint: Option<String>,
    /// `AWS_REGION` when `None`, else us-east-1.
    pub region: Option<String>,
    /// Path-style addressing; by default on when a custom endpoint is set.
    pub path_style: Option<bool>,
    /// Static credentials (tests); the standard chain when `None`.
    pub credentials: Option<(String, String)>,
}

pub struct S3Backend {
    rt: tokio::runtime::Runtime,
    client: Client,
    loc: S3Location,
    endpoint_desc: String,
}

fn classify<E>(what: &str, key: &str, err: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) => BackendError::Transient(format!("{what} {key}: timed out")),
        SdkError::DispatchFailure(e) => {
            let detail = e.as_connector_error().map(|c| c.to_string()).unwrap_or_else(|| format!("{e:?}"));
            BackendError::Transient(format!("{what} {key}: cannot reach the S3 endpoint: {detail}"))
        }
        SdkError::ResponseError(_) => BackendError::Transient(format!("{what} {key}: bad response: {err}")),
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_string();
            let message = se.err().message().unwrap_or("").to_string();
            match (status, code.as_str()) {
                (_, "NoSuchBucket") => BackendError::NoBucket(format!(
                    "the bucket does not exist: create it or fix the store address ({what} {key})"
                )),
                (404, _) | (_, "NoSuchKey") | (_, "NotFound") => BackendError::NotFound(key.to_string()),
                (403, _) | (_, "AccessDenied") | (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") => {
                    BackendError::Denied(format!(
                        "access denied ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy ({what} {key})"
                    ))
                }
                (409, _) | (429, _) | (500..=599, _) | (_, "SlowDown") | (_, "RequestTimeout") => {
                    BackendError::Transient(format!("{what} {key}: HTTP {status} {code} {message}"))
                }
                _ => BackendError::Permanent(format!("{what} {key}: HTTP {status} {code} {message}")),
            }
        }
        _ => BackendError::Permanent(format!("{what} {key}: {err}")),
    }
}

impl S3Backend {
    pub fn connect(loc: S3Location) -> anyhow::Result<S3Backend> {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("s3-io").enable_all().build()?;
        let env_endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok()
            .filter(|s| !s.is_empty());
        let endpoint = loc.endpoint.clone().or(env_endpoint);
        let region = loc
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|s| !s.is_empty()))
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "us-east-1".to_string());
        let path_style = loc.path_style.unwrap_or(endpoint.is_some());
        let sdk = rt.block_on(async {
            let mut b = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region.clone()))
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .read_timeout(Duration::from_secs(60))
                        .operation_attempt_timeout(Duration::from_secs(300))
                        .build(),
                );
            if let Some((ak, sk)) = &loc.credentials {
                b = b.credentials_provider(aws_sdk_s3::config::Credentials::new(ak, sk, None, None, "static"));
            }
            b.load().await
        });
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(path_style);
        if let Some(ep) = &endpoint {
            conf = conf.endpoint_url(ep);
        }
        let client = Client::from_conf(conf.build());
        let endpoint_desc = endpoint.unwrap_or_else(|| format!("AWS {region}"));
        let backend = S3Backend { rt, client, loc, endpoint_desc };
        backend.check_bucket()?;
        Ok(backend)
    }

    /// Fails early, with the fix in the message, when the bucket is missing or access is denied.
    /// Transient errors (the endpoint briefly unreachable, 5xx) are retried like any request.
    fn check_bucket(&self) -> anyhow::Result<()> {
        let policy = super::retry::RetryPolicy::default();
        let mut attempt = 1;
        loop {
            let r = self.rt.block_on(self.client.head_bucket().bucket(&self.loc.bucket).send());
            let e = match r {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let status = match &e {
                SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
                _ => None,
            };
            let b = &self.loc.bucket;
            let ep = &self.endpoint_desc;
            match status {
                Some(404) => {
                    return Err(BackendError::NoBucket(format!(
                        "bucket {b:?} does not exist at {ep}: create it first or fix the store address"
                    ))
                    .into());
                }
                Some(403) | Some(401) => {
                    return Err(BackendError::Denied(format!(
                        "access to bucket {b:?} at {ep} denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    ))
                    .into());
                }
                _ => match classify("open bucket", b, e) {
                    BackendError::Transient(msg) if attempt < policy.attempts => {
                        tracing::warn!(%msg, attempt, "retrying");
                        std::thread::sleep(policy.delay(attempt));
                        attempt += 1;
                    }
                    BackendError::Transient(msg) => {
                        return Err(BackendError::Transient(format!("{msg} (after {attempt} attempts)")).into());
                    }
                    other => return Err(other.into()),
                },
            }
        }
    }

    fn key(&self, key: &str) -> String {
        if self.loc.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.loc.prefix) }
    }

    fn strip(&self, full: &str) -> String {
        if self.loc.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&self.loc.prefix).and_then(|s| s.strip_prefix('/')).unwrap_or(full).to_string()
        }
    }

    async fn put(&self, key: &str, data: &[u8], retention: Option<&Retention>) -> Result<bool> {
        use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockMode};
        let mut req = self
            .client
            .put_object()
            .bucket(&self.loc.bucket)
            .key(self.key(key))
            .if_none_match("*")
            .body(ByteStream::from(data.to_vec()));
        if let Some(r) = retention {
            req = req
                .object_lock_mode(match r.mode {
                    RetentionMode::Compliance => ObjectLockMode::Compliance,
                    RetentionMode::Governance => ObjectLockMode::Governance,
                })
                .object_lock_retain_until_date(smithy_time(r.until))
                .checksum_algorithm(ChecksumAlgorithm::Crc32);
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 412 => Ok(false),
            Err(e) => Err(classify("put", key, e)),
        }
    }

    async fn read_body(key: &str, body: ByteStream) -> Result<Vec<u8>> {
        body.collect()
            .await
            .map(|b| b.into_bytes().to_vec())
            .map_err(|e| BackendError::Transient(format!("get {key}: body interrupted: {e}")))
    }
}

fn smithy_time(t: chrono::DateTime<chrono::Utc>) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_secs(t.timestamp())
}

impl Backend for S3Backend {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.rt.block_on(self.put(key, data, None))
    }

    fn put_retained(&self, key: &str, data: &[u8], retention: &Retention) -> Result<bool> {
        self.rt.block_on(self.put(key, data, Some(retention)))
    }

    fn supports_object_lock(&self) -> Result<bool> {
        use aws_sdk_s3::types::ObjectLockEnabled;
        let r = self.rt.block_on(self.client.get_object_lock_configuration().bucket(&self.loc.bucket).send());
        match r {
            Ok(out) => Ok(out.object_lock_configuration().and_then(|c| c.object_lock_enabled())
                == Some(&ObjectLockEnabled::Enabled)),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => Ok(false),
            Err(e) => Err(classify("get object lock configuration of", &self.loc.bucket, e)),
        }
    }

    fn retention(&self, key: &str) -> Result<Option<Retention>> {
        use aws_sdk_s3::types::ObjectLockRetentionMode;
        let r = self.rt.block_on(self.client.get_object_retention().bucket(&self.loc.bucket).key(self.key(key)).send());
        let out = match r {
            Ok(out) => out,
            // 404: no such object, or (NoSuchObjectLockConfiguration) a version without retention.
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => return Ok(None),
            Err(e) => return Err(classify("get retention of", key, e)),
        };
        let Some(r) = out.retention() else { return Ok(None) };
        let (Some(mode), Some(until)) = (r.mode(), r.retain_until_date()) else { return Ok(None) };
        let mode = match mode {
            ObjectLockRetentionMode::Compliance => RetentionMode::Compliance,
            _ => RetentionMode::Governance,
        };
        let until = chrono::DateTime::from_timestamp(until.secs(), 0).unwrap_or_default();
        Ok(Some(Retention { mode, until }))
    }

    fn set_retention(&self, key: &str, retention: &Retention) -> Result<()> {
        use aws_sdk_s3::types::{ObjectLockRetention, ObjectLockRetentionMode};
        let mode = match retention.mode {
            RetentionMode::Compliance => ObjectLockRetentionMode::Compliance,
            RetentionMode::Governance => ObjectLockRetentionMode::Governance,
        };
        let lock = ObjectLockRetention::builder().mode(mode).retain_until_date(smithy_time(retention.until)).build();
        self.rt
            .block_on(
                self.client.put_object_retention().bucket(&self.loc.bucket).key(self.key(key)).retention(lock).send(),
            )
            .map(|_| ())
            .map_err(|e| classify("set retention of", key, e))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let full = self.key(key);
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.loc.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| classify("get", key, e))?;
            Self::read_body(key, out.body).await
        })
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let full = self.key(key);
        let data = self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.loc.bucket)
                .key(&full)
                .range(format!("bytes={}-{}", offset, offset + len - 1))
                .send()
                .await
                .map_err(|e| classify("get", key, e))?;
            Self::read_body(key, out.body).await
        })?;
        if data.len() as u64 != len {
            return Err(BackendError::Permanent(format!(
                "{key} is shorter than {} bytes (got {} of {len})",
                offset + len,
                data.len()
            )));
        }
        Ok(data)
    }

    fn stat(&self, key: &str) -> Result<Option<u64>> {
        let full = self.key(key);
        let r = self.rt.block_on(self.client.head_object().bucket(&self.loc.bucket).key(&full).send());
        match r {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => match classify("stat", key, e) {
                BackendError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = self.key(prefix);
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.loc.bucket)
                    .prefix(&full)
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| classify("list", prefix, e))?;
                for o in page.contents() {
                    if let Some(k) = o.key() {
                        out.push(ObjectInfo { key: self.strip(k), size: o.size().unwrap_or(0).max(0) as u64 });
                    }
                }
                match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            Ok(out)
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        let full = self.key(key);
        let r = self.rt.block_on(self.client.delete_object().bucket(&self.loc.bucket).key(&full).send());
        match r {
            Ok(_) => Ok(()),
            Err(e) => match classify("delete", key, e) {
                BackendError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    fn describe(&self) -> String {
        if self.loc.prefix.is_empty() {
            format!("s3://{} at {}", self.loc.bucket, self.endpoint_desc)
        } else {
            format!("s3://{}/{} at {}", self.loc.bucket, self.loc.prefix, self.endpoint_desc)
        }
    }
}
