//! `goldsmith fetch`: download a version, check the manifest's signature and every
//! file's size and sha256. Files land in a hidden temp folder beside the destination,
//! renamed to `<dest>/<image>/<version>/` only when everything checked out.

use std::path::{Path, PathBuf};

use minisign::PublicKey;

use super::channel;
use super::layout::{self, LayoutError};
use super::model::Manifest;
use super::sign::{self, SignError};
use super::version;
use crate::store::{check_key, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{image} has no channel '{channel}' in {store}")]
    NoChannel {
        image: String,
        channel: String,
        store: String,
    },
    #[error("channel {image}/{channel} points at no version (every version it had was revoked)")]
    EmptyChannel { image: String, channel: String },
    #[error("{image} {version} was revoked ({reason}); it is not fetched")]
    Revoked {
        image: String,
        version: String,
        reason: String,
    },
    #[error("{image} {version}: manifest.json has no signature ({key} is missing)")]
    Unsigned {
        image: String,
        version: String,
        key: String,
    },
    #[error(transparent)]
    Signature(#[from] SignError),
    #[error("{image} {version}: the signed manifest is for {other}")]
    WrongManifest {
        image: String,
        version: String,
        other: String,
    },
    #[error(
        "{file}: {problem} (in {image} {version}); the store copy is damaged or tampered with"
    )]
    Tampered {
        image: String,
        version: String,
        file: String,
        problem: String,
    },
    #[error("{dir} already exists; remove it or fetch to another --dest")]
    Exists { dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fetched, checked version.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The signature's trusted comment.
    pub trusted_comment: String,
}

/// The version a version-or-channel argument names (committed or not: callers check).
pub async fn resolve(
    store: &dyn Store,
    image: &str,
    version_or_channel: &str,
) -> Result<String, FetchError> {
    if version::is_version(version_or_channel) {
        return Ok(version_or_channel.to_string());
    }
    let (p, _) = channel::read(store, image, version_or_channel)
        .await?
        .ok_or_else(|| FetchError::NoChannel {
            image: image.to_string(),
            channel: version_or_channel.to_string(),
            store: store.describe(),
        })?;
    p.head.map(|h| h.version).ok_or(FetchError::EmptyChannel {
        image: image.to_string(),
        channel: version_or_channel.to_string(),
    })
}

/// Read and check the signed manifest of a committed version.
pub async fn signed_manifest(
    store: &dyn Store,
    pk: &PublicKey,
    image: &str,
    version: &str,
) -> Result<(Manifest, Vec<u8>, String, String), FetchError> {
    if !layout::is_committed(store, image, version).await? {
        return Err(LayoutError::NoSuchVersion {
            image: image.to_string(),
            version: version.to_string(),
            store: store.describe(),
        }
        .into());
    }
    let mkey = layout::key(image, version, layout::MANIFEST);
    let skey = layout::key(image, version, layout::SIGNATURE);
    let bytes = store
        .get(&mkey)
        .await?
        .ok_or_else(|| LayoutError::Corrupt {
            key: mkey.clone(),
            store: store.describe(),
            message: "committed version without a manifest".into(),
        })?
        .bytes;
    let sig = store
        .get(&skey)
        .await?
        .ok_or_else(|| FetchError::Unsigned {
            image: image.to_string(),
            version: version.to_string(),
            key: skey.clone(),
        })?;
    let sig = String::from_utf8_lossy(&sig.bytes).into_owned();
    let trusted = sign::verify(
        pk,
        &bytes,
        &sig,
        &format!("{image} {version} manifest.json"),
    )?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| LayoutError::Corrupt {
        key: mkey,
        store: store.describe(),
        message: e.to_string(),
    })?;
    if manifest.image != image || manifest.version != version {
        return Err(FetchError::WrongManifest {
            image: image.to_string(),
            version: version.to_string(),
            other: format!("{} {}", manifest.image, manifest.version),
        });
    }
    Ok((manifest, bytes, sig, trusted))
}

/// Download `image` at `version_or_channel` into `<dest>/<image>/<version>/`.
pub async fn fetch(
    store: &dyn Store,
    pk: &PublicKey,
    image: &str,
    version_or_channel: &str,
    dest: &Path,
    allow_revoked: bool,
) -> Result<Fetched, FetchError> {
    let version = resolve(store, image, version_or_channel).await?;
    if let Some(r) = layout::revocation(store, image, &version).await? {
        if !allow_revoked {
            return Err(FetchError::Revoked {
                image: image.to_string(),
                version,
                reason: r.reason,
            });
        }
        tracing::warn!("{image} {version} was revoked: {}", r.reason);
    }
    let (manifest, mbytes, sig, trusted) = signed_manifest(store, pk, image, &version).await?;

    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Io { path, source }
    };
    let final_dir = dest.join(image).join(&version);
    if final_dir.exists() {
        return Err(FetchError::Exists { dir: final_dir });
    }
    let parent = final_dir.parent().expect("joined above");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".fetch-{version}-"))
        .tempdir_in(parent)
        .map_err(io(parent))?;

    for f in &manifest.files {
        let tampered = |problem: String| FetchError::Tampered {
            image: image.to_string(),
            version: version.clone(),
            file: f.path.clone(),
            problem,
        };
        if check_key(&f.path).is_err() || layout::CONTROL.contains(&f.path.as_str()) {
            return Err(tampered("not a valid file name in a version".into()));
        }
        let local = tmp.path().join(&f.path);
        store
            .get_to_file(&layout::key(image, &version, &f.path), &local)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => tampered("missing from the store".into()),
                other => other.into(),
            })?;
        let l = local.clone();
        let (size, sha) = tokio::task::spawn_blocking(move || crate::fsutil::sha256_file(&l))
            .await
            .map_err(|e| tampered(e.to_string()))?
            .map_err(io(&local))?;
        if sha != f.sha256 || size != f.size {
            return Err(tampered(format!(
                "sha256 {sha} ({size} bytes) but the signed manifest says {} ({} bytes)",
                f.sha256, f.size
            )));
        }
    }
    let m = tmp.path().join(layout::MANIFEST);
    std::fs::write(&m, &mbytes).map_err(io(&m))?;
    let s = tmp.path().join(layout::SIGNATURE);
    std::fs::write(&s, sig.as_bytes()).map_err(io(&s))?;

    let kept = tmp.keep();
    std::fs::rename(&kept, &final_dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        FetchError::Io {
            path: final_dir.clone(),
            source: e,
        }
    })?;
    crate::fsutil::sync_dir(parent).map_err(io(parent))?;
    Ok(Fetched {
        dir: final_dir,
        manifest,
        trusted_comment: trusted,
    })
}
