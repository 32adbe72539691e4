//! The durable outbox in the store.
//!
//! ```text
//! rollout/outbox/<event-id>.json          the event, written once (put_if_absent)
//! rollout/state/<event-id>/<sink>.json    delivery state of the event at one sink
//! rollout/groups/<group>.json             the newest event of a host group
//! rollout/channels/<image>/<channel>.json the channel head the events were made for
//! ```
//!
//! An event is written before any delivery is tried, so a crash at any point leaves it
//! either absent (the move is re-derived from the channel cursor) or pending.

use serde::{Deserialize, Serialize};

use super::event::CloudEvent;
use crate::publish::model::Manifest;
use crate::store::{Store, StoreError};

/// Outbox record format version.
pub const OUTBOX_SCHEMA: u32 = 1;

const PREFIX: &str = "rollout";

pub fn event_key(id: &str) -> String {
    format!("{PREFIX}/outbox/{id}.json")
}
pub fn state_key(id: &str, sink: &str) -> String {
    format!("{PREFIX}/state/{id}/{sink}.json")
}
fn group_key(group: &str) -> String {
    format!("{PREFIX}/groups/{group}.json")
}
fn channel_key(image: &str, channel: &str) -> String {
    format!("{PREFIX}/channels/{image}/{channel}.json")
}

/// `rollout/outbox/<id>.json`: one event, never changed after it is written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboxRecord {
    pub schema: u32,
    pub id: String,
    /// The sinks the event goes to (the group's, when the event was made).
    pub sinks: Vec<String>,
    /// The CloudEvent exactly as every delivery sends it.
    pub cloudevent: CloudEvent,
}

/// Where one event stands at one sink.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not delivered yet; the next run (or `rollout retry`) tries again.
    Pending,
    /// The sink accepted it.
    Delivered,
    /// The sink rejected it for good (e.g. HTTP 400); only `rollout retry` tries again.
    Failed,
    /// A newer event for the same group came first; this one is never sent.
    Superseded,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Superseded => "superseded",
        }
    }
    /// Still owed to the sink (pending, or failed for good but retryable by hand).
    pub fn is_open(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::Failed)
    }
}

/// `rollout/state/<id>/<sink>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryState {
    pub event_id: String,
    pub sink: String,
    pub status: DeliveryStatus,
    /// Delivery attempts so far (each HTTP request, command run or file write).
    pub attempts: u32,
    pub last_attempt: Option<String>,
    pub delivered_at: Option<String>,
    /// HTTP status of the last response (webhooks).
    pub http_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// What the receiver answered when it rejected the event for good (truncated).
    pub response_body: Option<String>,
    /// The newer event that replaced this one.
    pub superseded_by: Option<String>,
}

impl DeliveryState {
    pub fn new(event_id: &str, sink: &str) -> DeliveryState {
        DeliveryState {
            event_id: event_id.into(),
            sink: sink.into(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_attempt: None,
            delivered_at: None,
            http_status: None,
            last_error: None,
            response_body: None,
            superseded_by: None,
        }
    }
}

/// `rollout/groups/<group>.json`: the group's newest event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupCursor {
    pub group: String,
    pub event_id: String,
    /// The event's `created`.
    pub created: String,
}

/// `rollout/channels/<image>/<channel>.json`: the channel head events were last made for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelCursor {
    pub image: String,
    pub channel: String,
    pub updated: String,
    pub manifest: Manifest,
}

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key}: not a valid record: {message}")]
    Corrupt { key: String, message: String },
}

async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<T>, OutboxError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(o) => serde_json::from_slice(&o.bytes)
            .map(Some)
            .map_err(|e| OutboxError::Corrupt {
                key: key.into(),
                message: e.to_string(),
            }),
    }
}

fn to_bytes(v: &impl Serialize) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("records serialise");
    b.push(b'\n');
    b
}

/// Write an event if no event with its id exists. `Ok(false)`: it was already there.
pub async fn put_event(store: &dyn Store, rec: &OutboxRecord) -> Result<bool, OutboxError> {
    match store
        .put_if_absent(&event_key(&rec.id), to_bytes(rec))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_conflict() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub async fn get_event(store: &dyn Store, id: &str) -> Result<Option<OutboxRecord>, OutboxError> {
    get_json(store, &event_key(id)).await
}

/// Every event in the outbox, oldest first.
pub async fn list_events(store: &dyn Store) -> Result<Vec<OutboxRecord>, OutboxError> {
    let keys = store.list(&format!("{PREFIX}/outbox/")).await?;
    let mut out = Vec::new();
    for k in keys.iter().filter(|k| k.ends_with(".json")) {
        if let Some(r) = get_json::<OutboxRecord>(store, k).await? {
            out.push(r);
        }
    }
    out.sort_by(|a, b| {
        a.cloudevent
            .time
            .cmp(&b.cloudevent.time)
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(out)
}

/// The delivery state of an event at a sink (a fresh pending state when none is stored).
pub async fn get_state(
    store: &dyn Store,
    id: &str,
    sink: &str,
) -> Result<DeliveryState, OutboxError> {
    Ok(get_json(store, &state_key(id, sink))
        .await?
        .unwrap_or_else(|| DeliveryState::new(id, sink)))
}

pub async fn put_state(store: &dyn Store, st: &DeliveryState) -> Result<(), OutboxError> {
    store
        .put(&state_key(&st.event_id, &st.sink), to_bytes(st))
        .await?;
    Ok(())
}

pub async fn get_group_cursor(
    store: &dyn Store,
    group: &str,
) -> Result<Option<GroupCursor>, OutboxError> {
    get_json(store, &group_key(group)).await
}

/// Move the group's cursor to `c` unless it already points at a newer event.
pub async fn advance_group_cursor(store: &dyn Store, c: &GroupCursor) -> Result<(), OutboxError> {
    let key = group_key(&c.group);
    // Compare-and-swap so two runs that race cannot move the cursor backwards.
    loop {
        let current = store.get(&key).await?;
        let res = match &current {
            None => store.put_if_absent(&key, to_bytes(c)).await,
            Some(o) => {
                let cur: GroupCursor =
                    serde_json::from_slice(&o.bytes).map_err(|e| OutboxError::Corrupt {
                        key: key.clone(),
                        message: e.to_string(),
                    })?;
                if (cur.created.as_str(), cur.event_id.as_str())
                    >= (c.created.as_str(), c.event_id.as_str())
                {
                    return Ok(());
                }
                store.put_if_match(&key, to_bytes(c), &o.etag).await
            }
        };
        match res {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

pub async fn get_channel_cursor(
    store: &dyn Store,
    image: &str,
    channel: &str,
) -> Result<Option<ChannelCursor>, OutboxError> {
    get_json(store, &channel_key(image, channel)).await
}

pub async fn put_channel_cursor(store: &dyn Store, c: &ChannelCursor) -> Result<(), OutboxError> {
    store
        .put(&channel_key(&c.image, &c.channel), to_bytes(c))
        .await?;
    Ok(())
}
