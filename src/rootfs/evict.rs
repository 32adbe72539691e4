//! Keeping the layer cache within `[cache] max_size`: least recently used entries go
//! first, never one this run uses (pinned) or one used in the last hour (another build on
//! this cache may be reading it).
//!
//! A nightly makes new base layers whenever the archive moves, so without a bound the
//! cache grows by hundreds of MiB a day until the disk is full.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::cache::{LayerCache, LayerMeta};
use crate::fsutil;
use crate::plan::{CacheView, Resolutions};
use crate::recipe::Recipes;

/// Entries used more recently than this stay whatever the bound: a build in another
/// process may have verified one and be about to extract it.
pub const IN_USE_GRACE: Duration = Duration::from_secs(3600);

/// One entry removed (or that would be, in a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct Evicted {
    pub digest: String,
    /// The layer's name when it was built.
    pub layer: String,
    pub bytes: u64,
    /// Seconds since it was last used.
    pub idle_secs: u64,
}

/// What eviction did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct EvictReport {
    pub applied: bool,
    pub max_bytes: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub removed: Vec<Evicted>,
}

/// The layer digests `names` are made of.
pub fn pinned(
    recipes: &Recipes,
    names: &[String],
    cache: &LayerCache,
    resolutions: &Resolutions,
) -> HashSet<String> {
    let mut pinned = HashSet::new();
    // Image by image: one whose packages could not be resolved has no plan, and the
    // others' layers must still be spared.
    for n in names {
        if let Ok(p) = crate::plan::make(recipes, std::slice::from_ref(n), cache, resolutions) {
            pinned.extend(p.layers.into_iter().map(|l| l.digest));
        }
    }
    pinned
}

/// Apply `[cache] max_size` after a build or nightly run, sparing every layer of the
/// run's images. Problems are warnings: the run's outcome stands.
pub fn after_run(
    recipes: &Recipes,
    names: &[String],
    cache: &LayerCache,
    resolutions: &Resolutions,
) {
    let Some(max) = recipes.config.cache_max_bytes() else {
        return;
    };
    match cache.evict(max, &pinned(recipes, names, cache, resolutions), true) {
        Ok(r) => {
            if !r.removed.is_empty() {
                tracing::info!(
                    "layer cache: {} least recently used entries removed ({} MiB), {} MiB of cache.max_size {} MiB used",
                    r.removed.len(),
                    (r.bytes_before - r.bytes_after) >> 20,
                    r.bytes_after >> 20,
                    max >> 20
                );
            }
            if r.bytes_after > max {
                tracing::warn!(
                    "layer cache holds {} MiB, over cache.max_size ({} MiB): the rest is used by this run's images or was used in the last hour",
                    r.bytes_after >> 20,
                    max >> 20
                );
            }
        }
        Err(e) => tracing::warn!("layer cache eviction in {}: {e}", cache.root().display()),
    }
}

struct Entry {
    digest: String,
    layer: String,
    bytes: u64,
    used: SystemTime,
}

impl LayerCache {
    /// Record that an entry was used now (eviction order).
    pub(super) fn touch(&self, digest: &str) {
        // The entry folder's own mtime: nothing else changes it once committed.
        let _ = filetime::set_file_mtime(
            self.root().join("layers").join(digest),
            filetime::FileTime::now(),
        );
    }

    /// Remove least recently used entries until the cache holds at most `max_bytes`,
    /// sparing `pinned` digests (and the entries they resolve to) and entries used within
    /// [`IN_USE_GRACE`]. With `apply` false, only report what would go.
    pub fn evict(
        &self,
        max_bytes: u64,
        pinned: &HashSet<String>,
        apply: bool,
    ) -> std::io::Result<EvictReport> {
        let now = SystemTime::now();
        let keep: HashSet<String> = pinned
            .iter()
            .flat_map(|d| [Some(d.clone()), self.representative(d)])
            .flatten()
            .collect();
        let mut entries = self.sized_entries();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut report = EvictReport {
            applied: apply,
            max_bytes,
            bytes_before: total,
            ..Default::default()
        };
        if apply {
            self.sweep_debris(now);
        }
        entries.sort_by_key(|e| e.used);
        for e in entries {
            if total <= max_bytes {
                break;
            }
            let idle = now.duration_since(e.used).unwrap_or_default();
            if keep.contains(&e.digest) || idle < IN_USE_GRACE {
                continue;
            }
            if apply {
                match self.remove_entry(&e.digest) {
                    // Another gc on this cache was quicker.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    r => r?,
                }
            }
            total -= e.bytes;
            report.removed.push(Evicted {
                digest: e.digest,
                layer: e.layer,
                bytes: e.bytes,
                idle_secs: idle.as_secs(),
            });
        }
        report.bytes_after = total;
        Ok(report)
    }

    /// Remove what processes killed mid-way left: half-deleted entries (`.trash-*`,
    /// older than [`IN_USE_GRACE`]: a deletion may be going on) and staging folders of
    /// builds that died (`.tmp-*`, older than a day: no layer build takes that long).
    fn sweep_debris(&self, now: SystemTime) {
        let Ok(rd) = std::fs::read_dir(self.root().join("layers")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let min_age = if name.starts_with(".trash-") {
                IN_USE_GRACE
            } else if name.starts_with(".tmp-") {
                Duration::from_secs(86400)
            } else {
                continue;
            };
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default());
            if age.is_ok_and(|a| a >= min_age) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    fn sized_entries(&self) -> Vec<Entry> {
        let mut v = Vec::new();
        for digest in self.entries() {
            let dir = self.root().join("layers").join(&digest);
            let Ok(used) = std::fs::metadata(&dir).and_then(|m| m.modified()) else {
                continue; // removed meanwhile
            };
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut bytes = 0;
            for f in files.flatten() {
                bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
            let layer = fsutil::read_json::<LayerMeta>(&dir.join("meta.json"))
                .map(|m| m.name)
                .unwrap_or_default();
            v.push(Entry {
                digest,
                layer,
                bytes,
                used,
            });
        }
        v
    }

    /// Delete an entry and the indexes that point at it (its output index, equivalences
    /// to it).
    fn remove_entry(&self, digest: &str) -> std::io::Result<()> {
        let root = self.root();
        let meta: Option<LayerMeta> = self.meta(digest);
        self.take_out(digest)?;
        if let Some(m) = meta {
            let out = root.join("outputs").join(&m.output_digest);
            if std::fs::read_to_string(&out).is_ok_and(|d| d.trim() == digest) {
                std::fs::remove_file(&out)?;
            }
        }
        remove_equivalences_to(&root.join("equiv"), digest)
    }
}

fn remove_equivalences_to(equiv: &Path, digest: &str) -> std::io::Result<()> {
    let Ok(rd) = std::fs::read_dir(equiv) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if std::fs::read_to_string(e.path()).is_ok_and(|d| d.trim() == digest) {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::cache::LayerMeta;

    fn add(cache: &LayerCache, digest: &str, bytes: usize, idle_hours: u64) {
        let staging = cache.staging(digest).unwrap();
        let diff = vec![7u8; bytes];
        std::fs::write(staging.path().join("diff.tar.zst"), &diff).unwrap();
        let meta = LayerMeta {
            digest: digest.into(),
            name: format!("layer-{digest}"),
            output_digest: format!("out-{digest}"),
            tar_size: bytes as u64,
            zst_sha256: fsutil::sha256_file(&staging.path().join("diff.tar.zst"))
                .unwrap()
                .1,
            zst_size: bytes as u64,
            packages: vec![],
            build_secs: 0.0,
        };
        cache.commit(staging, &meta).unwrap();
        set_age(&cache.root().join("layers").join(digest), idle_hours);
    }

    /// Make `path` look last modified `hours` ago.
    fn set_age(path: &Path, hours: u64) {
        let t = SystemTime::now() - Duration::from_secs(hours * 3600);
        filetime::set_file_mtime(path, filetime::FileTime::from_system_time(t)).unwrap();
    }

    #[test]
    fn least_recently_used_unpinned_entries_go_until_the_cache_fits() {
        let d = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(d.path());
        add(&cache, "old", 4000, 72);
        add(&cache, "pinned", 4000, 96);
        add(&cache, "mid", 4000, 48);
        add(&cache, "new", 4000, 24);
        add(&cache, "busy", 4000, 0);
        cache.record_equivalence("same-as-old", "old").unwrap();
        // Debris of killed processes: old enough to go, and too young to touch.
        let layers = d.path().join("layers");
        let aged = |name: &str, hours: u64| {
            std::fs::create_dir_all(layers.join(name).join("x")).unwrap();
            set_age(&layers.join(name), hours);
        };
        aged(".trash-gone-1", 2);
        aged(".trash-going-2", 0);
        aged(".tmp-dead-", 30);
        aged(".tmp-building-", 5);
        cache.record_equivalence("same-as-new", "new").unwrap();
        let pinned: HashSet<String> = ["pinned".to_string()].into();
        let size = |c: &LayerCache| c.sized_entries().iter().map(|e| e.bytes).sum();
        let total: u64 = size(&cache);
        // Room for three entries: the two oldest unpinned ones go, oldest first.
        let max = total * 3 / 5 + 100;

        let dry = cache.evict(max, &pinned, false).unwrap();
        let names: Vec<&str> = dry.removed.iter().map(|e| e.digest.as_str()).collect();
        assert_eq!(names, ["old", "mid"]);
        assert_eq!(dry.removed[0].layer, "layer-old");
        assert!(dry.removed[0].idle_secs >= 71 * 3600);
        assert_eq!(cache.entries().len(), 5, "a dry run removes nothing");

        let done = cache.evict(max, &pinned, true).unwrap();
        assert_eq!(done.bytes_before, total);
        assert!(done.bytes_after <= max && done.bytes_after == size(&cache));
        assert_eq!(cache.entries(), ["busy", "new", "pinned"]);
        // Nothing points at a removed entry any more; what points at kept ones stays.
        assert!(!d.path().join("outputs/out-old").exists());
        assert!(d.path().join("outputs/out-new").exists());
        assert!(!d.path().join("equiv/same-as-old").exists());
        assert!(d.path().join("equiv/same-as-new").exists());
        let mut left: Vec<String> = std::fs::read_dir(&layers)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        left.sort();
        assert_eq!(left, [".tmp-building-", ".trash-going-2"]);

        // A bound nothing can meet: pinned and in-use entries stay regardless.
        let tight = cache.evict(1, &pinned, true).unwrap();
        let names: Vec<&str> = tight.removed.iter().map(|e| e.digest.as_str()).collect();
        assert_eq!(names, ["new"]);
        assert_eq!(cache.entries(), ["busy", "pinned"]);
        assert!(tight.bytes_after > 1);
    }

    #[test]
    fn a_verified_entry_counts_as_used_now() {
        let d = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(d.path());
        add(&cache, "a", 1000, 72);
        add(&cache, "b", 1000, 48);
        cache.verify("a").unwrap();
        let r = cache.evict(1500, &HashSet::new(), true).unwrap();
        assert_eq!(r.removed.len(), 1);
        assert_eq!(r.removed[0].digest, "b");
        assert_eq!(cache.entries(), ["a"]);
    }
}
