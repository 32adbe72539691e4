//! Publish targets beyond the store (OCI registry, AWS AMI).
//!
//! The publish flow runs every target of an image after the version's files are in the
//! store and BEFORE the manifest and the commit marker: a target that fails leaves the
//! version uncommitted and the channel unmoved. What each target did is recorded in
//! `Manifest.targets`, under the signature.

use std::path::Path;
use std::sync::Arc;

use super::model::{AmiRecord, OciPushed, TargetRecords};
use crate::artifact::BuildRecord;
use crate::config::{Config, TargetDef};

/// What a target is told about the publish it is part of.
#[derive(Debug, Clone)]
pub struct TargetContext<'a> {
    /// The target's name (`[targets.NAME]`).
    pub name: &'a str,
    pub def: &'a TargetDef,
    pub image: &'a str,
    /// The channel this publish moves (a registry may tag it).
    pub channel: &'a str,
    /// Where the version's files are in the store (`Store::describe` + folder).
    pub store_location: &'a str,
}

/// What a target produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetOutcome {
    Oci(OciPushed),
    /// One record per region.
    Ami(Vec<AmiRecord>),
}

impl TargetOutcome {
    /// Add this outcome to the manifest's records.
    pub fn record(self, into: &mut TargetRecords) {
        match self {
            TargetOutcome::Oci(o) => into.oci.push(o),
            TargetOutcome::Ami(a) => into.ami.extend(a),
        }
    }
}

/// A publish target. Implementations retry transient failures themselves (backon) and
/// name the target and what is missing when credentials are absent.
#[async_trait::async_trait]
pub trait PublishTarget: Send + Sync {
    /// Push the build in `build_dir` (described by `build`) as `version`.
    async fn publish(
        &self,
        ctx: &TargetContext<'_>,
        build_dir: &Path,
        build: &BuildRecord,
        version: &str,
    ) -> anyhow::Result<TargetOutcome>;
}

/// A configured target, ready to run.
#[derive(Clone)]
pub struct NamedTarget {
    pub name: String,
    pub def: TargetDef,
    pub target: Arc<dyn PublishTarget>,
}

impl std::fmt::Debug for NamedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NamedTarget({})", self.name)
    }
}

/// The targets an image lists in `publish.targets`, built from `[targets.NAME]`.
pub fn from_config(config: &Config, names: &[String]) -> anyhow::Result<Vec<NamedTarget>> {
    let mut out = Vec::new();
    for name in names {
        let def = config.def.targets.get(name).ok_or_else(|| {
            anyhow::anyhow!("publish target '{name}' is not defined in goldsmith.toml")
        })?;
        out.push(NamedTarget {
            name: name.clone(),
            def: def.clone(),
            target: build_target(name, def)?,
        });
    }
    Ok(out)
}

/// One target from its definition. The registry and AMI implementations plug in here.
fn build_target(name: &str, def: &TargetDef) -> anyhow::Result<Arc<dyn PublishTarget>> {
    let kind = if def.registry.is_some() {
        "registry"
    } else {
        "ami"
    };
    anyhow::bail!("publish target '{name}': {kind} targets are not available in this build yet")
}
