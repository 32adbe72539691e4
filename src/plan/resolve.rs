//! Upstream-aware digests: resolve, with apt itself, the full package set every layer
//! will end up with against the archive's current indexes.
//!
//! goldsmith keeps apt state of its own (never the host's): one folder per set of
//! sources under `<cache>/apt/state/`, whose lists are refreshed once per run with
//! conditional requests (apt keeps them), so a run where the archive has nothing new is
//! a few `304 Not Modified` and some local simulation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::apt::{sources_key, AptState};
use super::digest::ResolvedPackage;
use super::lockfile::{lock_path, LockFile};
use super::mirror::{self, Mirrors};
use crate::recipe::{Layer, Recipes};

/// How to resolve.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// Use the cached indexes as they are, without contacting the archive.
    pub offline: bool,
    /// Take package sets from the images' lock files instead of the archive's newest.
    pub locked: bool,
}

/// The package sets of every layer stack, by [`stack_key`].
#[derive(Debug, Clone, Default)]
pub struct Resolutions {
    sets: BTreeMap<String, Vec<ResolvedPackage>>,
    /// How old the indexes used are, per sources set (for "how stale is this?").
    pub indexes: Vec<IndexInfo>,
}

/// The state of one set of package indexes.
#[derive(Debug, Clone, Serialize)]
pub struct IndexInfo {
    pub sources: Vec<String>,
    /// Seconds since the archive's Release file was last fetched.
    pub age_secs: Option<u64>,
    pub refreshed: bool,
}

impl Resolutions {
    /// No resolution: digests cover declared package names only.
    pub fn none() -> Resolutions {
        Resolutions::default()
    }

    /// The set for a stack, if resolved.
    pub fn get(&self, key: &str) -> Option<&[ResolvedPackage]> {
        self.sets.get(key).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// Identifies a layer stack's package inputs: the archive and, per layer, its
/// repositories and package lists. Equal keys resolve to equal sets.
pub fn stack_key(stack: &[&Layer], mirrors: &Mirrors) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(mirrors).unwrap_or_default());
    for l in stack {
        h.update(package_request(l).to_string().as_bytes());
    }
    hex::encode(h.finalize())
}

/// What a layer asks of the archive: its bootstrap, repositories and package lists.
pub(super) fn package_request(l: &Layer) -> serde_json::Value {
    serde_json::json!({
        "bootstrap": l.def.bootstrap.as_ref().map(|b| b.get_ref()),
        "repositories": l.def.repositories,
        "install": l.def.packages.install.iter().map(|p| p.get_ref()).collect::<Vec<_>>(),
        "remove": l.def.packages.remove.iter().map(|p| p.get_ref()).collect::<Vec<_>>(),
    })
}

/// The `deb` lines a stack's layers see.
pub fn stack_sources(stack: &[&Layer], mirrors: &Mirrors) -> Vec<String> {
    let b = stack[0]
        .def
        .bootstrap
        .as_ref()
        .expect("the base layer bootstraps");
    let mut lines = mirrors.sources_lines(b.get_ref());
    for l in stack {
        for r in &l.def.repositories {
            let opts = if r.trusted { "[trusted=yes] " } else { "" };
            lines.push(
                format!(
                    "deb {opts}{} {} {}",
                    r.uri.get_ref(),
                    r.suite,
                    r.components.join(" ")
                )
                .trim_end()
                .to_string(),
            );
        }
    }
    lines
}

/// Resolve every layer of the selected images (all when `only` is empty); the first
/// image that cannot be resolved is the error.
pub async fn resolve(
    recipes: &Recipes,
    only: &[String],
    opts: &ResolveOptions,
) -> anyhow::Result<Resolutions> {
    let (res, mut errors) = resolve_each(recipes, only, opts).await?;
    match errors.pop_first() {
        Some((_, e)) => Err(e),
        None => Ok(res),
    }
}

/// Like [`resolve`], but an image that cannot be resolved (a package that does not exist,
/// a repository that is down) does not stop the others: its error is returned by name.
pub async fn resolve_each(
    recipes: &Recipes,
    only: &[String],
    opts: &ResolveOptions,
) -> anyhow::Result<(Resolutions, BTreeMap<String, anyhow::Error>)> {
    let cache_root = recipes.config.cache_dir();
    let mut out = Resolutions::default();
    let mut states: HashMap<String, AptState> = HashMap::new();
    let names: Vec<String> = if only.is_empty() {
        recipes.images.keys().cloned().collect()
    } else {
        only.to_vec()
    };
    let mut errors = BTreeMap::new();
    for name in names {
        let image = recipes.image(&name)?;
        if let Err(e) =
            resolve_image(recipes, image, opts, &cache_root, &mut states, &mut out).await
        {
            errors.insert(name.clone(), e);
        }
    }
    Ok((out, errors))
}

async fn resolve_image(
    recipes: &Recipes,
    image: &crate::recipe::Image,
    opts: &ResolveOptions,
    cache_root: &Path,
    states: &mut HashMap<String, AptState>,
    out: &mut Resolutions,
) -> anyhow::Result<()> {
    let name = image.name.clone();
    {
        let stack: Vec<&Layer> = image
            .layers
            .iter()
            .map(|r| &recipes.layers[&r.name])
            .collect();
        let base = stack[0].def.bootstrap.as_ref().context("no base layer")?;
        let mirrors = mirror::resolve(base.get_ref(), &recipes.config)
            .map_err(|m| anyhow::anyhow!("layer {}: {m}", stack[0].name))?;
        let lock = if opts.locked {
            Some(LockFile::load(&lock_path(recipes, &name))?)
        } else {
            None
        };
        let mut below: Option<Vec<ResolvedPackage>> = None;
        for i in 0..stack.len() {
            let key = stack_key(&stack[..=i], &mirrors);
            let layer = stack[i];
            let declares = layer.is_base()
                || !layer.def.packages.install.is_empty()
                || !layer.def.packages.remove.is_empty();
            if let Some(set) = out.sets.get(&key) {
                below = Some(set.clone());
                continue;
            }
            if !declares {
                // Nothing of this layer's own comes from the archive: it keeps the set below.
                if let Some(b) = &below {
                    out.sets.insert(key, b.clone());
                }
                continue;
            }
            let sources = stack_sources(&stack[..=i], &mirrors);
            let skey = sources_key(&sources);
            if !states.contains_key(&skey) {
                let mut st = AptState::new(cache_root, sources.clone());
                if !opts.offline {
                    // Never wait for an exclusive lock while holding a shared one: two runs
                    // that meet the same states in different orders would wait for each
                    // other for ever. The others are taken again after the refresh.
                    for other in states.values_mut() {
                        other.lock = None;
                    }
                }
                st.lock(!opts.offline).await?;
                let refreshed = if opts.offline {
                    if !st.has_lists() {
                        anyhow::bail!(
                            "layer {}: --offline, but there are no cached package indexes for {}",
                            layer.name,
                            sources.join("; ")
                        );
                    }
                    false
                } else {
                    let updated = st.update(&layer.name).await;
                    // Released before any other lock is waited for (the same rule), and the
                    // others taken again even when the refresh failed: other images of this
                    // run still resolve from them.
                    st.lock = None;
                    for other in states.values_mut() {
                        other.lock(false).await?;
                    }
                    updated?;
                    st.lock(false).await?;
                    true
                };
                let age = st.age();
                if opts.offline {
                    tracing::warn!(
                        "offline: using package indexes {} old for {}",
                        age.map(human_age)
                            .unwrap_or_else(|| "of unknown age".into()),
                        sources.join("; ")
                    );
                }
                out.indexes.push(IndexInfo {
                    sources: sources.clone(),
                    age_secs: age.map(|a| a.as_secs()),
                    refreshed,
                });
                states.insert(skey.clone(), st);
            }
            let st = states.get_mut(&skey).expect("inserted");
            let set = match &lock {
                Some(lock) => lock.layer_set(&layer.name, &name, st)?,
                None => st.resolve_layer(layer, below.as_deref()).await?,
            };
            below = Some(set.clone());
            out.sets.insert(key, set);
        }
    }
    Ok(())
}

fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}
