//! `goldsmith.toml`: where things live and how the pipeline runs on this host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::recipe::source::{ConfigError, SourceFile};

/// The project configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDef {
    #[serde(default = "d_recipes")]
    pub recipes_dir: String,
    #[serde(default = "d_images")]
    pub images_dir: String,
    /// Where build directories (one per image) are written.
    #[serde(default = "d_build")]
    pub build_dir: String,
    /// Timestamp every build clamps file times to (SOURCE_DATE_EPOCH overrides it).
    #[serde(default = "d_sde")]
    pub source_date_epoch: i64,
    /// Debian/Ubuntu archive URL for base layers that set none.
    pub mirror: Option<String>,
    /// Security archive URL for base layers that set none.
    pub security_mirror: Option<String>,
    /// Host groups and their provisioner sinks.
    pub inventory: Option<String>,
    #[serde(default)]
    pub cache: CacheDef,
    #[serde(default)]
    pub store: StoreDef,
    #[serde(default)]
    pub build: BuildDef,
    #[serde(default)]
    pub verify: VerifyHostDef,
    #[serde(default)]
    pub signing: SigningDef,
    /// Publish targets besides the store, by name.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetDef>,
    /// Rollout sinks, by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkDef>,
}

fn d_recipes() -> String {
    "recipes".into()
}
fn d_images() -> String {
    "images".into()
}
fn d_build() -> String {
    "target/goldsmith".into()
}
fn d_sde() -> i64 {
    // 2025-01-01T00:00:00Z: any fixed value will do; it only has to stay put.
    1_735_689_600
}

impl Default for ConfigDef {
    fn default() -> Self {
        toml::from_str("").expect("empty config is valid")
    }
}

/// The layer cache.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDef {
    #[serde(default = "d_cache")]
    pub dir: String,
    /// Bound on the local layer cache ("20G"), applied after every build, nightly and
    /// gc; least recently used entries go first, never a layer the run's images use.
    pub max_size: Option<String>,
    /// A shared cache on S3-compatible storage (CI workers share built layers through it).
    pub s3: Option<S3Def>,
    /// Image trees kept after builds (`<cache>/parked/`) so that the next build sharing
    /// lower layers with one does not extract them again; 0 keeps none.
    #[serde(default = "d_keep_trees")]
    pub keep_trees: usize,
}

fn d_cache() -> String {
    ".goldsmith/cache".into()
}

fn d_keep_trees() -> usize {
    2
}

impl Default for CacheDef {
    fn default() -> Self {
        CacheDef {
            dir: d_cache(),
            max_size: None,
            s3: None,
            keep_trees: d_keep_trees(),
        }
    }
}

/// The artifact store: a local directory (default) or S3-compatible storage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreDef {
    #[serde(default = "d_store")]
    pub path: String,
    pub s3: Option<S3Def>,
    /// Versions kept per image by `gc` (plus everything a channel points at).
    #[serde(default = "d_keep")]
    pub keep_versions: usize,
}

fn d_store() -> String {
    "artifacts".into()
}
fn d_keep() -> usize {
    10
}

impl Default for StoreDef {
    fn default() -> Self {
        StoreDef {
            path: d_store(),
            s3: None,
            keep_versions: d_keep(),
        }
    }
}

/// An S3-compatible bucket. Credentials come from the environment (the standard AWS
/// variables, or the variables named here), never from this file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Def {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    /// e.g. `http://127.0.0.1:9000` for a local server; unset for AWS.
    pub endpoint: Option<String>,
    #[serde(default = "d_region")]
    pub region: String,
    #[serde(default = "d_key_env")]
    pub access_key_env: String,
    #[serde(default = "d_secret_env")]
    pub secret_key_env: String,
    /// Environment variable holding a session token (used only when it is set).
    #[serde(default = "d_token_env")]
    pub session_token_env: String,
    /// Attempts per request before a store that is down fails the command (backoff
    /// between attempts grows from 200 ms to 10 s).
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
}

fn d_token_env() -> String {
    "AWS_SESSION_TOKEN".into()
}
fn d_attempts() -> u32 {
    5
}

fn d_region() -> String {
    "us-east-1".into()
}
fn d_key_env() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn d_secret_env() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildDef {
    /// Concurrent CPU-heavy jobs (0 = number of cores).
    #[serde(default)]
    pub jobs: usize,
    /// Concurrent VMs (0 = sized from free memory).
    #[serde(default)]
    pub max_vms: usize,
    /// Seconds a single external program may run.
    #[serde(default = "d_stage_timeout")]
    pub stage_timeout_secs: u64,
    /// Memory cap for every program a build step runs (bootstrap, package installs,
    /// recipe scripts), e.g. `"4G"`: the address-space limit (RLIMIT_AS) of each process
    /// in the step. Unset: no cap. A total cap across processes needs a cgroup: run
    /// goldsmith under `systemd-run --scope -p MemoryMax=…` where systemd manages one.
    pub memory_max: Option<String>,
}

fn d_stage_timeout() -> u64 {
    3600
}

impl Default for BuildDef {
    fn default() -> Self {
        BuildDef {
            jobs: 0,
            max_vms: 0,
            stage_timeout_secs: d_stage_timeout(),
            memory_max: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyHostDef {
    /// `auto` (probe KVM, fall back to TCG), `kvm` or `tcg`.
    #[serde(default = "d_accel")]
    pub accelerator: Spanned<String>,
    /// OVMF firmware; unset means the Debian `ovmf` package's files.
    pub ovmf_code: Option<String>,
    pub ovmf_vars: Option<String>,
    /// Most memory (MiB) an image's `[vm] memory_mib` may give a test VM on this host;
    /// an image asking for more is a configuration error.
    #[serde(default = "d_max_memory")]
    pub max_memory_mib: u32,
    /// Most virtual CPUs an image's `[vm] cpus` may ask for.
    #[serde(default = "d_max_cpus")]
    pub max_cpus: u32,
}

fn d_accel() -> Spanned<String> {
    Spanned::new(0..0, "auto".into())
}
fn d_max_memory() -> u32 {
    8192
}
fn d_max_cpus() -> u32 {
    8
}

impl Default for VerifyHostDef {
    fn default() -> Self {
        VerifyHostDef {
            accelerator: d_accel(),
            ovmf_code: None,
            ovmf_vars: None,
            max_memory_mib: d_max_memory(),
            max_cpus: d_max_cpus(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SigningDef {
    /// minisign secret key file (`goldsmith keygen` writes one).
    pub key: Option<String>,
    /// Public key file, for `verify-signature` and `fetch`.
    pub public_key: Option<String>,
    /// Environment variable holding the key's passphrase (unset: unencrypted key).
    pub passphrase_env: Option<String>,
}

/// A publish target. Exactly one kind is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDef {
    pub registry: Option<RegistryTarget>,
    pub ami: Option<AmiTarget>,
}

/// An OCI registry (distribution API).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryTarget {
    /// `host[:port]`.
    pub registry: String,
    /// Repository name; `{image}` is replaced by the image name.
    #[serde(default = "d_repo")]
    pub repository: String,
    /// Plain HTTP (loopback test registries only).
    #[serde(default)]
    pub insecure: bool,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
}

fn d_repo() -> String {
    "goldsmith/{image}".into()
}

/// AWS AMI through the EBS direct APIs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmiTarget {
    pub region: String,
    /// Further regions the AMI is copied to.
    #[serde(default)]
    pub copy_to_regions: Vec<String>,
    /// Account ids granted launch permission.
    #[serde(default)]
    pub launch_permissions: Vec<String>,
    /// API endpoint override (a local emulator); unset for AWS.
    pub endpoint: Option<String>,
}

/// A rollout sink. Exactly one kind is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDef {
    pub webhook: Option<WebhookSink>,
    pub terraform: Option<TerraformSink>,
    pub command: Option<CommandSink>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSink {
    pub url: String,
    /// Environment variable holding the `whsec_…` signing secret.
    pub secret_env: String,
    #[serde(default = "d_webhook_timeout")]
    pub timeout_secs: u64,
    /// Attempts per run (the first try included); what is still undelivered then stays
    /// pending for the next run or `goldsmith rollout retry`.
    #[serde(default = "d_webhook_attempts")]
    pub max_attempts: u32,
    /// First backoff delay; it doubles per attempt, with random jitter.
    #[serde(default = "d_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Longest backoff delay.
    #[serde(default = "d_backoff_max_secs")]
    pub backoff_max_secs: u64,
    /// Longest `Retry-After` this run waits for; a receiver asking for more gets the
    /// event on the next run.
    #[serde(default = "d_retry_after_max_secs")]
    pub retry_after_max_secs: u64,
}

fn d_webhook_timeout() -> u64 {
    10
}
fn d_webhook_attempts() -> u32 {
    6
}
fn d_backoff_min_ms() -> u64 {
    1000
}
fn d_backoff_max_secs() -> u64 {
    60
}
fn d_retry_after_max_secs() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TerraformSink {
    /// Directory that receives `<group>.auto.tfvars.json`.
    pub dir: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSink {
    pub argv: Vec<String>,
    #[serde(default = "d_webhook_timeout")]
    pub timeout_secs: u64,
}

/// The loaded configuration with its paths resolved against the project root.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory holding goldsmith.toml.
    pub root: PathBuf,
    pub source: Option<SourceFile>,
    pub def: ConfigDef,
}

impl Config {
    /// Load `path`; a missing file at the default location means "all defaults".
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let abs = if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir()
                .map_err(|e| ConfigError {
                    file: path.to_owned(),
                    line: 0,
                    col: 0,
                    message: format!("cannot determine the current directory: {e}"),
                })?
                .join(path)
        };
        let root = abs.parent().unwrap_or(Path::new("/")).to_owned();
        if !abs.exists() && !explicit {
            return Ok(Config {
                root,
                source: None,
                def: ConfigDef::default(),
            });
        }
        let source = SourceFile::read(&abs, &root)?;
        let def: ConfigDef = source.parse()?;
        let cfg = Config {
            root,
            source: Some(source),
            def,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let acc = &self.def.verify.accelerator;
        if !["auto", "kvm", "tcg"].contains(&acc.get_ref().as_str()) {
            let src = self.source.as_ref().expect("validated configs have a file");
            return Err(src.error_at(
                acc.span(),
                format!(
                    "verify.accelerator: '{}' is not one of auto, kvm, tcg",
                    acc.get_ref()
                ),
            ));
        }
        if let Some(m) = &self.def.cache.max_size {
            if let Err(e) = crate::recipe::image::parse_size_mib(m) {
                return Err(self.file_error(format!("cache.max_size: {e}")));
            }
        }
        if let Some(m) = &self.def.build.memory_max {
            if let Err(e) = crate::recipe::image::parse_size_mib(m) {
                return Err(self.file_error(format!("build.memory_max: {e}")));
            }
        }
        if self.def.verify.max_memory_mib < 256 || self.def.verify.max_cpus == 0 {
            return Err(self.file_error(
                "verify.max_memory_mib must be at least 256 and verify.max_cpus at least 1".into(),
            ));
        }
        self.validate_env_names()?;
        for (name, t) in &self.def.targets {
            let n = t.registry.is_some() as u8 + t.ami.is_some() as u8;
            if n != 1 {
                return Err(self.file_error(format!(
                    "targets.{name}: set exactly one of 'registry', 'ami'"
                )));
            }
        }
        for (name, s) in &self.def.sinks {
            let n =
                s.webhook.is_some() as u8 + s.terraform.is_some() as u8 + s.command.is_some() as u8;
            if n != 1 {
                return Err(self.file_error(format!(
                    "sinks.{name}: set exactly one of 'webhook', 'terraform', 'command'"
                )));
            }
            if let Some(w) = &s.webhook {
                if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                    return Err(self.file_error(format!(
                        "sinks.{name}.webhook.url: '{}' is not an http:// or https:// URL",
                        w.url
                    )));
                }
                if w.max_attempts == 0 {
                    return Err(self.file_error(format!(
                        "sinks.{name}.webhook.max_attempts: must be at least 1"
                    )));
                }
            }
            if s.command.as_ref().is_some_and(|c| c.argv.is_empty()) {
                return Err(self.file_error(format!(
                    "sinks.{name}.command.argv: needs at least the program"
                )));
            }
        }
        Ok(())
    }

    /// Every `*_env` key must name an environment variable. Someone who pastes the
    /// credential itself there would otherwise see it echoed in "variable ... is not
    /// set" errors and logs, so the message never repeats the value.
    fn validate_env_names(&self) -> Result<(), ConfigError> {
        let mut keys: Vec<(String, &str)> = Vec::new();
        for (role, s3) in [("store", &self.def.store.s3), ("cache", &self.def.cache.s3)] {
            if let Some(d) = s3 {
                keys.push((format!("{role}.s3.access_key_env"), &d.access_key_env));
                keys.push((format!("{role}.s3.secret_key_env"), &d.secret_key_env));
                keys.push((format!("{role}.s3.session_token_env"), &d.session_token_env));
            }
        }
        if let Some(v) = &self.def.signing.passphrase_env {
            keys.push(("signing.passphrase_env".into(), v));
        }
        for (name, t) in &self.def.targets {
            if let Some(r) = &t.registry {
                if let Some(v) = &r.username_env {
                    keys.push((format!("targets.{name}.registry.username_env"), v));
                }
                if let Some(v) = &r.password_env {
                    keys.push((format!("targets.{name}.registry.password_env"), v));
                }
            }
        }
        for (name, s) in &self.def.sinks {
            if let Some(w) = &s.webhook {
                keys.push((format!("sinks.{name}.webhook.secret_env"), &w.secret_env));
            }
        }
        for (key, value) in keys {
            if !is_env_name(value) {
                // Possibly a pasted credential: it is registered so nothing shows it.
                crate::exec::register_secret(value);
                return Err(self.file_error(format!(
                    "{key}: must be the name of an environment variable (capital \
                     letters, digits and '_'), not the credential itself; credentials \
                     never go into goldsmith.toml"
                )));
            }
        }
        Ok(())
    }

    fn file_error(&self, msg: String) -> ConfigError {
        match &self.source {
            Some(s) => s.error(msg),
            None => ConfigError {
                file: "goldsmith.toml".into(),
                line: 0,
                col: 0,
                message: msg,
            },
        }
    }

    /// A path from the config, made absolute against the project root.
    pub fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.root.join(p)
        }
    }

    pub fn recipes_dir(&self) -> PathBuf {
        self.path(&self.def.recipes_dir)
    }
    pub fn images_dir(&self) -> PathBuf {
        self.path(&self.def.images_dir)
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.path(&self.def.cache.dir)
    }
    /// `[cache] max_size` in bytes (validated at load).
    pub fn cache_max_bytes(&self) -> Option<u64> {
        let m = self.def.cache.max_size.as_ref()?;
        crate::recipe::image::parse_size_mib(m)
            .ok()
            .map(|mib| mib << 20)
    }
    pub fn build_dir(&self) -> PathBuf {
        self.path(&self.def.build_dir)
    }
    pub fn store_dir(&self) -> PathBuf {
        self.path(&self.def.store.path)
    }

    /// SOURCE_DATE_EPOCH from the environment, else the configured value.
    pub fn source_date_epoch(&self) -> i64 {
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(self.def.source_date_epoch)
    }

    /// `build.memory_max` in bytes (validated at load).
    pub fn memory_max_bytes(&self) -> Option<u64> {
        self.def
            .build
            .memory_max
            .as_deref()
            .and_then(|m| crate::recipe::image::parse_size_mib(m).ok())
            .map(|mib| mib << 20)
    }

    /// CPU job slots.
    pub fn jobs(&self) -> usize {
        match self.def.build.jobs {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        }
    }
}

/// `[A-Z_][A-Z0-9_]*`, at most 128 characters: an environment variable name as
/// conventionally written. Capitals only, because a pasted token (`whsec_…`, an AWS
/// secret key, a `ghp_…` token) nearly always has lower-case letters, while variable
/// names practically never do.
pub fn is_env_name(s: &str) -> bool {
    let mut c = s.chars();
    s.len() <= 128
        && c.next().is_some_and(|f| f.is_ascii_uppercase() || f == '_')
        && c.all(|x| x.is_ascii_uppercase() || x.is_ascii_digit() || x == '_')
}
