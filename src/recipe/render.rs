//! Expand a layer's files and scripts for one image: directory sources become entries,
//! templates are rendered with the image's variables, every file's bytes are hashed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::source::{display_path, ConfigError, ConfigErrors};
use super::template;
use super::validate::{parse_mode, resolve_source};
use super::Layer;
use crate::config::Config;

/// A layer's inputs, ready to apply to a tree.
#[derive(Debug, Clone)]
pub struct RenderedLayer {
    pub name: String,
    pub dir: PathBuf,
    pub files: Vec<FileEntry>,
    pub scripts: Vec<RenderedScript>,
}

/// One file-system entry a layer puts into the image.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Absolute path in the image.
    pub dest: String,
    pub kind: FileKind,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

#[derive(Debug, Clone)]
pub enum FileKind {
    /// Bytes held in memory (a rendered template).
    Inline(Vec<u8>),
    /// A file copied as is from the layer folder; hashed when loaded.
    Disk {
        path: PathBuf,
        size: u64,
        sha256: String,
    },
    Dir,
    Symlink(String),
}

impl FileKind {
    /// The content digest of this entry (what the layer digest includes).
    pub fn digest(&self) -> String {
        match self {
            FileKind::Inline(b) => hex::encode(Sha256::digest(b)),
            FileKind::Disk { sha256, .. } => sha256.clone(),
            FileKind::Dir => "dir".into(),
            FileKind::Symlink(t) => format!("symlink:{t}"),
        }
    }
}

/// A script to run inside the tree.
#[derive(Debug, Clone)]
pub struct RenderedScript {
    /// File name, or `inline-N`.
    pub name: String,
    pub body: Vec<u8>,
    pub network: bool,
    pub timeout_secs: u64,
}

pub(super) fn layer(
    config: &Config,
    layer: &Layer,
    vars: &Map<String, Value>,
    image: &str,
) -> Result<RenderedLayer, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let mut files = Vec::new();
    let vars = Value::Object(vars.clone());
    for f in &layer.def.files {
        // validate::layer already reported bad sources, modes and destinations.
        let Ok(src) = resolve_source(&layer.dir, "files", f.source.get_ref()) else {
            continue;
        };
        let mode = f.mode.as_ref().and_then(|m| parse_mode(m.get_ref()).ok());
        let dest = f.dest.get_ref().trim_end_matches('/').to_string();
        let dest = if dest.is_empty() {
            "/".to_string()
        } else {
            dest
        };
        if f.template {
            if !src.is_file() {
                errs.push(layer.source.error_at(
                    f.source.span(),
                    format!(
                        "files: '{}' has template = true but is not a file",
                        f.source.get_ref()
                    ),
                ));
                continue;
            }
            match render_file(config, &src, &vars, image) {
                Ok(bytes) => files.push(FileEntry {
                    dest,
                    kind: FileKind::Inline(bytes),
                    mode: mode.unwrap_or(0o644),
                    owner: f.owner.clone(),
                    group: f.group.clone(),
                }),
                Err(e) => errs.push(e),
            }
            continue;
        }
        match expand(&src, &dest, mode, &f.owner, &f.group) {
            Ok(v) => files.extend(v),
            Err(m) => errs.push(
                layer
                    .source
                    .error_at(f.source.span(), format!("files: {m}")),
            ),
        }
    }
    let mut scripts = Vec::new();
    for (i, s) in layer.def.scripts.iter().enumerate() {
        let (name, body, path) = match (&s.path, &s.run) {
            (Some(p), _) => {
                let Ok(full) = resolve_source(&layer.dir, "scripts", p.get_ref()) else {
                    continue;
                };
                match std::fs::read(&full) {
                    Ok(b) => (p.get_ref().clone(), b, Some(full)),
                    Err(e) => {
                        errs.push(
                            layer
                                .source
                                .error_at(p.span(), format!("scripts[{i}].path: cannot read: {e}")),
                        );
                        continue;
                    }
                }
            }
            (None, Some(r)) => (
                format!("inline-{i}"),
                format!("#!/bin/sh\nset -eu\n{}\n", r.get_ref()).into_bytes(),
                None,
            ),
            (None, None) => continue,
        };
        let body = if s.template {
            let text = String::from_utf8_lossy(&body).into_owned();
            match template::render(&text, &vars) {
                Ok(t) => t.into_bytes(),
                Err(e) => {
                    let file = path
                        .map(|p| display_path(&p, &config.root))
                        .unwrap_or_else(|| layer.source.display.clone());
                    errs.push(ConfigError {
                        file,
                        line: e.line,
                        col: e.col,
                        message: format!("{} (rendering for image '{image}')", e.message),
                    });
                    continue;
                }
            }
        } else {
            body
        };
        scripts.push(RenderedScript {
            name,
            body,
            network: s.network,
            timeout_secs: s.timeout_secs,
        });
    }
    errs.into_result(RenderedLayer {
        name: layer.name.clone(),
        dir: layer.dir.clone(),
        files,
        scripts,
    })
}

fn render_file(
    config: &Config,
    src: &Path,
    vars: &Value,
    image: &str,
) -> Result<Vec<u8>, ConfigError> {
    let display = display_path(src, &config.root);
    let text = std::fs::read_to_string(src).map_err(|e| ConfigError {
        file: display.clone(),
        line: 0,
        col: 0,
        message: format!("cannot read template (templates must be UTF-8 text): {e}"),
    })?;
    template::render(&text, vars)
        .map(String::into_bytes)
        .map_err(|e| ConfigError {
            file: display,
            line: e.line,
            col: e.col,
            message: format!("{} (rendering for image '{image}')", e.message),
        })
}

/// Entries for a file, symlink or whole directory tree (sorted, so digests are stable).
fn expand(
    src: &Path,
    dest: &str,
    mode: Option<u32>,
    owner: &str,
    group: &str,
) -> Result<Vec<FileEntry>, String> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(src)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| e.to_string())?;
        let rel = entry.path().strip_prefix(src).map_err(|e| e.to_string())?;
        let rel_str = rel.to_str().ok_or_else(|| {
            format!(
                "'{}' has a file name that is not UTF-8; rename it",
                entry.path().display()
            )
        })?;
        let d = if rel_str.is_empty() {
            dest.to_string()
        } else if dest == "/" {
            format!("/{rel_str}")
        } else {
            format!("{dest}/{rel_str}")
        };
        let meta = entry.path().symlink_metadata().map_err(|e| e.to_string())?;
        let own_mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let (kind, mode) = if ft.is_symlink() {
            let t = std::fs::read_link(entry.path()).map_err(|e| e.to_string())?;
            let t = t
                .to_str()
                .ok_or_else(|| format!("symlink '{}' target is not UTF-8", entry.path().display()))?
                .to_string();
            (FileKind::Symlink(t), 0o777)
        } else if ft.is_dir() {
            (FileKind::Dir, own_mode)
        } else if ft.is_file() {
            let (size, sha256) =
                crate::fsutil::sha256_file(entry.path()).map_err(|e| e.to_string())?;
            (
                FileKind::Disk {
                    path: entry.path().to_owned(),
                    size,
                    sha256,
                },
                mode.unwrap_or(own_mode),
            )
        } else {
            return Err(format!(
                "'{}' is not a regular file, directory or symlink",
                entry.path().display()
            ));
        };
        out.push(FileEntry {
            dest: d,
            kind,
            mode,
            owner: owner.to_string(),
            group: group.to_string(),
        });
    }
    Ok(out)
}
