//! The post-build secret scan (B9): after a layer is built and after an image's tree is
//! put together, every file of it is searched for the bytes of every secret goldsmith
//! knows of (build-time secrets of the image's layers and every credential registered
//! with [`crate::exec::register_secret`]). A hit fails the build naming the file, never
//! the secret's value.
//!
//! Secrets are searched as they are and in base64 (at each of the three alignments),
//! the form in which tokens usually end up in configuration (`.docker/config.json`,
//! `Authorization: Basic`). Values shorter than [`MIN_SCAN_LEN`] bytes are not searched:
//! they would match ordinary bytes of a system image; build secrets must be longer.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use base64::Engine as _;

/// Shortest secret the scan searches for.
pub const MIN_SCAN_LEN: usize = 8;
/// Leaks named in one error (the scan stops collecting after that many).
const MAX_REPORTED: usize = 20;

/// The byte patterns to search for, each with a label that names the secret (never its
/// value).
#[derive(Clone)]
pub struct Needles {
    ac: AhoCorasick,
    labels: Vec<String>,
}

impl Needles {
    /// Patterns for `secrets` as (label, value). Values are trimmed of surrounding
    /// whitespace (a secret file's trailing newline is not part of the token). `None`
    /// when nothing is long enough to search for.
    pub fn new(secrets: &[(String, Vec<u8>)]) -> Option<Needles> {
        let mut pats: Vec<Vec<u8>> = Vec::new();
        let mut labels = Vec::new();
        for (label, value) in secrets {
            let v = value.trim_ascii();
            if v.len() < MIN_SCAN_LEN {
                continue;
            }
            for (p, how) in std::iter::once((v.to_vec(), ""))
                .chain(base64_forms(v).into_iter().map(|p| (p, " (base64)")))
            {
                if p.len() >= MIN_SCAN_LEN && !pats.contains(&p) {
                    pats.push(p);
                    labels.push(format!("{label}{how}"));
                }
            }
        }
        if pats.is_empty() {
            return None;
        }
        let ac = AhoCorasick::new(&pats).expect("literal patterns always build");
        Some(Needles { ac, labels })
    }

    /// The build's own secrets (name, value) plus every registered credential.
    pub fn for_build(build_secrets: &[(String, Vec<u8>)]) -> Option<Needles> {
        let mut all: Vec<(String, Vec<u8>)> = build_secrets
            .iter()
            .map(|(n, v)| (format!("build secret '{n}'"), v.clone()))
            .collect();
        for s in crate::exec::secrets() {
            let b = s.into_bytes();
            if !all.iter().any(|(_, v)| v.trim_ascii() == b.trim_ascii()) {
                all.push(("a registered credential".into(), b));
            }
        }
        Needles::new(&all)
    }

    /// The label of the first secret found in `bytes`.
    pub fn find(&self, bytes: &[u8]) -> Option<&str> {
        self.ac
            .find(bytes)
            .map(|m| self.labels[m.pattern().as_usize()].as_str())
    }

    fn find_in(&self, r: impl Read) -> io::Result<Option<&str>> {
        match self
            .ac
            .try_stream_find_iter(r)
            .map_err(io::Error::other)?
            .next()
        {
            Some(m) => Ok(Some(self.labels[m?.pattern().as_usize()].as_str())),
            None => Ok(None),
        }
    }
}

/// The base64 text of `v` at each alignment, cut to the characters that depend only on
/// `v`'s own bytes.
fn base64_forms(v: &[u8]) -> Vec<Vec<u8>> {
    let e = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = Vec::new();
    for k in 0..3usize {
        let mut buf = vec![0u8; k];
        buf.extend_from_slice(v);
        let enc = e.encode(&buf).into_bytes();
        // Leading characters that mix in the k bytes before the secret.
        let skip = [0, 2, 3][k];
        // A trailing partial group's last character mixes in the byte after it.
        let cut = usize::from(buf.len() % 3 != 0);
        if enc.len() > skip + cut {
            out.push(enc[skip..enc.len() - cut].to_vec());
        }
    }
    out
}

/// One place a secret was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// The path inside the image (`/etc/app.conf`).
    pub path: String,
    /// What holds the bytes: `content`, `file name`, `symlink target` or `xattr`.
    pub place: &'static str,
    /// Which secret (its label, never its value).
    pub secret: String,
}

/// Secret bytes were found in a build's output.
#[derive(Debug, thiserror::Error)]
#[error(
    "{scope}: the secret scan found secret bytes in {}{}; nothing was kept. Scripts read \
     build secrets from /run/goldsmith/secrets/NAME while the build runs and must not write \
     them (or anything containing them) into the image",
    describe(.leaks),
    if .leaks.len() >= MAX_REPORTED { " (and maybe more)" } else { "" }
)]
pub struct LeakError {
    /// What was scanned (`layer app`, `image web`, `build.json of image web`).
    pub scope: String,
    pub leaks: Vec<Leak>,
}

fn describe(leaks: &[Leak]) -> String {
    leaks
        .iter()
        .map(|l| format!("{} ({} holds {})", l.path, l.place, l.secret))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Search every entry of the tree at `root`.
pub fn scan_tree(root: &Path, needles: &Needles) -> io::Result<Vec<Leak>> {
    let mut leaks = Vec::new();
    for e in walkdir::WalkDir::new(root)
        .same_file_system(true)
        .sort_by_file_name()
    {
        let e = e.map_err(io::Error::other)?;
        let rel = e.path().strip_prefix(root).map_err(io::Error::other)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        scan_entry(root, rel, needles, &mut leaks)?;
        if leaks.len() >= MAX_REPORTED {
            break;
        }
    }
    Ok(leaks)
}

/// Search the entries `rels` (relative to `root`) only: what one layer changed.
pub fn scan_paths(root: &Path, rels: &[PathBuf], needles: &Needles) -> io::Result<Vec<Leak>> {
    let mut leaks = Vec::new();
    for rel in rels {
        scan_entry(root, rel, needles, &mut leaks)?;
        if leaks.len() >= MAX_REPORTED {
            break;
        }
    }
    Ok(leaks)
}

fn scan_entry(root: &Path, rel: &Path, needles: &Needles, leaks: &mut Vec<Leak>) -> io::Result<()> {
    let full = root.join(rel);
    let shown = format!("/{}", rel.display());
    let mut hit = |place: &'static str, secret: &str| {
        leaks.push(Leak {
            path: shown.clone(),
            place,
            secret: secret.to_string(),
        })
    };
    if let Some(s) = needles.find(rel.as_os_str().as_bytes()) {
        hit("file name", s);
    }
    let m = match full.symlink_metadata() {
        Ok(m) => m,
        // Gone since the walk (a layer's whiteout): nothing left to leak.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let ft = m.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(&full)?;
        if let Some(s) = needles.find(t.as_os_str().as_bytes()) {
            hit("symlink target", s);
        }
        return Ok(());
    }
    if let Ok(names) = xattr::list(&full) {
        for n in names {
            if let Ok(Some(v)) = xattr::get(&full, &n) {
                if let Some(s) = needles.find(&v) {
                    hit("xattr", s);
                }
            }
        }
    }
    // Only regular files have content to read; opening a FIFO would block.
    if ft.is_file() && !ft.is_fifo() {
        if let Some(s) = scan_file(&full, needles)? {
            hit("content", &s);
        }
    }
    Ok(())
}

/// Search a file's data, skipping holes: a multi-GiB sparse file costs only its data.
fn scan_file(path: &Path, needles: &Needles) -> io::Result<Option<String>> {
    use std::os::fd::AsFd;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        let data = match nix::unistd::lseek(f.as_fd(), pos, nix::unistd::Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            // A file system without SEEK_DATA: read everything.
            Err(nix::errno::Errno::EINVAL) => 0,
            Err(e) => return Err(e.into()),
        };
        let hole = nix::unistd::lseek(f.as_fd(), data, nix::unistd::Whence::SeekHole)
            .unwrap_or(len as i64);
        f.seek(SeekFrom::Start(data as u64))?;
        let chunk = (&mut f).take((hole - data) as u64);
        if let Some(s) = needles.find_in(io::BufReader::with_capacity(1 << 20, chunk))? {
            return Ok(Some(s.to_string()));
        }
        if hole <= pos {
            break;
        }
        pos = hole;
    }
    Ok(None)
}

/// Fail with a [`LeakError`] when `leaks` is not empty.
pub fn check(scope: impl Into<String>, leaks: Vec<Leak>) -> Result<(), LeakError> {
    if leaks.is_empty() {
        Ok(())
    } else {
        Err(LeakError {
            scope: scope.into(),
            leaks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needles(v: &str) -> Needles {
        Needles::new(&[("build secret 'tok'".into(), v.as_bytes().to_vec())]).unwrap()
    }

    #[test]
    fn finds_raw_and_base64_forms_at_every_alignment() {
        let n = needles("s3cr3t-token-value\n");
        assert!(n.find(b"x=s3cr3t-token-value;").is_some());
        let e = base64::engine::general_purpose::STANDARD;
        for prefix in ["", "a", "ab", "user:"] {
            let enc = e.encode(format!("{prefix}s3cr3t-token-value"));
            assert!(n.find(enc.as_bytes()).is_some(), "{prefix:?} -> {enc}");
        }
        assert!(n.find(b"s3cr3t-token-valu").is_none());
        assert!(n.find(b"entirely unrelated bytes").is_none());
    }

    #[test]
    fn short_values_are_not_searched() {
        assert!(Needles::new(&[("x".into(), b"abc\n".to_vec())]).is_none());
    }

    #[test]
    fn tree_scan_names_files_never_values() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/ok"), "nothing here").unwrap();
        let mut big = vec![b'x'; 3 << 20];
        // Straddling the scanner's 1 MiB read boundary.
        big[(1 << 20) - 5..(1 << 20) + 13].copy_from_slice(b"s3cr3t-token-value");
        std::fs::write(r.join("etc/big"), &big).unwrap();
        std::os::unix::fs::symlink("/s3cr3t-token-value", r.join("etc/link")).unwrap();
        // Sparse: a hole, then the secret at the end.
        let f = std::fs::File::create(r.join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"s3cr3t-token-value", (64 << 20) - 100)
            .unwrap();
        let leaks = scan_tree(r, &needles("s3cr3t-token-value")).unwrap();
        let got: Vec<(&str, &str)> = leaks.iter().map(|l| (l.path.as_str(), l.place)).collect();
        assert_eq!(
            got,
            [
                ("/etc/big", "content"),
                ("/etc/link", "symlink target"),
                ("/sparse", "content")
            ]
        );
        let msg = check("image t", leaks).unwrap_err().to_string();
        assert!(
            msg.contains("/etc/big") && msg.contains("build secret 'tok'"),
            "{msg}"
        );
        assert!(!msg.contains("s3cr3t-token-value"), "{msg}");
    }
}
