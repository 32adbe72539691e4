//! Parked trees: the tree of a finished build is kept (renamed, not copied) for the next
//! build that shares a layer prefix with it, so a rebuild after a change in a top layer
//! does not create the thousands of files of the layers below again (on these file
//! systems creating and removing files is most of what extracting a layer costs).
//!
//! A claimed tree is brought back to exactly what an extraction of the shared prefix
//! gives: every path that may differ (changed since the tree was parked, by its
//! snapshot; touched by the layers above the prefix, by their diffs; hard-linked to
//! either) is removed and the prefix's layers are replayed for those paths only. The
//! snapshot's change detection is the one layer diffs rely on (ctime cannot be set from
//! user space), and the result is checked against the snapshot before it is used;
//! anything unexpected falls back to a fresh extraction.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::cache::LayerCache;
use super::layer_tar::{self, Selection};
use super::tree::{self, Snapshot};
use super::WorkTree;

/// What a tree is an exact extraction of, and its snapshot at that moment.
#[derive(Debug, Clone)]
pub struct Canonical {
    /// Layer digests, base first.
    pub stack: Vec<String>,
    pub snapshot: Snapshot,
}

fn parked_root(cache: &LayerCache) -> PathBuf {
    cache.root().join("parked")
}

/// Keep `tree` (which must know what it is an extraction of) for a later build, and
/// remove the oldest parked trees beyond the few kept.
pub fn park(cache: &LayerCache, mut tree: WorkTree) -> anyhow::Result<()> {
    let Some(c) = tree.canonical.take().filter(|_| cache.keep_trees > 0) else {
        return Ok(());
    };
    let ids = identities(cache, &c.stack);
    if ids.len() != c.stack.len() {
        // A layer left the cache meanwhile: the tree could not be reverted past it.
        return Ok(());
    }
    let dir = tree.dir.clone();
    std::fs::write(dir.join("snapshot.bin"), encode_snapshot(&c.snapshot))?;
    // Written last: a folder without it is not a parked tree (see `candidates`).
    std::fs::write(dir.join("stack.json"), serde_json::to_vec(&ids)?)?;
    let root = parked_root(cache);
    std::fs::create_dir_all(&root)?;
    let name = dir.file_name().context("work tree folder")?;
    std::fs::rename(&dir, root.join(name))?;
    tree.disarm();
    let mut all = candidates(cache);
    all.sort_by_key(|b| std::cmp::Reverse(b.2));
    // Removals a killed process left half done, then the oldest trees beyond the kept.
    let stale = std::fs::read_dir(&root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().as_bytes().starts_with(b".gone-"))
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for p in stale {
        let _ = std::fs::remove_dir_all(p);
    }
    for (old, _, _) in all.into_iter().skip(cache.keep_trees) {
        // Claimed meanwhile by another build: then it is not ours to remove.
        let gone = root.join(format!(".gone-{}", rand::random::<u64>()));
        if std::fs::rename(&old, &gone).is_ok() {
            let _ = std::fs::remove_dir_all(&gone);
        }
    }
    Ok(())
}

/// `digest:output digest` per layer, up to the first one the cache does not know: a
/// layer rebuilt under the same digest to other bytes (a corrupt entry rebuilt by a
/// recipe that is not reproducible) no longer matches the trees made from the old bytes.
fn identities(cache: &LayerCache, stack: &[String]) -> Vec<String> {
    stack
        .iter()
        .map_while(|d| cache.meta(d).map(|m| format!("{d}:{}", m.output_digest)))
        .collect()
}

/// Parked trees: (folder, layer identities, when parked).
fn candidates(cache: &LayerCache) -> Vec<(PathBuf, Vec<String>, std::time::SystemTime)> {
    let Ok(rd) = std::fs::read_dir(parked_root(cache)) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| !e.file_name().as_bytes().starts_with(b"."))
        .filter_map(|e| {
            let p = e.path().join("stack.json");
            let stack: Vec<String> = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            let when = p.metadata().ok()?.modified().ok()?;
            Some((e.path(), stack, when))
        })
        .collect()
}

/// Claim the parked tree sharing the longest layer prefix with `stack` and make it an
/// exact extraction of that prefix. Returns the tree and the prefix's length.
pub fn claim(
    cache: &LayerCache,
    image: &str,
    stack: &[String],
) -> anyhow::Result<Option<(WorkTree, usize)>> {
    if cache.keep_trees == 0 {
        return Ok(None);
    }
    let want = identities(cache, stack);
    let mut all: Vec<(PathBuf, Vec<String>, std::time::SystemTime, usize)> = candidates(cache)
        .into_iter()
        .map(|(p, ids, w)| {
            let c = ids.iter().zip(&want).take_while(|(a, b)| a == b).count();
            let digests = ids
                .iter()
                .map(|i| i.split(':').next().unwrap_or_default().to_string())
                .collect();
            (p, digests, w, c)
        })
        .filter(|x| x.3 > 0)
        .collect();
    all.sort_by(|a, b| b.3.cmp(&a.3).then(b.2.cmp(&a.2)));
    for (parked, pstack, _, keep) in all {
        let tree = WorkTree::new(cache, image)?;
        std::fs::remove_dir(&tree.path)?;
        // The rename is the claim: of two builds wanting this tree, one gets it.
        if std::fs::rename(parked.join("tree"), &tree.path).is_err() {
            continue;
        }
        let snapshot = std::fs::read(parked.join("snapshot.bin"))
            .ok()
            .and_then(|b| decode_snapshot(&b));
        let _ = std::fs::remove_dir_all(&parked);
        let Some(snapshot) = snapshot else {
            continue;
        };
        let state = Canonical {
            stack: pstack,
            snapshot,
        };
        match revert(cache, &tree.path, &state, keep) {
            Ok(()) => {
                tracing::debug!(
                    "reusing a parked tree: {keep} of {} layers in common",
                    state.stack.len()
                );
                return Ok(Some((tree, keep)));
            }
            Err(e) => tracing::warn!("a parked tree was not reused ({e:#}); extracting afresh"),
        }
    }
    Ok(None)
}

/// Paths that may differ from an extraction of the prefix: exactly these, and whole
/// subtrees below these roots.
#[derive(Debug, Default)]
struct Dirty {
    exact: BTreeSet<PathBuf>,
    subtrees: BTreeSet<PathBuf>,
}

impl Dirty {
    fn is(&self, p: &Path) -> bool {
        self.exact.contains(p)
            || p.ancestors()
                .any(|a| !a.as_os_str().is_empty() && self.subtrees.contains(a))
    }
}

impl Selection for Dirty {
    fn wants(&self, rel: &Path) -> bool {
        self.is(rel)
    }
    fn wanted_under(&self, rel: &Path) -> Vec<PathBuf> {
        let below = |set: &BTreeSet<PathBuf>| -> Vec<PathBuf> {
            set.range::<Path, _>((std::ops::Bound::Excluded(rel), std::ops::Bound::Unbounded))
                .take_while(|p| p.starts_with(rel))
                .cloned()
                .collect()
        };
        let mut v = below(&self.exact);
        v.extend(below(&self.subtrees));
        v
    }
}

/// One pass over a cached layer's tar headers: `f(path, is_whiteout)` per entry, a
/// whiteout naming the path it hides.
fn scan(cache: &LayerCache, digest: &str, mut f: impl FnMut(PathBuf, bool)) -> anyhow::Result<()> {
    let r = cache.open_diff(digest)?;
    let mut a = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, r));
    for e in a.entries()? {
        let e = e?;
        let rel = e.path()?.into_owned();
        match layer_tar::whiteout_target(&rel) {
            Some(hidden) => f(hidden, true),
            None => f(rel, false),
        }
    }
    Ok(())
}

/// Bring the claimed tree at `root`, an extraction of `state.stack`, back to an exact
/// extraction of its first `keep` layers.
pub fn revert(
    cache: &LayerCache,
    root: &Path,
    state: &Canonical,
    keep: usize,
) -> anyhow::Result<()> {
    let now = tree::snapshot(root)?;
    let mut d = Dirty::default();
    for (p, m) in &now {
        if !p.as_os_str().is_empty() && state.snapshot.get(p) != Some(m) {
            d.exact.insert(p.clone());
        }
    }
    for p in state.snapshot.keys() {
        if !p.as_os_str().is_empty() && !now.contains_key(p) {
            d.subtrees.insert(p.clone());
        }
    }
    for digest in &state.stack[keep..] {
        scan(cache, digest, |p, whiteout| {
            if whiteout {
                d.subtrees.insert(p);
            } else {
                d.exact.insert(p);
            }
        })?;
    }
    // Everything the prefix provides.
    let mut provided: HashSet<PathBuf> = HashSet::new();
    for digest in &state.stack[..keep] {
        scan(cache, digest, |p, whiteout| {
            if !whiteout {
                provided.insert(p);
            }
        })?;
    }
    // Hard links need no rule of their own: whatever touches one name of an inode moves
    // the ctime every name of it shows, so all of them are dirty together, and a replayed
    // link entry links to its target as the prefix left it.

    // Remove what is dirty and present, deepest first; a directory the prefix provides is
    // kept (its replayed entry sets it right, its clean children stay). Parents that are
    // not dirty get their mtime back at the end.
    let mut restore: BTreeMap<PathBuf, (i64, i64)> = BTreeMap::new();
    let mut present: Vec<&PathBuf> = now
        .keys()
        .filter(|p| !p.as_os_str().is_empty() && d.is(p))
        .collect();
    present.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in present {
        let parent = p.parent().unwrap_or(Path::new(""));
        if !d.is(parent) {
            if let Some(m) = now.get(parent) {
                restore.insert(parent.to_path_buf(), m.mtime);
            }
        }
        let full = root.join(p);
        if now[p].mode & libc::S_IFMT == libc::S_IFDIR {
            if !provided.contains(p) {
                std::fs::remove_dir(&full).with_context(|| {
                    format!("{} still holds files no layer accounts for", p.display())
                })?;
            }
        } else {
            std::fs::remove_file(&full).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    for digest in &state.stack[..keep] {
        let r = cache.open_diff(digest)?;
        layer_tar::extract_only(
            std::io::BufReader::with_capacity(1 << 20, r),
            root,
            Some(&d),
        )
        .with_context(|| format!("replaying layer {}", crate::plan::short(digest)))?;
    }
    let mut restore: Vec<(PathBuf, (i64, i64))> = restore.into_iter().collect();
    restore.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, (s, ns)) in restore {
        let t = filetime::FileTime::from_unix_time(s, ns as u32);
        filetime::set_symlink_file_times(root.join(&p), t, t)?;
    }

    // Every clean path must be exactly as parked: otherwise something escaped the rules
    // above, and the caller extracts afresh instead.
    let after = tree::snapshot(root)?;
    let same = |a: &tree::EntryMeta, b: &tree::EntryMeta| {
        (a.ino, a.mode, a.uid, a.gid, a.size, a.mtime)
            == (b.ino, b.mode, b.uid, b.gid, b.size, b.mtime)
    };
    for (p, m) in &state.snapshot {
        if p.as_os_str().is_empty() || d.is(p) {
            continue;
        }
        match after.get(p) {
            Some(a) if same(a, m) => {}
            _ => anyhow::bail!("{} differs from the parked tree", p.display()),
        }
    }
    for p in after.keys() {
        if !p.as_os_str().is_empty() && !d.is(p) && !state.snapshot.contains_key(p) {
            anyhow::bail!("{} appeared in the parked tree", p.display());
        }
    }
    Ok(())
}

/// A snapshot as bytes (names need not be UTF-8, so not JSON).
fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 96);
    for (p, m) in s {
        let name = p.as_os_str().as_bytes();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        for v in [
            m.ino,
            m.mode as u64,
            m.uid as u64,
            m.gid as u64,
            m.size,
            m.mtime.0 as u64,
            m.mtime.1 as u64,
            m.ctime.0 as u64,
            m.ctime.1 as u64,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// The inverse of [`encode_snapshot`] (`None` for bytes it did not write).
fn decode_snapshot(mut b: &[u8]) -> Option<Snapshot> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (h, t) = (b.get(..n)?, b.get(n..)?);
        *b = t;
        Some(h)
    }
    let mut s = Snapshot::new();
    while !b.is_empty() {
        let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
        let name = PathBuf::from(OsStr::from_bytes(take(&mut b, n)?));
        let mut v = [0u64; 9];
        for x in &mut v {
            *x = u64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
        }
        s.insert(
            name,
            tree::EntryMeta {
                ino: v[0],
                mode: v[1] as u32,
                uid: v[2] as u32,
                gid: v[3] as u32,
                size: v[4],
                mtime: (v[5] as i64, v[6] as i64),
                ctime: (v[7] as i64, v[8] as i64),
            },
        );
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::cache::LayerMeta;
    use std::collections::HashMap;

    const SDE: i64 = 1_700_000_000;

    fn commit(cache: &LayerCache, digest: &str, root: &Path, d: &tree::Diff) {
        let staging = cache.staging(digest).unwrap();
        let f = std::fs::File::create(staging.path().join("diff.tar.zst")).unwrap();
        let enc = zstd::stream::write::Encoder::new(f, 1).unwrap();
        let (enc, _) = layer_tar::write_diff_tar(root, d, SDE, enc).unwrap();
        enc.finish().unwrap();
        let meta = LayerMeta {
            digest: digest.into(),
            name: digest.into(),
            output_digest: format!("out-{digest}"),
            tar_size: 0,
            zst_sha256: String::new(),
            zst_size: 0,
            packages: Vec::new(),
            build_secs: 0.0,
        };
        cache.commit(staging, &meta).unwrap();
    }

    /// Everything an extraction decides, per path: type and mode, owner, size, mtime,
    /// content or link target, and which path it shares its inode with.
    fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
        let snap = tree::snapshot(root).unwrap();
        let mut first: HashMap<u64, PathBuf> = HashMap::new();
        let mut out = BTreeMap::new();
        for (p, m) in &snap {
            if p.as_os_str().is_empty() {
                continue;
            }
            let full = root.join(p);
            let (body, link) = match m.mode & libc::S_IFMT {
                libc::S_IFREG => (
                    String::from_utf8_lossy(&std::fs::read(&full).unwrap()).into_owned(),
                    first
                        .entry(m.ino)
                        .or_insert(p.clone())
                        .display()
                        .to_string(),
                ),
                libc::S_IFLNK => (
                    std::fs::read_link(&full).unwrap().display().to_string(),
                    String::new(),
                ),
                _ => (String::new(), String::new()),
            };
            out.insert(
                p.clone(),
                format!(
                    "{:o} {}:{} {} {:?} {body:?} {link}",
                    m.mode,
                    m.uid,
                    m.gid,
                    if m.mode & libc::S_IFMT == libc::S_IFDIR {
                        0
                    } else {
                        m.size
                    },
                    m.mtime
                ),
            );
        }
        out
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn a_reverted_tree_equals_a_fresh_extraction() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(&t.path().join("cache"));
        let src = t.path().join("src");
        // The base layer.
        for f in [
            "etc/keep",
            "etc/modify",
            "etc/chmod",
            "usr/lib/a",
            "usr/bin/tool",
            "usr/share/doc/pkg/x",
            "usr/share/doc/pkg/y",
            "var/becomes-dir",
            "opt/app/config",
        ] {
            write(&src.join(f), f);
        }
        std::fs::hard_link(src.join("usr/lib/a"), src.join("usr/lib/b")).unwrap();
        std::os::unix::fs::symlink("usr/bin", src.join("bin")).unwrap();
        let s0 = tree::snapshot(&src).unwrap();
        commit(&cache, "l0", &src, &tree::full_tree(&s0));
        // The layer above, as a build would leave it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(src.join("etc/modify"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b" more"))
            .unwrap();
        std::fs::set_permissions(
            src.join("etc/chmod"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        write(&src.join("srv/new/file"), "new");
        std::fs::remove_dir_all(src.join("usr/share/doc/pkg")).unwrap();
        std::fs::remove_file(src.join("var/becomes-dir")).unwrap();
        write(&src.join("var/becomes-dir/inner"), "inner");
        std::fs::hard_link(src.join("usr/lib/a"), src.join("usr/lib/c")).unwrap();
        let s1 = tree::snapshot(&src).unwrap();
        commit(&cache, "l1", &src, &tree::diff(&s0, &s1));

        let n = std::cell::Cell::new(0);
        let fresh = |stack: &[&str]| -> PathBuf {
            n.set(n.get() + 1);
            let p = t.path().join(format!("fresh{}", n.get()));
            std::fs::create_dir(&p).unwrap();
            for d in stack {
                layer_tar::extract(cache.open_diff(d).unwrap(), &p).unwrap();
            }
            p
        };
        let want0 = describe(&fresh(&["l0"]));
        let want01 = describe(&fresh(&["l0", "l1"]));
        assert_ne!(want0, want01);
        let stack = vec!["l0".to_string(), "l1".to_string()];
        // What the disk stage does to a tree after its snapshot.
        let touch_after_parking = |work: &Path| {
            write(&work.join("etc/fstab"), "fstab");
            std::fs::write(work.join("etc/keep"), "changed in place").unwrap();
            std::fs::remove_file(work.join("usr/bin/tool")).unwrap();
            // Rewritten in place: its folder stays clean, yet the file is replaced.
            std::fs::write(work.join("opt/app/config"), "edited").unwrap();
        };

        let work = fresh(&["l0", "l1"]);
        let parked = |work: &Path| Canonical {
            stack: stack.clone(),
            snapshot: tree::snapshot(work).unwrap(),
        };
        let state = parked(&work);
        touch_after_parking(&work);
        revert(&cache, &work, &state, 2).unwrap();
        assert_eq!(describe(&work), want01, "the whole stack kept");

        let state = parked(&work);
        touch_after_parking(&work);
        revert(&cache, &work, &state, 1).unwrap();
        assert_eq!(describe(&work), want0, "back to the base layer");
    }
}
