//! The publish stage: immutable versions, manifests, SBOMs, signatures, channels, targets.
//!
//! Entry points (the command layer, `nightly` and rollout call these):
//! - [`flow::publish`]: a verified build becomes a signed, committed version and the
//!   channel moves to it (or [`flow::PublishOutcome::Unchanged`]);
//! - [`lifecycle::promote`], [`lifecycle::revoke`]: move channels after the fact;
//! - [`fetch::fetch`]: download and check a version;
//! - [`gc::gc`]: retention and debris;
//! - [`ChannelObserver`]: called with the [`model::ChannelMove`]s after a channel
//!   pointer moved (never before), so rollout can trigger the hosts that follow it.

pub mod ami;
pub mod channel;
pub mod fetch;
pub mod flow;
pub mod gc;
pub mod layout;
pub mod lifecycle;
pub mod model;
pub mod oci_layout;
pub mod registry;
pub mod retry;
pub mod sbom;
pub mod sign;
pub mod target;
pub mod version;

use std::path::{Path, PathBuf};

pub use flow::{publish, PublishError, PublishOutcome, PublishRequest};
use model::ChannelMove;

/// Told about channel moves. Called only AFTER the pointers moved: an observer that
/// records the moves durably (the rollout outbox) never hears of a move that did not
/// happen. A publish killed between the move and the call loses the notification;
/// the observer can reconcile from the channel pointers.
#[async_trait::async_trait]
pub trait ChannelObserver: Send + Sync {
    async fn channel_moved(&self, moves: &[ChannelMove]) -> anyhow::Result<()>;
}

/// An observer that does nothing (until rollout plugs in).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

#[async_trait::async_trait]
impl ChannelObserver for NoObserver {
    async fn channel_moved(&self, _moves: &[ChannelMove]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The lock every publishing command holds shared and `gc` takes exclusively, so gc
/// knows whether this host has a publish in flight.
pub fn lock_path(run_dir: &Path) -> PathBuf {
    run_dir.join("publish.lock")
}
