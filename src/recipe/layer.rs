//! The layer definition: `recipes/NAME/layer.toml`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::check::CheckDef;

/// A layer: one step of an image, written once and stacked by many images.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LayerDef {
    /// One line for `goldsmith plan` and reports.
    #[serde(default)]
    pub description: String,
    /// Only the base layer has it: how the root file system is created.
    pub bootstrap: Option<Spanned<Bootstrap>>,
    /// Extra apt sources this layer needs (used by this layer and the layers above it).
    #[serde(default)]
    pub repositories: Vec<Repository>,
    #[serde(default)]
    pub packages: Packages,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub scripts: Vec<ScriptSpec>,
    #[serde(default)]
    pub services: Services,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    #[serde(default)]
    pub users: Vec<UserSpec>,
    /// `key = value` written to `/etc/sysctl.d/`.
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    #[serde(default)]
    pub kernel: Kernel,
    /// Variables with their defaults; later layers, the image and `--var` override them.
    #[serde(default)]
    pub variables: BTreeMap<String, toml::Value>,
    /// Build-time secrets scripts may read (from `/run/goldsmith/secrets/NAME`), never
    /// written into the image.
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    /// Smoke checks this layer contributes to every image that contains it.
    #[serde(default)]
    pub checks: Vec<CheckDef>,
}

/// How the base layer's tree is bootstrapped.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// `debian` or `ubuntu` (both bootstrapped with mmdebstrap).
    pub distro: Spanned<String>,
    /// e.g. `bookworm`.
    pub suite: String,
    /// mmdebstrap variant: `minbase` (default), `essential`, `apt`, `required`, `important`, `standard`.
    #[serde(default = "default_variant")]
    pub variant: Spanned<String>,
    /// Archive URL; unset means goldsmith.toml's mirror or the host's apt sources.
    pub mirror: Option<String>,
    /// Extra suites from the same mirror, e.g. `bookworm-updates`.
    #[serde(default)]
    pub extra_suites: Vec<String>,
    /// Security archive URL and suite (e.g. `bookworm-security`); optional.
    pub security: Option<SecuritySource>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    #[serde(default = "default_arch")]
    pub architecture: Spanned<String>,
}

/// The security archive that supplies fixes between point releases.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecuritySource {
    /// Unset: goldsmith.toml's `security_mirror` or the host's apt sources.
    pub mirror: Option<String>,
    pub suite: String,
}

fn default_variant() -> Spanned<String> {
    Spanned::new(0..0, "minbase".into())
}
fn default_components() -> Vec<String> {
    vec!["main".into()]
}
fn default_arch() -> Spanned<String> {
    Spanned::new(0..0, "amd64".into())
}

/// An extra apt repository.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// `http(s)://…` or `file:///…`.
    pub uri: Spanned<String>,
    /// Suite, or a path ending in `/` for a flat repository (then no components).
    pub suite: String,
    #[serde(default)]
    pub components: Vec<String>,
    /// Skip signature checks (only for local test repositories).
    #[serde(default)]
    pub trusted: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    #[serde(default)]
    pub install: Vec<Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// A file (or directory tree) from the layer's `files/` folder.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Relative to `files/`; must stay inside the layer folder.
    pub source: Spanned<String>,
    /// Absolute path in the image.
    pub dest: Spanned<String>,
    /// Octal mode as a string, e.g. `"0644"`; default: 0644 for files from templates,
    /// the source's own mode otherwise.
    pub mode: Option<Spanned<String>>,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    /// Render the file with handlebars (strict: an undefined variable is an error).
    #[serde(default)]
    pub template: bool,
}

fn root() -> String {
    "root".into()
}

/// A script run inside the image tree.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptSpec {
    /// Relative to `scripts/`.
    pub path: Option<Spanned<String>>,
    /// Inline shell, as an alternative to `path`.
    pub run: Option<Spanned<String>>,
    /// Let the script reach the network (default: no network).
    #[serde(default)]
    pub network: bool,
    /// Seconds before the script is killed.
    #[serde(default = "default_script_timeout")]
    pub timeout_secs: u64,
    /// Render the script with handlebars before running it.
    #[serde(default)]
    pub template: bool,
}

fn default_script_timeout() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Services {
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    pub gid: Option<u32>,
    #[serde(default)]
    pub system: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    pub uid: Option<u32>,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "default_shell")]
    pub shell: String,
    pub home: Option<String>,
    #[serde(default)]
    pub system: bool,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Allow passwordless sudo (writes /etc/sudoers.d/NAME; needs the sudo package).
    #[serde(default)]
    pub sudo: bool,
}

fn default_shell() -> String {
    "/bin/bash".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Appended to the kernel command line of the boot entry.
    #[serde(default)]
    pub cmdline: Vec<String>,
}

/// A build-time secret.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    pub name: String,
    /// Environment variable holding the value.
    pub env: Option<String>,
    /// File holding the value.
    pub file: Option<String>,
}
