//! After publishing: `promote` a version to another channel (same bytes, no rebuild) and
//! `revoke` a version (channels fall back to their previous good version).

use std::collections::BTreeSet;

use minisign::PublicKey;

use super::channel::{self, ChannelEntry, ChannelError, ChannelPointer};
use super::fetch::{self, FetchError};
use super::layout::{self, LayoutError, Revocation};
use super::model::{ChannelMove, Manifest, MoveReason};
use super::{version, ChannelObserver};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0}")]
    Usage(String),
    #[error("{image} {version} was revoked ({reason}); a revoked version is never promoted")]
    Revoked {
        image: String,
        version: String,
        reason: String,
    },
    #[error("{image} {version} did not pass verification; only verified versions are promoted")]
    NotVerified { image: String, version: String },
    #[error("channel(s) {channels} of {image} moved, but the rollout hook failed: {source:#}")]
    Observer {
        image: String,
        channels: String,
        source: anyhow::Error,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn notify(
    observer: &dyn ChannelObserver,
    image: &str,
    moves: &[ChannelMove],
) -> Result<(), LifecycleError> {
    if moves.is_empty() {
        return Ok(());
    }
    observer
        .channel_moved(moves)
        .await
        .map_err(|source| LifecycleError::Observer {
            image: image.to_string(),
            channels: moves
                .iter()
                .map(|m| m.channel.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            source,
        })
}

/// Point `channel` at an already published version. With a public key, the version's
/// signature is checked first. Returns None when the channel already pointed there.
pub async fn promote(
    store: &dyn Store,
    pk: Option<&PublicKey>,
    image: &str,
    version: &str,
    channel: &str,
    observer: &dyn ChannelObserver,
) -> Result<Option<ChannelMove>, LifecycleError> {
    version::validate_channel(channel).map_err(LifecycleError::Usage)?;
    version::validate(version).map_err(LifecycleError::Usage)?;
    let manifest: Manifest = match pk {
        Some(pk) => fetch::signed_manifest(store, pk, image, version).await?.0,
        None => layout::manifest(store, image, version).await?,
    };
    if let Some(r) = layout::revocation(store, image, version).await? {
        return Err(LifecycleError::Revoked {
            image: image.to_string(),
            version: version.to_string(),
            reason: r.reason,
        });
    }
    if !manifest.verify.passed {
        return Err(LifecycleError::NotVerified {
            image: image.to_string(),
            version: version.to_string(),
        });
    }
    let note = format!("promoted to {channel}");
    let Some(mv) = channel::move_to(store, channel, &manifest, MoveReason::Promote, &note).await?
    else {
        return Ok(None);
    };
    // A revoke that ran between our check and our move did not see this channel yet:
    // undo our move the way revoke would have.
    if let Some(r) = layout::revocation(store, image, version).await? {
        let good = good_versions(store, image).await?;
        fall_back(store, image, channel, version, &r.reason, &good).await?;
        return Err(LifecycleError::Revoked {
            image: image.to_string(),
            version: version.to_string(),
            reason: r.reason,
        });
    }
    let moves = [mv];
    notify(observer, image, &moves).await?;
    let [mv] = moves;
    Ok(Some(mv))
}

/// What `revoke` did.
#[derive(Debug, Clone)]
pub struct RevokeOutcome {
    pub revocation: Revocation,
    /// The version had been revoked before (the channels were checked again anyway).
    pub already_revoked: bool,
    pub moves: Vec<ChannelMove>,
    /// Channels left without a version (no good version in their history).
    pub emptied: Vec<String>,
}

/// Committed, non-revoked versions of an image.
async fn good_versions(store: &dyn Store, image: &str) -> Result<BTreeSet<String>, StoreError> {
    Ok(layout::scan(store, image)
        .await?
        .into_iter()
        .filter(|s| s.committed && !s.revoked)
        .map(|s| s.version)
        .collect())
}

/// Move `channel` off `bad` to the newest good entry of its history.
/// Returns the new head (None: nothing to fall back to), or Ok(None) outer when the
/// channel did not point at `bad`.
async fn fall_back(
    store: &dyn Store,
    image: &str,
    channel: &str,
    bad: &str,
    note: &str,
    good: &BTreeSet<String>,
) -> Result<Option<Option<ChannelEntry>>, ChannelError> {
    let r = channel::update(store, image, channel, |cur: Option<&ChannelPointer>| {
        let cur = cur?;
        if cur.head.as_ref().map(|h| h.version.as_str()) != Some(bad) {
            return None;
        }
        let mut next = cur.clone();
        next.head = None;
        while let Some(e) = next.history.pop() {
            if e.version != bad && good.contains(&e.version) {
                next.head = Some(ChannelEntry {
                    moved: channel::now(),
                    reason: MoveReason::Revoke,
                    note: note.to_string(),
                    ..e
                });
                break;
            }
        }
        Some(next)
    })
    .await?;
    Ok(r.map(|(_, after)| after.head))
}

/// Revoke a version: write `REVOKED` (reason, time; the version itself is untouched),
/// then move every channel pointing at it back to its previous good version.
pub async fn revoke(
    store: &dyn Store,
    image: &str,
    version: &str,
    reason: &str,
    observer: &dyn ChannelObserver,
) -> Result<RevokeOutcome, LifecycleError> {
    if reason.trim().is_empty() {
        return Err(LifecycleError::Usage("revoke needs a --reason".into()));
    }
    let revoked_manifest = layout::manifest(store, image, version).await?;
    let rec = Revocation {
        reason: reason.to_string(),
        revoked: channel::now(),
    };
    let key = layout::key(image, version, layout::REVOKED);
    let (revocation, already_revoked) = match store.put_if_absent(&key, layout::to_json(&rec)).await
    {
        Ok(_) => (rec, false),
        Err(StoreError::Conflict { .. }) => (
            layout::revocation(store, image, version)
                .await?
                .unwrap_or(rec),
            true,
        ),
        Err(e) => return Err(e.into()),
    };

    let good = good_versions(store, image).await?;
    let mut moves = Vec::new();
    let mut emptied = Vec::new();
    for ch in channel::channels(store, image).await? {
        match fall_back(store, image, &ch, version, &revocation.reason, &good).await? {
            None => {}
            Some(None) => emptied.push(ch),
            Some(Some(head)) => {
                let new = layout::manifest(store, image, &head.version).await?;
                moves.push(ChannelMove {
                    image: image.to_string(),
                    channel: ch,
                    reason: MoveReason::Revoke,
                    note: revocation.reason.clone(),
                    old: Some(revoked_manifest.clone()),
                    new,
                });
            }
        }
    }
    notify(observer, image, &moves).await?;
    Ok(RevokeOutcome {
        revocation,
        already_revoked,
        moves,
        emptied,
    })
}
