//! goldsmith's own apt state (one per set of sources under `<cache>/apt/state/`):
//! refreshing its package lists, and resolving with `apt-get -s` the exact package set a
//! layer ends up with. The host's apt configuration and state are never read or written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use super::digest::ResolvedPackage;
use crate::exec::Cmd;
use crate::recipe::Layer;

/// The folder name of the apt state for `sources`.
pub(super) fn sources_key(sources: &[String]) -> String {
    hex::encode(&Sha256::digest(sources.join("\n").as_bytes())[..12])
}

/// When the lists were last changed: their fetch time and their folder's mtime.
type ListsAt = (Option<SystemTime>, Option<SystemTime>);

/// goldsmith's own apt state for one set of sources.
pub(super) struct AptState {
    pub(super) dir: PathBuf,
    pub(super) sources: Vec<String>,
    index: Option<Index>,
    /// The lists' fetch time the index was read at.
    index_from: Option<SystemTime>,
    /// Digest of the lists and the configuration, and what it was taken at (the lists'
    /// fetch time and their folder's mtime: a refresh renames new files into it).
    fingerprint: Option<(ListsAt, Vec<u8>)>,
    /// Exclusive while refreshing, shared while resolving: apt runs here with
    /// `Debug::NoLocking`, so its own lists lock does not keep two goldsmith processes on
    /// one cache (parallel CI jobs, two nightly workers) from refreshing the lists while
    /// the other reads them.
    pub(super) lock: Option<crate::fsutil::FileLock>,
}

/// The Packages indexes: stanzas by (name, version, arch), and priority facts.
pub(super) struct Index {
    pub(super) stanzas: HashMap<(String, String, String), String>,
    pub(super) essential: BTreeSet<String>,
    pub(super) by_priority: HashMap<String, BTreeSet<String>>,
}

impl AptState {
    pub(super) fn new(cache_root: &Path, sources: Vec<String>) -> AptState {
        let dir = cache_root.join("apt/state").join(sources_key(&sources));
        AptState {
            dir,
            sources,
            index: None,
            index_from: None,
            fingerprint: None,
            lock: None,
        }
    }

    /// Hold the state's lock, exclusive or shared, releasing the one held before.
    pub(super) async fn lock(&mut self, exclusive: bool) -> anyhow::Result<()> {
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

    pub(super) fn has_lists(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with("Release"))
            })
            .unwrap_or(false)
    }

    /// Seconds since the newest Release file was fetched.
    pub(super) fn age(&self) -> Option<Duration> {
        self.fetched_at()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
    }

    /// When the newest Release file was fetched: changes whenever a refresh (this run's
    /// or a concurrent one's) brought new lists.
    fn fetched_at(&self) -> Option<SystemTime> {
        let rd = std::fs::read_dir(self.dir.join("lists")).ok()?;
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("Release"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max()
    }

    pub(super) fn prepare(&self) -> std::io::Result<()> {
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
    pub(super) fn apt(&self, status: &Path) -> Cmd {
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
    pub(super) async fn update(&mut self, layer: &str) -> anyhow::Result<()> {
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
        Ok(())
    }

    /// The parsed Packages indexes, read again when the lists changed since they were
    /// read (another goldsmith on the same cache may refresh them between our resolutions).
    pub(super) fn index(&mut self) -> anyhow::Result<&Index> {
        let fetched = self.fetched_at();
        if self.index.is_none() || self.index_from != fetched {
            self.index = Some(Index::load(&self.dir.join("lists"))?);
            self.index_from = fetched;
        }
        Ok(self.index.as_ref().expect("loaded"))
    }

    /// The set a layer ends up with: the bootstrap's set for the base layer, the set below
    /// plus this layer's installs minus its removals otherwise.
    pub(super) async fn resolve_layer(
        &mut self,
        layer: &Layer,
        below: Option<&[ResolvedPackage]>,
    ) -> anyhow::Result<Vec<ResolvedPackage>> {
        // Equal lists, equal request, equal set below: apt gives the same answer, so a run
        // where the archive has nothing new neither parses the indexes nor simulates.
        let memo_key = serde_json::json!({
            "layer": super::resolve::package_request(layer),
            "below": below,
        });
        let memo = self.memo_path(&memo_key)?;
        if let Some(set) = memo.as_deref().and_then(read_memo) {
            tracing::debug!(layer = %layer.name, "package set from the resolution memo");
            return Ok(set);
        }
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
        let set: Vec<ResolvedPackage> = set.into_values().collect();
        if let Some(m) = memo {
            // A memo that cannot be written costs the next run a simulation, nothing more.
            if let Err(e) = write_memo(&m, &set) {
                tracing::debug!("resolution memo {}: {e}", m.display());
            }
        }
        Ok(set)
    }

    /// Digest of every list file's bytes (a flat repository has no Release file whose
    /// hashes would speak for its Packages), the configuration apt resolves under, and
    /// the resolver itself; taken again only when the lists changed. `None` when the
    /// lists cannot be read.
    fn fingerprint(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let at = (
            self.fetched_at(),
            std::fs::metadata(self.dir.join("lists"))
                .and_then(|m| m.modified())
                .ok(),
        );
        if let Some((when, fp)) = &self.fingerprint {
            if *when == at {
                return Ok(Some(fp.clone()));
            }
        }
        let mut h = Sha256::new();
        for sub in ["lists", "etc"] {
            let mut files: Vec<PathBuf> = walkdir::WalkDir::new(self.dir.join(sub))
                .max_depth(2)
                .into_iter()
                .flatten()
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .filter(|p| !p.components().any(|c| c.as_os_str() == "partial"))
                .filter(|p| p.file_name().is_some_and(|n| n != "lock"))
                .collect();
            files.sort();
            for f in files {
                let Ok(mut file) = std::fs::File::open(&f) else {
                    return Ok(None);
                };
                h.update(
                    f.strip_prefix(&self.dir)
                        .unwrap_or(&f)
                        .as_os_str()
                        .as_encoded_bytes(),
                );
                h.update(b"\0");
                std::io::copy(&mut file, &mut h)?;
            }
        }
        // Another apt may choose differently.
        if let Ok(m) = std::fs::metadata("/usr/bin/apt-get") {
            use std::os::unix::fs::MetadataExt;
            h.update(format!("apt-get {} {}", m.len(), m.mtime()).as_bytes());
        }
        let fp = h.finalize().to_vec();
        self.fingerprint = Some((at, fp.clone()));
        Ok(Some(fp))
    }

    /// Where the set for `key` is kept: `resolved/<sha256 of key, the lists and our
    /// apt configuration>.json`. `None` when the lists cannot be read.
    fn memo_path(&mut self, key: &serde_json::Value) -> anyhow::Result<Option<PathBuf>> {
        let Some(fp) = self.fingerprint()? else {
            return Ok(None);
        };
        let mut h = Sha256::new();
        h.update(format!("memo {MEMO_FORMAT}\n").as_bytes());
        h.update(key.to_string().as_bytes());
        h.update(&fp);
        Ok(Some(
            self.dir
                .join("resolved")
                .join(format!("{}.json", hex::encode(h.finalize()))),
        ))
    }

    /// A dpkg status file describing `set` as installed (full stanzas where the index has
    /// them, so apt sees the dependencies).
    pub(super) fn status_for(&mut self, set: &[ResolvedPackage]) -> anyhow::Result<String> {
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

/// Bumped when what a memo holds, or how apt is run for it, changes.
const MEMO_FORMAT: u32 = 1;

/// A remembered package set (`None` when absent or unreadable: resolve again).
fn read_memo(p: &Path) -> Option<Vec<ResolvedPackage>> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Remember a set; memos of lists older than a fortnight are dropped on the way.
fn write_memo(p: &Path, set: &[ResolvedPackage]) -> std::io::Result<()> {
    let dir = p.parent().expect("memo in a folder");
    std::fs::create_dir_all(dir)?;
    let old = SystemTime::now() - Duration::from_secs(14 * 86400);
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < old)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    crate::fsutil::atomic_write_json(p, &set)
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
    pub(super) fn load(lists: &Path) -> anyhow::Result<Index> {
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

    pub(super) fn has(&self, p: &ResolvedPackage) -> bool {
        self.stanzas
            .contains_key(&(p.name.clone(), p.version.clone(), p.arch.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn simulation_output_is_applied() {
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
