//! Where events go: a signed webhook, a Terraform variables file, or a command.

pub mod command;
pub mod terraform;
pub mod webhook;

use crate::config::{Config, SinkDef};

use super::outbox::OutboxRecord;

/// How one delivery to one sink ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sink has the event.
    Delivered { http_status: Option<u16> },
    /// Not delivered; worth trying again later (receiver down, 5xx, timeout).
    Pending {
        error: String,
        http_status: Option<u16>,
    },
    /// Rejected for good (a 4xx, a command's failure exit); kept with the answer.
    Failed {
        error: String,
        http_status: Option<u16>,
        body: Option<String>,
    },
}

/// The outcome plus how many attempts it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkResult {
    pub attempts: u32,
    pub outcome: Outcome,
}

/// Deliver one event to one sink.
pub async fn deliver(config: &Config, sink: &str, def: &SinkDef, rec: &OutboxRecord) -> SinkResult {
    if let Some(w) = &def.webhook {
        webhook::deliver(w, rec).await
    } else if let Some(t) = &def.terraform {
        terraform::deliver(config, t, rec)
    } else if let Some(c) = &def.command {
        command::deliver(c, rec).await
    } else {
        // Config::validate rejects a sink without a kind; keep the event if one slips by.
        SinkResult {
            attempts: 0,
            outcome: Outcome::Pending {
                error: format!("sink '{sink}' has no kind (webhook, terraform or command)"),
                http_status: None,
            },
        }
    }
}

/// The first `max` bytes of a response or stderr, cut at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}
