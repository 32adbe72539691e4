//! The nightly report: what one `goldsmith nightly` run did, per image and stage. The
//! nightly writes it as `report.json`; every other report form is rendered from it.

use serde::{Deserialize, Serialize};

use crate::artifact::{LayerChange, PackageChange};
use crate::recipe::Format;

/// Report format version.
pub const REPORT_SCHEMA: u32 = 1;

/// One nightly run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NightlyReport {
    pub schema: u32,
    /// `YYYYmmddTHHMMSSZ` of the start; also the report folder's name.
    pub run_id: String,
    pub started: String,
    pub finished: String,
    pub duration_secs: f64,
    pub goldsmith_version: String,
    pub host: String,
    /// 0 all succeeded (built or unchanged), 1 something failed, 130/143 cancelled.
    pub exit_code: i32,
    /// Set when a signal ended the run.
    pub cancelled: Option<String>,
    pub images: Vec<ImageReport>,
}

/// What happened to one image.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Built, verified and published as a new version.
    Published,
    /// Nothing changed: no new version, no rollout.
    Unchanged,
    /// A stage failed.
    Failed,
    /// Not attempted because something it depends on failed (or the run was cancelled).
    Skipped,
}

impl ImageStatus {
    pub fn is_success(self) -> bool {
        matches!(self, ImageStatus::Published | ImageStatus::Unchanged)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Published => "published",
            ImageStatus::Unchanged => "unchanged",
            ImageStatus::Failed => "failed",
            ImageStatus::Skipped => "skipped",
        }
    }
}

/// The stages of an image in a nightly, in order.
pub const STAGES: [&str; 4] = ["build", "verify", "publish", "rollout"];

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Passed,
    Failed,
    Skipped,
}

/// One stage of one image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageReport {
    /// One of [`STAGES`].
    pub stage: String,
    pub status: StageStatus,
    pub secs: f64,
    /// One line: what happened, or why it failed / was skipped.
    pub detail: String,
    /// Attempts made (a failed boot is retried once).
    pub attempts: u32,
}

/// One image in one nightly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageReport {
    pub image: String,
    pub status: ImageStatus,
    /// The stage that failed (or made the image skip), if any.
    pub failed_stage: Option<String>,
    /// The error, in full (already redacted).
    pub error: Option<String>,
    /// The version published, or the channel's current version when unchanged.
    pub version: Option<String>,
    pub channel: String,
    pub content_digest: Option<String>,
    /// Always one entry per stage of [`STAGES`], in order.
    pub stages: Vec<StageReport>,
    /// Layers rebuilt in this run (names).
    pub layers_rebuilt: Vec<String>,
    /// Why layers were rebuilt (our inputs, or packages that moved upstream).
    pub changes: Vec<LayerChange>,
    /// Packages changed since the previous published version of the image.
    pub package_changes: Vec<PackageChange>,
    pub artifacts: Vec<ArtifactSize>,
    /// Seconds from VM start to ready in the verify boot.
    pub boot_secs: Option<f64>,
    /// The console log of a failed boot, copied into the report folder (relative path).
    pub console_log: Option<String>,
    /// Rollout events made for this image's channel move.
    pub rollout_events: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArtifactSize {
    pub format: Format,
    pub size: u64,
}

impl NightlyReport {
    pub fn failed(&self) -> impl Iterator<Item = &ImageReport> {
        self.images.iter().filter(|i| !i.status.is_success())
    }
}
