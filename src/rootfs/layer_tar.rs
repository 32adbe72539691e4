//! Layer diffs as tars: a tree's diff written deterministically (the layer cache entry
//! and the OCI layer), such a tar extracted onto a tree with OCI whiteout semantics, and
//! paths filtered out of one.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::tree::{resolve_in, Diff};

/// OCI whiteout prefix: `dir/.wh.name` deletes `dir/name` of the layers below.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// Counts what a tar write did.
#[derive(Debug, Default, Clone, Copy)]
pub struct TarStats {
    /// Bytes of the uncompressed tar.
    pub bytes: u64,
    pub entries: u64,
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    /// The writer, hex sha256 and byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Which entries to leave out (absolute image paths such as `/boot`).
pub fn excluded(rel: &Path, exclude: &[String]) -> bool {
    let abs = Path::new("/").join(rel);
    exclude.iter().any(|e| abs.starts_with(e))
}

/// Write the diff as a tar: entries sorted by path, whiteouts for deletions, mtimes
/// clamped to `sde`, numeric owners without names, xattrs as PAX records. The same tree
/// and diff always give the same bytes.
pub fn write_diff_tar<W: Write>(
    root: &Path,
    d: &Diff,
    sde: i64,
    out: W,
) -> io::Result<(W, TarStats)> {
    let mut entries: Vec<(PathBuf, bool)> = d
        .changed
        .iter()
        .map(|p| (p.clone(), false))
        .chain(d.deleted.iter().map(|p| (whiteout_path(p), true)))
        .collect();
    entries.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stats = TarStats::default();
    for (rel, is_whiteout) in entries {
        stats.entries += 1;
        if is_whiteout {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(0);
            h.set_mode(0o644);
            h.set_mtime(sde.max(0) as u64);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, &rel, io::empty())?;
            continue;
        }
        append_entry(&mut b, root, &rel, sde, &mut links)?;
    }
    let out = b.into_inner()?;
    Ok((out, stats))
}

/// The path a whiteout entry `dir/.wh.name` hides (`dir/name`); `None` for any other entry.
pub fn whiteout_target(rel: &Path) -> Option<PathBuf> {
    let name = rel.file_name()?.as_bytes();
    let hidden = name.strip_prefix(WHITEOUT_PREFIX.as_bytes())?;
    Some(
        rel.parent()
            .unwrap_or(Path::new(""))
            .join(OsStr::from_bytes(hidden)),
    )
}

fn whiteout_path(p: &Path) -> PathBuf {
    let name = p.file_name().unwrap_or_default();
    let mut wh = OsStr::new(WHITEOUT_PREFIX).to_os_string();
    wh.push(name);
    match p.parent() {
        Some(parent) => parent.join(wh),
        None => PathBuf::from(wh),
    }
}

fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    sde: i64,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let full = root.join(rel);
    let m = full.symlink_metadata()?;
    let ft = m.file_type();
    if ft.is_socket() {
        return Ok(()); // sockets are runtime state, never part of an image
    }
    // xattrs (file capabilities such as cap_net_raw) travel as PAX records.
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if !ft.is_symlink() {
        if let Ok(names) = xattr::list(&full) {
            let mut names: Vec<_> = names.collect();
            names.sort();
            for n in names {
                if let Ok(Some(v)) = xattr::get(&full, &n) {
                    pax.push((format!("SCHILY.xattr.{}", n.to_string_lossy()), v));
                }
            }
        }
    }
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(m.mode() & 0o7777);
    h.set_uid(m.uid() as u64);
    h.set_gid(m.gid() as u64);
    h.set_mtime(m.mtime().min(sde).max(0) as u64);
    if ft.is_file() && m.nlink() > 1 {
        let key = (m.dev(), m.ino());
        if let Some(first) = links.get(&key) {
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            return b.append_link(&mut h, rel, first);
        }
        links.insert(key, rel.to_path_buf());
    }
    if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(m.size());
        let f = std::fs::File::open(&full)?;
        b.append_data(&mut h, rel, f.take(m.size()))
    } else if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, rel, io::empty())
    } else if ft.is_symlink() {
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        let target = std::fs::read_link(&full)?;
        b.append_link(&mut h, rel, target)
    } else if ft.is_char_device() || ft.is_block_device() {
        h.set_entry_type(if ft.is_char_device() {
            tar::EntryType::Char
        } else {
            tar::EntryType::Block
        });
        h.set_size(0);
        let rdev = m.rdev();
        h.set_device_major(libc::major(rdev))?;
        h.set_device_minor(libc::minor(rdev))?;
        b.append_data(&mut h, rel, io::empty())
    } else if ft.is_fifo() {
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_size(0);
        b.append_data(&mut h, rel, io::empty())
    } else {
        Ok(())
    }
}

/// Which entries of a layer tar a partial extraction applies (see [`extract_only`]).
pub trait Selection {
    /// The entry at `rel` is applied.
    fn wants(&self, rel: &Path) -> bool;
    /// Selected paths strictly below `rel` (removed when a whiteout hides `rel` itself
    /// but `rel` is not selected).
    fn wanted_under(&self, rel: &Path) -> Vec<PathBuf>;
}

/// Apply a layer tar onto `root`: whiteouts delete, everything else is created with its
/// owner, mode, mtime and xattrs. An existing non-directory is removed first, so a
/// symlink in the tree is never followed out of it.
pub fn extract<R: Read>(tar_stream: R, root: &Path) -> io::Result<u64> {
    extract_only(tar_stream, root, None)
}

/// [`extract`], applying only the entries `sel` selects (all with `None`): replaying a
/// layer stack for some paths gives them the state a full extraction gives them.
pub fn extract_only<R: Read>(
    tar_stream: R,
    root: &Path,
    sel: Option<&dyn Selection>,
) -> io::Result<u64> {
    let mut a = tar::Archive::new(tar_stream);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(true);
    a.set_overwrite(true);
    // Creating or removing entries moves their parent directory's mtime. Directories in
    // the tar get the tar's mtime back; parents that are not in it (a file rewritten in
    // place by the layer) get the mtime they had before, so an extracted tree matches the
    // tree the layer was built on.
    let mut dir_times: HashMap<PathBuf, filetime::FileTime> = HashMap::new();
    let mut parents_before: HashMap<PathBuf, filetime::FileTime> = HashMap::new();
    let mut remember_parent = |rel: &Path| {
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if let std::collections::hash_map::Entry::Vacant(v) = parents_before.entry(parent) {
            if let Ok(m) = root.join(v.key()).symlink_metadata() {
                v.insert(filetime::FileTime::from_last_modification_time(&m));
            }
        }
    };
    // Whiteouts hide what the layers below had, never an entry of their own layer
    // (OCI image spec); they follow such an entry when its name sorts before ".wh.".
    let mut created: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    let mut n = 0;
    for entry in a.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.into_owned();
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(io::Error::other(format!(
                "layer tar entry '{}' points outside the tree",
                rel.display()
            )));
        }
        n += 1;
        if let Some(target) = whiteout_target(&rel) {
            if created.contains(&target) {
                continue;
            }
            let hidden: Vec<PathBuf> = match sel {
                Some(s) if !s.wants(&target) => s.wanted_under(&target),
                _ => vec![target],
            };
            for h in hidden {
                remember_parent(&h);
                remove_any(&resolve_in(root, &h, false)?)?;
            }
            continue;
        }
        if sel.is_some_and(|s| !s.wants(&rel)) {
            continue;
        }
        created.insert(rel.clone());
        remember_parent(&rel);
        let dest = resolve_in(root, &rel, false)?;
        let is_dir = entry.header().entry_type() == tar::EntryType::Directory;
        if let Ok(existing) = dest.symlink_metadata() {
            if !(is_dir && existing.is_dir()) {
                remove_any(&dest)?;
            }
        }
        if is_dir {
            let t =
                filetime::FileTime::from_unix_time(entry.header().mtime().unwrap_or(0) as i64, 0);
            dir_times.insert(rel.clone(), t);
        }
        let device = matches!(
            entry.header().entry_type(),
            tar::EntryType::Char | tar::EntryType::Block
        );
        match entry.unpack_in(root) {
            Err(e) if device && crate::rootless::inside() => {
                return Err(io::Error::other(format!(
                    "layer tar entry '{}' is a device node, which a rootless build cannot \
                     create ({e}); build this image as root, or leave device nodes out of \
                     the layer (/dev is provided at boot)",
                    rel.display()
                )));
            }
            r => {
                r?;
            }
        }
    }
    for (p, t) in parents_before {
        dir_times.entry(p).or_insert(t);
    }
    // Deepest first, so setting a child's time does not disturb its parent again.
    let mut dirs: Vec<(PathBuf, filetime::FileTime)> = dir_times.into_iter().collect();
    dirs.sort_by(|a, b| {
        b.0.components()
            .count()
            .cmp(&a.0.components().count())
            .then(b.0.cmp(&a.0))
    });
    for (rel, t) in dirs {
        let p = root.join(rel);
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            filetime::set_symlink_file_times(p, t, t)?;
        }
    }
    Ok(n)
}

fn remove_any(p: &Path) -> io::Result<()> {
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copy a tar stream, leaving out entries under `exclude` (and their whiteouts).
pub fn filter_tar<R: Read, W: Write>(input: R, exclude: &[String], out: W) -> io::Result<W> {
    let mut a = tar::Archive::new(input);
    let mut b = tar::Builder::new(out);
    for entry in a.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.into_owned();
        let visible = whiteout_target(&rel).unwrap_or_else(|| rel.clone());
        if excluded(&visible, exclude) {
            continue;
        }
        let pax: Vec<(String, Vec<u8>)> = match entry.pax_extensions()? {
            Some(exts) => exts
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((e.key().ok()?.to_string(), e.value_bytes().to_vec())))
                .filter(|(k, _)| k.starts_with("SCHILY.xattr."))
                .collect(),
            None => Vec::new(),
        };
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        let mut h = entry.header().clone();
        match h.entry_type() {
            tar::EntryType::Link | tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                b.append_link(&mut h, &rel, target)?;
            }
            _ => {
                b.append_data(&mut h, &rel, &mut entry)?;
            }
        }
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::tree::{diff, full_tree, snapshot};

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn diff_tar_roundtrip_with_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        write(&root.join("etc/keep"), "k");
        write(&root.join("etc/gone"), "g");
        write(&root.join("var/old/a"), "a");
        write(&root.join("var/old/b"), "b");
        let before = snapshot(&root).unwrap();
        // A second copy of the lower layer, to apply the diff onto.
        let lower = t.path().join("lower");
        let (buf, _) = write_diff_tar(&root, &full_tree(&before), 1000, Vec::new()).unwrap();
        std::fs::create_dir_all(&lower).unwrap();
        extract(&buf[..], &lower).unwrap();

        std::fs::remove_file(root.join("etc/gone")).unwrap();
        std::fs::remove_dir_all(root.join("var/old")).unwrap();
        write(&root.join("etc/new"), "n");
        std::os::unix::fs::symlink("/etc/keep", root.join("etc/link")).unwrap();
        let after = snapshot(&root).unwrap();
        let d = diff(&before, &after);
        assert_eq!(
            d.deleted,
            vec![PathBuf::from("etc/gone"), PathBuf::from("var/old")]
        );
        assert!(d.changed.contains(&PathBuf::from("etc/new")));
        let (tar1, _) = write_diff_tar(&root, &d, 1000, Vec::new()).unwrap();
        let (tar2, _) = write_diff_tar(&root, &d, 1000, Vec::new()).unwrap();
        assert_eq!(tar1, tar2, "same tree, same bytes");

        extract(&tar1[..], &lower).unwrap();
        assert!(!lower.join("etc/gone").exists());
        assert!(!lower.join("var/old").exists());
        assert_eq!(std::fs::read_to_string(lower.join("etc/new")).unwrap(), "n");
        assert_eq!(
            std::fs::read_link(lower.join("etc/link")).unwrap(),
            PathBuf::from("/etc/keep")
        );
        assert_eq!(
            std::fs::read_to_string(lower.join("etc/keep")).unwrap(),
            "k"
        );
        // mtimes were clamped in the tar
        let m = lower.join("etc/new").symlink_metadata().unwrap();
        assert_eq!(m.mtime(), 1000);
    }

    #[test]
    fn a_type_change_survives_its_own_whiteout_whatever_the_name() {
        // "-x" sorts before ".wh.-x": the whiteout comes after the new directory.
        for name in ["-x", "x"] {
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("tree");
            write(&root.join("d").join(name), "file below");
            let before = snapshot(&root).unwrap();
            let (lower, _) = write_diff_tar(&root, &full_tree(&before), 1000, Vec::new()).unwrap();
            std::fs::remove_file(root.join("d").join(name)).unwrap();
            write(&root.join("d").join(name).join("child"), "dir above");
            let d = diff(&before, &snapshot(&root).unwrap());
            let (upper, _) = write_diff_tar(&root, &d, 1000, Vec::new()).unwrap();
            let out = t.path().join("out");
            std::fs::create_dir(&out).unwrap();
            extract(&lower[..], &out).unwrap();
            extract(&upper[..], &out).unwrap();
            assert_eq!(
                std::fs::read_to_string(out.join("d").join(name).join("child")).unwrap(),
                "dir above",
                "{name}"
            );
        }
    }

    #[test]
    fn extraction_never_follows_a_symlink_out_of_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside.txt");
        write(&outside, "precious");
        let root = t.path().join("tree");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/x")).unwrap();
        // A layer that writes a regular file where the symlink is.
        let src = t.path().join("src");
        write(&src.join("etc/x"), "layer");
        let snap = snapshot(&src).unwrap();
        let (buf, _) = write_diff_tar(&src, &full_tree(&snap), 1000, Vec::new()).unwrap();
        extract(&buf[..], &root).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/x")).unwrap(),
            "layer"
        );
    }

    #[test]
    fn filter_drops_excluded_paths() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        write(&root.join("boot/vmlinuz"), "k");
        write(&root.join("etc/x"), "x");
        let snap = snapshot(&root).unwrap();
        let (buf, _) = write_diff_tar(&root, &full_tree(&snap), 1000, Vec::new()).unwrap();
        let out = filter_tar(&buf[..], &["/boot".to_string()], Vec::new()).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["etc", "etc/x"]);
    }
}
