//! `build` for one image: layers (rootfs stage) -> disk -> formats -> build.json.
//!
//! Work happens in a temp folder inside the image's build root that is renamed to its
//! final name only when everything succeeded: a failed or cancelled build leaves nothing
//! that looks like a build.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::artifact::{
    self, BuildRecord, LatestPointer, SourceInfo, StageTiming, VmSpec, RECORD_SCHEMA,
};
use crate::config::Config;
use crate::exec::{self, Cmd};
use crate::plan::{digest::sha256_hex, Resolutions};
use crate::recipe::{Format, Image, Recipes};
use crate::rootfs::{self, cache::LayerCache, Layers};
use crate::{disk, format, fsutil};

/// Builds kept per image in the build directory (older ones are pruned).
const KEEP_BUILDS: usize = 3;

/// What building needs.
pub struct BuildCtx<'a> {
    pub recipes: &'a Recipes,
    pub cache: &'a LayerCache,
    pub resolutions: &'a Resolutions,
    /// Layers that failed earlier in this run (a nightly shares it between images).
    pub failed_layers: Option<&'a rootfs::FailedLayers>,
    /// The layer cache shared by CI workers.
    pub remote: Option<&'a rootfs::remote::RemoteCache>,
}

impl BuildCtx<'_> {
    fn config(&self) -> &Config {
        &self.recipes.config
    }
}

/// The result of building one image.
#[derive(Debug, Clone, Serialize)]
pub struct BuildOutcome {
    pub dir: PathBuf,
    /// Nothing changed since the latest build: it was reused as is.
    pub up_to_date: bool,
    pub record: BuildRecord,
    /// The layers as this run saw them (for an up-to-date build the record is the
    /// earlier build's; this says what happened now).
    pub layers: Vec<crate::artifact::LayerRecord>,
}

/// Resolve the build-time secrets the image's layers declare.
pub fn layer_secrets(recipes: &Recipes, image: &Image) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for rl in &image.layers {
        let layer = &recipes.layers[&rl.name];
        for s in &layer.def.secrets {
            let value = match (&s.env, &s.file) {
                (Some(var), _) => std::env::var(var).map(String::into_bytes).map_err(|_| {
                    anyhow::anyhow!(
                        "layer {}: secret '{}' needs environment variable {var}, which is not set",
                        layer.name,
                        s.name
                    )
                })?,
                (None, Some(file)) => {
                    let p = recipes.config.path(file);
                    std::fs::read(&p).with_context(|| {
                        format!(
                            "layer {}: secret '{}': cannot read {}",
                            layer.name,
                            s.name,
                            p.display()
                        )
                    })?
                }
                (None, None) => continue,
            };
            // The post-build scan must be able to tell the secret from ordinary bytes.
            if value.trim_ascii().len() < crate::leakscan::MIN_SCAN_LEN {
                anyhow::bail!(
                    "layer {}: secret '{}' is shorter than {} bytes; build secrets must be \
                     long enough for the post-build scan to find them",
                    layer.name,
                    s.name,
                    crate::leakscan::MIN_SCAN_LEN
                );
            }
            exec::register_secret(&String::from_utf8_lossy(value.trim_ascii()));
            out.push((s.name.clone(), value));
        }
    }
    Ok(out)
}

/// The content digest: the layers' outputs and everything that shapes the artifacts.
pub fn content_digest(image: &Image, layers: &Layers, sde: i64) -> String {
    let v = serde_json::json!({
        "assembly": 1,
        "image": image.name,
        "layers": layers.layers.iter().map(|l| &l.record.output_digest).collect::<Vec<_>>(),
        "disk_mib": image.disk_mib,
        "esp_mib": image.def.disk.esp_mib,
        "cmdline": image.cmdline,
        "formats": image.formats,
        "qcow2_compression": image.def.disk.qcow2_compression.get_ref(),
        "oci_exclude": image.def.oci.exclude,
        "oci_cmd": image.def.oci.cmd,
        "vm": [image.def.vm.memory_mib, image.def.vm.cpus],
        "source_date_epoch": sde,
    });
    sha256_hex(v.to_string().as_bytes())
}

/// Build one image (or reuse its latest build when nothing changed).
pub async fn build_image(
    ctx: &BuildCtx<'_>,
    name: &str,
    only_formats: &[Format],
    force: bool,
) -> anyhow::Result<BuildOutcome> {
    let config = ctx.config();
    let image = ctx.recipes.image(name)?;
    let sde = config.source_date_epoch();
    let timeout = Duration::from_secs(config.def.build.stage_timeout_secs);
    let mut stages = Vec::new();
    let secrets = layer_secrets(ctx.recipes, image)?;
    // Everything secret known by now: the layers' build secrets and the credentials
    // registered while loading (a shared cache's keys, ...).
    let needles = crate::leakscan::Needles::for_build(&secrets);

    let t = Instant::now();
    let rctx = rootfs::RootfsCtx {
        recipes: ctx.recipes,
        cache: ctx.cache,
        resolutions: ctx.resolutions,
        sde,
        step_timeout: timeout,
        secrets: &secrets,
        failed_layers: ctx.failed_layers,
        remote: ctx.remote,
        memory_max: config.memory_max_bytes(),
        needles: needles.as_ref(),
    };
    let mut layers = rootfs::ensure_layers(&rctx, name).await?;
    stages.push(timing("layers", t));
    for l in &layers.layers {
        ctx.cache.record_history(name, &l.record.name, &l.summary)?;
    }
    let changes: Vec<crate::artifact::LayerChange> = layers
        .layers
        .iter()
        .filter_map(|l| l.changes.clone())
        .collect();

    let digest = content_digest(image, &layers, sde);
    let formats: Vec<Format> = if only_formats.is_empty() {
        image.formats.clone()
    } else {
        only_formats.to_vec()
    };
    let root = artifact::image_build_root(&config.build_dir(), name);
    if !force {
        if let Some(dir) = artifact::latest_build_dir(&config.build_dir(), name) {
            if let Ok(rec) = BuildRecord::load(&dir) {
                let has_all = formats.iter().all(|f| rec.artifact(*f).is_some());
                if rec.content_digest == digest
                    && has_all
                    && format::artifacts_present(&dir, &rec.artifacts)
                {
                    tracing::info!(
                        image = name,
                        "up to date: content {} unchanged since build {}",
                        crate::plan::short(&digest),
                        rec.build_id
                    );
                    return Ok(BuildOutcome {
                        dir,
                        up_to_date: true,
                        record: rec,
                        layers: layers.layers.iter().map(|l| l.record.clone()).collect(),
                    });
                }
            }
        }
    }

    std::fs::create_dir_all(&root)?;
    let staging = tempfile::Builder::new()
        .prefix(".tmp-build-")
        .tempdir_in(&root)?;
    let t = Instant::now();
    let tree = rootfs::materialize_all(ctx.cache, &mut layers).await?;
    stages.push(timing("tree", t));
    if let Some(n) = &needles {
        // B9: the whole tree, cached layers included (one may have been built before a
        // secret it holds was declared), before any disk or archive is made of it.
        let t = Instant::now();
        let (path, n2) = (tree.path.clone(), n.clone());
        let leaks =
            tokio::task::spawn_blocking(move || crate::leakscan::scan_tree(&path, &n2)).await??;
        crate::leakscan::check(format!("image {name}"), leaks)?;
        stages.push(timing("secret-scan", t));
    }

    let raw = staging.path().join(format::file_name(name, Format::Raw));
    // Container-only images (tar, OCI) need no disk, nor a kernel to boot it.
    let needs_disk = formats.iter().any(|f| f.is_disk());
    if needs_disk {
        let t = Instant::now();
        disk::assemble(
            &disk::DiskSpec {
                image: name,
                disk_mib: image.disk_mib,
                esp_mib: image.def.disk.esp_mib,
                cmdline: &image.cmdline,
                content_digest: &digest,
                sde,
                timeout,
            },
            &tree.path,
            &raw,
        )
        .await?;
        stages.push(timing("disk", t));
    }

    let t = Instant::now();
    let source = source_info(&config.root).await;
    let fctx = format::FormatCtx {
        image,
        cache: ctx.cache,
        layers: layers
            .layers
            .iter()
            .map(|l| (l.record.name.clone(), l.record.digest.clone()))
            .collect(),
        sde,
        timeout,
        content_digest: &digest,
        revision: source.git_commit.clone(),
        source: source.repository.clone(),
    };
    // Only the rootfs tar reads the tree after the disk: otherwise it is parked for the
    // next build while the formats are made.
    let park = |tree: rootfs::WorkTree| {
        let cache = ctx.cache.clone();
        tokio::task::spawn_blocking(move || rootfs::park::park(&cache, tree))
    };
    let (tree, parked) = if formats.contains(&Format::Tar) {
        (Some(tree), None)
    } else {
        (None, Some(park(tree)))
    };
    let artifacts = format::produce(
        &fctx,
        &formats,
        staging.path(),
        &raw,
        tree.as_ref().map(|t| t.path.as_path()),
    )
    .await;
    if let Some(p) = parked.or_else(|| tree.map(park)) {
        // A tree that cannot be parked costs the next build an extraction, nothing more.
        if let Err(e) = p.await? {
            tracing::warn!(
                image = name,
                "the image tree was not kept for the next build: {e:#}"
            );
        }
    }
    let artifacts = artifacts?;
    if needs_disk && !formats.contains(&Format::Raw) {
        std::fs::remove_file(&raw)?;
    }
    stages.push(timing("formats", t));

    let finished = chrono::Utc::now();
    let build_id = format!(
        "{}-{}",
        finished.format("%Y%m%dT%H%M%SZ"),
        crate::plan::short(&digest)
    );
    let record = BuildRecord {
        schema: RECORD_SCHEMA,
        image: name.to_string(),
        build_id: build_id.clone(),
        content_digest: digest,
        source_date_epoch: sde,
        finished: finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        goldsmith_version: crate::VERSION.to_string(),
        source,
        layers: layers.layers.iter().map(|l| l.record.clone()).collect(),
        artifacts,
        packages: layers.packages(),
        disk_mib: image.disk_mib,
        vm: VmSpec {
            memory_mib: image.def.vm.memory_mib,
            cpus: image.def.vm.cpus,
        },
        kernel_cmdline: image.cmdline.clone(),
        stages,
        changes,
    };
    if let Some(n) = &needles {
        let json = serde_json::to_vec(&record)?;
        if let Some(which) = n.find(&json) {
            crate::leakscan::check(
                format!("image {name}"),
                vec![crate::leakscan::Leak {
                    path: "build.json".into(),
                    place: "record",
                    secret: which.to_string(),
                }],
            )?;
        }
    }
    fsutil::atomic_write_json(&staging.path().join("build.json"), &record)?;
    let dir = root.join(&build_id);
    let tmp = staging.keep();
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving the build into {}", dir.display()))?;
    fsutil::atomic_write_json(&root.join("latest.json"), &LatestPointer { build_id })?;
    prune_builds(&root, &dir);
    Ok(BuildOutcome {
        dir,
        up_to_date: false,
        layers: record.layers.clone(),
        record,
    })
}

fn timing(stage: &str, t: Instant) -> StageTiming {
    StageTiming {
        stage: stage.into(),
        secs: (t.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    }
}

/// Keep the newest builds (and the current one); remove older ones and stale temp dirs.
fn prune_builds(root: &Path, keep: &Path) {
    let mut builds: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.join("build.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    builds.sort();
    let excess = builds.len().saturating_sub(KEEP_BUILDS);
    for b in builds.into_iter().take(excess) {
        if b != keep {
            let _ = std::fs::remove_dir_all(b);
        }
    }
}

/// The git commit of the project (and whether recipes or images have local changes).
pub async fn source_info(root: &Path) -> SourceInfo {
    let git = |args: &[&str]| {
        Cmd::new("git")
            .current_dir(root)
            .args(args)
            .timeout(Duration::from_secs(10))
            .run()
    };
    let commit = git(&["rev-parse", "HEAD"])
        .await
        .ok()
        .map(|o| o.stdout_str().trim().to_string());
    if commit.is_none() {
        return SourceInfo::default();
    }
    let dirty = git(&["status", "--porcelain", "--", "."])
        .await
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let repository = git(&["remote", "get-url", "origin"])
        .await
        .ok()
        .map(|o| strip_credentials(o.stdout_str().trim()))
        .filter(|s| !s.is_empty());
    SourceInfo {
        git_commit: commit,
        dirty,
        repository,
    }
}

/// `https://user:token@host/repo` -> `https://host/repo`: a remote URL may carry a token.
fn strip_credentials(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_lose_their_credentials() {
        assert_eq!(
            strip_credentials("https://u:t@example.com/r.git"),
            "https://example.com/r.git"
        );
        assert_eq!(
            strip_credentials("https://example.com/r.git"),
            "https://example.com/r.git"
        );
        assert_eq!(
            strip_credentials("git@example.com:r.git"),
            "git@example.com:r.git"
        );
    }
}
