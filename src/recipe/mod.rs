//! The recipe stage: read layers, images and variables; validate them with errors that
//! name file, line and key; resolve each image's layer stack; render its templates.
//!
//! The value this stage returns, [`Recipes`], is everything later stages need: no later
//! stage reads a recipe file again.

pub mod check;
pub mod image;
pub mod layer;
mod render;
pub mod source;
pub mod template;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::Config;
pub use check::CheckDef;
pub use image::{Format, ImageDef};
pub use layer::LayerDef;
pub use render::{FileEntry, FileKind, RenderedLayer, RenderedScript};
pub use source::{ConfigError, ConfigErrors, SourceFile};

/// A layer as loaded from `recipes/NAME/layer.toml`.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    /// The layer folder.
    pub dir: PathBuf,
    pub source: SourceFile,
    pub def: LayerDef,
}

impl Layer {
    /// Does this layer bootstrap a tree (the base layer)?
    pub fn is_base(&self) -> bool {
        self.def.bootstrap.is_some()
    }
}

/// Where a check came from, for reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourcedCheck {
    /// `layer NAME` or `image NAME`.
    pub origin: String,
    pub check: CheckDef,
}

/// An image with its stack resolved and every template rendered.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub source: SourceFile,
    pub def: ImageDef,
    /// The merged variables (layer defaults < later layers < image < --var).
    pub vars: Map<String, Value>,
    /// One entry per layer, base first.
    pub layers: Vec<RenderedLayer>,
    /// Layer checks first (in stack order), then the image's own.
    pub checks: Vec<SourcedCheck>,
    pub disk_mib: u64,
    pub formats: Vec<Format>,
    /// Kernel command line additions of all layers, in stack order.
    pub cmdline: Vec<String>,
}

/// The recipe stage's result.
#[derive(Debug, Clone)]
pub struct Recipes {
    pub config: Config,
    pub layers: BTreeMap<String, Layer>,
    pub images: BTreeMap<String, Image>,
}

impl Recipes {
    /// Look an image up, or say which ones exist.
    pub fn image(&self, name: &str) -> Result<&Image, ConfigError> {
        self.images.get(name).ok_or_else(|| ConfigError {
            file: PathBuf::from(&self.config.def.images_dir).join(format!("{name}.toml")),
            line: 0,
            col: 0,
            message: format!(
                "no such image '{name}'; images: {}",
                self.images.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

/// `--var key=value` from the command line.
pub fn parse_cli_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--var '{s}': expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("--var '{s}': empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Load, validate and render everything. Collects all errors before returning them.
pub fn load(config: &Config, cli_vars: &[(String, String)]) -> Result<Recipes, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let layers = load_layers(config, &mut errors);
    let image_files = list_toml(&config.images_dir());
    let mut images = BTreeMap::new();
    if image_files.is_empty() {
        errors.push(ConfigError {
            file: config.def.images_dir.clone().into(),
            line: 0,
            col: 0,
            message: "no image definitions (*.toml) found".into(),
        });
    }
    for (name, path) in image_files {
        let source = match SourceFile::read(&path, &config.root) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let def: ImageDef = match source.parse() {
            Ok(d) => d,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match resolve_image(config, &layers, name.clone(), source, def, cli_vars) {
            Ok(img) => {
                images.insert(name, img);
            }
            Err(e) => errors.extend(e),
        }
    }
    errors.into_result(Recipes {
        config: config.clone(),
        layers,
        images,
    })
}

fn load_layers(config: &Config, errors: &mut ConfigErrors) -> BTreeMap<String, Layer> {
    let mut layers = BTreeMap::new();
    let dir = config.recipes_dir();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for layer_dir in entries {
        let file = layer_dir.join("layer.toml");
        if !file.is_file() {
            continue;
        }
        let name = layer_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = match SourceFile::read(&file, &config.root) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let def: LayerDef = match source.parse() {
            Ok(d) => d,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let layer = Layer {
            name: name.clone(),
            dir: layer_dir,
            source,
            def,
        };
        errors.extend(validate::layer(&layer));
        layers.insert(name, layer);
    }
    layers
}

/// `(stem, path)` of every `*.toml` in `dir`, sorted.
fn list_toml(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p.clone())))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn resolve_image(
    config: &Config,
    layers: &BTreeMap<String, Layer>,
    name: String,
    source: SourceFile,
    def: ImageDef,
    cli_vars: &[(String, String)],
) -> Result<Image, ConfigErrors> {
    let stack = validate::image(config, layers, &source, &def)?;
    let vars = merge_vars(&stack, &def, &name, cli_vars);
    let mut errors = ConfigErrors::default();
    let mut rendered = Vec::new();
    let mut checks = Vec::new();
    let mut cmdline = Vec::new();
    for layer in &stack {
        match render::layer(config, layer, &vars, &name) {
            Ok(r) => rendered.push(r),
            Err(e) => errors.extend(e),
        }
        checks.extend(layer.def.checks.iter().map(|c| SourcedCheck {
            origin: format!("layer {}", layer.name),
            check: c.clone(),
        }));
        cmdline.extend(layer.def.kernel.cmdline.iter().cloned());
    }
    checks.extend(def.checks.iter().map(|c| SourcedCheck {
        origin: format!("image {name}"),
        check: c.clone(),
    }));
    let disk_mib = image::parse_size_mib(def.disk.size.get_ref()).unwrap_or(0);
    let mut formats: Vec<Format> = def.formats.iter().map(|f| *f.get_ref()).collect();
    formats.sort();
    formats.dedup();
    errors.into_result(Image {
        name,
        source,
        def,
        vars,
        layers: rendered,
        checks,
        disk_mib,
        formats,
        cmdline,
    })
}

/// Variable precedence: layer defaults in stack order (a later layer overrides an earlier
/// one), then the image, then `--var`. `goldsmith.image` is always the image name.
fn merge_vars(
    stack: &[&Layer],
    def: &ImageDef,
    image_name: &str,
    cli_vars: &[(String, String)],
) -> Map<String, Value> {
    let mut vars = Map::new();
    for layer in stack {
        for (k, v) in &layer.def.variables {
            vars.insert(k.clone(), toml_to_json(v));
        }
    }
    for (k, v) in &def.variables {
        vars.insert(k.clone(), toml_to_json(v));
    }
    for (k, v) in cli_vars {
        vars.insert(k.clone(), Value::String(v.clone()));
    }
    vars.insert(
        "goldsmith".into(),
        serde_json::json!({ "image": image_name }),
    );
    vars
}

fn toml_to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, toml_text: &str) -> Layer {
        Layer {
            name: name.into(),
            dir: PathBuf::from("/nonexistent"),
            source: SourceFile {
                display: format!("recipes/{name}/layer.toml").into(),
                path: "/nonexistent".into(),
                text: toml_text.into(),
            },
            def: toml::from_str(toml_text).unwrap(),
        }
    }

    #[test]
    fn variable_precedence() {
        let a = layer("a", "[variables]\nx = 'a'\ny = 'a'\nz = 'a'\nw = 'a'\n");
        let b = layer("b", "[variables]\ny = 'b'\nz = 'b'\nw = 'b'\n");
        let img: ImageDef =
            toml::from_str("layers = ['a', 'b']\n[variables]\nz = 'image'\nw = 'image'\n").unwrap();
        let vars = merge_vars(&[&a, &b], &img, "i", &[("w".into(), "cli".into())]);
        assert_eq!(vars["x"], "a", "layer default");
        assert_eq!(vars["y"], "b", "later layer overrides earlier");
        assert_eq!(vars["z"], "image", "image overrides layers");
        assert_eq!(vars["w"], "cli", "--var overrides everything");
        assert_eq!(vars["goldsmith"]["image"], "i");
    }

    #[test]
    fn non_string_variables_keep_their_type() {
        let a = layer("a", "[variables]\nport = 80\nlist = [1, 2]\n");
        let img: ImageDef = toml::from_str("layers = ['a']").unwrap();
        let vars = merge_vars(&[&a], &img, "i", &[]);
        assert_eq!(vars["port"], 80);
        assert_eq!(vars["list"], serde_json::json!([1, 2]));
    }

    #[test]
    fn cli_var_parsing() {
        assert_eq!(parse_cli_var("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_cli_var("novalue").is_err());
        assert!(parse_cli_var("=x").is_err());
    }
}
