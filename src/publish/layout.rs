//! The store layout, the same on every backend:
//!
//! ```text
//! <image>/<version>/CLAIM                 first object: who is publishing this version
//! <image>/<version>/<artifacts…>          disk images, OCI layout (file by file)
//! <image>/<version>/build.json, verify.json, console logs, sbom.cdx.json
//! <image>/<version>/manifest.json         sha256 of every file above
//! <image>/<version>/manifest.json.minisig
//! <image>/<version>/COMMITTED             last object: the version exists from now on
//! <image>/<version>/REVOKED               added by `revoke` (reason, time)
//! channels/<image>/<channel>.json         channel pointers (compare-and-swap)
//! ```
//!
//! Readers ignore a version folder without `COMMITTED`: it is a publish in progress or
//! the debris of one that died, which `gc` removes.

use serde::{Deserialize, Serialize};

use super::model::Manifest;
use super::version;
use crate::store::{Store, StoreError};

/// Top-level folder of the channel pointers (so no image may be called this).
pub const CHANNELS: &str = "channels";
/// Top-level store folders that are not images (channel pointers, the rollout outbox).
pub const RESERVED: &[&str] = &[CHANNELS, "rollout"];
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.minisig";
pub const CLAIM: &str = "CLAIM";
pub const COMMITTED: &str = "COMMITTED";
pub const REVOKED: &str = "REVOKED";
pub const SBOM: &str = "sbom.cdx.json";

/// Names inside a version folder that are bookkeeping, not content the manifest lists.
pub const CONTROL: [&str; 5] = [CLAIM, COMMITTED, REVOKED, MANIFEST, SIGNATURE];

pub fn version_dir(image: &str, version: &str) -> String {
    format!("{image}/{version}/")
}

pub fn key(image: &str, version: &str, name: &str) -> String {
    format!("{image}/{version}/{name}")
}

pub fn channel_key(image: &str, channel: &str) -> String {
    format!("{CHANNELS}/{image}/{channel}.json")
}

/// `CLAIM`: written with put-if-absent before anything else, so two publishers of one
/// version never mix their files; the loser stops before uploading anything.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    pub publish_id: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339.
    pub started: String,
    pub content_digest: String,
    pub goldsmith_version: String,
}

/// `COMMITTED`: the commit marker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Commit {
    pub publish_id: String,
    pub version: String,
    pub content_digest: String,
    /// sha256 of `manifest.json`.
    pub manifest_sha256: String,
    /// RFC 3339.
    pub committed: String,
}

/// `REVOKED`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Revocation {
    pub reason: String,
    /// RFC 3339.
    pub revoked: String,
}

/// What the store holds for one version folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionState {
    pub version: String,
    pub claimed: bool,
    pub committed: bool,
    pub revoked: bool,
    /// Every key in the folder.
    pub keys: Vec<String>,
}

/// Errors reading the layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{image} {version} is not published in {store}")]
    NoSuchVersion {
        image: String,
        version: String,
        store: String,
    },
    #[error("{key} in {store} is not valid: {message}")]
    Corrupt {
        key: String,
        store: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Images with anything in the store.
pub async fn images(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    Ok(store
        .list_dirs("")
        .await?
        .into_iter()
        .filter(|d| !RESERVED.contains(&d.as_str()))
        .collect())
}

/// Every version folder of an image (committed or not), oldest first.
pub async fn scan(store: &dyn Store, image: &str) -> Result<Vec<VersionState>, StoreError> {
    let prefix = format!("{image}/");
    let mut out: Vec<VersionState> = Vec::new();
    for k in store.list(&prefix).await? {
        let rest = &k[prefix.len()..];
        let Some((ver, name)) = rest.split_once('/') else {
            continue;
        };
        if out.last().map(|s| s.version.as_str()) != Some(ver) {
            out.push(VersionState {
                version: ver.to_string(),
                ..Default::default()
            });
        }
        let s = out.last_mut().expect("pushed above");
        match name {
            CLAIM => s.claimed = true,
            COMMITTED => s.committed = true,
            REVOKED => s.revoked = true,
            _ => {}
        }
        s.keys.push(k.clone());
    }
    // Keys come sorted as text; merge folders split by that order, then sort by version.
    out.sort_by(|a, b| version::compare(&a.version, &b.version));
    out.dedup_by(|b, a| {
        if a.version == b.version {
            a.claimed |= b.claimed;
            a.committed |= b.committed;
            a.revoked |= b.revoked;
            a.keys.append(&mut b.keys);
            true
        } else {
            false
        }
    });
    Ok(out)
}

/// Read and parse a JSON object; `Ok(None)` when it does not exist.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<T>, LayoutError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(o) => serde_json::from_slice(&o.bytes)
            .map(Some)
            .map_err(|e| LayoutError::Corrupt {
                key: key.to_string(),
                store: store.describe(),
                message: e.to_string(),
            }),
    }
}

/// Pretty JSON with a trailing newline, as every object goldsmith writes.
pub fn to_json(v: &impl Serialize) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("records serialise");
    b.push(b'\n');
    b
}

/// Is this version committed?
pub async fn is_committed(
    store: &dyn Store,
    image: &str,
    version: &str,
) -> Result<bool, StoreError> {
    Ok(store.get(&key(image, version, COMMITTED)).await?.is_some())
}

/// The revocation of a version, if it was revoked.
pub async fn revocation(
    store: &dyn Store,
    image: &str,
    version: &str,
) -> Result<Option<Revocation>, LayoutError> {
    get_json(store, &key(image, version, REVOKED)).await
}

/// The manifest of a committed version (the signature is not checked here: `fetch`
/// does that; this is for listing and channel bookkeeping).
pub async fn manifest(
    store: &dyn Store,
    image: &str,
    version: &str,
) -> Result<Manifest, LayoutError> {
    if !is_committed(store, image, version).await? {
        return Err(LayoutError::NoSuchVersion {
            image: image.to_string(),
            version: version.to_string(),
            store: store.describe(),
        });
    }
    get_json(store, &key(image, version, MANIFEST))
        .await?
        .ok_or_else(|| LayoutError::Corrupt {
            key: key(image, version, MANIFEST),
            store: store.describe(),
            message: "committed version without a manifest".into(),
        })
}
