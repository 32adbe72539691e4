//! The command sink: run a program with the event JSON (the CloudEvent's `data`) on
//! stdin, through the process wrapper (own process group, timeout, redacted errors).
//!
//! Exit 0 delivers. Exit 75 (`EX_TEMPFAIL` from sysexits.h), a timeout or a program that
//! cannot start leave the event pending for the next run; any other exit status is a
//! permanent failure, kept with the program's stderr tail.
//! The environment carries `GOLDSMITH_EVENT_ID`, `GOLDSMITH_HOST_GROUP`,
//! `GOLDSMITH_IMAGE` and `GOLDSMITH_IMAGE_VERSION`.

use std::time::Duration;

use super::{truncate, Outcome, SinkResult};
use crate::config::CommandSink;
use crate::exec::{Cmd, ExecError};
use crate::rollout::outbox::OutboxRecord;

/// "Temporary failure; try again later" (sysexits.h).
pub const EX_TEMPFAIL: i32 = 75;

pub async fn deliver(cfg: &CommandSink, rec: &OutboxRecord) -> SinkResult {
    let ev = &rec.cloudevent.data;
    let Some((program, args)) = cfg.argv.split_first() else {
        return SinkResult {
            attempts: 0,
            outcome: Outcome::Pending {
                error: "command sink has an empty argv".into(),
                http_status: None,
            },
        };
    };
    let json = serde_json::to_vec_pretty(ev).expect("events serialise");
    let res = Cmd::new(program)
        .args(args)
        .stdin_bytes(json)
        .env("GOLDSMITH_EVENT_ID", &ev.id)
        .env("GOLDSMITH_HOST_GROUP", &ev.group)
        .env("GOLDSMITH_IMAGE", &ev.image)
        .env("GOLDSMITH_IMAGE_VERSION", &ev.new.version)
        .timeout(Duration::from_secs(cfg.timeout_secs))
        .label(format!("rollout {}", ev.group))
        .stdout_null()
        .run()
        .await;
    let outcome = match res {
        Ok(_) => Outcome::Delivered { http_status: None },
        Err(e @ ExecError::Failed { code: Some(c), .. }) if c != EX_TEMPFAIL => Outcome::Failed {
            error: e.to_string(),
            http_status: None,
            body: Some(truncate(e.stderr_tail(), 2048)),
        },
        Err(e) => Outcome::Pending {
            error: e.to_string(),
            http_status: None,
        },
    };
    SinkResult {
        attempts: 1,
        outcome,
    }
}
