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
use crate::recipe::Format;

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

/// The targets of an image's `publish.targets`.
pub fn for_image(
    config: &Config,
    image: &crate::recipe::Image,
) -> anyhow::Result<Vec<NamedTarget>> {
    let names: Vec<String> = image
        .def
        .publish
        .targets
        .iter()
        .map(|t| t.get_ref().clone())
        .collect();
    from_config(config, &names)
}

/// One target from its definition.
fn build_target(_name: &str, def: &TargetDef) -> anyhow::Result<Arc<dyn PublishTarget>> {
    if def.registry.is_some() {
        Ok(Arc::new(RegistryTarget))
    } else {
        Ok(Arc::new(AmiTarget))
    }
}

/// The artifact a target needs, or an error saying how to get it.
fn needed<'a>(
    ctx: &TargetContext<'_>,
    build: &'a BuildRecord,
    f: Format,
    kind: &str,
) -> anyhow::Result<&'a crate::artifact::Artifact> {
    build.artifact(f).ok_or_else(|| {
        anyhow::anyhow!(
            "publish target '{}' ({kind}) needs the {f} format, which image {} does not build: add \"{f}\" to its formats",
            ctx.name,
            ctx.image
        )
    })
}

/// Pushes the build's OCI layout, tagged with the version and the channel.
struct RegistryTarget;

#[async_trait::async_trait]
impl PublishTarget for RegistryTarget {
    async fn publish(
        &self,
        ctx: &TargetContext<'_>,
        build_dir: &Path,
        build: &BuildRecord,
        version: &str,
    ) -> anyhow::Result<TargetOutcome> {
        let cfg = ctx.def.registry.as_ref().expect("registry target");
        let oci = needed(ctx, build, Format::Oci, "OCI registry")?;
        let creds = super::registry::credentials_from_env(ctx.name, cfg)?;
        let tags = vec![version.to_string(), ctx.channel.to_string()];
        let out = super::registry::push_layout(
            &super::registry::PushRequest {
                target: ctx.name,
                config: cfg,
                image: ctx.image,
                layout: &build_dir.join(&oci.path),
                tags: &tags,
            },
            creds.as_ref(),
            &super::retry::RetryPolicy::default(),
        )
        .await?;
        Ok(TargetOutcome::Oci(out.pushed))
    }
}

/// Uploads the raw disk as an EBS snapshot and registers it as an AMI.
struct AmiTarget;

#[async_trait::async_trait]
impl PublishTarget for AmiTarget {
    async fn publish(
        &self,
        ctx: &TargetContext<'_>,
        build_dir: &Path,
        build: &BuildRecord,
        version: &str,
    ) -> anyhow::Result<TargetOutcome> {
        let cfg = ctx.def.ami.as_ref().expect("ami target");
        let raw = needed(ctx, build, Format::Raw, "AWS AMI")?;
        let records = super::ami::publish_ami(
            &super::ami::AmiRequest {
                target: ctx.name,
                config: cfg,
                raw_disk: &build_dir.join(&raw.path),
                image: ctx.image,
                version,
                content_digest: &format!("sha256:{}", build.content_digest),
            },
            &super::ami::AmiOptions::default(),
        )
        .await?;
        Ok(TargetOutcome::Ami(records))
    }
}
