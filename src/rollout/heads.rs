//! The channel heads of the store, as rollout sees them: what `reconcile` compares with
//! the events it already made, so a trigger lost between a pointer move and the outbox
//! write (a crash in between) is made on the next run.

use super::{reconcile, ChannelHead, RolloutOutcome};
use crate::config::Config;
use crate::publish::{channel, layout};
use crate::store::Store;

/// Every channel of every image that points at a version, with that version's manifest.
pub async fn channel_heads(store: &dyn Store) -> anyhow::Result<Vec<ChannelHead>> {
    let mut heads = Vec::new();
    for image in layout::images(store).await? {
        for ch in channel::channels(store, &image).await? {
            let Some((pointer, _)) = channel::read(store, &image, &ch).await? else {
                continue;
            };
            let Some(head) = pointer.head else {
                continue;
            };
            let manifest = layout::manifest(store, &image, &head.version).await?;
            heads.push(ChannelHead {
                image: image.clone(),
                channel: ch,
                reason: head.reason,
                note: head.note,
                manifest,
            });
        }
    }
    Ok(heads)
}

/// Make the events of any channel move rollout has not seen yet, then deliver what is
/// pending. Without an inventory there is nothing to do (and nothing is read).
pub async fn reconcile_store(config: &Config, store: &dyn Store) -> anyhow::Result<RolloutOutcome> {
    if super::inventory::load(config)?.is_none() {
        return Ok(RolloutOutcome::default());
    }
    let heads = channel_heads(store).await?;
    reconcile(config, store, &heads).await
}
