//! The records stages hand on through the build directory.
//!
//! `build` writes `<build_dir>/<image>/<build_id>/build.json` and then points
//! `<build_dir>/<image>/latest.json` at it; `verify` writes `verify.json` and the console
//! logs beside it; `publish` and the nightly report read both. Every record is written
//! atomically, so a reader never sees half of one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::ResolvedPackage;
use crate::recipe::Format;

/// Record format version.
pub const RECORD_SCHEMA: u32 = 1;

/// What one build of one image produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildRecord {
    pub schema: u32,
    pub image: String,
    pub build_id: String,
    /// Digest of what the image contains: the layers' output digests plus how the disk is
    /// assembled. Equal content digests mean "nothing changed" to publish and rollout.
    pub content_digest: String,
    pub source_date_epoch: i64,
    /// Wall-clock time the build finished (RFC 3339).
    pub finished: String,
    pub goldsmith_version: String,
    pub source: SourceInfo,
    /// Base first.
    pub layers: Vec<LayerRecord>,
    pub artifacts: Vec<Artifact>,
    /// The image's installed packages (from its dpkg database).
    pub packages: Vec<ResolvedPackage>,
    pub disk_mib: u64,
    pub vm: VmSpec,
    pub kernel_cmdline: Vec<String>,
    /// Seconds per stage, in the order they ran.
    pub stages: Vec<StageTiming>,
    /// Why layers were rebuilt (our inputs changed, or packages moved upstream).
    #[serde(default)]
    pub changes: Vec<LayerChange>,
}

/// The git state of the recipes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceInfo {
    pub git_commit: Option<String>,
    pub dirty: bool,
    /// `git remote get-url origin`, when there is one.
    pub repository: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub name: String,
    /// Input digest (the plan's).
    pub digest: String,
    /// sha256 of the layer's content diff (its OCI layer tar).
    pub output_digest: String,
    /// Size of the uncompressed diff in bytes.
    pub diff_size: u64,
    /// Built in this run (false: restored from the cache).
    pub rebuilt: bool,
}

/// Why a layer was rebuilt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerChange {
    pub layer: String,
    /// Our inputs that changed (files, scripts, definition keys).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Packages whose resolved version moved.
    #[serde(default)]
    pub packages: Vec<PackageChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackageChange {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// One output file (or directory, for the OCI layout).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub format: Format,
    /// Relative to the build directory.
    pub path: String,
    /// Bytes (for a directory: the sum of its files).
    pub size: u64,
    /// sha256 of the file; for a directory, of its sorted file list with their digests.
    pub sha256: String,
    /// For directory artifacts: every file, relative to the build directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRecord>,
    /// For OCI: the image manifest digest (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_manifest_digest: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmSpec {
    pub memory_mib: u32,
    pub cpus: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageTiming {
    pub stage: String,
    pub secs: f64,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyRecord {
    pub schema: u32,
    pub image: String,
    pub build_id: String,
    /// The content digest of the build that was verified.
    pub content_digest: String,
    /// True only when every boot passed every check.
    pub passed: bool,
    pub started: String,
    pub boots: Vec<BootRecord>,
}

/// One boot of one artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BootRecord {
    pub format: Format,
    /// Relative to the build directory.
    pub artifact: String,
    pub artifact_sha256: String,
    pub passed: bool,
    /// `kvm` or `tcg`.
    pub accelerator: String,
    /// Why this accelerator (e.g. "KVM probe failed: …; using TCG").
    pub accelerator_reason: String,
    /// Seconds from QEMU start until the guest was ready (agent answered, system running).
    pub boot_secs: Option<f64>,
    pub duration_secs: f64,
    pub checks: Vec<CheckResult>,
    /// Console log file, relative to the build directory.
    pub console_log: String,
    /// Attempts made (a failed boot is retried once by the nightly).
    #[serde(default = "one")]
    pub attempts: u32,
    /// The reason the boot failed, in one line.
    pub failure: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    pub name: String,
    /// `builtin`, `layer NAME` or `image NAME`.
    pub origin: String,
    pub passed: bool,
    /// Not run: the guest never became ready (then `passed` is false), or the check does
    /// not apply to the format, e.g. a service check on an OCI image (`passed` is true).
    #[serde(default)]
    pub skipped: bool,
    pub duration_ms: u64,
    pub detail: String,
}

/// Where an image's builds live.
pub fn image_build_root(build_dir: &Path, image: &str) -> PathBuf {
    build_dir.join(image)
}

/// The pointer to an image's latest successful build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatestPointer {
    pub build_id: String,
}

/// The directory of an image's latest build, if there is one.
pub fn latest_build_dir(build_dir: &Path, image: &str) -> Option<PathBuf> {
    let root = image_build_root(build_dir, image);
    let p: LatestPointer = crate::fsutil::read_json(&root.join("latest.json")).ok()?;
    let d = root.join(p.build_id);
    d.join("build.json").is_file().then_some(d)
}

impl BuildRecord {
    pub fn load(dir: &Path) -> anyhow::Result<BuildRecord> {
        crate::fsutil::read_json(&dir.join("build.json"))
    }

    /// The artifact of a format, if it was built.
    pub fn artifact(&self, f: Format) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.format == f)
    }
}

impl VerifyRecord {
    pub fn load(dir: &Path) -> anyhow::Result<VerifyRecord> {
        crate::fsutil::read_json(&dir.join("verify.json"))
    }
}
