//! Why a layer rebuilds: its inputs now against the inputs of its last build.

use std::collections::BTreeMap;

use super::digest::InputSummary;
use crate::artifact::{LayerChange, PackageChange};

/// Explain the difference between the last build's inputs (`old`) and now (`new`).
pub fn explain(layer: &str, old: Option<&InputSummary>, new: &InputSummary) -> LayerChange {
    let mut inputs = Vec::new();
    let Some(old) = old else {
        // Every package would be "new": say why in one line instead.
        return LayerChange {
            layer: layer.to_string(),
            inputs: vec!["no earlier build of this layer".into()],
            packages: Vec::new(),
        };
    };
    if old.definition != new.definition {
        inputs.push("layer definition changed (layer.toml)".into());
    }
    diff_maps("file", &old.files, &new.files, &mut inputs);
    diff_maps("script", &old.scripts, &new.scripts, &mut inputs);
    if old.parent != new.parent {
        inputs.push("the layer below changed".into());
    }
    LayerChange {
        layer: layer.to_string(),
        inputs,
        packages: package_changes(&old.packages, &new.packages),
    }
}

fn diff_maps(
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    out: &mut Vec<String>,
) {
    for (k, v) in new {
        match old.get(k) {
            None => out.push(format!("{what} {k} added")),
            Some(o) if o != v => out.push(format!("{what} {k} changed")),
            _ => {}
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.push(format!("{what} {k} removed"));
        }
    }
}

/// Packages added, removed or moved between two sets.
pub fn package_changes(
    old: &[super::ResolvedPackage],
    new: &[super::ResolvedPackage],
) -> Vec<PackageChange> {
    let o: BTreeMap<&str, &str> = old
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    let n: BTreeMap<&str, &str> = new
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    let mut out = Vec::new();
    for (name, v) in &n {
        match o.get(name) {
            Some(ov) if ov == v => {}
            other => out.push(PackageChange {
                name: name.to_string(),
                old: other.map(|s| s.to_string()),
                new: Some(v.to_string()),
            }),
        }
    }
    for (name, v) in &o {
        if !n.contains_key(name) {
            out.push(PackageChange {
                name: name.to_string(),
                old: Some(v.to_string()),
                new: None,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One line for people: "gs-demo 1.0 → 1.1".
pub fn describe_package(c: &PackageChange) -> String {
    match (&c.old, &c.new) {
        (Some(o), Some(n)) => format!("{} {o} → {n}", c.name),
        (None, Some(n)) => format!("{} {n} (new)", c.name),
        (Some(o), None) => format!("{} {o} (removed)", c.name),
        (None, None) => c.name.clone(),
    }
}
