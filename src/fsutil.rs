//! File-system helpers shared by every stage: atomic writes, locks, directory sizes.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: a temp file in the same directory, fsync, rename,
/// fsync of the directory. A reader sees the old file or the new one, never a half.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// [`atomic_write`] of pretty JSON with a trailing newline.
pub fn atomic_write_json(path: &Path, v: &impl serde::Serialize) -> std::io::Result<()> {
    let mut b = serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?;
    b.push(b'\n');
    atomic_write(path, &b)
}

/// Create `path` with `bytes` only if it does not exist yet (compare-and-swap on "absent").
/// Returns `Ok(false)` when another writer got there first.
pub fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // link(2) fails with EEXIST instead of replacing: exactly one creator wins.
    match std::fs::hard_link(tmp.path(), path) {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// fsync a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Read and parse a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let b =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: invalid JSON: {e}", path.display()))
}

/// An advisory lock on a file (exclusive unless taken shared), held until dropped.
pub struct FileLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl FileLock {
    /// Block until the lock is ours.
    pub fn acquire(path: &Path) -> std::io::Result<FileLock> {
        Self::lock(path, libc::LOCK_EX).map(|l| l.expect("a blocking lock is always taken"))
    }

    /// Block until a shared lock is ours (other shared holders are fine; an exclusive
    /// holder is waited for).
    pub fn acquire_shared(path: &Path) -> std::io::Result<FileLock> {
        Self::lock(path, libc::LOCK_SH).map(|l| l.expect("a blocking lock is always taken"))
    }

    /// Take the lock if it is free; `Ok(None)` when someone else holds it.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<FileLock>> {
        Self::lock(path, libc::LOCK_EX | libc::LOCK_NB)
    }

    fn lock(path: &Path, op: libc::c_int) -> std::io::Result<Option<FileLock>> {
        use std::os::fd::AsRawFd;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            let e = std::io::Error::last_os_error();
            if op & libc::LOCK_NB != 0 && e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(FileLock {
            _file: file,
            path: path.to_owned(),
        }))
    }
}

/// Size and sha256 of a file, streamed.
pub fn sha256_file(p: &Path) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(p)?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    // Large reads: multi-GiB disks are hashed on every build, and 8 KiB reads spend a
    // third of the time in read(2). Holes are hashed as the zeros they read as without
    // reading them: a fresh disk image is mostly holes, and reading those from a file
    // just written costs more system time than hashing them.
    let mut buf = vec![0u8; 1 << 20];
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let (data, hole) = next_data(&f, pos, len);
        let mut z = data - pos;
        while z > 0 {
            let k = z.min(zeros.len() as u64) as usize;
            h.update(&zeros[..k]);
            z -= k as u64;
        }
        if data >= len {
            break;
        }
        f.seek(SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let k = match f.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{} shrank while it was hashed", p.display()),
                    ))
                }
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..k]);
            left -= k as u64;
        }
        pos = hole;
    }
    Ok((len, hex::encode(h.finalize())))
}

/// The next run of data at or after `pos`: (start, end), both within `len`; (len, len)
/// when only a hole is left. Without SEEK_DATA support everything counts as data.
fn next_data(f: &std::fs::File, pos: u64, len: u64) -> (u64, u64) {
    use std::os::fd::AsRawFd as _;
    let fd = f.as_raw_fd();
    // SAFETY: lseek on a descriptor `f` keeps open; every result is checked.
    let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENXIO) => (len, len),
            _ => (pos, len),
        };
    }
    let data = (data as u64).clamp(pos, len);
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
    let hole = if hole < 0 {
        len
    } else {
        (hole as u64).min(len)
    };
    (data, if hole > data { hole } else { len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_hash_as_their_bytes() {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        // Holes at the start, between data runs and at the end; data at the end; empty.
        let cases: &[(u64, &[(u64, usize)])] = &[
            (8 << 20, &[(3 << 20, 5000), (5 << 20, 1 << 20)]),
            (4 << 20, &[(0, 10), ((4 << 20) - 7, 7)]),
            (3 << 20, &[]),
            (0, &[]),
        ];
        for (i, (len, runs)) in cases.iter().enumerate() {
            let p = d.path().join(format!("f{i}"));
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(*len).unwrap();
            let mut want = vec![0u8; *len as usize];
            for (at, n) in runs.iter() {
                let bytes: Vec<u8> = (0..*n).map(|k| (k % 251 + 1) as u8).collect();
                f.write_all_at(&bytes, *at).unwrap();
                want[*at as usize..*at as usize + n].copy_from_slice(&bytes);
            }
            drop(f);
            let (n, h) = sha256_file(&p).unwrap();
            assert_eq!(n, *len);
            assert_eq!(h, hex::encode(Sha256::digest(&want)), "case {i}");
        }
    }

    #[test]
    fn create_new_has_one_winner() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        assert!(create_new(&p, b"a").unwrap());
        assert!(!create_new(&p, b"b").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"a");
        // No temp files are left behind by either attempt.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/x.json");
        atomic_write_json(&p, &serde_json::json!({"a": 1})).unwrap();
        atomic_write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }
}
