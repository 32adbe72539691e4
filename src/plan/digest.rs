//! Layer digests: a sha256 over a layer's canonical resolved form, the bytes of every
//! file and script it brings, and its parent's digest.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::recipe::layer::{Bootstrap, GroupSpec, Repository, Services, UserSpec};
use crate::recipe::{Layer, RenderedLayer};

/// Bumped whenever the way a layer is applied changes, so old cache entries stop matching.
/// 2: base layers carry no device nodes in /dev (the same as root and rootless).
pub const LAYER_FORMAT: u32 = 2;

/// A package resolved for a layer: what apt will install, with its exact version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct ResolvedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// Everything that determines a layer's output, in a canonical order.
#[derive(Serialize)]
struct LayerInputs<'a> {
    format: u32,
    name: &'a str,
    parent: Option<&'a str>,
    bootstrap: Option<BootstrapInputs<'a>>,
    repositories: &'a [Repository],
    install: Vec<&'a str>,
    remove: Vec<&'a str>,
    files: Vec<FileInputs<'a>>,
    scripts: Vec<ScriptInputs<'a>>,
    services: &'a Services,
    groups: &'a [GroupSpec],
    users: &'a [UserSpec],
    sysctl: &'a BTreeMap<String, String>,
    secrets: Vec<&'a str>,
    source_date_epoch: i64,
    /// The full package set the layer ends up with (upstream-aware rebuilds).
    resolved: Option<&'a [ResolvedPackage]>,
}

#[derive(Serialize)]
struct BootstrapInputs<'a> {
    def: &'a Bootstrap,
    /// The mirror actually used (the layer's, the config's, or the host's).
    mirror: &'a str,
}

#[derive(Serialize)]
struct FileInputs<'a> {
    dest: &'a str,
    mode: u32,
    owner: &'a str,
    group: &'a str,
    content: String,
}

#[derive(Serialize)]
struct ScriptInputs<'a> {
    name: &'a str,
    sha256: String,
    network: bool,
    timeout_secs: u64,
}

/// What the digest of one layer is computed from, besides the layer itself.
pub struct DigestContext<'a> {
    pub parent: Option<&'a str>,
    pub mirror: &'a str,
    pub source_date_epoch: i64,
    pub resolved: Option<&'a [ResolvedPackage]>,
}

/// What a layer's digest was made from, in a form that can be compared with an earlier
/// build to say why the layer changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct InputSummary {
    pub digest: String,
    pub parent: Option<String>,
    /// Everything but files, scripts and packages.
    pub definition: String,
    /// Destination -> content digest.
    pub files: BTreeMap<String, String>,
    /// Script name -> sha256.
    pub scripts: BTreeMap<String, String>,
    pub packages: Vec<ResolvedPackage>,
}

/// The digest of `layer` as rendered for one image, with its input summary.
pub fn layer_digest_and_summary(
    layer: &Layer,
    rendered: &RenderedLayer,
    ctx: &DigestContext,
) -> (String, InputSummary) {
    let digest = layer_digest(layer, rendered, ctx);
    let no_content = DigestContext {
        parent: None,
        mirror: ctx.mirror,
        source_date_epoch: ctx.source_date_epoch,
        resolved: None,
    };
    let bare = RenderedLayer {
        name: rendered.name.clone(),
        dir: rendered.dir.clone(),
        files: Vec::new(),
        scripts: Vec::new(),
    };
    let summary = InputSummary {
        digest: digest.clone(),
        parent: ctx.parent.map(str::to_string),
        definition: layer_digest(layer, &bare, &no_content),
        files: rendered
            .files
            .iter()
            .map(|f| {
                (
                    f.dest.clone(),
                    format!("{:o} {}:{} {}", f.mode, f.owner, f.group, f.kind.digest()),
                )
            })
            .collect(),
        scripts: rendered
            .scripts
            .iter()
            .map(|s| (s.name.clone(), hex::encode(Sha256::digest(&s.body))))
            .collect(),
        packages: ctx.resolved.map(<[_]>::to_vec).unwrap_or_default(),
    };
    (digest, summary)
}

/// The digest of `layer` as rendered for one image.
pub fn layer_digest(layer: &Layer, rendered: &RenderedLayer, ctx: &DigestContext) -> String {
    let def = &layer.def;
    let inputs = LayerInputs {
        format: LAYER_FORMAT,
        name: &layer.name,
        parent: ctx.parent,
        bootstrap: def.bootstrap.as_ref().map(|b| BootstrapInputs {
            def: b.get_ref(),
            mirror: ctx.mirror,
        }),
        repositories: &def.repositories,
        install: def
            .packages
            .install
            .iter()
            .map(|p| p.get_ref().as_str())
            .collect(),
        remove: def
            .packages
            .remove
            .iter()
            .map(|p| p.get_ref().as_str())
            .collect(),
        files: rendered
            .files
            .iter()
            .map(|f| FileInputs {
                dest: &f.dest,
                mode: f.mode,
                owner: &f.owner,
                group: &f.group,
                content: f.kind.digest(),
            })
            .collect(),
        scripts: rendered
            .scripts
            .iter()
            .map(|s| ScriptInputs {
                name: &s.name,
                sha256: hex::encode(Sha256::digest(&s.body)),
                network: s.network,
                timeout_secs: s.timeout_secs,
            })
            .collect(),
        services: &def.services,
        groups: &def.groups,
        users: &def.users,
        sysctl: &def.sysctl,
        secrets: def.secrets.iter().map(|s| s.name.as_str()).collect(),
        source_date_epoch: ctx.source_date_epoch,
        resolved: ctx.resolved,
    };
    let bytes = serde_json::to_vec(&inputs).expect("layer inputs serialise");
    hex::encode(Sha256::digest(&bytes))
}

/// sha256 of arbitrary bytes, hex.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The first 12 hex digits, for people.
pub fn short(d: &str) -> &str {
    &d[..d.len().min(12)]
}
