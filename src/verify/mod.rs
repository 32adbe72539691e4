//! The verify stage: boot the exact artifacts a build produced under QEMU and run the
//! image's smoke checks in them; OCI layouts are verified structurally.
//!
//! It takes the build stage's [`BuildRecord`] and the image's checks and returns a
//! [`VerifyRecord`], which it also writes as `verify.json` (with one
//! `console-<format>.log` per boot) into the build directory.
//!
//! - `accel`: KVM or TCG, probed once per host
//! - `qemu`: the QEMU process, its temp directory and command line
//! - `qmp`, `agent`: small JSON clients for QEMU's monitor and the guest agent
//! - `console`: following the serial console for login prompts, panics, emergency shells
//! - `boot`: one boot: readiness, then the checks
//! - `checks`: the declared checks
//! - `oci`: structural verification of OCI layouts
//! - `disk`: format detection, OVA unpacking, hashing
//! - `interactive`: `goldsmith boot`

pub mod accel;
pub mod agent;
pub mod boot;
pub mod checks;
pub mod console;
pub mod disk;
pub mod interactive;
pub mod oci;
pub mod qemu;
pub mod qmp;

use std::path::{Path, PathBuf};

pub use accel::{Accel, AccelChoice, AccelKind};

use crate::artifact::{BootRecord, BuildRecord, VerifyRecord, VmSpec, RECORD_SCHEMA};
use crate::config::Config;
use crate::recipe::image::VerifyDef;
use crate::recipe::{Format, SourcedCheck};

/// Disk formats `--all-formats` boots (an OVA carries the VMDK, so it is booted only
/// when no plain VMDK was built).
pub const BOOT_FORMATS: [Format; 4] = [Format::Raw, Format::Qcow2, Format::Vmdk, Format::Vhd];

/// Why verification could not be carried out at all. (A guest that fails its checks is
/// not an error: it is a [`VerifyRecord`] with `passed: false`.)
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Setup(String),
    #[error("QEMU: {0}")]
    Qemu(String),
    #[error("KVM was requested (verify.accelerator = \"kvm\") but {0}")]
    KvmUnavailable(String),
    #[error("artifact: {0}")]
    Artifact(String),
    #[error("cannot write the verify record: {0}")]
    Write(String),
}

/// Host-side settings: which QEMU, firmware and accelerator.
#[derive(Debug, Clone)]
pub struct HostSettings {
    pub qemu: PathBuf,
    pub accelerator: AccelChoice,
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    pub kvm_device: PathBuf,
    /// Where the KVM probe result is cached.
    pub cache_dir: Option<PathBuf>,
}

/// The Debian `ovmf` package's 4 MiB firmware.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl HostSettings {
    /// From `[verify]` in goldsmith.toml.
    pub fn from_config(cfg: &Config) -> HostSettings {
        let v = &cfg.def.verify;
        HostSettings {
            qemu: "qemu-system-x86_64".into(),
            // The config loader already rejected anything else.
            accelerator: v.accelerator.get_ref().parse().unwrap_or(AccelChoice::Auto),
            ovmf_code: v
                .ovmf_code
                .as_deref()
                .map_or(OVMF_CODE.into(), |p| cfg.path(p)),
            ovmf_vars: v
                .ovmf_vars
                .as_deref()
                .map_or(OVMF_VARS.into(), |p| cfg.path(p)),
            kvm_device: "/dev/kvm".into(),
            cache_dir: Some(cfg.cache_dir()),
        }
    }

    fn probe_env(&self) -> accel::ProbeEnv {
        accel::ProbeEnv {
            qemu: self.qemu.clone(),
            kvm_device: self.kvm_device.clone(),
            ovmf_code: self.ovmf_code.clone(),
            ovmf_vars: self.ovmf_vars.clone(),
            cache_dir: self.cache_dir.clone(),
        }
    }

    fn check_firmware(&self) -> Result<(), VerifyError> {
        for p in [&self.ovmf_code, &self.ovmf_vars] {
            if !p.is_file() {
                return Err(VerifyError::Setup(format!(
                    "UEFI firmware {} not found (install the `ovmf` package or set verify.ovmf_code/ovmf_vars)",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    /// Decide the accelerator (probing KVM if `auto`).
    pub async fn accelerator(&self) -> Result<Accel, VerifyError> {
        accel::choose(self.accelerator, &self.probe_env()).await
    }
}

/// What the image asks of a verification.
#[derive(Debug, Clone, Copy)]
pub struct ImageChecks<'a> {
    /// Layer checks first, then the image's own.
    pub checks: &'a [SourcedCheck],
    pub verify: &'a VerifyDef,
}

impl<'a> From<&'a crate::recipe::Image> for ImageChecks<'a> {
    fn from(image: &'a crate::recipe::Image) -> Self {
        ImageChecks {
            checks: &image.checks,
            verify: &image.def.verify,
        }
    }
}

/// Verify a build: boot each of `formats` (OCI: structural check) and write
/// `verify.json` and the console logs into `build_dir`.
pub async fn run(
    build_dir: &Path,
    build: &BuildRecord,
    image: ImageChecks<'_>,
    formats: &[Format],
    host: &HostSettings,
) -> Result<VerifyRecord, VerifyError> {
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut targets = Vec::new();
    for f in formats {
        let a = build.artifact(*f).ok_or_else(|| {
            VerifyError::Artifact(format!(
                "build {} of {} has no {f} artifact (it has: {})",
                build.build_id,
                build.image,
                build
                    .artifacts
                    .iter()
                    .map(|a| a.format.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        targets.push(a.clone());
    }
    let accel = lazy_accel(host, formats).await?;
    let mut boots = Vec::new();
    for a in &targets {
        let path = build_dir.join(&a.path);
        if !path.exists() {
            return Err(VerifyError::Artifact(format!(
                "{} is missing",
                path.display()
            )));
        }
        let rec = if a.format == Format::Oci {
            oci::verify(
                &path,
                &a.path,
                &a.sha256,
                a.oci_manifest_digest.as_deref(),
                image.checks,
            )
            .await
        } else {
            // Boot exactly what was built: a file that changed since is not verified.
            let actual = disk::sha256(&path).await?;
            if actual != a.sha256 {
                mismatch(a.format, &a.path, &actual, &a.sha256)
            } else {
                boot_one(
                    host,
                    accel.as_ref().expect("disk formats decide the accelerator"),
                    &path,
                    a.format,
                    a.path.clone(),
                    actual,
                    build.vm,
                    image,
                    build_dir,
                    &format!("{}-{}", build.image, build.build_id),
                )
                .await?
            }
        };
        log_boot(&rec);
        boots.push(rec);
    }
    let record = VerifyRecord {
        schema: RECORD_SCHEMA,
        image: build.image.clone(),
        build_id: build.build_id.clone(),
        content_digest: build.content_digest.clone(),
        passed: !boots.is_empty() && boots.iter().all(|b| b.passed),
        started,
        boots,
    };
    crate::fsutil::atomic_write_json(&build_dir.join("verify.json"), &record)
        .map_err(|e| VerifyError::Write(e.to_string()))?;
    Ok(record)
}

/// Verify one artifact file or OCI directory that is not (necessarily) part of a build;
/// the record and console log go into `out_dir`.
#[allow(clippy::too_many_arguments)]
pub async fn run_artifact(
    artifact: &Path,
    format: Option<Format>,
    image_name: &str,
    vm: VmSpec,
    image: ImageChecks<'_>,
    out_dir: &Path,
    host: &HostSettings,
) -> Result<VerifyRecord, VerifyError> {
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let detected = disk::detect(artifact)?;
    let f = match format {
        None => detected,
        // An OVA is a tar and a VHD may look raw; otherwise the bytes must agree.
        Some(f) if f == detected || (f == Format::Raw && detected == Format::Vhd) => f,
        Some(f) => {
            return Err(VerifyError::Artifact(format!(
                "{} looks like {detected}, not {f}",
                artifact.display()
            )))
        }
    };
    let shown = artifact.display().to_string();
    let sha = disk::sha256(artifact).await?;
    let rec = if f == Format::Oci {
        oci::verify(artifact, &shown, &sha, None, image.checks).await
    } else {
        let accel = host.accelerator().await?;
        host.check_firmware()?;
        boot_one(
            host,
            &accel,
            artifact,
            f,
            shown,
            sha.clone(),
            vm,
            image,
            out_dir,
            image_name,
        )
        .await?
    };
    log_boot(&rec);
    let record = VerifyRecord {
        schema: RECORD_SCHEMA,
        image: image_name.to_string(),
        build_id: out_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        content_digest: format!("sha256:{sha}"),
        passed: rec.passed,
        started,
        boots: vec![rec],
    };
    crate::fsutil::atomic_write_json(&out_dir.join("verify.json"), &record)
        .map_err(|e| VerifyError::Write(e.to_string()))?;
    Ok(record)
}

async fn lazy_accel(host: &HostSettings, formats: &[Format]) -> Result<Option<Accel>, VerifyError> {
    if formats.iter().any(|f| f.is_disk()) {
        host.check_firmware()?;
        let a = host.accelerator().await?;
        tracing::info!(target: "goldsmith::verify", accelerator = a.kind.as_str(), "{}", a.reason);
        Ok(Some(a))
    } else {
        Ok(None)
    }
}

fn mismatch(format: Format, rel: &str, actual: &str, recorded: &str) -> BootRecord {
    let why = format!("{rel} changed since the build: sha256 {actual}, build.json says {recorded}");
    BootRecord {
        format,
        artifact: rel.to_string(),
        artifact_sha256: actual.to_string(),
        passed: false,
        accelerator: "none".into(),
        accelerator_reason: "not booted".into(),
        boot_secs: None,
        duration_secs: 0.0,
        checks: vec![crate::artifact::CheckResult {
            name: "artifact matches build.json".into(),
            origin: "builtin".into(),
            passed: false,
            skipped: false,
            duration_ms: 0,
            detail: why.clone(),
        }],
        console_log: String::new(),
        attempts: 1,
        failure: Some(why),
    }
}

#[allow(clippy::too_many_arguments)]
async fn boot_one(
    host: &HostSettings,
    accel: &Accel,
    path: &Path,
    format: Format,
    shown: String,
    sha: String,
    vm: VmSpec,
    image: ImageChecks<'_>,
    out_dir: &Path,
    name: &str,
) -> Result<BootRecord, VerifyError> {
    let prepared = disk::prepare(path, format)?;
    let console_rel = format!("console-{format}.log");
    tracing::info!(target: "goldsmith::verify", "booting {shown} ({format}, {})", accel.kind.as_str());
    Ok(boot::boot_and_check(
        host,
        accel,
        boot::BootInput {
            format,
            disk: prepared.disk.clone(),
            artifact: shown,
            artifact_sha256: sha,
            vm,
            checks: image.checks,
            verify: image.verify,
            console_dest: out_dir.join(&console_rel),
            console_rel,
            name: format!("goldsmith-{name}-{format}"),
        },
    )
    .await)
}

fn log_boot(rec: &BootRecord) {
    match &rec.failure {
        None => tracing::info!(target: "goldsmith::verify", format = %rec.format, "passed"),
        Some(f) => tracing::warn!(target: "goldsmith::verify", format = %rec.format, "failed: {f}"),
    }
}

/// A task handle that aborts the task when dropped, so no watcher outlives its VM.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A per-run temp directory (removed when dropped). Unix socket paths are limited to
/// 108 bytes, so a deep TMPDIR falls back to /tmp.
pub(crate) fn run_temp_dir(kind: &str) -> Result<tempfile::TempDir, VerifyError> {
    let mut base = std::env::temp_dir();
    if base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    tempfile::Builder::new()
        .prefix(&format!("goldsmith-{kind}-"))
        .tempdir_in(&base)
        .map_err(|e| {
            VerifyError::Setup(format!(
                "cannot create a temp directory in {}: {e}",
                base.display()
            ))
        })
}
