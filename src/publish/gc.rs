//! Retention and debris removal.
//!
//! Kept per image: the newest `keep_versions` committed versions, every version a
//! channel points at, and whatever the caller pins (`GcOptions::pinned`, the hook for
//! versions the inventory says hosts still run). Removed: every other committed version,
//! and uncommitted folders (publishes that died) once they are surely dead: their claim
//! is older than the grace period, or it is from this host and no publish runs here.
//!
//! A committed version is removed marker first (`COMMITTED`), so a gc that dies halfway
//! leaves an invisible folder, never a visible half version; `CLAIM` goes last, so a
//! half-removed folder still reads as debris to the next gc.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::channel;
use super::layout::{self, Claim, LayoutError, VersionState};
use crate::store::Store;

/// What gc may do.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub keep_versions: usize,
    /// Really delete (false: only report).
    pub apply: bool,
    /// Uncommitted folders younger than this may be a publish in progress elsewhere.
    pub grace: Duration,
    /// No publish runs on this host (the caller holds the publish lock exclusively):
    /// this host's own uncommitted folders are debris whatever their age.
    pub local_publishers_idle: bool,
    /// This host's name, as publishes record it in `CLAIM`.
    pub host: String,
    /// (image, version) pairs that must stay (inventory hook).
    pub pinned: BTreeSet<(String, String)>,
}

/// Why something goes or stays.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GcItem {
    pub image: String,
    pub version: String,
    /// `version` (past retention) or `debris` (uncommitted).
    pub kind: String,
    pub reason: String,
    pub objects: usize,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct GcReport {
    pub applied: bool,
    pub removed: Vec<GcItem>,
    /// Uncommitted folders left alone (publish possibly in progress).
    pub skipped: Vec<GcItem>,
    /// Committed versions kept.
    pub kept: usize,
}

/// Run gc over every image in the store.
pub async fn gc(store: &dyn Store, opts: &GcOptions) -> Result<GcReport, LayoutError> {
    let mut report = GcReport {
        applied: opts.apply,
        ..Default::default()
    };
    for image in layout::images(store).await? {
        gc_image(store, opts, &image, &mut report).await?;
    }
    Ok(report)
}

async fn gc_image(
    store: &dyn Store,
    opts: &GcOptions,
    image: &str,
    report: &mut GcReport,
) -> Result<(), LayoutError> {
    let states = layout::scan(store, image).await?;
    let mut heads = BTreeSet::new();
    for ch in channel::channels(store, image).await? {
        if let Some((p, _)) = channel::read(store, image, &ch).await? {
            heads.extend(p.head.map(|h| h.version));
        }
    }
    let committed: Vec<&VersionState> = states.iter().filter(|s| s.committed).collect();
    let newest: BTreeSet<&str> = committed
        .iter()
        .rev()
        .take(opts.keep_versions)
        .map(|s| s.version.as_str())
        .collect();
    let now = chrono::Utc::now();

    for s in &states {
        let item = |kind: &str, reason: String| GcItem {
            image: image.to_string(),
            version: s.version.clone(),
            kind: kind.to_string(),
            reason,
            objects: s.keys.len(),
        };
        if s.committed {
            let pinned = opts
                .pinned
                .contains(&(image.to_string(), s.version.clone()));
            if newest.contains(s.version.as_str()) || heads.contains(&s.version) || pinned {
                report.kept += 1;
                continue;
            }
            let it = item(
                "version",
                format!(
                    "older than the newest {} versions, on no channel",
                    opts.keep_versions
                ),
            );
            if opts.apply {
                // Re-check the channels right before removing: a promote may have
                // pointed one at this version since we looked.
                if points_at(store, image, &s.version).await? {
                    report.kept += 1;
                    continue;
                }
                remove(store, image, &s.version, &s.keys).await?;
            }
            report.removed.push(it);
            continue;
        }
        let claim_key = layout::key(image, &s.version, layout::CLAIM);
        let claim: Option<Claim> = layout::get_json(store, &claim_key).await.ok().flatten();
        let verdict = match &claim {
            None => Some("uncommitted, no claim (remains of a removal)".to_string()),
            Some(c) => {
                let started = chrono::DateTime::parse_from_rfc3339(&c.started)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or(now);
                let age = (now - started).to_std().unwrap_or_default();
                if age > opts.grace {
                    Some(format!(
                        "unfinished publish {} from {} ({} min old)",
                        c.publish_id,
                        c.host,
                        age.as_secs() / 60
                    ))
                } else if c.host == opts.host && opts.local_publishers_idle {
                    Some(format!(
                        "unfinished publish {} from this host, which runs no publish now",
                        c.publish_id
                    ))
                } else {
                    None
                }
            }
        };
        match verdict {
            Some(reason) => {
                if opts.apply {
                    remove(store, image, &s.version, &s.keys).await?;
                }
                report.removed.push(item("debris", reason));
            }
            None => report.skipped.push(item(
                "debris",
                format!(
                    "uncommitted but younger than {} min: maybe a publish in progress",
                    opts.grace.as_secs() / 60
                ),
            )),
        }
    }
    Ok(())
}

async fn points_at(store: &dyn Store, image: &str, version: &str) -> Result<bool, LayoutError> {
    for ch in channel::channels(store, image).await? {
        if let Some((p, _)) = channel::read(store, image, &ch).await? {
            if p.head.map(|h| h.version).as_deref() == Some(version) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Remove a version folder: `COMMITTED` first, `CLAIM` last.
async fn remove(
    store: &dyn Store,
    image: &str,
    version: &str,
    keys: &[String],
) -> Result<(), LayoutError> {
    let committed = layout::key(image, version, layout::COMMITTED);
    let claim = layout::key(image, version, layout::CLAIM);
    store.delete(&committed).await?;
    futures::stream::iter(keys.iter().filter(|k| **k != committed && **k != claim))
        .map(|k| store.delete(k))
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    store.delete(&claim).await?;
    Ok(())
}
