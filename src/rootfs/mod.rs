//! The rootfs stage: bring every layer of an image into the layer cache (bootstrapping
//! the base, applying the others), reusing cached layers, and materialise the image's
//! tree when a later stage needs the files.

pub mod apply;
pub mod bootstrap;
pub mod cache;
pub mod clean;
pub mod dpkg;
pub mod evict;
pub mod layer_tar;
pub mod park;
pub mod remote;
pub mod sandbox;
pub mod tree;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::artifact::LayerRecord;
use crate::plan::{self, Resolutions};
use crate::recipe::Recipes;
use cache::{CacheError, LayerCache, LayerMeta};

/// Layers that failed in this run, so images sharing them skip instead of failing
/// the same way again (digest -> "image: error").
#[derive(Debug, Default)]
pub struct FailedLayers(
    std::sync::Mutex<std::collections::HashMap<String, (String, String, String)>>,
);

impl FailedLayers {
    fn record(&self, digest: &str, layer: &str, image: &str, error: &str) {
        self.0.lock().unwrap().insert(
            digest.to_string(),
            (layer.to_string(), image.to_string(), error.to_string()),
        );
    }

    fn get(&self, digest: &str) -> Option<DependencyFailed> {
        self.0
            .lock()
            .unwrap()
            .get(digest)
            .map(|(layer, image, reason)| DependencyFailed {
                layer: layer.clone(),
                image: image.clone(),
                reason: reason.clone(),
            })
    }
}

/// An image was not built because a layer it shares failed for another image.
#[derive(Debug, thiserror::Error)]
#[error("skipped: layer {layer} failed while building image {image}: {reason}")]
pub struct DependencyFailed {
    pub layer: String,
    pub image: String,
    pub reason: String,
}

/// What the rootfs stage needs.
pub struct RootfsCtx<'a> {
    pub recipes: &'a Recipes,
    pub cache: &'a LayerCache,
    pub resolutions: &'a Resolutions,
    pub sde: i64,
    pub step_timeout: Duration,
    /// Build-time secrets (name, value) for layer scripts.
    pub secrets: &'a [(String, Vec<u8>)],
    /// Shared by the images of one nightly.
    pub failed_layers: Option<&'a FailedLayers>,
    /// The layer cache CI workers share (`[cache.s3]`).
    pub remote: Option<&'a remote::RemoteCache>,
    /// RLIMIT_AS for every program a layer step runs (`build.memory_max`).
    pub memory_max: Option<u64>,
    /// Secrets a layer's output must not contain (`None`: no secret is known).
    pub needles: Option<&'a crate::leakscan::Needles>,
}

/// One layer as the build saw it.
#[derive(Debug, Clone)]
pub struct LayerOutcome {
    pub record: LayerRecord,
    pub meta: LayerMeta,
    /// What the layer's digest was made from (kept as the layer's history).
    pub summary: plan::InputSummary,
    /// Why it was rebuilt (None when it came from the cache).
    pub changes: Option<crate::artifact::LayerChange>,
}

/// The image's layers, all in the cache.
#[derive(Debug)]
pub struct Layers {
    pub image: String,
    pub layers: Vec<LayerOutcome>,
    /// The tree the layers were built on, with every entry a layer touched extracted
    /// again from that layer's cached diff: the same as a fresh extraction of all layers,
    /// without making one (None when every layer came from the cache).
    pub tree: Option<WorkTree>,
}

impl Layers {
    /// The installed packages of the finished image.
    pub fn packages(&self) -> Vec<plan::ResolvedPackage> {
        self.layers
            .last()
            .map(|l| l.meta.packages.clone())
            .unwrap_or_default()
    }
}

/// A working tree in a temp folder next to the cache (removed when dropped, unless it
/// was parked for a later build).
pub struct WorkTree {
    /// The temp folder, holding `tree` (empty once parked).
    dir: PathBuf,
    pub path: PathBuf,
    /// What the tree is an exact extraction of, once it is one (what parking needs).
    pub canonical: Option<park::Canonical>,
}

impl std::fmt::Debug for WorkTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkTree({})", self.path.display())
    }
}

impl WorkTree {
    fn new(cache: &LayerCache, image: &str) -> std::io::Result<WorkTree> {
        let work = cache.root().join("work");
        std::fs::create_dir_all(&work)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{image}-"))
            .tempdir_in(work)?
            .keep();
        let path = dir.join("tree");
        let t = WorkTree {
            dir,
            path,
            canonical: None,
        };
        std::fs::create_dir(&t.path)?;
        Ok(t)
    }

    /// The folder is no longer ours to remove.
    fn disarm(&mut self) {
        self.dir = PathBuf::new();
    }
}

impl Drop for WorkTree {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A tree holding the first layers of `pending` (which are then taken off it): a parked
/// tree sharing a prefix with them when there is one, else an empty one.
async fn claim_or_new(
    cache: &LayerCache,
    image: &str,
    pending: &mut Vec<String>,
) -> anyhow::Result<WorkTree> {
    if !pending.is_empty() {
        let (c, i, stack) = (cache.clone(), image.to_string(), pending.clone());
        if let Some((t, keep)) =
            tokio::task::spawn_blocking(move || park::claim(&c, &i, &stack)).await??
        {
            pending.drain(..keep);
            return Ok(t);
        }
    }
    Ok(WorkTree::new(cache, image)?)
}

/// Make sure every layer of `image` is cached, building what is missing.
pub async fn ensure_layers(ctx: &RootfsCtx<'_>, image: &str) -> anyhow::Result<Layers> {
    let img = ctx.recipes.image(image)?;
    let n = img.layers.len();
    let mut outcomes: Vec<LayerOutcome> = Vec::new();
    let mut tree: Option<WorkTree> = None;
    // Cached layers not yet extracted into `tree`.
    let mut pending: Vec<String> = Vec::new();
    for i in 0..n {
        // Re-plan each step: a layer just rebuilt to byte-identical output makes the
        // layers above it key off the earlier digest (early cut-off).
        let p = plan::make(
            ctx.recipes,
            &[image.to_string()],
            ctx.cache,
            ctx.resolutions,
        )?;
        let digest = p.images[0].layers[i].clone();
        let name = img.layers[i].name.clone();
        let lock = {
            let c = ctx.cache.clone();
            let d = digest.clone();
            tokio::task::spawn_blocking(move || c.lock(&d)).await??
        };
        let node = p.layer(&digest).expect("plan has the layer").clone();
        let mut held = None;
        for round in 0..2 {
            if plan::CacheView::has_layer(ctx.cache, &digest) {
                match ctx.cache.verify(&digest) {
                    Ok(meta) => {
                        tracing::info!(image, layer = %name, "layer {name} {}: cached", plan::short(&digest));
                        if let Some(r) = ctx.remote {
                            // Share what this worker has with the others.
                            r.upload(ctx.cache, &digest).await?;
                        }
                        outcomes.push(outcome(&name, &node, meta, false));
                        pending.push(digest.clone());
                        break;
                    }
                    Err(e @ CacheError::Corrupt { .. }) => {
                        tracing::warn!(image, layer = %name, "{e}");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            match ctx.remote {
                // Fetched while we waited for its builder: go round once more to use it.
                Some(r) if round == 0 => match r.claim_or_wait(ctx.cache, &digest).await? {
                    None => continue,
                    Some(h) => {
                        held = Some(h);
                        break;
                    }
                },
                _ => break,
            }
        }
        if pending.last() == Some(&digest) {
            continue;
        }
        if let Some(f) = ctx.failed_layers.and_then(|f| f.get(&digest)) {
            return Err(f.into());
        }
        tracing::info!(image, layer = %name, "layer {name} {}: building", plan::short(&digest));
        if tree.is_none() {
            tree = Some(claim_or_new(ctx.cache, image, &mut pending).await?);
        }
        let t = tree.as_ref().expect("just created");
        materialize(ctx.cache, &t.path, &mut pending).await?;
        let below = (i > 0)
            .then(|| {
                p.layer(&p.images[0].layers[i - 1])
                    .and_then(|n| n.resolved.clone())
            })
            .flatten();
        let built = build_layer(ctx, image, i, &node, below.as_deref(), &t.path).await;
        if let (Some(r), Ok(_)) = (ctx.remote, &built) {
            let up = r.upload(ctx.cache, &digest).await;
            if let Some(h) = held.take() {
                r.release(h).await;
            }
            up?;
        }
        if let (Some(r), Some(h)) = (ctx.remote, held.take()) {
            r.release(h).await;
        }
        let meta = match built {
            Ok(m) => m,
            Err(e) => {
                if let Some(f) = ctx.failed_layers {
                    f.record(
                        &digest,
                        &name,
                        image,
                        format!("{e:#}").lines().next().unwrap_or_default(),
                    );
                }
                return Err(e);
            }
        };
        // Make the tree what an extraction gives (see `materialize_all`): the base
        // layer's diff is the whole tree, so a fresh extraction replaces it (the old
        // tree is removed meanwhile); a later layer's diff is extracted again in place.
        if i == 0 {
            let old = tree.replace(WorkTree::new(ctx.cache, image)?);
            let gone = tokio::task::spawn_blocking(move || drop(old));
            let t = tree.as_ref().expect("just replaced");
            let mut base = vec![digest.clone()];
            let extracted = materialize(ctx.cache, &t.path, &mut base).await;
            gone.await?;
            extracted?;
        } else {
            pending.push(digest.clone());
        }
        drop(lock);
        outcomes.push(outcome(&name, &node, meta, true));
    }
    if let Some(t) = &tree {
        materialize(ctx.cache, &t.path, &mut pending).await?;
    }
    Ok(Layers {
        image: image.to_string(),
        layers: outcomes,
        tree,
    })
}

/// The image's full tree, as extracted from the cached layers.
///
/// Disks are always made from extracted trees, never from the tree a build just worked
/// on as the build left it: the two can differ (sparse files, sub-second mtimes, hard
/// links across layers, sockets), and a cold build must give the same bytes as a warm
/// one. The tree the layers were built on qualifies once every entry a layer touched
/// was extracted again from its diff (the diff holds every change: see `tree`), so it is
/// taken when there is one; otherwise a parked tree reverted to the shared layers (see
/// `park`) or a fresh tree gets the layers it lacks. The tree's snapshot is taken here,
/// for parking it after the build (unless no trees are kept).
pub async fn materialize_all(cache: &LayerCache, layers: &mut Layers) -> anyhow::Result<WorkTree> {
    let stack: Vec<String> = layers
        .layers
        .iter()
        .map(|l| l.record.digest.clone())
        .collect();
    let mut t = match layers.tree.take() {
        Some(t) => t,
        None => {
            for d in &stack {
                cache.verify(d)?;
            }
            let mut pending = stack.clone();
            let t = claim_or_new(cache, &layers.image, &mut pending).await?;
            materialize(cache, &t.path, &mut pending).await?;
            t
        }
    };
    // Only a tree that will be parked needs its snapshot (a walk of every entry).
    if cache.keep_trees > 0 {
        let p = t.path.clone();
        let snapshot = tokio::task::spawn_blocking(move || tree::snapshot(&p)).await??;
        t.canonical = Some(park::Canonical { stack, snapshot });
    }
    Ok(t)
}

fn outcome(name: &str, node: &plan::LayerNode, meta: LayerMeta, rebuilt: bool) -> LayerOutcome {
    LayerOutcome {
        summary: node.summary.clone(),
        changes: if rebuilt { node.changes.clone() } else { None },
        record: LayerRecord {
            name: name.to_string(),
            digest: node.digest.clone(),
            output_digest: meta.output_digest.clone(),
            diff_size: meta.tar_size,
            rebuilt,
        },
        meta,
    }
}

/// Extract the pending cached layers, in order, onto `tree`.
async fn materialize(
    cache: &LayerCache,
    tree: &Path,
    pending: &mut Vec<String>,
) -> anyhow::Result<()> {
    for digest in pending.drain(..) {
        let c = cache.clone();
        let t = tree.to_owned();
        let d = digest.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let r = c.open_diff(&d)?;
            layer_tar::extract(std::io::BufReader::with_capacity(1 << 20, r), &t)
                .with_context(|| format!("extracting cached layer {}", plan::short(&d)))?;
            Ok(())
        })
        .await??;
    }
    Ok(())
}

/// Build layer `i` of `image` on `tree` (which holds layers 0..i) and cache its diff.
async fn build_layer(
    ctx: &RootfsCtx<'_>,
    image: &str,
    i: usize,
    node: &plan::LayerNode,
    below: Option<&[plan::ResolvedPackage]>,
    tree_path: &Path,
) -> anyhow::Result<LayerMeta> {
    let started = Instant::now();
    let img = ctx.recipes.image(image)?;
    let layer = &ctx.recipes.layers[&img.layers[i].name];
    let rendered = &img.layers[i];
    let before = if i == 0 {
        tree::Snapshot::new()
    } else {
        let t = tree_path.to_owned();
        tokio::task::spawn_blocking(move || tree::snapshot(&t)).await??
    };
    if let Some(b) = &layer.def.bootstrap {
        let mirrors = node
            .mirrors
            .as_ref()
            .context("the plan resolved no mirror for the base layer")?;
        let include: Vec<String> = layer
            .def
            .packages
            .install
            .iter()
            .map(|p| p.get_ref().clone())
            .collect();
        // mmdebstrap wants an empty (or absent) target.
        let _ = std::fs::remove_dir(tree_path);
        bootstrap::mmdebstrap(&bootstrap::Job {
            bootstrap: b.get_ref(),
            mirrors,
            include: &include,
            tree: tree_path,
            apt_archives: &ctx.cache.root().join("apt/archives"),
            sde: ctx.sde,
            timeout: ctx.step_timeout,
            label: &format!("layer {}", layer.name),
            memory_max: ctx.memory_max,
        })
        .await
        .with_context(|| format!("layer {}", layer.name))?;
    }
    // Install exactly what the plan resolved (new and moved packages), so the layer holds
    // the versions its digest was made from, or fails naming the package that is gone.
    let exact = match (&node.resolved, below) {
        (Some(set), Some(below)) if !layer.is_base() => Some(exact_installs(set, below)),
        _ => None,
    };
    let actx = apply::ApplyCtx {
        cache_root: ctx.cache.root(),
        sde: ctx.sde,
        step_timeout: ctx.step_timeout,
        secrets: ctx.secrets,
        memory_max: ctx.memory_max,
        file_repositories: apply::declared_file_repositories(
            img.layers[..=i]
                .iter()
                .flat_map(|l| ctx.recipes.layers[&l.name].def.repositories.iter()),
        ),
    };
    apply::apply_layer(&actx, layer, rendered, exact.as_deref(), tree_path)
        .await
        .map_err(|e| in_layer(&layer.name, e))?;
    let needles = ctx.needles.cloned();
    let cache = ctx.cache.clone();
    let t = tree_path.to_owned();
    let digest = node.digest.clone();
    let name = layer.name.clone();
    let sde = ctx.sde;
    let resolved = node.resolved.clone();
    let meta = tokio::task::spawn_blocking(move || -> anyhow::Result<LayerMeta> {
        clean::clean(&t)?;
        let mut after = tree::snapshot(&t)?;
        let d = tree::diff(&before, &after);
        // A layer whose output holds a secret is never cached (nor becomes an OCI layer).
        if let Some(n) = &needles {
            crate::leakscan::check(
                format!("layer {name}"),
                crate::leakscan::scan_paths(&t, &d.changed, n)?,
            )?;
        }
        tree::clamp_mtimes(&t, &d.changed, sde, &mut after)?;
        let staging = cache.staging(&digest)?;
        let zst_path = staging.path().join("diff.tar.zst");
        let f = std::fs::File::create(&zst_path)?;
        let inner = layer_tar::HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
        let mut enc = zstd::stream::write::Encoder::new(inner, 3)?;
        enc.multithread(num_cpus())?;
        let outer = layer_tar::HashingWriter::new(enc);
        let (outer, _stats) = layer_tar::write_diff_tar(&t, &d, sde, outer)?;
        // Sockets are runtime state the diff leaves out; the tree, reused for the disk
        // once its diff is extracted again, must not keep them either.
        for p in &d.changed {
            let full = t.join(p);
            if full
                .symlink_metadata()
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                std::fs::remove_file(&full)?;
            }
        }
        let (enc, output_digest, tar_size) = outer.finish();
        let inner = enc.finish()?;
        let (mut bw, zst_sha256, zst_size) = inner.finish();
        bw.flush()?;
        bw.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let packages = dpkg::installed(&t)?;
        if let Some(resolved) = &resolved {
            let moved = plan::changes::package_changes(resolved, &packages);
            if !moved.is_empty() {
                tracing::warn!(
                    "layer {name}: the installed packages differ from the plan's resolution (did the archive change during the build?): {}",
                    moved.iter().map(plan::changes::describe_package).collect::<Vec<_>>().join(", ")
                );
            }
        }
        let meta = LayerMeta {
            digest: digest.clone(),
            name,
            output_digest,
            tar_size,
            zst_sha256,
            zst_size,
            packages,
            build_secs: started.elapsed().as_secs_f64(),
        };
        if let Some(rep) = cache.commit(staging, &meta)? {
            tracing::info!(
                "layer {} {}: output identical to cached {}; layers above reuse their cache",
                meta.name,
                plan::short(&digest),
                plan::short(&rep)
            );
        }
        Ok(meta)
    })
    .await?
    .map_err(|e| in_layer(&layer.name, e))?;
    Ok(meta)
}

/// Name the layer in an error that does not name it yet (an i/o error such as a full
/// disk while saving the layer).
fn in_layer(name: &str, e: anyhow::Error) -> anyhow::Error {
    if e.to_string().starts_with(&format!("layer {name}")) {
        e
    } else {
        e.context(format!("layer {name}"))
    }
}

/// `name=version` for every package of `set` that `below` lacks or has at another version.
fn exact_installs(set: &[plan::ResolvedPackage], below: &[plan::ResolvedPackage]) -> Vec<String> {
    let have: std::collections::HashMap<&str, &str> = below
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    set.iter()
        .filter(|p| have.get(p.name.as_str()) != Some(&p.version.as_str()))
        .map(|p| format!("{}={}", p.name, p.version))
        .collect()
}

fn num_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2)
}
