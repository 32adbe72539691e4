//! Image trees: snapshots of their metadata and the diff a layer made (what its cache
//! entry holds: see `layer_tar`), and resolving paths inside a tree as the image would.
//!
//! Change detection uses (inode, mode, owner, size, mtime, ctime): ctime moves on every
//! content or metadata change and cannot be set from user space, so nothing a layer does
//! escapes the diff, and no file content has to be hashed to find the changes.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The host path of `rel` inside the image tree at `root`, resolved as the image itself
/// would resolve it (as if `root` were `/`): symlinks are followed, absolute ones from
/// `root`, and neither they nor `..` ever lead out of it. With `follow_last = false` the
/// final component is not resolved, for operations on a symlink itself (removal).
/// Components that do not exist are kept as they are.
///
/// Everything goldsmith does to a tree from the host (cleaning, writing fstab, reading
/// the kernel) goes through this: a layer may leave `/var/tmp -> /home` or
/// `/etc/ssh -> /etc/ssh` behind, which a plain `root.join(..)` would follow into the
/// build host. No sandboxed step runs while goldsmith does this, so nothing can swap a
/// component between the check and the use.
pub fn resolve_in(root: &Path, rel: impl AsRef<Path>, follow_last: bool) -> io::Result<PathBuf> {
    use std::ffi::OsString;
    use std::path::Component;
    fn push_rev(pending: &mut Vec<OsString>, p: &Path) {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_os_string()),
                Component::ParentDir => pending.push(OsString::from("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    let mut pending: Vec<OsString> = Vec::new();
    push_rev(&mut pending, rel.as_ref());
    let mut cur = root.to_path_buf();
    let mut depth = 0usize;
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            if depth > 0 {
                cur.pop();
                depth -= 1;
            }
            continue;
        }
        let next = cur.join(&c);
        if pending.is_empty() && !follow_last {
            return Ok(next);
        }
        match next.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links resolving /{} in the image",
                        rel.as_ref().display()
                    )));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    cur = root.to_path_buf();
                    depth = 0;
                }
                push_rev(&mut pending, &target);
            }
            _ => {
                cur = next;
                depth += 1;
            }
        }
    }
    Ok(cur)
}

/// Metadata of one tree entry, enough to notice any change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

/// Every entry of a tree by relative path (`""` is the root itself).
pub type Snapshot = BTreeMap<PathBuf, EntryMeta>;

fn meta_of(m: &std::fs::Metadata) -> EntryMeta {
    EntryMeta {
        ino: m.ino(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

/// Walk `root` (not following symlinks, not crossing into other file systems).
pub fn snapshot(root: &Path) -> io::Result<Snapshot> {
    let mut s = Snapshot::new();
    for e in walkdir::WalkDir::new(root).same_file_system(true) {
        let e = e.map_err(io::Error::other)?;
        let rel = e
            .path()
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_path_buf();
        let m = e.path().symlink_metadata()?;
        s.insert(rel, meta_of(&m));
    }
    Ok(s)
}

/// What a layer did to a tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Added or modified entries, sorted.
    pub changed: Vec<PathBuf>,
    /// Removed entries (only the topmost of a removed subtree), sorted.
    pub deleted: Vec<PathBuf>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty()
    }
}

/// Compare two snapshots of the same tree.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Diff {
    let mut d = Diff::default();
    for (p, m) in after {
        if p.as_os_str().is_empty() {
            continue; // the root itself is not an entry of a layer
        }
        match before.get(p) {
            Some(old) if old == m => {}
            _ => d.changed.push(p.clone()),
        }
    }
    for p in before.keys() {
        if p.as_os_str().is_empty() || after.contains_key(p) {
            continue;
        }
        // A removed directory's children need no whiteouts of their own.
        if p.parent()
            .is_some_and(|parent| !parent.as_os_str().is_empty() && !after.contains_key(parent))
        {
            continue;
        }
        d.deleted.push(p.clone());
    }
    // A path that changed type (file <-> directory) must also hide what was below it.
    for p in &d.changed {
        if let (Some(a), Some(b)) = (before.get(p), after.get(p)) {
            if (a.mode & libc::S_IFMT) != (b.mode & libc::S_IFMT) {
                d.deleted.push(p.clone());
            }
        }
    }
    d.deleted.sort();
    d.deleted.dedup();
    d
}

/// Set the mtime of every changed entry to at most `sde` (SOURCE_DATE_EPOCH), so trees
/// built at different times are the same, and refresh their snapshot entries.
pub fn clamp_mtimes(
    root: &Path,
    changed: &[PathBuf],
    sde: i64,
    snap: &mut Snapshot,
) -> io::Result<()> {
    for rel in changed {
        let p = root.join(rel);
        let m = p.symlink_metadata()?;
        if m.mtime() > sde || (m.mtime() == sde && m.mtime_nsec() != 0) {
            let t = filetime::FileTime::from_unix_time(sde, 0);
            filetime::set_symlink_file_times(&p, t, t)?;
        }
        snap.insert(rel.clone(), meta_of(&p.symlink_metadata()?));
    }
    Ok(())
}

/// The diff of a whole tree against nothing (for the rootfs tar).
pub fn full_tree(snap: &Snapshot) -> Diff {
    Diff {
        changed: snap
            .keys()
            .filter(|p| !p.as_os_str().is_empty())
            .cloned()
            .collect(),
        deleted: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_stays_inside_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        std::fs::create_dir_all(root.join("etc/real")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        let sym =
            |target: &str, at: &str| std::os::unix::fs::symlink(target, root.join(at)).unwrap();
        sym("/etc", "etc/abs"); // absolute: from the tree's root
        sym("../../../../..", "etc/up"); // climbing: stops at the root
        sym("real", "etc/rel");
        sym("/usr/lib", "lib");
        sym("loop2", "etc/loop1");
        sym("loop1", "etc/loop2");
        let r = |p: &str, f: bool| resolve_in(&root, p, f).unwrap();
        assert_eq!(r("etc/abs/real", true), root.join("etc/real"));
        assert_eq!(r("etc/up/etc/real", true), root.join("etc/real"));
        assert_eq!(r("etc/up", true), root.clone());
        assert_eq!(r("/etc/rel/x", true), root.join("etc/real/x"));
        assert_eq!(r("lib/x/y", true), root.join("usr/lib/x/y"));
        assert_eq!(r("../../etc", true), root.join("etc"));
        // The last component itself, unresolved.
        assert_eq!(r("etc/abs", false), root.join("etc/abs"));
        assert_eq!(r("lib/../etc/rel", false), root.join("usr/etc/rel"));
        assert!(resolve_in(&root, "etc/loop1/x", true).is_err());
    }
}
