//! The plan stage: digest every layer of every image and turn the images into a DAG of
//! build units. Layers with equal digests are one node, built once and shared.

mod apt;
pub mod changes;
pub mod digest;
pub mod lockfile;
pub mod mirror;
pub mod resolve;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::artifact::LayerChange;
use crate::recipe::{Format, Image, Layer, Recipes};
pub use digest::{short, InputSummary, ResolvedPackage};
pub use mirror::Mirrors;
pub use resolve::{Resolutions, ResolveOptions};

/// What the plan needs to know about the layer cache.
pub trait CacheView {
    /// Is there a usable cache entry for this layer digest?
    fn has_layer(&self, digest: &str) -> bool;
    /// Early cut-off: when `digest` is known to produce the same output as an earlier
    /// digest, that earlier (representative) digest. Layers above key off it.
    fn representative(&self, digest: &str) -> Option<String> {
        let _ = digest;
        None
    }
    /// The inputs of the last build of `layer` for `image` (to say why it rebuilds).
    fn history(&self, image: &str, layer: &str) -> Option<InputSummary> {
        let _ = (image, layer);
        None
    }
}

/// A cache that holds nothing (validation, tests).
pub struct NoCache;
impl CacheView for NoCache {
    fn has_layer(&self, _: &str) -> bool {
        false
    }
}

/// One layer build: a node of the DAG.
#[derive(Debug, Clone, Serialize)]
pub struct LayerNode {
    pub digest: String,
    pub name: String,
    pub parent: Option<String>,
    /// Images whose stack contains this node.
    pub images: Vec<String>,
    pub cached: bool,
    pub mirrors: Option<Mirrors>,
    #[serde(skip)]
    pub resolved: Option<Vec<ResolvedPackage>>,
    /// Index of this layer in its images' stacks (0 = base).
    pub depth: usize,
    /// What the digest was made from.
    #[serde(skip)]
    pub summary: InputSummary,
    /// Why it (re)builds, for a layer that is not cached.
    pub changes: Option<LayerChange>,
}

/// One image: its layer stack and formats.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePlan {
    pub name: String,
    /// Layer digests, base first.
    pub layers: Vec<String>,
    pub formats: Vec<Format>,
}

/// The plan: unique layer nodes (parents before children) and the images on top.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub source_date_epoch: i64,
    pub layers: Vec<LayerNode>,
    pub images: Vec<ImagePlan>,
}

impl Plan {
    pub fn layer(&self, digest: &str) -> Option<&LayerNode> {
        self.layers.iter().find(|l| l.digest == digest)
    }
    pub fn image(&self, name: &str) -> Option<&ImagePlan> {
        self.images.iter().find(|i| i.name == name)
    }
}

/// Make the plan for `images` (all when empty).
pub fn make(
    recipes: &Recipes,
    only: &[String],
    cache: &dyn CacheView,
    resolutions: &Resolutions,
) -> anyhow::Result<Plan> {
    let sde = recipes.config.source_date_epoch();
    let mut nodes: BTreeMap<String, LayerNode> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for image in selected(recipes, only)? {
        let stack: Vec<&Layer> = image
            .layers
            .iter()
            .map(|r| &recipes.layers[&r.name])
            .collect();
        let mirrors = match stack.first().and_then(|l| l.def.bootstrap.as_ref()) {
            Some(b) => mirror::resolve(b.get_ref(), &recipes.config).map_err(|m| {
                anyhow::Error::new(crate::recipe::ConfigError {
                    file: stack[0].source.display.clone(),
                    line: 0,
                    col: 0,
                    message: m,
                })
            })?,
            None => anyhow::bail!("image {}: no base layer", image.name),
        };
        let mut parent: Option<String> = None;
        let mut digests = Vec::new();
        for (i, layer) in stack.iter().enumerate() {
            let resolved = resolutions
                .get(&resolve::stack_key(&stack[..=i], &mirrors))
                .map(<[_]>::to_vec);
            // Layers key off their parent's representative digest, so a parent rebuilt
            // to byte-identical output does not invalidate them (early cut-off).
            let parent_key = parent
                .as_deref()
                .map(|p| cache.representative(p).unwrap_or_else(|| p.to_string()));
            let (d, summary) = digest::layer_digest_and_summary(
                layer,
                &image.layers[i],
                &digest::DigestContext {
                    parent: parent_key.as_deref(),
                    mirror: &mirrors.describe(),
                    source_date_epoch: sde,
                    resolved: resolved.as_deref(),
                },
            );
            let node = nodes.entry(d.clone()).or_insert_with(|| {
                order.push(d.clone());
                let cached = cache.has_layer(&d);
                let changes = (!cached).then(|| {
                    changes::explain(
                        &layer.name,
                        cache.history(&image.name, &layer.name).as_ref(),
                        &summary,
                    )
                });
                LayerNode {
                    digest: d.clone(),
                    name: layer.name.clone(),
                    parent: parent.clone(),
                    images: Vec::new(),
                    cached,
                    mirrors: layer.is_base().then(|| mirrors.clone()),
                    resolved: resolved.clone(),
                    depth: i,
                    summary,
                    changes,
                }
            });
            node.images.push(image.name.clone());
            digests.push(d.clone());
            parent = Some(d);
        }
        images.push(ImagePlan {
            name: image.name.clone(),
            layers: digests,
            formats: image.formats.clone(),
        });
    }
    let layers = order
        .into_iter()
        .map(|d| nodes.remove(&d).expect("ordered nodes exist"))
        .collect();
    Ok(Plan {
        source_date_epoch: sde,
        layers,
        images,
    })
}

fn selected<'a>(recipes: &'a Recipes, only: &[String]) -> anyhow::Result<Vec<&'a Image>> {
    if only.is_empty() {
        return Ok(recipes.images.values().collect());
    }
    only.iter()
        .map(|n| recipes.image(n).map_err(anyhow::Error::new))
        .collect()
}

/// The plan as stable JSON (`goldsmith plan --json`).
pub fn to_json(plan: &Plan, recipes: &Recipes) -> serde_json::Value {
    let images: Vec<serde_json::Value> = plan
        .images
        .iter()
        .map(|img| {
            let layers: Vec<serde_json::Value> = img
                .layers
                .iter()
                .map(|d| {
                    let n = plan.layer(d).expect("plan layers exist");
                    let mut v = serde_json::json!({
                        "name": n.name,
                        "digest": n.digest,
                        "cached": n.cached,
                        "shared_with": n.images.iter().filter(|i| **i != img.name).collect::<Vec<_>>(),
                    });
                    if let Some(c) = &n.changes {
                        v["changes"] = serde_json::to_value(c).unwrap_or_default();
                    }
                    if let Some(r) = &n.resolved {
                        v["packages"] = r.len().into();
                    }
                    v
                })
                .collect();
            serde_json::json!({
                "name": img.name,
                "description": recipes.images.get(&img.name).map(|i| i.def.description.clone()).unwrap_or_default(),
                "formats": img.formats,
                "layers": layers,
                "unit": format!("image:{}", img.name),
            })
        })
        .collect();
    let layers: Vec<serde_json::Value> = plan
        .layers
        .iter()
        .map(|n| {
            serde_json::json!({
                "digest": n.digest,
                "name": n.name,
                "parent": n.parent,
                "images": n.images,
                "shared": n.images.len() > 1,
                "cached": n.cached,
                "unit": layer_unit_id(n),
            })
        })
        .collect();
    serde_json::json!({
        "source_date_epoch": plan.source_date_epoch,
        "images": images,
        "layers": layers,
        "summary": {
            "images": plan.images.len(),
            "layers": plan.layers.len(),
            "shared_layers": plan.layers.iter().filter(|n| n.images.len() > 1).count(),
            "cached_layers": plan.layers.iter().filter(|n| n.cached).count(),
        }
    })
}

/// The id of a layer build unit (CI matrices use it).
pub fn layer_unit_id(n: &LayerNode) -> String {
    format!("layer:{}:{}", n.name, short(&n.digest))
}

/// The plan for people.
pub fn to_text(plan: &Plan) -> String {
    let mut s = String::new();
    for img in &plan.images {
        s.push_str(&format!(
            "image {}  formats: {}\n",
            img.name,
            img.formats
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for d in &img.layers {
            let n = plan.layer(d).expect("plan layers exist");
            let others: Vec<&str> = n
                .images
                .iter()
                .filter(|i| **i != img.name)
                .map(String::as_str)
                .collect();
            s.push_str(&format!(
                "  {:<20} {}  {:<6}{}\n",
                n.name,
                short(&n.digest),
                if n.cached { "cached" } else { "build" },
                if others.is_empty() {
                    String::new()
                } else {
                    format!("  shared with {}", others.join(", "))
                }
            ));
            if let Some(c) = &n.changes {
                for why in &c.inputs {
                    s.push_str(&format!("      why: {why}\n"));
                }
                let moved: Vec<String> = c.packages.iter().map(changes::describe_package).collect();
                if !moved.is_empty() {
                    const SHOWN: usize = 12;
                    let more = moved.len().saturating_sub(SHOWN);
                    s.push_str(&format!(
                        "      packages: {}{}\n",
                        moved
                            .iter()
                            .take(SHOWN)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                        if more > 0 {
                            format!(" (+{more} more)")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
    }
    let to_build = plan.layers.iter().filter(|n| !n.cached).count();
    let shared = plan.layers.iter().filter(|n| n.images.len() > 1).count();
    s.push_str(&format!(
        "{} layer build(s) for {} image(s): {} to build, {} cached, {} shared between images (built once)\n",
        plan.layers.len(),
        plan.images.len(),
        to_build,
        plan.layers.len() - to_build,
        shared
    ));
    s
}
