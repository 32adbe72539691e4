//! The formats stage: every output format, produced from the one raw disk (or, for the
//! rootfs tar and OCI, from the tree and the cached layer diffs), concurrently.

pub mod oci;
pub mod ova;
pub mod qcow2;
pub mod rootfs_tar;
pub mod vhd;
pub mod vmdk;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::artifact::{Artifact, FileRecord};
use crate::fsutil;
use crate::recipe::{Format, Image};
use crate::rootfs::cache::LayerCache;

/// What the formats need.
pub struct FormatCtx<'a> {
    pub image: &'a Image,
    pub cache: &'a LayerCache,
    /// (layer name, layer digest), base first.
    pub layers: Vec<(String, String)>,
    pub sde: i64,
    pub timeout: Duration,
    pub content_digest: &'a str,
    pub revision: Option<String>,
    pub source: Option<String>,
}

/// `qemu-img convert` of the raw disk into `out` (format `fmt`, extra `args`). The
/// formats qemu-img writes share this; what each passes is documented in its own file.
pub(crate) async fn qemu_img_convert(
    raw: &Path,
    out: &Path,
    fmt: &str,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    crate::exec::Cmd::new("qemu-img")
        .timeout(timeout)
        .args(["convert", "-q", "-f", "raw", "-O", fmt])
        .args(args)
        .arg(raw)
        .arg(out)
        .run()
        .await
        .map_err(|e| anyhow::anyhow!("{fmt} conversion failed: {e}"))?;
    Ok(())
}

/// The file name of a format's artifact inside the build directory.
pub fn file_name(image: &str, f: Format) -> String {
    match f {
        Format::Raw => format!("{image}.raw"),
        Format::Qcow2 => format!("{image}.qcow2"),
        Format::Vmdk => format!("{image}.vmdk"),
        Format::Ova => format!("{image}.ova"),
        Format::Vhd => format!("{image}.vhd"),
        Format::Tar => format!("{image}.rootfs.tar.zst"),
        Format::Oci => format!("{image}.oci"),
    }
}

/// Produce `formats` into `dir`. `raw` is the assembled disk (already at its final name
/// when raw is one of the formats); `tree` is the image's tree (needed for the rootfs
/// tar only).
pub async fn produce(
    ctx: &FormatCtx<'_>,
    formats: &[Format],
    dir: &Path,
    raw: &Path,
    tree: Option<&Path>,
) -> anyhow::Result<Vec<Artifact>> {
    let name = &ctx.image.name;
    let path = |f: Format| dir.join(file_name(name, f));
    let want = |f: Format| formats.contains(&f);
    let qcow2 = async {
        if want(Format::Qcow2) {
            let c = ctx.image.def.disk.qcow2_compression.get_ref();
            qcow2::convert(raw, &path(Format::Qcow2), c, ctx.timeout).await?;
        }
        anyhow::Ok(())
    };
    let vmdk_ova = async {
        if want(Format::Vmdk) || want(Format::Ova) {
            let vmdk_path = if want(Format::Vmdk) {
                path(Format::Vmdk)
            } else {
                dir.join(format!(".{name}-ova.vmdk"))
            };
            vmdk::convert(raw, &vmdk_path, ctx.timeout).await?;
            if want(Format::Ova) {
                let spec_name = name.clone();
                let vm = ctx.image.def.vm.clone();
                let disk_bytes = ctx.image.disk_mib << 20;
                let sde = ctx.sde;
                let out = path(Format::Ova);
                let v = vmdk_path.clone();
                tokio::task::spawn_blocking(move || {
                    ova::write(
                        &ova::OvfSpec {
                            name: &spec_name,
                            cpus: vm.cpus,
                            memory_mib: vm.memory_mib,
                            disk_bytes,
                            sde,
                        },
                        &v,
                        &out,
                    )
                })
                .await??;
                if !want(Format::Vmdk) {
                    std::fs::remove_file(&vmdk_path)?;
                }
            }
        }
        anyhow::Ok(())
    };
    let vhd = async {
        if want(Format::Vhd) {
            vhd::convert(raw, &path(Format::Vhd), ctx.timeout).await?;
        }
        anyhow::Ok(())
    };
    let tar = async {
        if want(Format::Tar) {
            let t = tree
                .context("the rootfs tar needs the image's tree")?
                .to_owned();
            let out = path(Format::Tar);
            let sde = ctx.sde;
            tokio::task::spawn_blocking(move || rootfs_tar::write(&t, &out, sde))
                .await?
                .context("rootfs tar")?;
        }
        anyhow::Ok(())
    };
    let oci = async {
        if want(Format::Oci) {
            let cache = ctx.cache.clone();
            let spec_layers = ctx.layers.clone();
            let image = ctx.image.name.clone();
            let description = ctx.image.def.description.clone();
            let exclude = ctx.image.def.oci.exclude.clone();
            let cmd = ctx.image.def.oci.cmd.clone();
            let sde = ctx.sde;
            let version = format!("{image}-{}", crate::plan::short(ctx.content_digest));
            let revision = ctx.revision.clone();
            let source = ctx.source.clone();
            let out = path(Format::Oci);
            let layout = tokio::task::spawn_blocking(move || {
                oci::write_layout(
                    &cache,
                    &oci::OciSpec {
                        image: &image,
                        description: &description,
                        layers: spec_layers,
                        exclude: &exclude,
                        cmd: &cmd,
                        sde,
                        version,
                        revision,
                        source,
                    },
                    &out,
                )
            })
            .await?
            .context("OCI layout")?;
            return anyhow::Ok(Some(layout));
        }
        anyhow::Ok(None)
    };
    // The raw disk is final already: hashed while the conversions read it too.
    let raw_digest = async {
        if !want(Format::Raw) {
            return anyhow::Ok(None);
        }
        let r = raw.to_owned();
        Ok(Some(
            tokio::task::spawn_blocking(move || fsutil::sha256_file(&r)).await??,
        ))
    };
    let (a, b, c, d, e, raw_digest) = tokio::join!(qcow2, vmdk_ova, vhd, tar, oci, raw_digest);
    a?;
    b?;
    c?;
    d?;
    let oci_layout = e?;
    let mut raw_digest = raw_digest?;
    let mut artifacts = Vec::new();
    for f in formats {
        let p = path(*f);
        let rel = file_name(name, *f);
        let a = if *f == Format::Oci {
            let layout = oci_layout.clone().context("OCI layout missing")?;
            dir_artifact(*f, dir, &p, Some(layout.manifest_digest)).await?
        } else {
            let pp = p.clone();
            let known = if *f == Format::Raw {
                raw_digest.take()
            } else {
                None
            };
            let (size, sha256) = match known {
                Some(d) => d,
                None => tokio::task::spawn_blocking(move || fsutil::sha256_file(&pp)).await??,
            };
            Artifact {
                format: *f,
                path: rel,
                size,
                sha256,
                files: Vec::new(),
                oci_manifest_digest: None,
            }
        };
        artifacts.push(a);
    }
    Ok(artifacts)
}

/// A directory artifact: every file with its digest; the directory's own digest is over
/// the sorted list.
async fn dir_artifact(
    f: Format,
    build_dir: &Path,
    dir: &Path,
    manifest_digest: Option<String>,
) -> anyhow::Result<Artifact> {
    let bd = build_dir.to_owned();
    let d = dir.to_owned();
    let files = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<FileRecord>> {
        let mut files = Vec::new();
        for e in walkdir::WalkDir::new(&d).sort_by_file_name() {
            let e = e?;
            if !e.file_type().is_file() {
                continue;
            }
            let (size, sha256) = fsutil::sha256_file(e.path())?;
            files.push(FileRecord {
                path: e.path().strip_prefix(&bd)?.to_string_lossy().into_owned(),
                size,
                sha256,
            });
        }
        Ok(files)
    })
    .await??;
    let listing: String = files
        .iter()
        .map(|f| format!("{} {} {}\n", f.sha256, f.size, f.path))
        .collect();
    Ok(Artifact {
        format: f,
        path: dir
            .strip_prefix(build_dir)
            .unwrap_or(dir)
            .to_string_lossy()
            .into_owned(),
        size: files.iter().map(|f| f.size).sum(),
        sha256: crate::plan::digest::sha256_hex(listing.as_bytes()),
        files,
        oci_manifest_digest: manifest_digest,
    })
}

/// All artifact paths of a record exist (a cheap "is this build still complete?").
pub fn artifacts_present(dir: &Path, artifacts: &[Artifact]) -> bool {
    artifacts.iter().all(|a| {
        let p: PathBuf = dir.join(&a.path);
        if a.files.is_empty() {
            p.metadata().map(|m| m.len() == a.size).unwrap_or(false)
        } else {
            a.files.iter().all(|f| dir.join(&f.path).is_file())
        }
    })
}
