//! The ext4 root file system, made in place inside the disk file with `mkfs.ext4 -d`.
//!
//! mke2fs copies each inode's atime and ctime from the source tree, and a ctime cannot be
//! set from user space, so a tree built at another moment gives another file system. We
//! fix that after mkfs with one debugfs script setting atime and ctime of every inode to
//! SOURCE_DATE_EPOCH (E2FSPROGS_FAKE_TIME covers what mke2fs stamps itself). mke2fs sorts
//! directory entries, so inode numbers do not depend on the order files were created in.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::layout::Layout;
use crate::exec::Cmd;

/// Make the root file system from `tree` at the root partition's offset in `disk`.
pub async fn make_root(
    disk: &Path,
    l: &Layout,
    tree: &Path,
    sde: i64,
    work: &Path,
    timeout: Duration,
    image: &str,
) -> anyhow::Result<()> {
    let offset = l.root.offset_bytes();
    let size_k = l.root.size_bytes() / 1024;
    let uuid = l.fs_uuid.to_string();
    Cmd::new("mkfs.ext4")
        .timeout(timeout)
        .env("SOURCE_DATE_EPOCH", sde.to_string())
        .env("E2FSPROGS_FAKE_TIME", sde.to_string())
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root", "-U", &uuid])
        .arg("-E")
        .arg(format!("offset={offset},hash_seed={uuid},root_owner=0:0,nodiscard"))
        .arg("-d")
        .arg(tree)
        .arg(disk)
        .arg(format!("{size_k}k"))
        .run()
        .await
        .map_err(|e| {
            let tail = e.stderr_tail().to_string();
            if tail.contains("Could not allocate")
                || tail.contains("No space left")
                || tail.contains("too many")
            {
                anyhow::anyhow!(
                    "image {image}: the root file system does not fit: disk.size leaves {} MiB for it; raise disk.size in the image ({e})",
                    l.root.size_bytes() >> 20
                )
            } else {
                anyhow::anyhow!("image {image}: making the root file system failed: {e}")
            }
        })?;
    let script = work.join("times.debugfs");
    std::fs::write(&script, times_script(tree, sde)?)?;
    Cmd::new("debugfs")
        .timeout(timeout)
        .env("E2FSPROGS_FAKE_TIME", sde.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(format!("{}?offset={offset}", disk.display()))
        .stdout_null()
        .run()
        .await
        .context("normalising inode times with debugfs")?;
    Ok(())
}

/// `sif PATH atime/ctime SDE` for every entry of the tree.
fn times_script(tree: &Path, sde: i64) -> anyhow::Result<String> {
    let stamp = chrono::DateTime::from_timestamp(sde, 0)
        .context("SOURCE_DATE_EPOCH out of range")?
        .format("%Y%m%d%H%M%S")
        .to_string();
    let mut s = String::new();
    for e in walkdir::WalkDir::new(tree).same_file_system(true) {
        let e = e?;
        let rel = e.path().strip_prefix(tree)?;
        let Some(rel) = rel.to_str() else {
            continue; // debugfs cannot name it; its times stay as mke2fs set them
        };
        if rel.contains('"') || rel.contains('\n') {
            continue;
        }
        let p = format!("/{rel}");
        for field in ["atime", "ctime"] {
            let _ = writeln!(s, "sif \"{p}\" {field} {stamp}");
        }
    }
    Ok(s)
}
