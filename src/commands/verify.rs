//! `goldsmith verify` and `goldsmith boot`.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{say, Ctx, UsageError};
use crate::artifact::{self, BootRecord, BuildRecord, VerifyRecord, VmSpec};
use crate::cli::{BootArgs, VerifyArgs};
use crate::recipe::Format;
use crate::verify::{self, HostSettings, ImageChecks};

/// `goldsmith verify IMAGE`: exit 0 when every boot passed, 1 otherwise.
pub async fn verify(ctx: &Ctx, args: VerifyArgs) -> anyhow::Result<u8> {
    let recipes = ctx.recipes()?;
    let image = recipes.image(&args.image)?;
    let host = HostSettings::from_config(&ctx.config);
    let checks = ImageChecks::from(image);
    let (record, dir) = if let Some(path) = &args.artifact {
        if args.all_formats {
            return Err(UsageError(
                "--all-formats verifies a build; it cannot be combined with --artifact".into(),
            )
            .into());
        }
        let out = adhoc_dir(ctx, &args.image, path);
        let vm = VmSpec {
            memory_mib: image.def.vm.memory_mib,
            cpus: image.def.vm.cpus,
        };
        let rec = verify::run_artifact(path, args.format, &args.image, vm, checks, &out, &host)
            .await
            .with_context(|| format!("cannot verify {}", path.display()))?;
        (rec, out)
    } else {
        let dir = latest(ctx, &args.image)?;
        let build = BuildRecord::load(&dir)?;
        let formats = if args.all_formats {
            if args.format.is_some() {
                return Err(UsageError("give either --format or --all-formats".into()).into());
            }
            all_formats(&build)
        } else {
            vec![args.format.unwrap_or_else(|| default_format(&build))]
        };
        let rec = verify::run(&dir, &build, checks, &formats, &host)
            .await
            .with_context(|| format!("cannot verify {} build {}", build.image, build.build_id))?;
        (rec, dir)
    };
    if ctx.global.json {
        ctx.print_json(&record)?;
    } else {
        say(&summary(&record, &dir));
    }
    Ok(if record.passed { 0 } else { 1 })
}

/// `goldsmith boot IMAGE`: serial console on this terminal; QEMU's exit code decides.
pub async fn boot(ctx: &Ctx, args: BootArgs) -> anyhow::Result<u8> {
    let recipes = ctx.recipes()?;
    let image = recipes.image(&args.image)?;
    let host = HostSettings::from_config(&ctx.config);
    let (path, format, vm) = match &args.artifact {
        Some(p) => {
            let f = match args.format {
                Some(f) => f,
                None => verify::disk::detect(p)?,
            };
            let vm = VmSpec {
                memory_mib: image.def.vm.memory_mib,
                cpus: image.def.vm.cpus,
            };
            (p.clone(), f, vm)
        }
        None => {
            let dir = latest(ctx, &args.image)?;
            let build = BuildRecord::load(&dir)?;
            let f = args.format.unwrap_or_else(|| default_format(&build));
            let a = build.artifact(f).ok_or_else(|| {
                anyhow::anyhow!(
                    "build {} of {} has no {f} artifact",
                    build.build_id,
                    build.image
                )
            })?;
            (dir.join(&a.path), f, build.vm)
        }
    };
    if !format.is_disk() {
        return Err(UsageError(format!(
            "{format} artifacts do not boot; use raw, qcow2, vmdk, ova or vhd"
        ))
        .into());
    }
    let prepared = verify::disk::prepare(&path, format)?;
    let accel = host.accelerator().await?;
    eprintln!(
        "goldsmith: booting {} ({format}, {}; {}). The disk is attached with snapshot=on: nothing is written to it.",
        path.display(),
        accel.kind.as_str(),
        accel.reason
    );
    if let Some(p) = args.ssh {
        eprintln!("goldsmith: ssh -p {p} USER@127.0.0.1 reaches the guest's port 22.");
    }
    eprintln!("goldsmith: Ctrl-A X quits, Ctrl-A C toggles the QEMU monitor.");
    let code = verify::interactive::boot(
        &host,
        &accel,
        prepared.disk.clone(),
        vm,
        args.ssh,
        &format!("goldsmith-boot-{}", args.image),
    )
    .await?;
    Ok(if code == 0 { 0 } else { 1 })
}

fn latest(ctx: &Ctx, image: &str) -> anyhow::Result<PathBuf> {
    artifact::latest_build_dir(&ctx.config.build_dir(), image).ok_or_else(|| {
        anyhow::anyhow!(
            "no build of '{image}' in {} (run `goldsmith build {image}` first, or pass --artifact)",
            ctx.config.build_dir().display()
        )
    })
}

/// qcow2 (what the nightly boots), or the first disk format an image without qcow2 has.
fn default_format(build: &BuildRecord) -> Format {
    if build.artifact(Format::Qcow2).is_some() {
        return Format::Qcow2;
    }
    [
        Format::Raw,
        Format::Vmdk,
        Format::Vhd,
        Format::Ova,
        Format::Oci,
    ]
    .into_iter()
    .find(|f| build.artifact(*f).is_some())
    .unwrap_or(Format::Qcow2)
}

/// Every bootable format of the build (and OCI, checked structurally).
fn all_formats(build: &BuildRecord) -> Vec<Format> {
    let has = |f| build.artifact(f).is_some();
    let mut v: Vec<Format> = verify::BOOT_FORMATS
        .into_iter()
        .filter(|f| has(*f))
        .collect();
    if !has(Format::Vmdk) && has(Format::Ova) {
        v.push(Format::Ova);
    }
    if has(Format::Oci) {
        v.push(Format::Oci);
    }
    v
}

/// Where a `--artifact` verification keeps its record and console log.
fn adhoc_dir(ctx: &Ctx, image: &str, artifact: &std::path::Path) -> PathBuf {
    let stem = artifact
        .file_name()
        .map(|n| {
            n.to_string_lossy().replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_",
            )
        })
        .unwrap_or_else(|| "artifact".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    artifact::image_build_root(&ctx.config.build_dir(), image)
        .join("adhoc")
        .join(format!("{stamp}-{stem}-{}", std::process::id()))
}

/// The human summary.
pub fn summary(r: &VerifyRecord, dir: &std::path::Path) -> String {
    let mut s = format!(
        "verify {} (build {}): {}\n",
        r.image,
        r.build_id,
        if r.passed { "PASSED" } else { "FAILED" }
    );
    let mut accel_shown = None;
    for b in &r.boots {
        // The accelerator and why are the same for every boot of a run: say it once.
        let show = b.format != Format::Oci && accel_shown != Some(&b.accelerator_reason);
        if show {
            accel_shown = Some(&b.accelerator_reason);
        }
        s.push_str(&boot_summary(b, dir, show));
    }
    s.push_str(&format!("record: {}\n", dir.join("verify.json").display()));
    s
}

fn boot_summary(b: &BootRecord, dir: &std::path::Path, show_accel: bool) -> String {
    let ready = match b.boot_secs {
        Some(t) => format!("ready after {t:.1}s"),
        None if b.format == Format::Oci => "not booted (structural check)".into(),
        None => "never ready".into(),
    };
    let mut s = format!(
        "\n{}  {}  [{}]  {}  ({:.1}s in all)\n",
        b.format,
        if b.passed { "passed" } else { "FAILED" },
        b.artifact,
        ready,
        b.duration_secs,
    );
    if show_accel {
        s.push_str(&format!(
            "  accelerator: {} — {}\n",
            b.accelerator, b.accelerator_reason
        ));
    }
    for c in &b.checks {
        let mark = match (c.passed, c.skipped) {
            (true, true) => "skip",
            (false, true) => " -- ",
            (true, false) => " ok ",
            (false, false) => "FAIL",
        };
        let mut lines = c.detail.lines();
        let first = lines.next().unwrap_or("");
        s.push_str(&format!("  [{mark}] {} ({}): {first}\n", c.name, c.origin));
        if !c.passed && !c.skipped {
            for l in lines {
                s.push_str(&format!("         {l}\n"));
            }
        }
    }
    if let Some(f) = &b.failure {
        s.push_str(&format!("  failure: {f}\n"));
    }
    if !b.console_log.is_empty() {
        s.push_str(&format!(
            "  console log: {}\n",
            dir.join(&b.console_log).display()
        ));
    }
    s
}
