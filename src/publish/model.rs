//! What a published version is, and the channel moves that the rollout stage consumes.

use serde::{Deserialize, Serialize};

use crate::artifact::{FileRecord, LayerChange, LayerRecord, SourceInfo, StageTiming, VmSpec};
use crate::plan::ResolvedPackage;
use crate::recipe::Format;

/// Manifest format version.
pub const MANIFEST_SCHEMA: u32 = 1;

/// `<image>/<version>/manifest.json`: everything about one immutable version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub schema: u32,
    pub image: String,
    pub version: String,
    pub content_digest: String,
    /// When the version was published (RFC 3339).
    pub published: String,
    pub goldsmith_version: String,
    pub source: SourceInfo,
    pub layers: Vec<LayerRecord>,
    pub artifacts: Vec<PublishedArtifact>,
    /// Every file of the version (artifacts, SBOM, verify record, console log), relative
    /// to the version folder, with its sha256. `fetch` checks each one.
    pub files: Vec<FileRecord>,
    pub build: BuildSummary,
    pub verify: VerifySummary,
    pub packages: Vec<ResolvedPackage>,
    /// What the targets beyond the store received.
    #[serde(default)]
    pub targets: TargetRecords,
    /// Why layers were rebuilt for this version.
    #[serde(default)]
    pub changes: Vec<LayerChange>,
}

/// One artifact of a version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishedArtifact {
    pub format: Format,
    /// Relative to the version folder.
    pub path: String,
    /// Where a consumer downloads it (store URL).
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildSummary {
    pub build_id: String,
    pub finished: String,
    pub source_date_epoch: i64,
    pub disk_mib: u64,
    pub vm: VmSpec,
    pub stages: Vec<StageTiming>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifySummary {
    pub passed: bool,
    pub accelerator: String,
    pub boot_secs: Option<f64>,
    pub checks_passed: usize,
    pub checks_total: usize,
}

/// Records of the publish targets beyond the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetRecords {
    #[serde(default)]
    pub oci: Vec<OciPushed>,
    #[serde(default)]
    pub ami: Vec<AmiRecord>,
}

/// An OCI push: `registry/repository@digest` and the tags set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OciPushed {
    pub target: String,
    /// `host:port/repo@sha256:…`
    pub reference: String,
    pub digest: String,
    pub tags: Vec<String>,
}

/// An AMI in one region.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AmiRecord {
    pub target: String,
    pub region: String,
    pub image_id: String,
    pub snapshot_id: String,
}

/// Why a channel moved.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MoveReason {
    /// A new version was published to the channel (the nightly).
    Publish,
    /// An existing version was promoted to the channel.
    Promote,
    /// The version the channel pointed at was revoked; it fell back (a rollback).
    Revoke,
}

/// A channel pointer moved from one version to another: the rollout stage turns each
/// move into trigger events for the host groups on that image and channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelMove {
    pub image: String,
    pub channel: String,
    pub reason: MoveReason,
    /// Free text (the revoke reason, or "nightly").
    pub note: String,
    /// The version the channel pointed at before (None for a new channel).
    pub old: Option<Manifest>,
    /// The version it points at now.
    pub new: Manifest,
}
