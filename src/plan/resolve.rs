//! Upstream-aware digests: resolve, with apt itself, the full package set every layer
//! will end up with against the archive's current indexes.
//!
//! goldsmith keeps apt state of its own (never the host's): one folder per set of
//! sources under `<cache>/apt/state/`, whose lists are refreshed once per run with
//! conditional requests (apt keeps them), so a run where the archive has nothing new is
//! a few `304 Not Modified` and some local simulation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::digest::ResolvedPackage;
use super::mirror::{self, Mirrors};
use crate::exec::Cmd;
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
        let v = serde_json::json!({
            "bootstrap": l.def.bootstrap.as_ref().map(|b| b.get_ref()),
            "repositories": l.def.repositories,
            "install": l.def.packages.install.iter().map(|p| p.get_ref()).collect::<Vec<_>>(),
            "remove": l.def.packages.remove.iter().map(|p| p.get_ref()).collect::<Vec<_>>(),
        });
        h.update(v.to_string().as_bytes());
    }
    hex::encode(h.finalize())
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
                        // Another run may have refreshed it meanwhile: read it again.
                        other.index = None;
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

fn sources_key(sources: &[String]) -> String {
    hex::encode(&Sha256::digest(sources.join("\n").as_bytes())[..12])
}

fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// goldsmith's own apt state for one set of sources.
struct AptState {
    dir: PathBuf,
    sources: Vec<String>,
    index: Option<Index>,
    /// Exclusive while refreshing, shared while resolving: apt runs here with
    /// `Debug::NoLocking`, so its own lists lock does not keep two goldsmith processes on
    /// one cache (parallel CI jobs, two nightly workers) from refreshing the lists while
    /// the other reads them.
    lock: Option<crate::fsutil::FileLock>,
}

/// The Packages indexes: stanzas by (name, version, arch), and priority facts.
struct Index {
    stanzas: HashMap<(String, String, String), String>,
    essential: BTreeSet<String>,
    by_priority: HashMap<String, BTreeSet<String>>,
}

impl AptState {
    fn new(cache_root: &Path, sources: Vec<String>) -> AptState {
        let dir = cache_root.join("apt/state").join(sources_key(&sources));
        AptState {
            dir,
            sources,
            index: None,
            lock: None,
        }
    }

    /// Hold the state's lock, exclusive or shared, releasing the one held before.
    async fn lock(&mut self, exclusive: bool) -> anyhow::Result<()> {
        self.lock = None;
        let path = self.dir.with_extension("lock");
        let lock = tokio::task::spawn_blocking(move || {
            if exclusive {
                crate::fsutil::FileLock::acquire(&path)
            } else {
                crate::fsutil::FileLock::acquire_shared(&path)
            }
        })
        .await??;
        self.lock = Some(lock);
        Ok(())
    }

    fn has_lists(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with("Release"))
            })
            .unwrap_or(false)
    }

    /// Seconds since the newest Release file was fetched.
    fn age(&self) -> Option<Duration> {
        let rd = std::fs::read_dir(self.dir.join("lists")).ok()?;
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("Release"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
    }

    fn prepare(&self) -> std::io::Result<()> {
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/apt.conf.d",
            "etc/preferences.d",
            "log",
        ] {
            std::fs::create_dir_all(self.dir.join(d))?;
        }
        crate::fsutil::atomic_write(
            &self.dir.join("etc/sources.list"),
            (self.sources.join("\n") + "\n").as_bytes(),
        )?;
        let empty = self.dir.join("empty-status");
        if !empty.exists() {
            std::fs::write(&empty, b"")?;
        }
        // apt reads APT_CONFIG, then the parts folder it names, before any -o option: so
        // the host's apt.conf.d (compressed lists, appstream, proxies of its own) is kept
        // out here, not on the command line.
        let conf = format!(
            "Dir::Etc::main \"/dev/null\";\nDir::Etc::Parts \"{}\";\n",
            self.dir.join("etc/apt.conf.d").display()
        );
        crate::fsutil::atomic_write(&self.dir.join("etc/apt.conf"), conf.as_bytes())
    }

    /// apt-get with this state and `status` as the dpkg database; nothing of the host's
    /// apt configuration or state is read or written.
    fn apt(&self, status: &Path) -> Cmd {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let opts = [
            format!("Dir::Etc::SourceList={}", d("etc/sources.list")),
            format!("Dir::Etc::SourceParts={}", d("etc/sources.list.d")),
            format!("Dir::Etc::Parts={}", d("etc/apt.conf.d")),
            format!("Dir::Etc::Preferences={}", d("etc/preferences")),
            format!("Dir::Etc::PreferencesParts={}", d("etc/preferences.d")),
            format!("Dir::State={}", d("state")),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::State::status={}", status.display()),
            format!("Dir::Cache={}", d("cache")),
            format!("Dir::Log={}", d("log")),
            "Debug::NoLocking=1".into(),
            "APT::Architecture=amd64".into(),
            "APT::Architectures::=amd64".into(),
            "Acquire::Languages=none".into(),
            "Acquire::Retries=2".into(),
            "Acquire::http::Timeout=20".into(),
            "APT::Sandbox::User=root".into(),
            "APT::Install-Recommends=0".into(),
        ];
        let mut c = Cmd::new("apt-get")
            .env("APT_CONFIG", self.dir.join("etc/apt.conf"))
            .timeout(Duration::from_secs(600));
        for o in opts {
            c = c.arg("-o").arg(o);
        }
        c
    }

    /// `apt-get update` (conditional: unchanged indexes are not downloaded again).
    async fn update(&mut self, layer: &str) -> anyhow::Result<()> {
        self.prepare()?;
        let out = self
            .apt(&self.dir.join("empty-status"))
            .arg("update")
            .run_unchecked()
            .await?;
        let text = format!("{}\n{}", out.stdout_str(), out.stderr_tail);
        // apt-get update exits 0 on some fetch failures; any "Err:" or "E:" line is one.
        let failed: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("Err:") || l.starts_with("E:") || l.starts_with("W: Failed to fetch")
            })
            .collect();
        if !out.status.success() || !failed.is_empty() {
            anyhow::bail!(
                "layer {layer}: cannot refresh the package indexes from {}:\n{}\n(the cached indexes are not used as if they were current; pass --offline to build from them on purpose)",
                self.sources.join("; "),
                if failed.is_empty() { text.trim().to_string() } else { failed.join("\n") }
            );
        }
        self.index = None;
        Ok(())
    }

    fn index(&mut self) -> anyhow::Result<&Index> {
        if self.index.is_none() {
            self.index = Some(Index::load(&self.dir.join("lists"))?);
        }
        Ok(self.index.as_ref().expect("loaded"))
    }

    /// The set a layer ends up with: the bootstrap's set for the base layer, the set below
    /// plus this layer's installs minus its removals otherwise.
    async fn resolve_layer(
        &mut self,
        layer: &Layer,
        below: Option<&[ResolvedPackage]>,
    ) -> anyhow::Result<Vec<ResolvedPackage>> {
        let mut args: Vec<String> = Vec::new();
        let status_text = match (&layer.def.bootstrap, below) {
            (Some(b), _) => {
                let idx = self.index()?;
                let variant = b.get_ref().variant.get_ref().as_str();
                let mut names: BTreeSet<String> = idx.essential.clone();
                let prios: &[&str] = match variant {
                    "essential" => &[],
                    "apt" => &[],
                    "minbase" | "required" => &["required"],
                    "important" => &["required", "important"],
                    _ => &["required", "important", "standard"],
                };
                for p in prios {
                    if let Some(s) = idx.by_priority.get(*p) {
                        names.extend(s.iter().cloned());
                    }
                }
                if variant != "essential" {
                    names.insert("apt".into());
                }
                args.extend(names);
                String::new()
            }
            (None, Some(below)) => self.status_for(below)?,
            (None, None) => String::new(),
        };
        args.extend(
            layer
                .def
                .packages
                .install
                .iter()
                .map(|p| p.get_ref().clone()),
        );
        args.extend(
            layer
                .def
                .packages
                .remove
                .iter()
                .map(|p| format!("{}-", p.get_ref())),
        );
        let status = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::fs::write(status.path(), status_text)?;
        let out = self
            .apt(status.path())
            .args(["-s", "-q", "install"])
            .args(&args)
            .run_unchecked()
            .await?;
        if !out.status.success() {
            anyhow::bail!(
                "layer {}: apt cannot resolve its packages against {}:\n{}",
                layer.name,
                self.sources.join("; "),
                format!("{}\n{}", out.stdout_str(), out.stderr_tail)
                    .lines()
                    .filter(|l| l.starts_with("E:") || l.contains("Depends:") || l.contains("but"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let mut set: BTreeMap<String, ResolvedPackage> = below
            .filter(|_| layer.def.bootstrap.is_none())
            .unwrap_or_default()
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        apply_simulation(&out.stdout_str(), &mut set);
        Ok(set.into_values().collect())
    }

    /// A dpkg status file describing `set` as installed (full stanzas where the index has
    /// them, so apt sees the dependencies).
    fn status_for(&mut self, set: &[ResolvedPackage]) -> anyhow::Result<String> {
        let idx = self.index()?;
        let mut s = String::new();
        for p in set {
            match idx
                .stanzas
                .get(&(p.name.clone(), p.version.clone(), p.arch.clone()))
            {
                Some(stanza) => {
                    let mut lines = stanza.lines();
                    if let Some(first) = lines.next() {
                        let _ = writeln!(s, "{first}\nStatus: install ok installed");
                    }
                    for l in lines {
                        let _ = writeln!(s, "{l}");
                    }
                }
                None => {
                    let _ = writeln!(
                        s,
                        "Package: {}\nStatus: install ok installed\nVersion: {}\nArchitecture: {}",
                        p.name, p.version, p.arch
                    );
                }
            }
            s.push('\n');
        }
        Ok(s)
    }
}

/// Apply `apt-get -s` output (Inst/Remv/Purg lines) to a set.
fn apply_simulation(stdout: &str, set: &mut BTreeMap<String, ResolvedPackage>) {
    static INST: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static REMV: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let inst = INST.get_or_init(|| {
        regex::Regex::new(r"^Inst (\S+?)(?::\S+)? (?:\[[^\]]*\] )?\((\S+) .*\[([A-Za-z0-9_-]+)\]\)")
            .unwrap()
    });
    let remv = REMV.get_or_init(|| regex::Regex::new(r"^(?:Remv|Purg) (\S+?)(?::\S+)? ").unwrap());
    for line in stdout.lines() {
        if let Some(c) = inst.captures(line) {
            set.insert(
                c[1].to_string(),
                ResolvedPackage {
                    name: c[1].to_string(),
                    version: c[2].to_string(),
                    arch: c[3].to_string(),
                },
            );
        } else if let Some(c) = remv.captures(line) {
            set.remove(&c[1]);
        }
    }
}

impl Index {
    fn load(lists: &Path) -> anyhow::Result<Index> {
        let mut idx = Index {
            stanzas: HashMap::new(),
            essential: BTreeSet::new(),
            by_priority: HashMap::new(),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(lists)
            .with_context(|| format!("reading {}", lists.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with("_Packages"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            anyhow::bail!(
                "no package indexes in {} (is the archive reachable, and does it have the suite?)",
                lists.display()
            );
        }
        for f in files {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            for stanza in text.split("\n\n") {
                let (mut name, mut version, mut arch) = (None, None, None);
                let mut essential = false;
                let mut priority = None;
                for line in stanza.lines() {
                    if let Some(v) = line.strip_prefix("Package: ") {
                        name = Some(v.trim());
                    } else if let Some(v) = line.strip_prefix("Version: ") {
                        version = Some(v.trim());
                    } else if let Some(v) = line.strip_prefix("Architecture: ") {
                        arch = Some(v.trim());
                    } else if line == "Essential: yes" {
                        essential = true;
                    } else if let Some(v) = line.strip_prefix("Priority: ") {
                        priority = Some(v.trim());
                    }
                }
                let (Some(n), Some(v), Some(a)) = (name, version, arch) else {
                    continue;
                };
                if essential {
                    idx.essential.insert(n.to_string());
                }
                if let Some(p) = priority {
                    idx.by_priority
                        .entry(p.to_string())
                        .or_default()
                        .insert(n.to_string());
                }
                idx.stanzas.insert(
                    (n.to_string(), v.to_string(), a.to_string()),
                    stanza.trim().to_string(),
                );
            }
        }
        Ok(idx)
    }

    fn has(&self, p: &ResolvedPackage) -> bool {
        self.stanzas
            .contains_key(&(p.name.clone(), p.version.clone(), p.arch.clone()))
    }
}

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
    fn layer_set(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_output_is_applied() {
        let mut set = BTreeMap::new();
        set.insert(
            "old".to_string(),
            ResolvedPackage {
                name: "old".into(),
                version: "1".into(),
                arch: "all".into(),
            },
        );
        set.insert(
            "libc6".to_string(),
            ResolvedPackage {
                name: "libc6".into(),
                version: "2.36-9".into(),
                arch: "amd64".into(),
            },
        );
        let out = "NOTE: This is only a simulation!\nInst libc6 [2.36-9] (2.36-9+deb12u10 Debian:12.11/stable, Debian-Security:12/stable-security [amd64])\nInst gs-demo (1.1 localhost [all])\nRemv old [1]\nConf gs-demo (1.1 localhost [all])\n";
        apply_simulation(out, &mut set);
        assert_eq!(set["libc6"].version, "2.36-9+deb12u10");
        assert_eq!(set["gs-demo"].arch, "all");
        assert!(!set.contains_key("old"));
    }
}
