//! The rollout stage: when a channel moves, tell the provisioners of the host groups on
//! that image and channel to rebuild them, once, durably, verifiably.
//!
//! Flow: `ChannelMove`s (from publish, promote, revoke) -> one [`event::RolloutEvent`] per
//! host group (deterministic id) -> written to the outbox in the store *before* any
//! delivery -> delivered to each of the group's sinks, with the state of each delivery
//! recorded. Whatever is not delivered stays pending for the next run or
//! `goldsmith rollout retry`.

pub mod event;
pub mod heads;
pub mod inventory;
pub mod outbox;
pub mod sinks;

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::Config;
use crate::publish::model::{ChannelMove, Manifest, MoveReason};
use crate::store::Store;
use event::{CloudEvent, EventReason, NoEvent};
use inventory::{Group, Inventory};
use outbox::{
    ChannelCursor, DeliveryState, DeliveryStatus, GroupCursor, OutboxRecord, OUTBOX_SCHEMA,
};
use sinks::Outcome;

/// Test-only: milliseconds to sleep between writing the outbox and delivering, so a test
/// can `kill -9` goldsmith in exactly that window. Unset in real use.
pub const TEST_PAUSE_ENV: &str = "GOLDSMITH_TEST_PAUSE_BEFORE_DELIVERY_MS";

/// What one call did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RolloutOutcome {
    /// Events made from the moves (including ones the outbox already had).
    pub events: Vec<EventSummary>,
    /// Moves that produced no event, and why.
    pub skipped: Vec<SkippedMove>,
    /// Every delivery tried or settled in this call.
    pub deliveries: Vec<DeliveryReport>,
}

impl RolloutOutcome {
    /// Deliveries that are still owed (pending or failed).
    pub fn undelivered(&self) -> impl Iterator<Item = &DeliveryReport> {
        self.deliveries.iter().filter(|d| d.status.is_open())
    }
}

/// One event of a move.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventSummary {
    pub id: String,
    pub group: String,
    pub image: String,
    pub channel: String,
    pub reason: EventReason,
    pub old_version: Option<String>,
    pub new_version: String,
    /// False when the outbox already held this event (a replayed move).
    pub written: bool,
}

/// A move that produced no event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SkippedMove {
    pub image: String,
    pub channel: String,
    pub version: String,
    pub why: NoEvent,
}

/// One delivery of one event to one sink.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeliveryReport {
    pub event_id: String,
    pub group: String,
    pub sink: String,
    pub status: DeliveryStatus,
    /// Attempts made in this call.
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// How [`deliver_pending`] treats deliveries a sink rejected for good.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliverOptions {
    /// Try permanently failed deliveries again (`goldsmith rollout retry` does: someone
    /// fixed the receiver). Automatic runs leave them for a person to look at.
    pub include_failed: bool,
}

/// A channel's current head, as the publish stage reads it from its channel pointers;
/// [`reconcile`] compares it with what rollout last made events for.
#[derive(Debug, Clone)]
pub struct ChannelHead {
    pub image: String,
    pub channel: String,
    /// How the pointer got there (recorded by publish with the pointer).
    pub reason: MoveReason,
    pub note: String,
    pub manifest: Manifest,
}

/// Turn channel moves into events, write them to the outbox, then deliver everything
/// pending. Without an inventory in goldsmith.toml there is nothing to trigger.
///
/// Call it after every channel move. Delivery failures do not make this fail: they are
/// in the outcome and stay pending in the store. Errors are configuration (exit 2) or
/// store failures, and a failure leaves what was already written in place.
pub async fn on_channel_moves(
    config: &Config,
    store: &dyn Store,
    moves: &[ChannelMove],
) -> anyhow::Result<RolloutOutcome> {
    let Some(inv) = inventory::load(config)? else {
        tracing::debug!("no inventory configured: channel moves trigger nothing");
        return Ok(RolloutOutcome::default());
    };
    let mut out = RolloutOutcome::default();
    let host = source_host();
    for mv in moves {
        record_move(store, &inv, mv, &host, &mut out).await?;
    }
    test_pause().await;
    out.deliveries = deliver_pending(config, store, DeliverOptions::default())
        .await?
        .deliveries;
    Ok(out)
}

/// Close the gap between a channel pointer moving and its events being written: for
/// every channel head whose content digest differs from the one rollout last made
/// events for, make the move's events now, then deliver everything pending.
///
/// A channel rollout has never seen (no cursor) gets events from "nothing" to its head:
/// every group on it is told what to run, once (its event id is stable).
pub async fn reconcile(
    config: &Config,
    store: &dyn Store,
    heads: &[ChannelHead],
) -> anyhow::Result<RolloutOutcome> {
    let Some(inv) = inventory::load(config)? else {
        return Ok(RolloutOutcome::default());
    };
    let mut moves = Vec::new();
    for h in heads {
        if inv.groups_on(&h.image, &h.channel).next().is_none() {
            continue;
        }
        let cursor = outbox::get_channel_cursor(store, &h.image, &h.channel).await?;
        if cursor
            .as_ref()
            .is_some_and(|c| c.manifest.content_digest == h.manifest.content_digest)
        {
            continue;
        }
        tracing::info!(
            image = %h.image,
            channel = %h.channel,
            version = %h.manifest.version,
            "channel moved without rollout events (interrupted run?); making them now"
        );
        moves.push(ChannelMove {
            image: h.image.clone(),
            channel: h.channel.clone(),
            reason: h.reason,
            note: h.note.clone(),
            old: cursor.map(|c| c.manifest),
            new: h.manifest.clone(),
        });
    }
    if moves.is_empty() {
        // Nothing was lost; delivering what is pending is the caller's business.
        return Ok(RolloutOutcome::default());
    }
    on_channel_moves(config, store, &moves).await
}

async fn record_move(
    store: &dyn Store,
    inv: &Inventory,
    mv: &ChannelMove,
    host: &str,
    out: &mut RolloutOutcome,
) -> anyhow::Result<()> {
    if let Err(why) = event::check_move(mv) {
        match &why {
            NoEvent::Unverified => tracing::warn!(
                image = %mv.image, version = %mv.new.version,
                "not triggering a rollout: version {} did not pass verification", mv.new.version
            ),
            _ => {
                tracing::debug!(image = %mv.image, channel = %mv.channel, "no rollout event: {why:?}")
            }
        }
        out.skipped.push(SkippedMove {
            image: mv.image.clone(),
            channel: mv.channel.clone(),
            version: mv.new.version.clone(),
            why,
        });
        return Ok(());
    }
    let created = now();
    for group in inv.groups_on(&mv.image, &mv.channel) {
        let (rec, written) = write_event(store, mv, group, &created, host).await?;
        outbox::advance_group_cursor(
            store,
            &GroupCursor {
                group: group.name.clone(),
                event_id: rec.id.clone(),
                created: rec.cloudevent.time.clone(),
            },
        )
        .await?;
        let ev = &rec.cloudevent.data;
        if written {
            tracing::info!(
                group = %group.name, event = %rec.id,
                "rollout event: {} {} -> {} ({})",
                ev.image,
                ev.old.as_ref().map(|o| o.version.as_str()).unwrap_or("nothing"),
                ev.new.version,
                ev.reason.as_str()
            );
        }
        out.events.push(EventSummary {
            id: rec.id.clone(),
            group: group.name.clone(),
            image: ev.image.clone(),
            channel: ev.channel.clone(),
            reason: ev.reason,
            old_version: ev.old.as_ref().map(|o| o.version.clone()),
            new_version: ev.new.version.clone(),
            written,
        });
    }
    outbox::put_channel_cursor(
        store,
        &ChannelCursor {
            image: mv.image.clone(),
            channel: mv.channel.clone(),
            updated: created,
            manifest: mv.new.clone(),
        },
    )
    .await?;
    Ok(())
}

/// Write the group's event for `mv` unless the outbox has it. Returns the stored record
/// and whether this call wrote it.
async fn write_event(
    store: &dyn Store,
    mv: &ChannelMove,
    group: &Group,
    created: &str,
    host: &str,
) -> anyhow::Result<(OutboxRecord, bool)> {
    let old = mv.old.as_ref().map(|m| m.content_digest.as_str());
    for generation in 0..1000 {
        let id = event::event_id(
            &group.name,
            &mv.image,
            old,
            &mv.new.content_digest,
            generation,
        );
        let ev = event::build(mv, group, id.clone(), created.to_string());
        let rec = OutboxRecord {
            schema: OUTBOX_SCHEMA,
            id: id.clone(),
            sinks: group.sinks.clone(),
            cloudevent: CloudEvent::wrap(ev, host),
        };
        if outbox::put_event(store, &rec).await? {
            return Ok((rec, true));
        }
        let existing = outbox::get_event(store, &id)
            .await?
            .with_context(|| format!("outbox event {id} vanished while being read"))?;
        // The same move again (a replay after a crash, or a reconcile) is the same event.
        // Only when the group has since moved on to another event is this a new trigger
        // for an old pair of digests (A→B, B→A, A→B), which gets the next generation.
        let cursor = outbox::get_group_cursor(store, &group.name).await?;
        let moved_on = cursor.is_some_and(|c| {
            c.event_id != id && c.created.as_str() > existing.cloudevent.time.as_str()
        });
        if !moved_on {
            return Ok((existing, false));
        }
    }
    anyhow::bail!(
        "group {}: the channel returned to the same move more than 1000 times",
        group.name
    )
}

/// Deliver every event still owed to a sink, oldest first. An event that a newer event
/// of the same group has replaced is marked superseded instead: a provisioner must never
/// be sent back to a version its channel has already left.
pub async fn deliver_pending(
    config: &Config,
    store: &dyn Store,
    opts: DeliverOptions,
) -> anyhow::Result<RolloutOutcome> {
    let events = outbox::list_events(store).await?;
    let mut cursors: BTreeMap<String, Option<GroupCursor>> = BTreeMap::new();
    let mut out = RolloutOutcome::default();
    for rec in &events {
        let group = rec.cloudevent.subject.clone();
        if !cursors.contains_key(&group) {
            cursors.insert(
                group.clone(),
                outbox::get_group_cursor(store, &group).await?,
            );
        }
        let superseded_by = cursors[&group]
            .as_ref()
            .filter(|c| c.event_id != rec.id && c.created > rec.cloudevent.time)
            .map(|c| c.event_id.clone());
        for sink in &rec.sinks {
            let mut st = outbox::get_state(store, &rec.id, sink).await?;
            match st.status {
                DeliveryStatus::Delivered | DeliveryStatus::Superseded => continue,
                DeliveryStatus::Failed if !opts.include_failed => continue,
                _ => {}
            }
            let attempts_before = st.attempts;
            if let Some(newer) = &superseded_by {
                st.status = DeliveryStatus::Superseded;
                st.superseded_by = Some(newer.clone());
            } else if let Some(def) = config.def.sinks.get(sink) {
                let r = sinks::deliver(config, sink, def, rec).await;
                st.attempts += r.attempts;
                st.last_attempt = Some(now());
                apply(&mut st, r.outcome);
            } else {
                st.status = DeliveryStatus::Pending;
                st.last_error = Some(format!(
                    "sink '{sink}' is no longer configured in goldsmith.toml"
                ));
            }
            outbox::put_state(store, &st).await?;
            match st.status {
                DeliveryStatus::Delivered => {
                    tracing::info!(event = %rec.id, %group, %sink, "delivered")
                }
                DeliveryStatus::Superseded => {
                    tracing::info!(event = %rec.id, %group, %sink, "superseded by a newer event")
                }
                _ => tracing::warn!(
                    event = %rec.id, %group, %sink,
                    "not delivered ({}): {}",
                    st.status.as_str(),
                    st.last_error.as_deref().unwrap_or("")
                ),
            }
            out.deliveries.push(DeliveryReport {
                event_id: rec.id.clone(),
                group: group.clone(),
                sink: sink.clone(),
                status: st.status,
                attempts: st.attempts - attempts_before,
                http_status: st.http_status,
                error: st.last_error.clone(),
            });
        }
    }
    Ok(out)
}

fn apply(st: &mut DeliveryState, o: Outcome) {
    match o {
        Outcome::Delivered { http_status } => {
            st.status = DeliveryStatus::Delivered;
            st.delivered_at = st.last_attempt.clone();
            st.http_status = http_status;
            st.last_error = None;
            st.response_body = None;
        }
        Outcome::Pending { error, http_status } => {
            st.status = DeliveryStatus::Pending;
            st.http_status = http_status;
            st.last_error = Some(error);
        }
        Outcome::Failed {
            error,
            http_status,
            body,
        } => {
            st.status = DeliveryStatus::Failed;
            st.http_status = http_status;
            st.last_error = Some(error);
            st.response_body = body;
        }
    }
}

/// An event with the delivery state at each of its sinks.
#[derive(Debug, Clone, Serialize)]
pub struct EventStatus {
    pub id: String,
    pub created: String,
    pub group: String,
    pub image: String,
    pub channel: String,
    pub reason: EventReason,
    pub old_version: Option<String>,
    pub new_version: String,
    pub deliveries: Vec<DeliveryState>,
}

impl EventStatus {
    /// Some sink is still owed this event.
    pub fn is_open(&self) -> bool {
        self.deliveries.iter().any(|d| d.status.is_open())
    }
}

/// Every event in the outbox with its delivery states, oldest first.
pub async fn history(store: &dyn Store) -> anyhow::Result<Vec<EventStatus>> {
    let mut out = Vec::new();
    for rec in outbox::list_events(store).await? {
        let mut deliveries = Vec::new();
        for sink in &rec.sinks {
            deliveries.push(outbox::get_state(store, &rec.id, sink).await?);
        }
        let ev = rec.cloudevent.data;
        out.push(EventStatus {
            id: rec.id,
            created: ev.created,
            group: ev.group,
            image: ev.image,
            channel: ev.channel,
            reason: ev.reason,
            old_version: ev.old.map(|o| o.version),
            new_version: ev.new.version,
            deliveries,
        });
    }
    Ok(out)
}

/// Events some sink is still owed.
pub async fn pending(store: &dyn Store) -> anyhow::Result<Vec<EventStatus>> {
    Ok(history(store)
        .await?
        .into_iter()
        .filter(EventStatus::is_open)
        .collect())
}

/// Event times: UTC with a fixed number of fraction digits, so the strings sort in
/// time order.
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The CloudEvents `source` host: this machine's name.
fn source_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn test_pause() {
    if let Some(ms) = std::env::var(TEST_PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tracing::warn!("{TEST_PAUSE_ENV} is set: pausing {ms} ms before delivery (tests only)");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
