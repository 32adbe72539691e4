//! Lock files (`images/<image>.lock`, like Cargo.lock): the package versions each layer
//! of an image resolved to, so `--locked` rebuilds a release from exactly those.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::apt::AptState;
use super::digest::ResolvedPackage;
use crate::recipe::Recipes;

/// `images/<image>.lock`: the package set each layer resolved to, for bit-for-bit
/// rebuilds of a release branch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    pub image: String,
    pub layers: Vec<LockedLayer>,
    #[serde(skip)]
    path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedLayer {
    pub name: String,
    /// `name version arch`, sorted.
    pub packages: Vec<String>,
}

/// Where an image's lock file lives.
pub fn lock_path(recipes: &Recipes, image: &str) -> PathBuf {
    recipes.config.images_dir().join(format!("{image}.lock"))
}

impl LockFile {
    /// Read a lock file (a missing one is an error that says how to make it).
    pub fn load(path: &Path) -> anyhow::Result<LockFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "--locked: cannot read {} ({e}); run `goldsmith lock` to create it",
                path.display()
            )
        })?;
        let mut l: LockFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        l.path = path.to_owned();
        Ok(l)
    }

    /// A lock file from resolved sets, in stack order.
    pub fn new(image: &str, layers: Vec<(String, Vec<ResolvedPackage>)>) -> LockFile {
        LockFile {
            version: 1,
            image: image.to_string(),
            layers: layers
                .into_iter()
                .map(|(name, set)| LockedLayer {
                    name,
                    packages: set
                        .iter()
                        .map(|p| format!("{} {} {}", p.name, p.version, p.arch))
                        .collect(),
                })
                .collect(),
            path: PathBuf::new(),
        }
    }

    pub fn to_toml(&self) -> String {
        format!(
            "# goldsmith lock file for image {}: the package versions each layer resolved to.\n# Made by `goldsmith lock`; `goldsmith build --locked` installs exactly these.\n{}",
            self.image,
            toml::to_string(self).unwrap_or_default()
        )
    }

    /// The locked set of a layer; every version must still be in the archive.
    pub(super) fn layer_set(
        &self,
        layer: &str,
        image: &str,
        st: &mut AptState,
    ) -> anyhow::Result<Vec<ResolvedPackage>> {
        let entry = self
            .layers
            .iter()
            .find(|l| l.name == layer)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no entry for layer {layer} of image {image}; run `goldsmith lock {image}`",
                    self.path.display()
                )
            })?;
        let mut set = Vec::new();
        for p in &entry.packages {
            let mut w = p.split_whitespace();
            let (Some(name), Some(version), Some(arch)) = (w.next(), w.next(), w.next()) else {
                anyhow::bail!(
                    "{}: layer {layer}: malformed entry '{p}'",
                    self.path.display()
                );
            };
            set.push(ResolvedPackage {
                name: name.into(),
                version: version.into(),
                arch: arch.into(),
            });
        }
        let sources = st.sources.join("; ");
        let idx = st.index()?;
        let missing: Vec<String> = set
            .iter()
            .filter(|p| !idx.has(p))
            .map(|p| format!("{} {}", p.name, p.version))
            .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "--locked: layer {layer} of image {image} pins {} no longer in the archive ({sources}); update the lock file with `goldsmith lock {image}` or restore the package",
                missing.join(", ")
            );
        }
        Ok(set)
    }
}
