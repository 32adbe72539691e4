//! Which archive a base layer is bootstrapped from.
//!
//! No mirror host is written into goldsmith: a layer's `mirror`, else goldsmith.toml's,
//! else the entry for the same suite in this host's own apt sources (which is also what
//! mmdebstrap falls back to). The resolved URLs are passed to mmdebstrap explicitly, so the
//! package resolution and the bootstrap read the same archive.

use std::path::Path;

use serde::Serialize;

use crate::config::Config;
use crate::recipe::layer::Bootstrap;

/// The archives a base layer uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mirrors {
    pub main: String,
    /// `(url, suite)` of the security archive, when the layer asks for one.
    pub security: Option<(String, String)>,
}

impl Mirrors {
    /// One `deb` line per suite, in sources.list one-line format.
    pub fn sources_lines(&self, b: &Bootstrap) -> Vec<String> {
        let comps = b.components.join(" ");
        let mut v = vec![format!("deb {} {} {}", self.main, b.suite, comps)];
        for s in &b.extra_suites {
            v.push(format!("deb {} {} {}", self.main, s, comps));
        }
        if let Some((url, suite)) = &self.security {
            v.push(format!("deb {url} {suite} {comps}"));
        }
        v
    }

    /// A short form for digests and logs.
    pub fn describe(&self) -> String {
        match &self.security {
            Some((u, s)) => format!("{} + {u} {s}", self.main),
            None => self.main.clone(),
        }
    }
}

/// Resolve the mirrors for a bootstrap definition.
pub fn resolve(b: &Bootstrap, config: &Config) -> Result<Mirrors, String> {
    let host = host_sources(Path::new("/etc/apt"));
    let main = b
        .mirror
        .clone()
        .or_else(|| config.def.mirror.clone())
        .or_else(|| find(&host, &b.suite))
        .ok_or_else(|| {
            format!(
                "no mirror for suite '{}': set `mirror` in the layer's [bootstrap] or in goldsmith.toml (this host's apt sources have no entry for that suite)",
                b.suite
            )
        })?;
    let security = match &b.security {
        None => None,
        Some(sec) => {
            let url = sec
                .mirror
                .clone()
                .or_else(|| config.def.security_mirror.clone())
                .or_else(|| find(&host, &sec.suite))
                .ok_or_else(|| {
                    format!(
                        "no mirror for security suite '{}': set bootstrap.security.mirror or security_mirror in goldsmith.toml",
                        sec.suite
                    )
                })?;
            Some((url, sec.suite.clone()))
        }
    };
    Ok(Mirrors {
        main: main.trim_end_matches('/').to_string(),
        security: security.map(|(u, s)| (u.trim_end_matches('/').to_string(), s)),
    })
}

/// `(uri, suite)` pairs of the host's `deb` sources (one-line and deb822 formats).
pub fn host_sources(etc_apt: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(rd) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if f.extension().is_some_and(|e| e == "sources") {
            parse_deb822(&text, &mut out);
        } else {
            parse_one_line(&text, &mut out);
        }
    }
    out
}

fn parse_one_line(text: &str, out: &mut Vec<(String, String)>) {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        // Skip an options block: [arch=amd64 signed-by=…]
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), suite.to_string()));
        }
    }
}

fn parse_deb822(text: &str, out: &mut Vec<(String, String)>) {
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let vals = || v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
            match k.trim().to_ascii_lowercase().as_str() {
                "types" => types = vals(),
                "uris" => uris = vals(),
                "suites" => suites = vals(),
                "enabled" => enabled = v.trim() != "no",
                _ => {}
            }
        }
        if enabled && types.iter().any(|t| t == "deb") {
            for u in &uris {
                for s in &suites {
                    out.push((u.clone(), s.clone()));
                }
            }
        }
    }
}

fn find(sources: &[(String, String)], suite: &str) -> Option<String> {
    sources
        .iter()
        .find(|(u, s)| s == suite && (u.starts_with("http") || u.starts_with("file:")))
        .map(|(u, _)| u.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("sources.list"),
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://a.example/debian trixie main\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://b.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://b.example/debian-security\nSuites: bookworm-security\n",
        )
        .unwrap();
        let s = host_sources(d.path());
        assert_eq!(
            find(&s, "trixie").as_deref(),
            Some("http://a.example/debian")
        );
        assert_eq!(
            find(&s, "bookworm").as_deref(),
            Some("http://b.example/debian")
        );
        assert_eq!(
            find(&s, "bookworm-security").as_deref(),
            Some("http://b.example/debian-security")
        );
        assert_eq!(find(&s, "sid"), None);
    }
}
