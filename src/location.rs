//! Store addresses: a path, `file://PATH` or `s3://BUCKET[/PREFIX]`.

use crate::store::backend::Backend;
use crate::store::backend::fs::FsBackend;
use crate::store::backend::retry::{RetryPolicy, Retrying};
use crate::store::backend::s3::{S3Backend, S3Location};
use anyhow::bail;
use std::sync::Arc;

/// S3 settings given on the command line; each falls back to the standard AWS variables.
#[derive(Debug, Clone, Default)]
pub struct S3Flags {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    pub fn parse(spec: &str) -> anyhow::Result<Location> {
        if spec.is_empty() {
            bail!("the store address is empty: give a path, file://PATH or s3://BUCKET/PREFIX");
        }
        if let Some(rest) = spec.strip_prefix("s3://") {
            let rest = rest.trim_matches('/');
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("store address {spec:?} names no bucket: use s3://BUCKET/PREFIX");
            }
            return Ok(Location::S3 { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() });
        }
        if let Some(path) = spec.strip_prefix("file://") {
            return Ok(Location::Local(path.into()));
        }
        if let Some((scheme, _)) = spec.split_once("://") {
            bail!("unknown store scheme {scheme:?} in {spec:?}: use a path, file://PATH or s3://BUCKET/PREFIX");
        }
        Ok(Location::Local(spec.into()))
    }

    /// The backend for this location, with retries in front.
    pub fn open(&self, s3: &S3Flags) -> anyhow::Result<Arc<dyn Backend>> {
        Ok(match self {
            Location::Local(path) => Arc::new(Retrying::new(FsBackend::new(path), RetryPolicy::default())),
            Location::S3 { bucket, prefix } => {
                let backend = S3Backend::connect(S3Location {
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    endpoint: s3.endpoint.clone(),
                    region: s3.region.clone(),
                    path_style: s3.path_style,
                    credentials: None,
                })?;
                Arc::new(Retrying::new(backend, RetryPolicy::default()))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(Location::parse("/tmp/s").unwrap(), Location::Local("/tmp/s".into()));
        assert_eq!(Location::parse("file:///tmp/s").unwrap(), Location::Local("/tmp/s".into()));
        assert_eq!(Location::parse("s3://b/a/b/").unwrap(), Location::S3 { bucket: "b".into(), prefix: "a/b".into() });
        assert_eq!(Location::parse("s3://b").unwrap(), Location::S3 { bucket: "b".into(), prefix: String::new() });
        assert!(Location::parse("s3://").is_err());
        assert!(Location::parse("gs://x").unwrap_err().to_string().contains("unknown store scheme"));
    }
}
