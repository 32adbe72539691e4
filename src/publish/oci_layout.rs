//! Reading an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`)
//! as the build writes it, before it is pushed to a registry.
//!
//! The manifest and config are small, so they are read and checked against their digests
//! here; layer blobs are only checked for presence and size, because the registry
//! recomputes every uploaded blob's digest and rejects a mismatch.

use std::path::{Path, PathBuf};

use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use sha2::{Digest, Sha256};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest media type (accepted too: same structure).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A problem with the layout on disk. Messages name the file.
#[derive(Debug, thiserror::Error)]
#[error("OCI layout {}: {message}", path.display())]
pub struct LayoutError {
    /// The file (or the layout directory) at fault.
    pub path: PathBuf,
    pub message: String,
}

/// A blob the manifest references, found in the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub path: PathBuf,
}

/// A checked OCI image layout holding exactly one image manifest.
#[derive(Debug, Clone)]
pub struct OciLayout {
    pub dir: PathBuf,
    /// The manifest exactly as stored: pushing these bytes keeps its digest.
    pub manifest_bytes: Vec<u8>,
    /// `sha256:<hex>` of `manifest_bytes`.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest: OciImageManifest,
    /// The config blob first, then the layers in manifest order.
    pub blobs: Vec<LayoutBlob>,
}

impl OciLayout {
    /// Read and check the layout in `dir`.
    pub fn read(dir: &Path) -> Result<OciLayout, LayoutError> {
        let err = |path: &Path, message: String| LayoutError {
            path: path.to_owned(),
            message,
        };
        let marker = dir.join("oci-layout");
        let text = std::fs::read_to_string(&marker).map_err(|e| {
            err(
                &marker,
                format!("cannot read it ({e}); is this an OCI layout?"),
            )
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(&marker, format!("not JSON: {e}")))?;
        match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(ver) if ver.starts_with("1.") => {}
            other => {
                return Err(err(
                    &marker,
                    format!("unsupported imageLayoutVersion {other:?} (want 1.x)"),
                ))
            }
        }

        let index_path = dir.join("index.json");
        let index_bytes = std::fs::read(&index_path)
            .map_err(|e| err(&index_path, format!("cannot read it: {e}")))?;
        let index: OciImageIndex = serde_json::from_slice(&index_bytes)
            .map_err(|e| err(&index_path, format!("not an OCI image index: {e}")))?;
        let entry = match index.manifests.as_slice() {
            [one] => one,
            [] => return Err(err(&index_path, "lists no manifest".into())),
            many => {
                return Err(err(
                    &index_path,
                    format!(
                        "lists {} manifests; goldsmith pushes layouts with exactly one image",
                        many.len()
                    ),
                ))
            }
        };
        if entry.media_type != OCI_MANIFEST && entry.media_type != DOCKER_MANIFEST {
            return Err(err(
                &index_path,
                format!(
                    "manifest {} has media type {}; only image manifests ({OCI_MANIFEST}) are supported",
                    entry.digest, entry.media_type
                ),
            ));
        }

        let manifest_path = blob_path(dir, &entry.digest).map_err(|m| err(&index_path, m))?;
        let manifest_bytes = std::fs::read(&manifest_path).map_err(|e| {
            err(
                &manifest_path,
                format!("cannot read the manifest blob: {e}"),
            )
        })?;
        check_bytes(&manifest_path, &manifest_bytes, &entry.digest, entry.size)?;
        let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| err(&manifest_path, format!("not an image manifest: {e}")))?;
        if manifest.schema_version != 2 {
            return Err(err(
                &manifest_path,
                format!("schemaVersion {} (want 2)", manifest.schema_version),
            ));
        }

        let mut blobs = Vec::with_capacity(manifest.layers.len() + 1);
        for (i, d) in std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .enumerate()
        {
            let what = if i == 0 {
                "config".to_string()
            } else {
                format!("layer {i}")
            };
            let blob =
                layout_blob(dir, d).map_err(|m| err(&manifest_path, format!("{what}: {m}")))?;
            if i == 0 {
                // The config is small: check its digest like the manifest's.
                let bytes = std::fs::read(&blob.path)
                    .map_err(|e| err(&blob.path, format!("cannot read the config blob: {e}")))?;
                check_bytes(&blob.path, &bytes, &blob.digest, d.size)?;
            }
            blobs.push(blob);
        }
        if manifest.layers.is_empty() {
            return Err(err(&manifest_path, "the manifest has no layers".into()));
        }

        Ok(OciLayout {
            dir: dir.to_owned(),
            manifest_digest: entry.digest.clone(),
            manifest_media_type: entry.media_type.clone(),
            manifest_bytes,
            manifest,
            blobs,
        })
    }
}

/// Is `digest` a well-formed sha256 digest? (Anything else could name a path outside
/// `blobs/`, so it is refused before it becomes a file name.)
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, String> {
    if !is_sha256_digest(digest) {
        return Err(format!(
            "digest '{digest}' is not sha256:<64 lowercase hex digits>"
        ));
    }
    Ok(dir.join("blobs/sha256").join(&digest["sha256:".len()..]))
}

fn layout_blob(dir: &Path, d: &OciDescriptor) -> Result<LayoutBlob, String> {
    let path = blob_path(dir, &d.digest)?;
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("blob {} missing from the layout ({e})", path.display()))?;
    let size = u64::try_from(d.size).map_err(|_| format!("negative size {}", d.size))?;
    if meta.len() != size {
        return Err(format!(
            "blob {} is {} bytes, the manifest says {size}",
            path.display(),
            meta.len()
        ));
    }
    Ok(LayoutBlob {
        digest: d.digest.clone(),
        size,
        media_type: d.media_type.clone(),
        path,
    })
}

fn check_bytes(path: &Path, bytes: &[u8], digest: &str, size: i64) -> Result<(), LayoutError> {
    let actual = sha256_digest(bytes);
    if actual != digest {
        return Err(LayoutError {
            path: path.to_owned(),
            message: format!("content is {actual}, but it is referenced as {digest}"),
        });
    }
    if bytes.len() as i64 != size {
        return Err(LayoutError {
            path: path.to_owned(),
            message: format!(
                "{} bytes, but it is referenced with size {size}",
                bytes.len()
            ),
        });
    }
    Ok(())
}
