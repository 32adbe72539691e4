//! The Terraform sink: `<dir>/<group>.auto.tfvars.json`, written atomically, so the next
//! `terraform apply` replaces exactly the hosts of that group.
//!
//! Variables (declare the ones your configuration uses; keys a version lacks, such as
//! `image_id` without an AMI, are left out so the variable keeps its default):
//!
//! | variable | value |
//! |---|---|
//! | `image_id` | AMI id in the first region published |
//! | `image_ids` | map: region -> AMI id |
//! | `image_version`, `image_digest` | the new version and its content digest |
//! | `<format>_url`, `<format>_sha256` | each disk/file artifact (`qcow2_url`, …) |
//! | `oci_reference` | `registry/repo@sha256:…` of the first registry |
//! | `rollout_event_id`, `rollout_reason` | the event, for tracing |

use serde_json::{Map, Value};

use super::{Outcome, SinkResult};
use crate::config::{Config, TerraformSink};
use crate::fsutil;
use crate::rollout::event::RolloutEvent;
use crate::rollout::outbox::OutboxRecord;

/// The variables for one event.
pub fn tfvars(ev: &RolloutEvent) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(first) = ev.artifacts.ami.first() {
        m.insert("image_id".into(), first.image_id.clone().into());
        let ids: Map<String, Value> = ev
            .artifacts
            .ami
            .iter()
            .map(|a| (a.region.clone(), Value::from(a.image_id.clone())))
            .collect();
        m.insert("image_ids".into(), ids.into());
    }
    m.insert("image_version".into(), ev.new.version.clone().into());
    m.insert("image_digest".into(), ev.new.content_digest.clone().into());
    for f in &ev.artifacts.files {
        m.entry(format!("{}_url", f.format))
            .or_insert_with(|| f.url.clone().into());
        m.entry(format!("{}_sha256", f.format))
            .or_insert_with(|| f.sha256.clone().into());
    }
    if let Some(o) = ev.artifacts.oci.first() {
        m.insert("oci_reference".into(), o.reference.clone().into());
    }
    m.insert("rollout_event_id".into(), ev.id.clone().into());
    m.insert("rollout_reason".into(), ev.reason.as_str().into());
    m
}

pub fn deliver(config: &Config, cfg: &TerraformSink, rec: &OutboxRecord) -> SinkResult {
    let ev = &rec.cloudevent.data;
    let path = config
        .path(&cfg.dir)
        .join(format!("{}.auto.tfvars.json", ev.group));
    let outcome = match fsutil::atomic_write_json(&path, &Value::Object(tfvars(ev))) {
        Ok(()) => Outcome::Delivered { http_status: None },
        Err(e) => Outcome::Pending {
            error: format!("cannot write {}: {e}", path.display()),
            http_status: None,
        },
    };
    SinkResult {
        attempts: 1,
        outcome,
    }
}
