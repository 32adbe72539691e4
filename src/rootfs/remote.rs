//! A layer cache shared by CI workers through S3-compatible storage (`[cache.s3]`).
//!
//! A worker that needs a layer first looks in its local cache, then in the shared one;
//! only if neither has it does it build, after claiming the layer with a conditional write
//! (`locks/<digest>`, If-None-Match): two workers never build the same layer at once, the
//! second waits for the first to upload. A claim older than the stage timeout is taken
//! over (its worker died). Entries are uploaded blob first, `meta.json` last: a reader
//! that sees the metadata sees a complete entry, and checks its digest anyway.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cache::{LayerCache, LayerMeta};
use crate::config::Config;
use crate::store::{s3::S3Store, Store};

/// The shared cache.
pub struct RemoteCache {
    store: Arc<dyn Store>,
    /// How long a claim protects a layer being built.
    stale_after: Duration,
    poll: Duration,
}

/// Who is building a layer, since when.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    owner: String,
    since: i64,
}

/// A claim this worker holds; release it when the layer is uploaded (or failed).
pub struct Held {
    key: String,
}

impl RemoteCache {
    /// The shared cache of goldsmith.toml's `[cache.s3]`, if configured.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<RemoteCache>> {
        let Some(def) = &config.def.cache.s3 else {
            return Ok(None);
        };
        let store: Arc<dyn Store> = Arc::new(S3Store::new(def, "layer cache")?);
        Ok(Some(RemoteCache::new(
            store,
            Duration::from_secs(config.def.build.stage_timeout_secs),
        )))
    }

    pub fn new(store: Arc<dyn Store>, stale_after: Duration) -> RemoteCache {
        RemoteCache {
            store,
            stale_after,
            poll: Duration::from_secs(3),
        }
    }

    fn key(digest: &str, file: &str) -> String {
        format!("layers/{digest}/{file}")
    }

    /// Bring `digest` (or the entry it is equivalent to) into the local cache. Returns
    /// whether the shared cache had it.
    pub async fn fetch(&self, local: &LayerCache, digest: &str) -> anyhow::Result<bool> {
        let mut entry = digest.to_string();
        if let Some(rep) = self.store.get(&format!("equiv/{digest}")).await? {
            entry = String::from_utf8_lossy(&rep.bytes).trim().to_string();
        }
        let Some(meta) = self.store.get(&Self::key(&entry, "meta.json")).await? else {
            return Ok(false);
        };
        let meta: LayerMeta = serde_json::from_slice(&meta.bytes)?;
        let staging = local.staging(&entry)?;
        let blob = staging.path().join("diff.tar.zst");
        self.store
            .get_to_file(&Self::key(&entry, "diff.tar.zst"), &blob)
            .await?;
        let (size, sha) = crate::fsutil::sha256_file(&blob)?;
        if size != meta.zst_size || sha != meta.zst_sha256 {
            anyhow::bail!(
                "shared layer cache entry {} is corrupt (sha256 {sha}, expected {}); not used",
                crate::plan::short(&entry),
                meta.zst_sha256
            );
        }
        local.commit(staging, &meta)?;
        if entry != digest {
            local.record_equivalence(digest, &entry)?;
        }
        tracing::info!(
            "layer {} {}: fetched from the shared cache",
            meta.name,
            crate::plan::short(digest)
        );
        Ok(true)
    }

    /// Upload a local entry (no-op when the shared cache has it already).
    pub async fn upload(&self, local: &LayerCache, digest: &str) -> anyhow::Result<()> {
        let Some(meta) = local.meta(digest) else {
            return Ok(());
        };
        if meta.digest != digest {
            // An equivalence: share the mapping; the entry itself is shared under its own digest.
            self.store
                .put(&format!("equiv/{digest}"), meta.digest.as_bytes().to_vec())
                .await?;
        }
        let meta_key = Self::key(&meta.digest, "meta.json");
        if self.store.get(&meta_key).await?.is_some() {
            return Ok(());
        }
        let blob = local
            .diff_path(&meta.digest)
            .ok_or_else(|| anyhow::anyhow!("local cache entry {digest} vanished"))?;
        self.store
            .put_file(&Self::key(&meta.digest, "diff.tar.zst"), &blob)
            .await?;
        self.store
            .put(&meta_key, serde_json::to_vec(&meta)?)
            .await?;
        Ok(())
    }

    /// Claim the right to build `digest`. `Ok(Some)` means build it; `Ok(None)` means it
    /// appeared in the shared cache while waiting for another worker (it is local now).
    pub async fn claim_or_wait(
        &self,
        local: &LayerCache,
        digest: &str,
    ) -> anyhow::Result<Option<Held>> {
        let key = format!("locks/{digest}");
        let me = format!(
            "{}:{}",
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        );
        let mut announced = false;
        loop {
            if self.fetch(local, digest).await? {
                return Ok(None);
            }
            let claim = Claim {
                owner: me.clone(),
                since: chrono::Utc::now().timestamp(),
            };
            match self
                .store
                .put_if_absent(&key, serde_json::to_vec(&claim)?)
                .await
            {
                Ok(_) => return Ok(Some(Held { key })),
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(o) = self.store.get(&key).await? {
                let held: Option<Claim> = serde_json::from_slice(&o.bytes).ok();
                let age = held
                    .as_ref()
                    .map(|c| chrono::Utc::now().timestamp() - c.since)
                    .unwrap_or(i64::MAX);
                if age > self.stale_after.as_secs() as i64 {
                    tracing::warn!(
                        "taking over the stale claim on layer {} ({age}s old)",
                        crate::plan::short(digest)
                    );
                    let _ = self
                        .store
                        .put_if_match(&key, serde_json::to_vec(&claim)?, &o.etag)
                        .await;
                    continue;
                }
                if !announced {
                    tracing::info!(
                        "layer {}: {} is building it; waiting for the shared cache",
                        crate::plan::short(digest),
                        held.map(|c| c.owner).unwrap_or_default()
                    );
                    announced = true;
                }
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Give a claim back.
    pub async fn release(&self, held: Held) {
        let _ = self.store.delete(&held.key).await;
    }
}
