//! The layer cache: each layer's content diff, stored by the layer's digest.
//!
//! ```text
//! <cache>/layers/<digest>/diff.tar.zst   the diff (OCI layer tar, zstd)
//! <cache>/layers/<digest>/meta.json      output digest, sizes, packages after the layer
//! <cache>/outputs/<output-digest>        the first layer digest that produced this output
//! <cache>/equiv/<digest>                 early cut-off: digest -> representative digest
//! ```
//!
//! Entries are written into a temp folder and renamed into place, so a reader never sees
//! half an entry. An entry whose bytes do not match its recorded sha256 is discarded and
//! rebuilt, never used. `[cache] max_size` is kept by `evict`.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::plan::{CacheView, ResolvedPackage};

/// What the cache knows about one layer build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerMeta {
    pub digest: String,
    pub name: String,
    /// sha256 of the uncompressed diff tar.
    pub output_digest: String,
    pub tar_size: u64,
    /// sha256 and size of `diff.tar.zst`, checked before every use.
    pub zst_sha256: String,
    pub zst_size: u64,
    /// Installed packages once this layer is applied (from the tree's dpkg database).
    pub packages: Vec<ResolvedPackage>,
    pub build_secs: f64,
}

/// Why a cache entry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache entry {digest} is corrupt ({why}); it was discarded and will be rebuilt")]
    Corrupt { digest: String, why: String },
    #[error("layer cache i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The local layer cache.
#[derive(Debug, Clone)]
pub struct LayerCache {
    root: PathBuf,
    /// Image trees kept for later builds (see `rootfs::park`).
    pub keep_trees: usize,
}

impl LayerCache {
    pub fn open(root: &Path) -> LayerCache {
        LayerCache {
            root: root.to_owned(),
            keep_trees: 2,
        }
    }

    /// The same cache, keeping `n` image trees (`cache.keep_trees`).
    pub fn keeping_trees(mut self, n: usize) -> LayerCache {
        self.keep_trees = n;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_dir(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest)
    }

    /// The digest whose entry holds `digest`'s content (itself, or its representative).
    fn resolve(&self, digest: &str) -> Option<String> {
        if self.entry_dir(digest).join("meta.json").is_file() {
            return Some(digest.to_string());
        }
        let rep = self.representative(digest)?;
        self.entry_dir(&rep)
            .join("meta.json")
            .is_file()
            .then_some(rep)
    }

    /// The entry's metadata, if the entry exists and its metadata parses.
    pub fn meta(&self, digest: &str) -> Option<LayerMeta> {
        let d = self.resolve(digest)?;
        fsutil::read_json(&self.entry_dir(&d).join("meta.json")).ok()
    }

    /// Path of the diff tar of an entry (after [`LayerCache::verify`]).
    pub fn diff_path(&self, digest: &str) -> Option<PathBuf> {
        self.resolve(digest)
            .map(|d| self.entry_dir(&d).join("diff.tar.zst"))
    }

    /// Check an entry's bytes against its metadata; a corrupt entry is removed.
    pub fn verify(&self, digest: &str) -> Result<LayerMeta, CacheError> {
        let Some(d) = self.resolve(digest) else {
            return Err(CacheError::Corrupt {
                digest: digest.into(),
                why: "missing".into(),
            });
        };
        let dir = self.entry_dir(&d);
        let meta: LayerMeta = match fsutil::read_json(&dir.join("meta.json")) {
            Ok(m) => m,
            Err(e) => return Err(self.discard(&d, format!("unreadable metadata: {e}"))),
        };
        match fsutil::sha256_file(&dir.join("diff.tar.zst")) {
            Ok((size, sha)) if size == meta.zst_size && sha == meta.zst_sha256 => {
                self.touch(&d);
                Ok(meta)
            }
            Ok((_, sha)) => Err(self.discard(
                &d,
                format!(
                    "diff.tar.zst has sha256 {sha}, expected {}",
                    meta.zst_sha256
                ),
            )),
            Err(e) => Err(self.discard(&d, format!("cannot read diff.tar.zst: {e}"))),
        }
    }

    fn discard(&self, digest: &str, why: String) -> CacheError {
        let _ = self.take_out(digest);
        tracing::warn!(
            "layer cache entry {} discarded: {why}",
            crate::plan::short(digest)
        );
        CacheError::Corrupt {
            digest: digest.into(),
            why,
        }
    }

    /// Open an entry's diff as an uncompressed tar stream (verify it first).
    pub fn open_diff(&self, digest: &str) -> Result<impl Read, CacheError> {
        let p = self.diff_path(digest).ok_or_else(|| CacheError::Corrupt {
            digest: digest.into(),
            why: "missing".into(),
        })?;
        let f = std::fs::File::open(&p).map_err(|source| CacheError::Io {
            path: p.clone(),
            source,
        })?;
        zstd::stream::read::Decoder::new(BufReader::new(f))
            .map_err(|source| CacheError::Io { path: p, source })
    }

    /// A temp folder for a new entry (same file system, so the final rename is atomic).
    pub fn staging(&self, digest: &str) -> std::io::Result<tempfile::TempDir> {
        let layers = self.root.join("layers");
        std::fs::create_dir_all(&layers)?;
        tempfile::Builder::new()
            .prefix(&format!(".tmp-{}-", crate::plan::short(digest)))
            .tempdir_in(layers)
    }

    /// Move a finished staging folder into place and record the layer's output for
    /// early cut-off. Returns the representative digest when an earlier layer digest
    /// already produced byte-identical output.
    pub fn commit(
        &self,
        staging: tempfile::TempDir,
        meta: &LayerMeta,
    ) -> std::io::Result<Option<String>> {
        fsutil::atomic_write_json(&staging.path().join("meta.json"), meta)?;
        let out_index = self.root.join("outputs").join(&meta.output_digest);
        if let Ok(existing) = std::fs::read_to_string(&out_index) {
            let existing = existing.trim().to_string();
            if existing != meta.digest && self.entry_dir(&existing).join("meta.json").is_file() {
                // Same bytes as an entry we have: keep one copy, remember the equivalence.
                self.record_equivalence(&meta.digest, &existing)?;
                return Ok(Some(existing));
            }
        }
        let dest = self.entry_dir(&meta.digest);
        let tmp = staging.keep();
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => {}
            // A concurrent build committed the same digest first: its entry is as good.
            Err(_) if dest.join("meta.json").is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        fsutil::sync_dir(&self.root.join("layers"))?;
        fsutil::atomic_write(&out_index, meta.digest.as_bytes())?;
        Ok(None)
    }

    /// Remember that `digest` produces the same output as the entry `representative`.
    pub fn record_equivalence(&self, digest: &str, representative: &str) -> std::io::Result<()> {
        fsutil::atomic_write(
            &self.root.join("equiv").join(digest),
            representative.as_bytes(),
        )
    }

    /// A lock held while a layer digest is being built, so two builds on one host do
    /// not build the same layer twice.
    pub fn lock(&self, digest: &str) -> std::io::Result<fsutil::FileLock> {
        fsutil::FileLock::acquire(&self.root.join("locks").join(format!("{digest}.lock")))
    }

    /// Every entry's digest.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("layers"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Remove an entry: renamed out of sight first, so no reader picks up half of it
    /// while it is being deleted.
    pub(super) fn take_out(&self, digest: &str) -> std::io::Result<()> {
        let trash = self.root.join("layers").join(format!(
            ".trash-{digest}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::rename(self.entry_dir(digest), &trash)?;
        std::fs::remove_dir_all(&trash)
    }
}

impl CacheView for LayerCache {
    fn has_layer(&self, digest: &str) -> bool {
        self.resolve(digest).is_some()
    }

    fn representative(&self, digest: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join("equiv").join(digest))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn history(&self, image: &str, layer: &str) -> Option<crate::plan::InputSummary> {
        fsutil::read_json(&self.history_path(image, layer)).ok()
    }
}

impl LayerCache {
    fn history_path(&self, image: &str, layer: &str) -> PathBuf {
        self.root
            .join("history")
            .join(image)
            .join(format!("{layer}.json"))
    }

    /// Remember what the layer was last built from for `image`, so the next plan can say
    /// why it rebuilds.
    pub fn record_history(
        &self,
        image: &str,
        layer: &str,
        summary: &crate::plan::InputSummary,
    ) -> std::io::Result<()> {
        fsutil::atomic_write_json(&self.history_path(image, layer), summary)
    }
}
