//! The local-directory store (default: `artifacts/`).
//!
//! Writes go to a temp file in the target directory and are renamed into place.
//! Conditional writes are serialised by a per-store lock file; `put_if_absent` uses
//! link(2), which fails instead of replacing, so it is safe even across hosts sharing NFS.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{check_key, Etag, Object, Store, StoreError};
use crate::fsutil;

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key).map_err(|m| self.err(key, m))?;
        Ok(self.root.join(key))
    }

    fn err(&self, key: &str, message: impl Into<String>) -> StoreError {
        StoreError::Backend {
            store: self.describe(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn lock(&self) -> Result<fsutil::FileLock, StoreError> {
        fsutil::FileLock::acquire(&self.root.join(".lock"))
            .map_err(|e| self.err(".lock", e.to_string()))
    }
}

fn etag_of(bytes: &[u8]) -> Etag {
    Etag(hex::encode(Sha256::digest(bytes)))
}

#[async_trait::async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn url(&self, key: &str) -> String {
        format!("file://{}", self.root.join(key).display())
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let p = self.path(key)?;
        match tokio::fs::read(&p).await {
            Ok(bytes) => Ok(Some(Object {
                etag: etag_of(&bytes),
                bytes,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(key, e.to_string())),
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Etag, StoreError> {
        let p = self.path(key)?;
        let etag = etag_of(&bytes);
        let me = self.clone();
        let k = key.to_string();
        tokio::task::spawn_blocking(move || fsutil::atomic_write(&p, &bytes))
            .await
            .map_err(|e| me.err(&k, e.to_string()))?
            .map_err(|e| me.err(&k, e.to_string()))?;
        Ok(etag)
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<Etag, StoreError> {
        let p = self.path(key)?;
        let etag = etag_of(&bytes);
        let me = self.clone();
        let k = key.to_string();
        let created = tokio::task::spawn_blocking(move || fsutil::create_new(&p, &bytes))
            .await
            .map_err(|e| me.err(&k, e.to_string()))?
            .map_err(|e| me.err(&k, e.to_string()))?;
        if created {
            Ok(etag)
        } else {
            Err(StoreError::Conflict {
                key: key.to_string(),
            })
        }
    }

    async fn put_if_match(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: &Etag,
    ) -> Result<Etag, StoreError> {
        let p = self.path(key)?;
        let me = self.clone();
        let k = key.to_string();
        let expected = expected.clone();
        tokio::task::spawn_blocking(move || {
            // Compare and rename under the store lock: the rename is the swap.
            let _lock = me.lock()?;
            let current = std::fs::read(&p).ok().map(|b| etag_of(&b));
            if current.as_ref() != Some(&expected) {
                return Err(StoreError::Conflict { key: k.clone() });
            }
            let etag = etag_of(&bytes);
            fsutil::atomic_write(&p, &bytes).map_err(|e| me.err(&k, e.to_string()))?;
            Ok(etag)
        })
        .await
        .map_err(|e| self.err(key, e.to_string()))?
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let dest = self.path(key)?;
        let src = path.to_owned();
        let me = self.clone();
        let k = key.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let dir = dest.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| me.err(&k, e.to_string()))?;
            // A hard link costs nothing when the build dir shares the store's file system;
            // otherwise copy to a temp name (sparse-aware via std's copy_file_range) and rename.
            let tmp = dir.join(format!(
                ".tmp-{}-{}",
                std::process::id(),
                dest.file_name().unwrap_or_default().to_string_lossy()
            ));
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(&src, &tmp).is_err() {
                std::fs::copy(&src, &tmp).map_err(|e| me.err(&k, e.to_string()))?;
                std::fs::File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| me.err(&k, e.to_string()))?;
            }
            std::fs::rename(&tmp, &dest).map_err(|e| me.err(&k, e.to_string()))?;
            fsutil::sync_dir(dir).map_err(|e| me.err(&k, e.to_string()))
        })
        .await
        .map_err(|e| self.err(key, e.to_string()))?
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let src = self.path(key)?;
        if !src.is_file() {
            return Err(StoreError::NotFound {
                key: key.to_string(),
                store: self.describe(),
            });
        }
        let dest = path.to_owned();
        let me = self.clone();
        let k = key.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let dir = dest.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| me.err(&k, e.to_string()))?;
            let tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .tempfile_in(dir)
                .map_err(|e| me.err(&k, e.to_string()))?;
            std::fs::copy(&src, tmp.path()).map_err(|e| me.err(&k, e.to_string()))?;
            tmp.persist(&dest)
                .map_err(|e| me.err(&k, e.error.to_string()))?;
            Ok(())
        })
        .await
        .map_err(|e| self.err(key, e.to_string()))?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let wanted = prefix.to_string();
        let prefix = wanted.clone();
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            // Walk only the deepest folder the prefix names.
            let folder = match prefix.rfind('/') {
                Some(i) => root.join(&prefix[..i]),
                None => root.clone(),
            };
            let mut keys = Vec::new();
            if !folder.exists() {
                return Ok(keys);
            }
            for e in walkdir::WalkDir::new(&folder).sort_by_file_name() {
                let e = e.map_err(|e| me.err(&prefix, e.to_string()))?;
                if !e.file_type().is_file() {
                    continue;
                }
                let name = e.file_name().to_string_lossy();
                if name.starts_with(".tmp-") || name == ".lock" {
                    continue;
                }
                let rel = e
                    .path()
                    .strip_prefix(&root)
                    .map_err(|err| me.err(&prefix, err.to_string()))?
                    .to_string_lossy()
                    .into_owned();
                if rel.starts_with(&prefix) {
                    keys.push(rel);
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|e| self.err(&wanted, e.to_string()))?
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let p = self.path(key)?;
        match tokio::fs::remove_file(&p).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err(key, e.to_string())),
        }
        // Drop folders the delete left empty, up to the store root.
        let mut dir = p.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || std::fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_writes() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let e1 = s.put_if_absent("a/b.json", b"1".to_vec()).await.unwrap();
        assert!(s
            .put_if_absent("a/b.json", b"2".to_vec())
            .await
            .unwrap_err()
            .is_conflict());
        let e2 = s
            .put_if_match("a/b.json", b"3".to_vec(), &e1)
            .await
            .unwrap();
        assert!(s
            .put_if_match("a/b.json", b"4".to_vec(), &e1)
            .await
            .unwrap_err()
            .is_conflict());
        let o = s.get("a/b.json").await.unwrap().unwrap();
        assert_eq!(o.bytes, b"3");
        assert_eq!(o.etag, e2);
        assert_eq!(s.list("a/").await.unwrap(), vec!["a/b.json".to_string()]);
        s.delete("a/b.json").await.unwrap();
        assert!(s.get("a/b.json").await.unwrap().is_none());
        assert!(!d.path().join("a").exists(), "empty folders are removed");
    }

    #[tokio::test]
    async fn keys_cannot_escape() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        assert!(s.put("../x", vec![]).await.is_err());
        assert!(s.put("/abs", vec![]).await.is_err());
        assert!(s.put("a//b", vec![]).await.is_err());
    }
}
