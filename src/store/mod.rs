//! The artifact store: one key/value interface over a local directory (default) and
//! S3-compatible object storage, with the conditional writes publishing and the rollout
//! outbox rely on.
//!
//! Keys are `/`-separated relative paths (`web/2026.11.23.1/manifest.json`). Every put is
//! atomic: a reader sees the old object or the new one, never a partial write.

pub mod local;

use std::path::Path;

/// An entity tag: changes whenever the object's content changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Etag(pub String);

/// An object read from the store.
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: Etag,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: the key exists (put_if_absent) or changed (put_if_match).
    #[error("conflict on {key}: another writer changed it first")]
    Conflict { key: String },
    #[error("{key} not found in {store}")]
    NotFound { key: String, store: String },
    #[error("{store}: {key}: {message}")]
    Backend {
        store: String,
        key: String,
        message: String,
    },
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// The store interface every backend implements.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Where this store is, for people and manifests (`file:///…`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// A URL (or absolute path) a consumer can fetch `key` from.
    fn url(&self, key: &str) -> String;
    /// Read an object; `Ok(None)` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError>;
    /// Write unconditionally.
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Etag, StoreError>;
    /// Write only if `key` does not exist; [`StoreError::Conflict`] otherwise.
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<Etag, StoreError>;
    /// Write only if `key` still has `expected`; [`StoreError::Conflict`] otherwise.
    async fn put_if_match(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: &Etag,
    ) -> Result<Etag, StoreError>;
    /// Upload a (large) file, streamed.
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError>;
    /// Download an object to a file, streamed (written atomically).
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<(), StoreError>;
    /// Every key under `prefix` (a `/`-terminated folder or a plain prefix), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Remove an object (missing is not an error).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// Reject keys that could escape a local store or confuse S3.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("invalid store key '{key}'"));
    }
    Ok(())
}
