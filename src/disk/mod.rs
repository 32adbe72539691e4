//! The disk stage: a GPT disk image with an EFI system partition (systemd-boot, kernel,
//! initrd, one loader entry) and an ext4 root, assembled without loop devices or mounts.

pub mod esp;
pub mod ext4;
pub mod layout;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use layout::Layout;

/// What to assemble.
pub struct DiskSpec<'a> {
    pub image: &'a str,
    pub disk_mib: u64,
    pub esp_mib: u64,
    /// Kernel command line additions from the layers.
    pub cmdline: &'a [String],
    /// Seeds the disk's GUIDs and the file-system UUID.
    pub content_digest: &'a str,
    pub sde: i64,
    pub timeout: Duration,
}

/// The assembled raw disk.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub path: PathBuf,
    pub layout_root_partuuid: String,
    pub kernel_version: String,
    pub cmdline: String,
}

/// Assemble `out` (a new file) from `tree`. The tree gets its `/etc/fstab` first.
pub async fn assemble(spec: &DiskSpec<'_>, tree: &Path, out: &Path) -> anyhow::Result<Disk> {
    let l = layout::layout(spec.disk_mib, spec.esp_mib, spec.content_digest)
        .map_err(|m| anyhow::anyhow!("image {}: {m}", spec.image))?;
    check_fits(spec, tree, &l)?;
    // Resolved inside the tree: a layer's `/etc -> /somewhere` must not lead to the host.
    let etc = crate::rootfs::tree::resolve_in(tree, "etc", true)?;
    let fstab = crate::rootfs::tree::resolve_in(tree, "etc/fstab", true)?;
    let etc_mtime = filetime::FileTime::from_last_modification_time(&etc.metadata()?);
    std::fs::write(
        &fstab,
        format!(
            "# goldsmith: the root file system, found by partition UUID\nPARTUUID={} / ext4 rw,errors=remount-ro 0 1\n",
            l.root.uuid
        ),
    )?;
    // Like every file of the tree, fstab carries SOURCE_DATE_EPOCH, not the build time.
    let t = filetime::FileTime::from_unix_time(spec.sde, 0);
    filetime::set_symlink_file_times(&fstab, t, t)?;
    filetime::set_symlink_file_times(&etc, etc_mtime, etc_mtime)?;
    let boot = esp::find_boot_files(tree, spec.image)?;
    let mut cmdline = format!("root=PARTUUID={} rw", l.root.uuid);
    for c in spec.cmdline {
        cmdline.push(' ');
        cmdline.push_str(c);
    }
    let work = tempfile::Builder::new()
        .prefix("goldsmith-disk-")
        .tempdir()?;
    {
        let out = out.to_owned();
        let l = l.clone();
        tokio::task::spawn_blocking(move || layout::write_gpt(&out, &l)).await??;
    }
    // The two file systems live in disjoint byte ranges of the file: make them at once.
    let (a, b) = tokio::join!(
        esp::make_esp(
            out,
            &l,
            &boot,
            &cmdline,
            spec.sde,
            work.path(),
            spec.timeout
        ),
        ext4::make_root(
            out,
            &l,
            tree,
            spec.sde,
            work.path(),
            spec.timeout,
            spec.image
        ),
    );
    a?;
    b?;
    Ok(Disk {
        path: out.to_owned(),
        layout_root_partuuid: l.root.uuid.to_string(),
        kernel_version: boot.kernel_version,
        cmdline,
    })
}

/// Fail early, naming the image and the sizes, when the tree cannot fit the root
/// partition (mke2fs's own message would be "Could not allocate block").
fn check_fits(spec: &DiskSpec<'_>, tree: &Path, l: &Layout) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut bytes: u64 = 0;
    let mut inodes: u64 = 0;
    for e in walkdir::WalkDir::new(tree).same_file_system(true) {
        let e = e?;
        let m = e.path().symlink_metadata()?;
        // Whole 4 KiB blocks per file, as ext4 will use.
        bytes += m.size().div_ceil(4096) * 4096;
        inodes += 1;
    }
    // Inode tables, journal and reserved blocks take roughly a tenth of a small disk.
    let usable = l.root.size_bytes() / 10 * 9;
    let needed = bytes + inodes * 256;
    if needed > usable {
        anyhow::bail!(
            "image {}: the content ({} MiB) does not fit the root partition ({} MiB of a {} MiB disk); raise disk.size in images/{}.toml",
            spec.image,
            needed >> 20,
            usable >> 20,
            spec.disk_mib,
            spec.image
        );
    }
    Ok(())
}
