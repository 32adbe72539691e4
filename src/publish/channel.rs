//! Channel pointers: `channels/<image>/<channel>.json`, moved with compare-and-swap.
//!
//! A pointer holds its head and the heads it had before (newest last), so `revoke` can
//! fall back to the previous good version without guessing from version order.

use serde::{Deserialize, Serialize};

use super::layout::{self, LayoutError};
use super::model::{ChannelMove, Manifest, MoveReason};
use crate::store::{Etag, Store, StoreError};

/// Pointer format version.
pub const POINTER_SCHEMA: u32 = 1;
/// Earlier heads kept in a pointer.
const HISTORY_LEN: usize = 50;
/// Compare-and-swap attempts before a move gives up on a busy channel.
const CAS_ATTEMPTS: usize = 8;

/// One position of a channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelEntry {
    pub version: String,
    pub content_digest: String,
    /// When the channel moved here (RFC 3339).
    pub moved: String,
    pub reason: MoveReason,
    pub note: String,
}

/// `channels/<image>/<channel>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelPointer {
    pub schema: u32,
    pub image: String,
    pub channel: String,
    /// None when every version the channel had was revoked.
    pub head: Option<ChannelEntry>,
    /// Earlier heads, newest last.
    #[serde(default)]
    pub history: Vec<ChannelEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel {image}/{channel} kept changing under us ({attempts} attempts); try again")]
    Busy {
        image: String,
        channel: String,
        attempts: usize,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl From<StoreError> for ChannelError {
    fn from(e: StoreError) -> Self {
        ChannelError::Layout(e.into())
    }
}

/// Read a pointer and its etag.
pub async fn read(
    store: &dyn Store,
    image: &str,
    channel: &str,
) -> Result<Option<(ChannelPointer, Etag)>, LayoutError> {
    let key = layout::channel_key(image, channel);
    match store.get(&key).await? {
        None => Ok(None),
        Some(o) => {
            let p: ChannelPointer =
                serde_json::from_slice(&o.bytes).map_err(|e| LayoutError::Corrupt {
                    key: key.clone(),
                    store: store.describe(),
                    message: e.to_string(),
                })?;
            Ok(Some((p, o.etag)))
        }
    }
}

/// The channels an image has.
pub async fn channels(store: &dyn Store, image: &str) -> Result<Vec<String>, StoreError> {
    let prefix = format!("{}/{image}/", layout::CHANNELS);
    Ok(store
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|k| k[prefix.len()..].strip_suffix(".json").map(str::to_string))
        .filter(|c| !c.contains('/'))
        .collect())
}

/// Compare-and-swap loop: read the pointer, let `change` compute the new one from it,
/// write it only if nobody moved the channel meanwhile; re-read and retry otherwise.
/// `change` returns None to leave the pointer alone. Returns the pointer before and after.
pub async fn update<F>(
    store: &dyn Store,
    image: &str,
    channel: &str,
    mut change: F,
) -> Result<Option<(Option<ChannelPointer>, ChannelPointer)>, ChannelError>
where
    F: FnMut(Option<&ChannelPointer>) -> Option<ChannelPointer>,
{
    let key = layout::channel_key(image, channel);
    for _ in 0..CAS_ATTEMPTS {
        let current = read(store, image, channel).await?;
        let Some(mut next) = change(current.as_ref().map(|(p, _)| p)) else {
            return Ok(None);
        };
        if next.history.len() > HISTORY_LEN {
            let cut = next.history.len() - HISTORY_LEN;
            next.history.drain(..cut);
        }
        let bytes = layout::to_json(&next);
        let r = match &current {
            None => store.put_if_absent(&key, bytes).await,
            Some((_, etag)) => store.put_if_match(&key, bytes, etag).await,
        };
        match r {
            Ok(_) => return Ok(Some((current.map(|(p, _)| p), next))),
            Err(StoreError::Conflict { .. }) => {
                tracing::debug!("{key} moved while we updated it; retrying");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ChannelError::Busy {
        image: image.to_string(),
        channel: channel.to_string(),
        attempts: CAS_ATTEMPTS,
    })
}

/// Point `channel` at `manifest`'s version. Returns the move, or None when the channel
/// already points there.
pub async fn move_to(
    store: &dyn Store,
    channel: &str,
    manifest: &Manifest,
    reason: MoveReason,
    note: &str,
) -> Result<Option<ChannelMove>, ChannelError> {
    let image = manifest.image.clone();
    let entry = ChannelEntry {
        version: manifest.version.clone(),
        content_digest: manifest.content_digest.clone(),
        moved: now(),
        reason,
        note: note.to_string(),
    };
    let moved = update(store, &image, channel, |cur| {
        if cur.and_then(|p| p.head.as_ref()).map(|h| &h.version) == Some(&entry.version) {
            return None;
        }
        let mut next = cur.cloned().unwrap_or_else(|| ChannelPointer {
            schema: POINTER_SCHEMA,
            image: image.clone(),
            channel: channel.to_string(),
            head: None,
            history: Vec::new(),
        });
        if let Some(h) = next.head.take() {
            next.history.push(h);
        }
        next.head = Some(entry.clone());
        Some(next)
    })
    .await?;
    let Some((before, _)) = moved else {
        return Ok(None);
    };
    let old = match before.and_then(|p| p.head) {
        Some(h) => old_manifest(store, &image, &h.version).await,
        None => None,
    };
    Ok(Some(ChannelMove {
        image,
        channel: channel.to_string(),
        reason,
        note: note.to_string(),
        old,
        new: manifest.clone(),
    }))
}

/// The manifest a channel pointed at before, if it is still readable (it may have been
/// removed by gc; the move is still worth reporting).
pub(crate) async fn old_manifest(
    store: &dyn Store,
    image: &str,
    version: &str,
) -> Option<Manifest> {
    match layout::manifest(store, image, version).await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("previous head {image} {version}: {e}");
            None
        }
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
