//! The EFI system partition, made and filled in place inside the disk file with
//! mkfs.fat and mtools: no loop device, no mount, no vfat in the build host's kernel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::layout::Layout;
use crate::exec::Cmd;

/// Where systemd-boot lives in a Debian tree (package systemd-boot-efi) and on the host.
const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The boot files found in the tree.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub bootloader: PathBuf,
    /// Kernel version (from the file name).
    pub kernel_version: String,
}

/// Find the newest kernel and its initrd in `tree/boot`, and systemd-boot (from the
/// tree, else from the build host).
pub fn find_boot_files(tree: &Path, image: &str) -> anyhow::Result<BootFiles> {
    // Every path is resolved inside the tree: a kernel symlinked to a host file must not
    // copy that file into the image.
    let inside = |rel: &str| crate::rootfs::tree::resolve_in(tree, rel, true);
    let boot = inside("boot")?;
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("vmlinuz-")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by(|a, b| version_cmp(a, b));
    let Some(v) = versions.pop() else {
        anyhow::bail!(
            "image {image}: no kernel in /boot (add a kernel package such as linux-image-cloud-amd64 to a layer)"
        );
    };
    let initrd = inside(&format!("boot/initrd.img-{v}"))?;
    if !initrd.is_file() {
        anyhow::bail!(
            "image {image}: kernel {v} has no initrd (/boot/initrd.img-{v}); install initramfs-tools in a layer"
        );
    }
    let in_tree = inside(SYSTEMD_BOOT)?;
    let bootloader = if in_tree.is_file() {
        in_tree
    } else {
        let host = Path::new("/").join(SYSTEMD_BOOT);
        if !host.is_file() {
            anyhow::bail!(
                "image {image}: systemd-boot not found in the image ({SYSTEMD_BOOT}) nor on this host; install systemd-boot-efi in a layer"
            );
        }
        host
    };
    Ok(BootFiles {
        kernel: inside(&format!("boot/vmlinuz-{v}"))?,
        initrd,
        bootloader,
        kernel_version: v,
    })
}

/// Compare kernel versions numerically where they are numbers.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<(u64, String)> {
        s.split(['.', '-', '+', '~'])
            .map(|p| (p.parse::<u64>().unwrap_or(0), p.to_string()))
            .collect()
    };
    key(a).cmp(&key(b))
}

/// Format the ESP inside `disk` and install systemd-boot, the kernel, the initrd and one
/// loader entry. With SOURCE_DATE_EPOCH set, mtools stamps every entry with it, and
/// `mkfs.fat --invariant` fixes the rest, so the ESP is byte-for-byte reproducible.
pub async fn make_esp(
    disk: &Path,
    l: &Layout,
    boot: &BootFiles,
    cmdline: &str,
    sde: i64,
    work: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let sectors = l.esp.first_lba;
    Cmd::new("mkfs.fat")
        .timeout(timeout)
        .args([
            "-F",
            "32",
            "-s",
            "1",
            "-S",
            "512",
            "--invariant",
            "-n",
            "ESP",
        ])
        .arg("-i")
        .arg(format!("{:08X}", l.esp_volume_id))
        .arg(format!("--offset={sectors}"))
        .arg(disk)
        .arg((l.esp.size_bytes() / 1024).to_string())
        .run()
        .await
        .context("formatting the EFI system partition")?;
    let loader = work.join("loader.conf");
    std::fs::write(&loader, "timeout 0\ndefault goldsmith.conf\neditor no\n")?;
    let entry = work.join("goldsmith.conf");
    std::fs::write(
        &entry,
        format!(
            "title goldsmith\nversion {}\nlinux /goldsmith/vmlinuz\ninitrd /goldsmith/initrd\noptions {cmdline}\n",
            boot.kernel_version
        ),
    )?;
    let target = format!("{}@@{}", disk.display(), l.esp.offset_bytes());
    let mtools = |args: Vec<String>| {
        Cmd::new(&args[0])
            .timeout(timeout)
            .env("SOURCE_DATE_EPOCH", sde.to_string())
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(&args[1..])
    };
    mtools(
        [
            "mmd",
            "-i",
            &target,
            "::/EFI",
            "::/EFI/BOOT",
            "::/loader",
            "::/loader/entries",
            "::/goldsmith",
        ]
        .map(String::from)
        .to_vec(),
    )
    .run()
    .await
    .context("creating ESP folders")?;
    for (src, dest) in [
        (boot.bootloader.as_path(), "::/EFI/BOOT/BOOTX64.EFI"),
        (boot.kernel.as_path(), "::/goldsmith/vmlinuz"),
        (boot.initrd.as_path(), "::/goldsmith/initrd"),
        (loader.as_path(), "::/loader/loader.conf"),
        (entry.as_path(), "::/loader/entries/goldsmith.conf"),
    ] {
        mtools(vec![
            "mcopy".into(),
            "-i".into(),
            target.clone(),
            src.display().to_string(),
            dest.into(),
        ])
        .run()
        .await
        .with_context(|| {
            format!(
                "copying {} to the ESP (is the ESP large enough?)",
                src.display()
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_wins() {
        let mut v = [
            "6.1.0-9-cloud-amd64".to_string(),
            "6.1.0-10-cloud-amd64".to_string(),
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v.last().unwrap(), "6.1.0-10-cloud-amd64");
    }
}
