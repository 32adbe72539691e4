//! `inventory.toml`: which host groups run which image from which channel, whom to tell
//! when that channel moves, and in which waves the group is rebuilt.
//!
//! ```toml
//! [groups.web-fleet]
//! image = "web"
//! channel = "stable"
//! sinks = ["terraform"]
//! count = 40
//!
//! [[groups.web-fleet.waves]]
//! name = "canary"
//! size = 1
//! pause_secs = 900
//!
//! [[groups.web-fleet.waves]]
//! name = "quarter"
//! percent = 25
//! health_gate = "web-fleet-healthy"
//!
//! [[groups.web-fleet.waves]]
//! name = "rest"
//! rest = true
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::Config;
use crate::recipe::{ConfigErrors, ImageDef, SourceFile};

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryDef {
    /// Host groups by name.
    #[serde(default)]
    pub groups: BTreeMap<Spanned<String>, GroupDef>,
}

/// One host group: hosts that all run the same image from the same channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDef {
    #[serde(default)]
    pub description: String,
    /// Image name (`images/NAME.toml`).
    pub image: Spanned<String>,
    /// Channel the group follows (`nightly`, `stable`, …).
    pub channel: Spanned<String>,
    /// Sinks (`[sinks.NAME]` in goldsmith.toml) told when the group must be rebuilt.
    pub sinks: Spanned<Vec<Spanned<String>>>,
    /// Number of hosts, when the names are not listed.
    pub count: Option<Spanned<u32>>,
    /// Host names, when known.
    pub hosts: Option<Spanned<Vec<String>>>,
    /// Rebuild order; default: one wave with every host.
    #[serde(default)]
    pub waves: Vec<WaveDef>,
}

/// One wave of a rollout. Exactly one of `size`, `percent`, `rest` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveDef {
    pub name: Spanned<String>,
    /// This many hosts.
    pub size: Option<Spanned<u32>>,
    /// This share of the group's hosts (rounded up).
    pub percent: Option<Spanned<u32>>,
    /// Every host not yet rebuilt (the last wave).
    pub rest: Option<Spanned<bool>>,
    /// Seconds to wait after this wave before the next one starts.
    pub pause_secs: Option<u64>,
    /// A health gate the provisioner must see pass after this wave before the next
    /// (a check name or URL it understands; goldsmith passes it on).
    pub health_gate: Option<String>,
}

/// A validated inventory.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The file it came from (for messages).
    pub file: PathBuf,
    pub groups: BTreeMap<String, Group>,
}

/// A validated host group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub name: String,
    pub description: String,
    pub image: String,
    pub channel: String,
    pub sinks: Vec<String>,
    pub count: Option<u32>,
    pub hosts: Vec<String>,
    pub waves: Vec<Wave>,
}

/// How big a wave is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaveSize {
    Hosts(u32),
    Percent(u32),
    Rest,
}

/// A validated wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wave {
    pub name: String,
    pub size: WaveSize,
    pub pause_secs: Option<u64>,
    pub health_gate: Option<String>,
}

impl Group {
    /// Number of hosts, when known (listed names win over `count`).
    pub fn host_count(&self) -> Option<u32> {
        if self.hosts.is_empty() {
            self.count
        } else {
            Some(self.hosts.len() as u32)
        }
    }

    /// The waves with concrete host counts (and names, when listed) where the group's
    /// size is known. Percentages round up, so a 25 % wave of 3 hosts is 1 host; a wave
    /// never takes more hosts than are left.
    pub fn resolve_waves(&self) -> Vec<ResolvedWave> {
        let total = self.host_count();
        let mut taken: u32 = 0;
        self.waves
            .iter()
            .map(|w| {
                let n = total.map(|total| {
                    let left = total - taken;
                    let want = match w.size {
                        WaveSize::Hosts(n) => n,
                        WaveSize::Percent(p) => (total * p).div_ceil(100),
                        WaveSize::Rest => left,
                    };
                    want.min(left)
                });
                let hosts = match n {
                    Some(n) if !self.hosts.is_empty() => {
                        self.hosts[taken as usize..(taken + n) as usize].to_vec()
                    }
                    _ => Vec::new(),
                };
                taken += n.unwrap_or(0);
                ResolvedWave {
                    name: w.name.clone(),
                    size: n,
                    percent: match w.size {
                        WaveSize::Percent(p) => Some(p),
                        _ => None,
                    },
                    rest: w.size == WaveSize::Rest,
                    hosts,
                    pause_secs: w.pause_secs,
                    health_gate: w.health_gate.clone(),
                }
            })
            .collect()
    }
}

/// A wave as the event carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedWave {
    pub name: String,
    /// Hosts in this wave, when the group's size is known.
    pub size: Option<u32>,
    /// The share of the group this wave was defined as.
    pub percent: Option<u32>,
    /// The wave takes every host not yet rebuilt.
    pub rest: bool,
    /// Host names, when the inventory lists them.
    pub hosts: Vec<String>,
    pub pause_secs: Option<u64>,
    pub health_gate: Option<String>,
}

impl Inventory {
    /// Groups that follow `image` on `channel`.
    pub fn groups_on<'a>(
        &'a self,
        image: &'a str,
        channel: &'a str,
    ) -> impl Iterator<Item = &'a Group> + 'a {
        self.groups
            .values()
            .filter(move |g| g.image == image && g.channel == channel)
    }
}

/// Load and validate the inventory named in goldsmith.toml; `Ok(None)` when none is
/// configured. Every error is collected, each naming file:line:col.
pub fn load(config: &Config) -> Result<Option<Inventory>, ConfigErrors> {
    let Some(rel) = &config.def.inventory else {
        return Ok(None);
    };
    let path = config.path(rel);
    let source = SourceFile::read(&path, &config.root)?;
    let def: InventoryDef = source.parse()?;
    let images = image_files(config);
    validate(config, &source, def, &images).map(Some)
}

/// The image definitions on disk: name -> (file, parsed definition when it parses).
/// Parse errors are the recipe validation's to report; here an image that exists but
/// does not parse only skips the `host_groups` cross-check.
fn image_files(config: &Config) -> BTreeMap<String, Option<(SourceFile, ImageDef)>> {
    let dir = config.images_dir();
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "toml") || !p.is_file() {
            continue;
        }
        let Some(name) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let parsed = SourceFile::read(&p, &config.root)
            .ok()
            .and_then(|s| s.parse::<ImageDef>().ok().map(|d| (s, d)));
        out.insert(name, parsed);
    }
    out
}

/// Group names become file names (`<group>.auto.tfvars.json`) and store keys.
fn valid_group_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn validate(
    config: &Config,
    src: &SourceFile,
    def: InventoryDef,
    images: &BTreeMap<String, Option<(SourceFile, ImageDef)>>,
) -> Result<Inventory, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let mut groups = BTreeMap::new();
    for (name, g) in def.groups {
        let key = format!("groups.{}", name.get_ref());
        if !valid_group_name(name.get_ref()) {
            errs.push(src.error_at(
                name.span(),
                format!(
                    "{key}: group names are letters, digits, '-', '_' and '.' (at most 64, starting with a letter or digit)"
                ),
            ));
        }
        if !images.contains_key(g.image.get_ref()) {
            errs.push(src.error_at(
                g.image.span(),
                format!(
                    "{key}.image: no such image '{}' (no {}/{}.toml); images: {}",
                    g.image.get_ref(),
                    config.def.images_dir,
                    g.image.get_ref(),
                    images.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if g.channel.get_ref().is_empty() || g.channel.get_ref().contains('/') {
            errs.push(src.error_at(
                g.channel.span(),
                format!(
                    "{key}.channel: '{}' is not a channel name",
                    g.channel.get_ref()
                ),
            ));
        }
        if g.sinks.get_ref().is_empty() {
            errs.push(src.error_at(
                g.sinks.span(),
                format!(
                    "{key}.sinks: a group needs at least one sink, or nobody is told to rebuild it"
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in g.sinks.get_ref().iter().enumerate() {
            if !config.def.sinks.contains_key(s.get_ref()) {
                let known: Vec<_> = config.def.sinks.keys().cloned().collect();
                errs.push(src.error_at(
                    s.span(),
                    format!(
                        "{key}.sinks[{i}]: no sink '{}' in goldsmith.toml ([sinks.{}]); sinks: {}",
                        s.get_ref(),
                        s.get_ref(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            if !seen.insert(s.get_ref().clone()) {
                errs.push(src.error_at(
                    s.span(),
                    format!("{key}.sinks[{i}]: sink '{}' is listed twice", s.get_ref()),
                ));
            }
        }
        let hosts = g
            .hosts
            .as_ref()
            .map(|h| h.get_ref().clone())
            .unwrap_or_default();
        if let (Some(c), Some(_)) = (&g.count, &g.hosts) {
            errs.push(src.error_at(
                c.span(),
                format!("{key}: set 'count' or 'hosts', not both (the host list gives the count)"),
            ));
        }
        if let Some(c) = &g.count {
            if *c.get_ref() == 0 {
                errs.push(src.error_at(c.span(), format!("{key}.count: must be at least 1")));
            }
        }
        if let Some(h) = &g.hosts {
            let mut seen = BTreeSet::new();
            if h.get_ref().is_empty() {
                errs.push(src.error_at(h.span(), format!("{key}.hosts: empty list")));
            }
            for n in h.get_ref() {
                if n.trim().is_empty() || !seen.insert(n) {
                    errs.push(src.error_at(
                        h.span(),
                        format!("{key}.hosts: '{n}' is empty or listed twice"),
                    ));
                }
            }
        }
        let waves = validate_waves(src, &key, &g, &mut errs);
        groups.insert(
            name.get_ref().clone(),
            Group {
                name: name.get_ref().clone(),
                description: g.description.clone(),
                image: g.image.get_ref().clone(),
                channel: g.channel.get_ref().clone(),
                sinks: g
                    .sinks
                    .get_ref()
                    .iter()
                    .map(|s| s.get_ref().clone())
                    .collect(),
                count: g.count.as_ref().map(|c| *c.get_ref()),
                hosts,
                waves,
            },
        );
    }
    check_image_host_groups(&groups, images, &mut errs);
    errs.into_result(Inventory {
        file: src.display.clone(),
        groups,
    })
}

fn validate_waves(src: &SourceFile, key: &str, g: &GroupDef, errs: &mut ConfigErrors) -> Vec<Wave> {
    if g.waves.is_empty() {
        return vec![Wave {
            name: "all".into(),
            size: WaveSize::Rest,
            pause_secs: None,
            health_gate: None,
        }];
    }
    let total = match (&g.hosts, &g.count) {
        (Some(h), _) => Some(h.get_ref().len() as u32),
        (None, Some(c)) => Some(*c.get_ref()),
        _ => None,
    };
    let mut names = BTreeSet::new();
    let mut fixed: u32 = 0;
    let mut out = Vec::new();
    let last = g.waves.len() - 1;
    for (i, w) in g.waves.iter().enumerate() {
        let wk = format!("{key}.waves[{i}]");
        if !names.insert(w.name.get_ref().clone()) {
            errs.push(src.error_at(
                w.name.span(),
                format!("{wk}.name: wave '{}' is named twice", w.name.get_ref()),
            ));
        }
        let rest = w.rest.as_ref().is_some_and(|r| *r.get_ref());
        let n = w.size.is_some() as u8 + w.percent.is_some() as u8 + rest as u8;
        if n != 1 {
            errs.push(src.error_at(
                w.name.span(),
                format!("{wk}: set exactly one of 'size', 'percent', 'rest = true'"),
            ));
        }
        let size = if let Some(s) = &w.size {
            if *s.get_ref() == 0 {
                errs.push(src.error_at(s.span(), format!("{wk}.size: must be at least 1")));
            }
            fixed += *s.get_ref();
            WaveSize::Hosts(*s.get_ref())
        } else if let Some(p) = &w.percent {
            if !(1..=100).contains(p.get_ref()) {
                errs.push(src.error_at(
                    p.span(),
                    format!("{wk}.percent: {} is not between 1 and 100", p.get_ref()),
                ));
            }
            WaveSize::Percent(*p.get_ref())
        } else {
            WaveSize::Rest
        };
        if let Some(r) = w.rest.as_ref().filter(|_| rest && i != last) {
            errs.push(src.error_at(
                r.span(),
                format!("{wk}.rest: only the last wave can take the rest"),
            ));
        }
        if i == last && !rest {
            errs.push(src.error_at(
                w.name.span(),
                format!("{wk}: the last wave must set 'rest = true', so every host is rebuilt"),
            ));
        }
        if i == last && (w.pause_secs.is_some() || w.health_gate.is_some()) {
            errs.push(src.error_at(
                w.name.span(),
                format!("{wk}: no wave follows the last one, so 'pause_secs' and 'health_gate' mean nothing here"),
            ));
        }
        out.push(Wave {
            name: w.name.get_ref().clone(),
            size,
            pause_secs: w.pause_secs,
            health_gate: w.health_gate.clone(),
        });
    }
    if let Some(total) = total {
        if fixed > total {
            errs.push(src.error_at(
                g.waves[0].name.span(),
                format!("{key}.waves: the waves' sizes add up to {fixed} hosts, but the group has {total}"),
            ));
        }
    }
    out
}

/// Each image's `host_groups` must name inventory groups that run that image.
fn check_image_host_groups(
    groups: &BTreeMap<String, Group>,
    images: &BTreeMap<String, Option<(SourceFile, ImageDef)>>,
    errs: &mut ConfigErrors,
) {
    for (image, parsed) in images {
        let Some((src, def)) = parsed else { continue };
        for (i, hg) in def.host_groups.iter().enumerate() {
            match groups.get(hg.get_ref()) {
                None => errs.push(src.error_at(
                    hg.span(),
                    format!(
                        "host_groups[{i}]: no group '{}' in the inventory; groups: {}",
                        hg.get_ref(),
                        groups.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )),
                Some(g) if g.image != *image => errs.push(src.error_at(
                    hg.span(),
                    format!(
                        "host_groups[{i}]: group '{}' runs image '{}' in the inventory, not '{image}'",
                        hg.get_ref(),
                        g.image
                    ),
                )),
                Some(_) => {}
            }
        }
    }
}

/// The inventory file's path, for messages.
pub fn path(config: &Config) -> Option<PathBuf> {
    config.def.inventory.as_deref().map(|p| config.path(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Load `inventory` in a project with images `web` (host_groups = ["web"]) and
    /// `base`, and one sink `tf`.
    fn load_text(inventory: &str) -> Result<Option<Inventory>, ConfigErrors> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("images")).unwrap();
        std::fs::write(
            p.join("images/web.toml"),
            "layers = [\"x\"]\nhost_groups = [\"web\"]\n",
        )
        .unwrap();
        std::fs::write(p.join("images/base.toml"), "layers = [\"x\"]\n").unwrap();
        std::fs::write(
            p.join("goldsmith.toml"),
            "inventory = \"inventory.toml\"\n[sinks.tf.terraform]\ndir = \"tf\"\n",
        )
        .unwrap();
        std::fs::write(p.join("inventory.toml"), inventory).unwrap();
        let cfg = Config::load(&p.join("goldsmith.toml"), true).unwrap();
        load(&cfg)
    }

    fn messages(r: Result<Option<Inventory>, ConfigErrors>) -> Vec<String> {
        r.unwrap_err().0.iter().map(|e| e.to_string()).collect()
    }

    const WEB: &str = "[groups.web]\nimage = \"web\"\nchannel = \"stable\"\nsinks = [\"tf\"]\n";

    #[test]
    fn waves_resolve_to_host_counts_and_names() {
        let inv = load_text(&format!(
            "{WEB}hosts = [\"a\", \"b\", \"c\", \"d\", \"e\"]\n\
             [[groups.web.waves]]\nname = \"canary\"\nsize = 1\npause_secs = 60\n\
             [[groups.web.waves]]\nname = \"quarter\"\npercent = 25\n\
             [[groups.web.waves]]\nname = \"rest\"\nrest = true\n"
        ))
        .unwrap()
        .unwrap();
        let w = inv.groups["web"].resolve_waves();
        // 25 % of 5 rounds up to 2.
        assert_eq!(
            w.iter().map(|w| w.size).collect::<Vec<_>>(),
            [Some(1), Some(2), Some(2)]
        );
        assert_eq!(w[0].hosts, ["a"]);
        assert_eq!(w[1].hosts, ["b", "c"]);
        assert_eq!(w[2].hosts, ["d", "e"]);
        assert_eq!(w[0].pause_secs, Some(60));
    }

    #[test]
    fn waves_without_a_known_size_keep_their_shape() {
        let inv = load_text(WEB).unwrap().unwrap();
        let w = inv.groups["web"].resolve_waves();
        assert_eq!(w.len(), 1);
        assert!(w[0].rest && w[0].size.is_none() && w[0].hosts.is_empty());
        // A wave never takes more than is left: 3 hosts, waves of 2 and 100 %.
        let inv = load_text(&format!(
            "{WEB}count = 3\n[[groups.web.waves]]\nname = \"a\"\nsize = 2\n\
             [[groups.web.waves]]\nname = \"b\"\npercent = 100\n\
             [[groups.web.waves]]\nname = \"c\"\nrest = true\n"
        ))
        .unwrap()
        .unwrap();
        let sizes: Vec<_> = inv.groups["web"]
            .resolve_waves()
            .iter()
            .map(|w| w.size)
            .collect();
        assert_eq!(sizes, [Some(2), Some(1), Some(0)]);
    }

    #[test]
    fn bad_groups_and_waves_are_errors_with_lines() {
        let errs = messages(load_text(&format!(
            "{WEB}count = 2\nhosts = [\"a\", \"a\"]\n\
             [[groups.web.waves]]\nname = \"one\"\nrest = true\n\
             [[groups.web.waves]]\nname = \"two\"\nsize = 5\npercent = 10\n"
        )));
        let want = [
            "inventory.toml:5:9: groups.web: set 'count' or 'hosts', not both",
            "inventory.toml:6:9: groups.web.hosts: 'a' is empty or listed twice",
            "inventory.toml:9:8: groups.web.waves[0].rest: only the last wave can take the rest",
            "inventory.toml:11:8: groups.web.waves[1]: set exactly one of 'size', 'percent', 'rest = true'",
            "inventory.toml:11:8: groups.web.waves[1]: the last wave must set 'rest = true'",
            "groups.web.waves: the waves' sizes add up to 5 hosts, but the group has 2",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.contains(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn a_group_of_another_image_named_by_host_groups_is_an_error() {
        let errs = messages(load_text(
            "[groups.web]\nimage = \"base\"\nchannel = \"stable\"\nsinks = [\"tf\"]\n",
        ));
        assert_eq!(
            errs,
            ["images/web.toml:2:16: host_groups[0]: group 'web' runs image 'base' in the inventory, not 'web'"]
        );
        let errs = messages(load_text(
            "[groups.other]\nimage = \"base\"\nchannel = \"stable\"\nsinks = []\n",
        ));
        assert!(
            errs.iter()
                .any(|e| e.contains("no group 'web' in the inventory")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("needs at least one sink")),
            "{errs:?}"
        );
    }

    #[test]
    fn no_inventory_configured_is_none() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("goldsmith.toml"), "").unwrap();
        let cfg = Config::load(&d.path().join("goldsmith.toml"), true).unwrap();
        assert!(load(&cfg).unwrap().is_none());
    }
}
