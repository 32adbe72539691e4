//! Make a tree fit to be a template, after every layer: no identity of one machine
//! (machine-id, SSH host keys, host name, the build host's resolver), no caches or logs
//! that differ between otherwise identical builds.

use std::path::Path;

use super::tree::resolve_in;

/// Files whose content identifies one machine or one build run.
const REMOVE: &[&str] = &[
    "etc/resolv.conf",
    "var/lib/dbus/machine-id",
    "var/cache/ldconfig/aux-cache",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
];

/// Folders whose contents are emptied (the folders stay).
const EMPTY: &[&str] = &[
    "var/lib/apt/lists",
    "var/cache/apt/archives",
    "tmp",
    "var/tmp",
];

/// Clean `tree` in place.
pub fn clean(tree: &Path) -> std::io::Result<()> {
    for rel in REMOVE {
        let p = resolve_in(tree, rel, false)?;
        // A symlinked resolv.conf (systemd-resolved) belongs to the image; a regular file
        // is the build host's copy.
        if *rel == "etc/resolv.conf" {
            match p.symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => continue,
                _ => {}
            }
        }
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    for rel in EMPTY {
        let d = resolve_in(tree, rel, true)?;
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            // apt's own lock files and partial/ folders are part of a normal tree.
            if name == "lock" || name == "partial" {
                continue;
            }
            let p = e.path();
            if p.symlink_metadata()?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    // machine-id stays as an empty file: systemd then generates one on first boot.
    let mid = resolve_in(tree, "etc/machine-id", true)?;
    if mid.symlink_metadata().is_ok() {
        std::fs::write(&mid, b"")?;
    }
    // The bootstrap copies the build host's name; a template has none of its own.
    let hn = resolve_in(tree, "etc/hostname", true)?;
    if hn.is_file() && std::fs::read(&hn)? != b"localhost\n" {
        std::fs::write(&hn, b"localhost\n")?;
    }
    if let Ok(rd) = std::fs::read_dir(resolve_in(tree, "etc/ssh", true)?) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_machine_identity() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        for f in [
            "etc/machine-id",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/sshd_config",
            "etc/resolv.conf",
            "var/lib/apt/lists/deb.example_Packages",
            "var/log/dpkg.log",
        ] {
            std::fs::create_dir_all(t.join(f).parent().unwrap()).unwrap();
            std::fs::write(t.join(f), "x").unwrap();
        }
        std::fs::create_dir_all(t.join("var/lib/apt/lists/partial")).unwrap();
        clean(t).unwrap();
        assert_eq!(std::fs::read(t.join("etc/machine-id")).unwrap(), b"");
        assert!(!t.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(t.join("etc/ssh/sshd_config").exists());
        assert!(!t.join("etc/resolv.conf").exists());
        assert!(!t.join("var/lib/apt/lists/deb.example_Packages").exists());
        assert!(t.join("var/lib/apt/lists/partial").is_dir());
        assert!(!t.join("var/log/dpkg.log").exists());
    }
}
