//! The installed packages of a tree, read from its dpkg database (no dpkg needed).

use std::path::Path;

use crate::plan::ResolvedPackage;

/// Packages whose status is "install ok installed", sorted by name.
pub fn installed(tree: &Path) -> std::io::Result<Vec<ResolvedPackage>> {
    let p = super::tree::resolve_in(tree, "var/lib/dpkg/status", true)?;
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse_status(&text))
}

/// Parse a dpkg status file.
pub fn parse_status(text: &str) -> Vec<ResolvedPackage> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut ok) = (None, None, None, false);
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                ok = v.trim() == "install ok installed";
            }
        }
        if let (true, Some(name), Some(version), Some(arch)) = (ok, name, version, arch) {
            out.push(ResolvedPackage {
                name,
                version,
                arch,
            });
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_packages() {
        let s = "Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\nArchitecture: all\n\nPackage: c\nStatus: install ok installed\nArchitecture: all\nVersion: 3\nDescription: x\n multi\n";
        let p = parse_status(s);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "a");
        assert_eq!(p[1].version, "3");
    }
}
