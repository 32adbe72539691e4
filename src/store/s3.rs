//! The S3-compatible store (AWS S3, MinIO, R2, moto…), through the `object_store` crate.
//!
//! Conditional writes map to HTTP preconditions: `put_if_absent` sends `If-None-Match: *`,
//! `put_if_match` sends `If-Match: <etag>` (`S3ConditionalPut::ETagMatch`); a lost race
//! comes back as 412 and becomes [`StoreError::Conflict`].
//!
//! Retries: `object_store`'s own retry loop is switched off and every request is retried
//! here with `backon` (exponential backoff with jitter), so one policy, configured by
//! `max_attempts`, covers connection errors, 5xx and whole streamed transfers alike.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjPath;
use object_store::{
    ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
    WriteMultipart,
};
use tokio::io::AsyncWriteExt;

use super::{check_key, Etag, Object, Store, StoreError};
use crate::config::S3Def;
use crate::exec;

/// Files above this size go up as multipart uploads, in parts of this size.
const PART_SIZE: usize = 16 * 1024 * 1024;
/// Parts in flight at once during a multipart upload.
const PARTS_IN_FLIGHT: usize = 4;

/// A store in an S3 bucket (under an optional key prefix).
#[derive(Debug, Clone)]
pub struct S3Store {
    s3: Arc<AmazonS3>,
    bucket: String,
    /// "" or ending in `/`.
    prefix: String,
    endpoint: Option<String>,
    region: String,
    max_attempts: u32,
}

impl S3Store {
    /// Connect to the bucket `def` names. `role` says what the bucket is for (`store`,
    /// `cache`) so that errors name it. Credentials come only from the environment
    /// variables `def` names; they are registered as secrets so no log shows them.
    pub fn new(def: &S3Def, role: &str) -> Result<S3Store, StoreError> {
        let describe = describe(&def.bucket, &normalise_prefix(&def.prefix));
        let setup = |message: String| StoreError::Setup {
            store: format!("{role} {describe}"),
            message,
        };
        let env = |name: &str| -> Result<String, StoreError> {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => {
                    exec::register_secret(&v);
                    Ok(v)
                }
                _ => Err(setup(format!(
                    "credentials missing: environment variable {name} is not set \
                     ([{role}.s3] reads credentials only from the environment)"
                ))),
            }
        };
        let key_id = env(&def.access_key_env)?;
        let secret = env(&def.secret_key_env)?;
        let token = std::env::var(&def.session_token_env)
            .ok()
            .filter(|t| !t.is_empty());

        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&def.bucket)
            .with_region(&def.region)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300)),
            );
        if let Some(t) = token {
            exec::register_secret(&t);
            b = b.with_token(t);
        }
        if let Some(ep) = &def.endpoint {
            b = b
                .with_endpoint(ep.trim_end_matches('/'))
                .with_allow_http(ep.starts_with("http://"))
                // Path-style requests: custom endpoints rarely resolve bucket subdomains.
                .with_virtual_hosted_style_request(false);
        }
        let s3 = b.build().map_err(|e| setup(e.to_string()))?;
        Ok(S3Store {
            s3: Arc::new(s3),
            bucket: def.bucket.clone(),
            prefix: normalise_prefix(&def.prefix),
            endpoint: def.endpoint.clone(),
            region: def.region.clone(),
            max_attempts: def.max_attempts.max(1),
        })
    }

    fn path(&self, key: &str) -> Result<ObjPath, StoreError> {
        check_key(key).map_err(|m| self.err(key, m))?;
        Ok(ObjPath::from(format!("{}{key}", self.prefix)))
    }

    fn err(&self, key: &str, message: impl Into<String>) -> StoreError {
        StoreError::Backend {
            store: self.describe(),
            key: if key.is_empty() {
                "(listing)".to_string()
            } else {
                key.to_string()
            },
            message: message.into(),
        }
    }

    fn map_err(&self, key: &str, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => StoreError::Conflict {
                key: key.to_string(),
            },
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                key: key.to_string(),
                store: self.describe(),
            },
            other => self.err(key, exec::error_chain(&other)),
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.max_attempts as usize - 1)
            .with_jitter()
    }

    /// Run `op` with retries on transient errors. Returns the result and how many
    /// attempts were made.
    async fn retry<T, F, Fut>(&self, key: &str, op: F) -> (Result<T, StoreError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        let attempts = AtomicU32::new(0);
        let label = if key.is_empty() { "(listing)" } else { key };
        let mut op = op;
        let r = (|| {
            attempts.fetch_add(1, Ordering::SeqCst);
            op()
        })
        .retry(self.backoff())
        .when(is_transient)
        .notify(|e, dur| {
            tracing::warn!(
                "{}: {label}: {}; retrying in {:.1}s",
                self.describe(),
                exec::error_chain(e),
                dur.as_secs_f64()
            )
        })
        .await;
        let n = attempts.load(Ordering::SeqCst);
        let r = r.map_err(|e| {
            let transient = is_transient(&e);
            match self.map_err(key, e) {
                StoreError::Backend {
                    store,
                    key,
                    message,
                } if transient => StoreError::Backend {
                    store,
                    key,
                    message: format!("{message} (gave up after {n} attempts)"),
                },
                other => other,
            }
        });
        (r, n)
    }

    /// A conditional put whose request was retried may have succeeded the first time
    /// with the answer lost; then the retry sees its own write as a conflict. If the
    /// object now holds exactly our bytes, the write was ours.
    async fn conditional(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<Etag, StoreError> {
        let path = self.path(key)?;
        let payload = PutPayload::from(bytes.clone());
        let (r, attempts) = self
            .retry(key, || {
                self.s3.put_opts(
                    &path,
                    payload.clone(),
                    PutOptions {
                        mode: mode.clone(),
                        ..Default::default()
                    },
                )
            })
            .await;
        match r {
            Ok(put) => Ok(Etag(put.e_tag.unwrap_or_default())),
            Err(StoreError::Conflict { .. }) if attempts > 1 => match self.get(key).await? {
                Some(o) if o.bytes == bytes => Ok(o.etag),
                _ => Err(StoreError::Conflict {
                    key: key.to_string(),
                }),
            },
            Err(e) => Err(e),
        }
    }

    async fn upload_once(&self, path: &ObjPath, file: &Path) -> Result<(), object_store::Error> {
        use tokio::io::AsyncReadExt;
        let io = |e: std::io::Error| object_store::Error::Generic {
            store: "S3",
            source: format!("{}: {e}", file.display()).into(),
        };
        let mut f = tokio::fs::File::open(file).await.map_err(io)?;
        let len = f.metadata().await.map_err(io)?.len();
        if len <= PART_SIZE as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).await.map_err(io)?;
            self.s3.put(path, PutPayload::from(buf)).await?;
            return Ok(());
        }
        let upload = self.s3.put_multipart(path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    w.abort().await.ok();
                    return Err(io(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                w.abort().await.ok();
                return Err(e);
            }
            w.write(&buf[..n]);
        }
        w.finish().await?;
        Ok(())
    }

    async fn download_once(&self, path: &ObjPath, dest: &Path) -> Result<(), object_store::Error> {
        let io = |e: std::io::Error| object_store::Error::Generic {
            store: "S3",
            source: format!("{}: {e}", dest.display()).into(),
        };
        let dir = dest.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(io)?;
        let mut out = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
        let mut stream = self.s3.get(path).await?.into_stream();
        while let Some(chunk) = stream.try_next().await? {
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        out.sync_all().await.map_err(io)?;
        drop(out);
        tmp.persist(dest).map_err(|e| io(e.error))?;
        Ok(())
    }

    fn strip(&self, p: &ObjPath) -> String {
        let s = p.as_ref();
        s.strip_prefix(&self.prefix).unwrap_or(s).to_string()
    }
}

fn normalise_prefix(p: &str) -> String {
    let p = p.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

fn describe(bucket: &str, prefix: &str) -> String {
    format!("s3://{bucket}/{prefix}")
}

/// Connection failures, timeouts and 5xx surface as `Generic`; everything with a
/// definite answer (missing, conflict, denied) is final.
fn is_transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

#[async_trait::async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        describe(&self.bucket, &self.prefix)
    }

    fn url(&self, key: &str) -> String {
        match &self.endpoint {
            Some(ep) => format!(
                "{}/{}/{}{key}",
                ep.trim_end_matches('/'),
                self.bucket,
                self.prefix
            ),
            None => format!(
                "https://{}.s3.{}.amazonaws.com/{}{key}",
                self.bucket, self.region, self.prefix
            ),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let path = self.path(key)?;
        let (r, _) = self
            .retry(key, || async {
                let g = self.s3.get(&path).await?;
                let etag = g.meta.e_tag.clone().unwrap_or_default();
                let bytes = g.bytes().await?;
                Ok((bytes, etag))
            })
            .await;
        match r {
            Ok((bytes, etag)) => Ok(Some(Object {
                bytes: bytes.to_vec(),
                etag: Etag(etag),
            })),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Etag, StoreError> {
        let path = self.path(key)?;
        let payload = PutPayload::from(bytes);
        let (r, _) = self
            .retry(key, || self.s3.put(&path, payload.clone()))
            .await;
        Ok(Etag(r?.e_tag.unwrap_or_default()))
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<Etag, StoreError> {
        self.conditional(key, bytes, PutMode::Create).await
    }

    async fn put_if_match(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: &Etag,
    ) -> Result<Etag, StoreError> {
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(expected.0.clone()),
            version: None,
        });
        self.conditional(key, bytes, mode).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let dest = self.path(key)?;
        let (r, _) = self.retry(key, || self.upload_once(&dest, path)).await;
        r
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let src = self.path(key)?;
        let (r, _) = self.retry(key, || self.download_once(&src, path)).await;
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // object_store lists whole path segments; list the deepest folder the prefix
        // names and filter by the full string prefix, as the local store does.
        let folder = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let base = format!("{}{folder}", self.prefix);
        let base = base.trim_end_matches('/');
        let base = (!base.is_empty()).then(|| ObjPath::from(base));
        let (r, _) = self
            .retry(prefix, || async {
                self.s3
                    .list(base.as_ref())
                    .map_ok(|m| m.location)
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await;
        let mut keys: Vec<String> = r?
            .iter()
            .map(|p| self.strip(p))
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match self.retry(key, || self.s3.delete(&path)).await.0 {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_dirs(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        let base = format!("{}{folder}", self.prefix);
        let base = base.trim_end_matches('/');
        let base = (!base.is_empty()).then(|| ObjPath::from(base));
        let (r, _) = self
            .retry(folder, || self.s3.list_with_delimiter(base.as_ref()))
            .await;
        let mut dirs: Vec<String> = r?
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        dirs.sort();
        Ok(dirs)
    }
}
