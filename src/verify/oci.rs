//! Structural verification of an OCI image layout: there is no kernel to boot, so the
//! layers are unpacked in order into a temp directory (applying whiteouts, as a container
//! runtime would) and the declared `file` checks run on the resulting tree. Every blob is
//! checked against its digest while it is read, so a tampered layer fails. Checks that
//! need a running system (command, service, port, http) are reported as skipped.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::checks;
use crate::artifact::{BootRecord, CheckResult};
use crate::recipe::check::FileCheck;
use crate::recipe::{Format, SourcedCheck};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Symlink hops before a path is declared a loop (as the kernel's ELOOP).
const MAX_LINKS: usize = 40;

/// What an unpacked layer tree knows about each path: the mode from the tar header
/// (file-system modes of an unprivileged unpack would be wrong) and the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    mode: u32,
    dir: bool,
}

/// Verify an OCI layout directory.
pub async fn verify(
    layout: &Path,
    artifact: &str,
    artifact_sha256: &str,
    expected_manifest: Option<&str>,
    declared: &[SourcedCheck],
) -> BootRecord {
    let t0 = std::time::Instant::now();
    let layout = layout.to_owned();
    let expected = expected_manifest.map(str::to_string);
    let declared_owned = declared.to_vec();
    let checks = tokio::task::spawn_blocking(move || {
        verify_blocking(&layout, expected.as_deref(), &declared_owned)
    })
    .await
    .unwrap_or_else(|e| {
        vec![structural(
            false,
            format!("OCI verification crashed: {e}"),
            0,
        )]
    });
    let failure = checks.iter().find(|c| !c.passed).map(|c| {
        format!("{}: {}", c.name, c.detail)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    });
    BootRecord {
        format: Format::Oci,
        artifact: artifact.to_string(),
        artifact_sha256: artifact_sha256.to_string(),
        passed: failure.is_none(),
        accelerator: "none".into(),
        accelerator_reason: "OCI layouts are verified structurally, without booting".into(),
        boot_secs: None,
        duration_secs: t0.elapsed().as_secs_f64(),
        checks,
        console_log: String::new(),
        attempts: 1,
        failure,
    }
}

fn structural(passed: bool, detail: String, ms: u64) -> CheckResult {
    CheckResult {
        name: "OCI layout is complete and every blob matches its digest".into(),
        origin: "builtin".into(),
        passed,
        skipped: false,
        duration_ms: ms,
        detail,
    }
}

fn verify_blocking(
    layout: &Path,
    expected_manifest: Option<&str>,
    declared: &[SourcedCheck],
) -> Vec<CheckResult> {
    let started = std::time::Instant::now();
    let tree = match super::run_temp_dir("oci") {
        Ok(t) => t,
        Err(e) => return vec![structural(false, e.to_string(), 0)],
    };
    let unpacked = unpack_layout(layout, tree.path(), expected_manifest);
    let ms = started.elapsed().as_millis() as u64;
    let mut out = Vec::new();
    let metas = match unpacked {
        Ok((m, summary)) => {
            out.push(structural(true, summary, ms));
            Some(m)
        }
        Err(e) => {
            out.push(structural(false, e, ms));
            None
        }
    };
    for sc in declared {
        let c = &sc.check;
        let Some(f) = &c.file else {
            let kind = c
                .kinds()
                .first()
                .map(|k| format!("{k:?}").to_lowercase())
                .unwrap_or_default();
            out.push(checks::not_run(
                sc,
                &format!("skipped: a {kind} check needs a booted system; OCI images are checked structurally"),
                true,
            ));
            continue;
        };
        let Some(metas) = &metas else {
            out.push(checks::not_run(
                sc,
                "not run: the layout could not be unpacked",
                false,
            ));
            continue;
        };
        let t = std::time::Instant::now();
        let verdict = file_check(tree.path(), metas, f);
        out.push(checks::result(sc, verdict, t.elapsed()));
    }
    out
}

fn file_check(
    root: &Path,
    metas: &BTreeMap<PathBuf, Meta>,
    f: &FileCheck,
) -> Result<String, String> {
    let resolved = resolve(root, Path::new(&f.path))?;
    let Some(meta) = metas.get(&resolved) else {
        return Err(format!("{} does not exist in the image", f.path));
    };
    let kind = if meta.dir {
        "directory"
    } else {
        "regular file"
    };
    let content = match &f.content_regex {
        Some(_) if meta.dir => return Err(format!("{} is a directory, not a file", f.path)),
        Some(_) => {
            let host = root.join(resolved.strip_prefix("/").unwrap_or(&resolved));
            let mut buf = Vec::new();
            std::fs::File::open(&host)
                .and_then(|f| {
                    f.take(super::agent::MAX_FILE_BYTES as u64)
                        .read_to_end(&mut buf)
                })
                .map_err(|e| format!("cannot read {}: {e}", f.path))?;
            Some(buf)
        }
        None => None,
    };
    checks::judge_file(f, meta.mode & 0o7777, kind, content.as_deref())
}

/// Resolve `path` inside the tree like the kernel would inside a chroot: absolute
/// symlinks start at the tree's root, `..` never leaves it. Returns the tree path.
fn resolve(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let mut done = PathBuf::from("/");
    let mut todo: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            done.pop();
            continue;
        }
        let next = done.join(&name);
        let host = root.join(next.strip_prefix("/").unwrap_or(&next));
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINKS {
                    return Err(format!(
                        "too many symbolic links resolving {}",
                        path.display()
                    ));
                }
                let target = std::fs::read_link(&host).map_err(|e| e.to_string())?;
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push(n.to_owned()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => done = next,
        }
    }
    Ok(done)
}

/// Read index.json and the manifest, then unpack every layer in order. Returns the
/// metadata of every path in the final tree and a one-line summary.
fn unpack_layout(
    layout: &Path,
    root: &Path,
    expected_manifest: Option<&str>,
) -> Result<(BTreeMap<PathBuf, Meta>, String), String> {
    let layout_file = layout.join("oci-layout");
    let lv: Value = read_json(&layout_file)?;
    if lv
        .get("imageLayoutVersion")
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(format!(
            "{} has no imageLayoutVersion",
            layout_file.display()
        ));
    }
    let index: Value = read_json(&layout.join("index.json"))?;
    let mdesc = find_manifest(layout, &index)?;
    let mdigest = mdesc
        .get("digest")
        .and_then(Value::as_str)
        .ok_or("manifest descriptor without digest")?
        .to_string();
    if let Some(want) = expected_manifest {
        if want != mdigest {
            return Err(format!(
                "index.json points at manifest {mdigest}, but the build recorded {want}"
            ));
        }
    }
    let manifest: Value = serde_json::from_slice(&read_blob(layout, &mdigest)?)
        .map_err(|e| format!("manifest {mdigest}: invalid JSON: {e}"))?;
    let config = manifest
        .get("config")
        .and_then(|c| c.get("digest"))
        .and_then(Value::as_str)
        .ok_or("manifest has no config")?;
    let _: Value = serde_json::from_slice(&read_blob(layout, config)?)
        .map_err(|e| format!("config {config}: invalid JSON: {e}"))?;
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("manifest has no layers")?;
    let mut metas = BTreeMap::new();
    metas.insert(
        PathBuf::from("/"),
        Meta {
            mode: 0o755,
            dir: true,
        },
    );
    for (i, l) in layers.iter().enumerate() {
        let digest = l
            .get("digest")
            .and_then(Value::as_str)
            .ok_or("layer without digest")?;
        let media = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
        apply_layer(layout, digest, media, root, &mut metas)
            .map_err(|e| format!("layer {} ({digest}): {e}", i + 1))?;
    }
    Ok((
        metas,
        format!(
            "manifest {mdigest}: {} layer(s) unpacked, every digest matches",
            layers.len()
        ),
    ))
}

fn find_manifest(layout: &Path, index: &Value) -> Result<Value, String> {
    let m = index
        .get("manifests")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .ok_or("index.json lists no manifests")?;
    match m.get("mediaType").and_then(Value::as_str) {
        Some(INDEX) => {
            let d = m
                .get("digest")
                .and_then(Value::as_str)
                .ok_or("index without digest")?;
            let nested: Value = serde_json::from_slice(&read_blob(layout, d)?)
                .map_err(|e| format!("index {d}: invalid JSON: {e}"))?;
            find_manifest(layout, &nested)
        }
        Some(MANIFEST) | None => Ok(m.clone()),
        Some(other) => Err(format!("unsupported manifest media type {other}")),
    }
}

fn read_json(p: &Path) -> Result<Value, String> {
    let b = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    serde_json::from_slice(&b).map_err(|e| format!("{}: invalid JSON: {e}", p.display()))
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, String> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or(format!("bad digest {digest}"))?;
    if alg != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("unsupported digest {digest}"));
    }
    Ok(layout.join("blobs").join(alg).join(hex))
}

fn read_blob(layout: &Path, digest: &str) -> Result<Vec<u8>, String> {
    let p = blob_path(layout, digest)?;
    let b = std::fs::read(&p).map_err(|e| format!("blob {digest}: {e}"))?;
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&b)));
    if got != digest {
        return Err(format!(
            "blob {digest} is corrupt (its content hashes to {got})"
        ));
    }
    Ok(b)
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn apply_layer(
    layout: &Path,
    digest: &str,
    media: &str,
    root: &Path,
    metas: &mut BTreeMap<PathBuf, Meta>,
) -> Result<(), String> {
    let p = blob_path(layout, digest)?;
    let f = std::fs::File::open(&p).map_err(|e| format!("cannot open blob: {e}"))?;
    let mut hr = HashingReader {
        inner: std::io::BufReader::new(f),
        hasher: Sha256::new(),
    };
    {
        let reader: Box<dyn Read + '_> = if media.ends_with("+gzip") {
            Box::new(flate2::read::GzDecoder::new(&mut hr))
        } else if media.ends_with("+zstd") {
            Box::new(zstd::stream::read::Decoder::new(&mut hr).map_err(|e| e.to_string())?)
        } else if media.ends_with(".tar") || media.is_empty() {
            Box::new(&mut hr)
        } else {
            return Err(format!("unsupported layer media type {media}"));
        };
        let mut archive = tar::Archive::new(reader);
        apply_entries(&mut archive, root, metas)?;
    }
    // Hash whatever the tar reader left unread (end-of-archive padding).
    std::io::copy(&mut hr, &mut std::io::sink()).map_err(|e| e.to_string())?;
    let got = format!("sha256:{}", hex::encode(hr.hasher.finalize()));
    if got != digest {
        return Err(format!("blob is corrupt (its content hashes to {got})"));
    }
    Ok(())
}

fn apply_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    root: &Path,
    metas: &mut BTreeMap<PathBuf, Meta>,
) -> Result<(), String> {
    let mut this_layer: std::collections::HashSet<PathBuf> = Default::default();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        let rel = entry.path().map_err(|e| e.to_string())?.into_owned();
        let Some(tree) = tree_path(&rel) else {
            continue; // absolute escapes and `..` are not part of any image
        };
        let name = tree
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = tree.parent().unwrap_or(Path::new("/")).to_owned();
        if name == ".wh..wh..opq" {
            // Opaque directory: hide everything lower layers put in it.
            let keep: Vec<PathBuf> = this_layer
                .iter()
                .filter(|p| p.starts_with(&parent) && **p != parent)
                .cloned()
                .collect();
            let dir = host_path(root, &parent);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let tp = parent.join(e.file_name());
                    if !keep.iter().any(|k| k.starts_with(&tp)) {
                        remove(root, &tp, metas);
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove(root, &parent.join(hidden), metas);
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let dst = host_path(root, &tree);
        // A path that changes kind (dir <-> file) replaces what was there.
        if let Ok(old) = std::fs::symlink_metadata(&dst) {
            if old.is_dir() != kind.is_dir()
                || old.file_type().is_symlink()
                || kind == tar::EntryType::Symlink
            {
                remove(root, &tree, metas);
            }
        }
        match kind {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::Symlink
            | tar::EntryType::Link => {
                entry.set_preserve_mtime(false);
                entry
                    .unpack_in(root)
                    .map_err(|e| format!("cannot unpack {}: {e}", rel.display()))?;
                // Keep the tree readable and writable for us whatever the image says;
                // the image's mode is what `metas` records.
                if kind.is_dir() || kind.is_file() {
                    use std::os::unix::fs::PermissionsExt;
                    let extra = if kind.is_dir() { 0o700 } else { 0o600 };
                    let _ = std::fs::set_permissions(
                        &dst,
                        std::fs::Permissions::from_mode((mode & 0o777) | extra),
                    );
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                // Device nodes cannot (and need not) be created: an empty placeholder
                // lets existence and mode checks see them.
                if let Some(p) = dst.parent() {
                    let _ = std::fs::create_dir_all(p);
                }
                std::fs::write(&dst, b"").map_err(|e| e.to_string())?;
            }
            _ => continue, // pax headers, GNU long names: handled by the tar reader
        }
        let meta = if kind == tar::EntryType::Link {
            // A hard link shares its target's mode.
            entry
                .link_name()
                .ok()
                .flatten()
                .and_then(|l| tree_path(&l))
                .and_then(|t| metas.get(&t).copied())
                .unwrap_or(Meta { mode, dir: false })
        } else {
            Meta {
                mode,
                dir: kind.is_dir(),
            }
        };
        metas.insert(tree.clone(), meta);
        this_layer.insert(tree);
    }
    Ok(())
}

/// `./etc/x`, `etc/x` or `/etc/x` as the tree path `/etc/x`; None for paths with `..`.
fn tree_path(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn host_path(root: &Path, tree: &Path) -> PathBuf {
    root.join(tree.strip_prefix("/").unwrap_or(tree))
}

/// Remove a tree path (and everything under it) from disk and from the metadata.
fn remove(root: &Path, tree: &Path, metas: &mut BTreeMap<PathBuf, Meta>) {
    let host = host_path(root, tree);
    match std::fs::symlink_metadata(&host) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(&host);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(&host);
        }
        Err(_) => {}
    }
    let under: Vec<PathBuf> = metas
        .range(tree.to_path_buf()..)
        .take_while(|(k, _)| k.starts_with(tree))
        .map(|(k, _)| k.clone())
        .collect();
    for k in under {
        metas.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_paths() {
        assert_eq!(
            tree_path(Path::new("./etc/x")),
            Some(PathBuf::from("/etc/x"))
        );
        assert_eq!(tree_path(Path::new("etc")), Some(PathBuf::from("/etc")));
        assert_eq!(tree_path(Path::new("../etc")), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("usr/lib/os-release"), "ID=debian\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", d.path().join("etc/os-release"))
            .unwrap();
        // An absolute link that would escape on the host stays inside the tree.
        std::os::unix::fs::symlink("/../../usr/lib", d.path().join("lib")).unwrap();
        assert_eq!(
            resolve(d.path(), Path::new("/etc/os-release")).unwrap(),
            PathBuf::from("/usr/lib/os-release")
        );
        assert_eq!(
            resolve(d.path(), Path::new("/lib/os-release")).unwrap(),
            PathBuf::from("/usr/lib/os-release")
        );
        std::os::unix::fs::symlink("loop", d.path().join("loop")).unwrap();
        assert!(resolve(d.path(), Path::new("/loop")).is_err());
    }
}
