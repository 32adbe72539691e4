//! The partition layout and the GPT, written with the `gpt` crate.
//!
//! Partition types follow the UAPI Discoverable Partitions Specification (ESP and
//! x86-64 root), so systemd tools recognise the disk. Disk and partition GUIDs are
//! derived from the image's content digest: the same image always gets the same GUIDs.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;

/// A partition's place on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: &'static str,
    pub first_lba: u64,
    pub last_lba: u64,
    pub uuid: uuid::Uuid,
}

impl Part {
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

/// The disk: 1 MiB gap, ESP, root up to 1 MiB before the end (room for the backup GPT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_bytes: u64,
    pub disk_guid: uuid::Uuid,
    pub esp: Part,
    pub root: Part,
    /// ext4 UUID and directory hash seed of the root file system.
    pub fs_uuid: uuid::Uuid,
    /// FAT volume id of the ESP.
    pub esp_volume_id: u32,
}

/// A stable UUID (version 4 bits set) from a seed and a purpose.
pub fn derived_uuid(seed: &str, purpose: &str) -> uuid::Uuid {
    let h = Sha256::digest(format!("goldsmith:{purpose}:{seed}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// Compute the layout of a `disk_mib` disk with an `esp_mib` ESP.
pub fn layout(disk_mib: u64, esp_mib: u64, seed: &str) -> Result<Layout, String> {
    if disk_mib < esp_mib + 64 {
        return Err(format!(
            "disk size {disk_mib} MiB leaves no room for a root file system next to a {esp_mib} MiB ESP"
        ));
    }
    let esp_first = MIB / SECTOR;
    let esp_last = esp_first + esp_mib * MIB / SECTOR - 1;
    let root_first = esp_last + 1;
    let root_last = (disk_mib - 1) * MIB / SECTOR - 1;
    let vid = Sha256::digest(format!("goldsmith:esp:{seed}").as_bytes());
    Ok(Layout {
        disk_bytes: disk_mib * MIB,
        disk_guid: derived_uuid(seed, "disk"),
        esp: Part {
            name: "esp",
            first_lba: esp_first,
            last_lba: esp_last,
            uuid: derived_uuid(seed, "esp"),
        },
        root: Part {
            name: "root-x86-64",
            first_lba: root_first,
            last_lba: root_last,
            uuid: derived_uuid(seed, "root"),
        },
        fs_uuid: derived_uuid(seed, "rootfs"),
        esp_volume_id: u32::from_be_bytes([vid[0], vid[1], vid[2], vid[3]]),
    })
}

/// Create the sparse disk file and write the protective MBR and both GPT headers.
pub fn write_gpt(path: &Path, l: &Layout) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    f.set_len(l.disk_bytes)?;
    let mut f = f;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from((l.disk_bytes / SECTOR) - 1).unwrap_or(0xFFFF_FFFF),
    );
    mbr.overwrite_lba0(&mut f)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(f, Some(l.disk_guid))?;
    let mut parts = BTreeMap::new();
    parts.insert(
        1,
        gpt::partition::Partition {
            part_type_guid: gpt::partition_types::EFI,
            part_guid: l.esp.uuid,
            first_lba: l.esp.first_lba,
            last_lba: l.esp.last_lba,
            flags: 0,
            name: l.esp.name.into(),
        },
    );
    parts.insert(
        2,
        gpt::partition::Partition {
            part_type_guid: gpt::partition_types::LINUX_ROOT_X64,
            part_guid: l.root.uuid,
            first_lba: l.root.first_lba,
            last_lba: l.root.last_lba,
            flags: 0,
            name: l.root.name.into(),
        },
    );
    disk.update_partitions(parts)?;
    let f = disk.write()?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_stable() {
        let a = layout(2048, 128, "abc").unwrap();
        let b = layout(2048, 128, "abc").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.esp.offset_bytes(), MIB);
        assert_eq!(a.esp.size_bytes(), 128 * MIB);
        assert_eq!(a.root.offset_bytes() % MIB, 0);
        assert_eq!(a.root.offset_bytes() + a.root.size_bytes(), 2047 * MIB);
        assert_ne!(a.esp.uuid, a.root.uuid);
        assert_ne!(layout(2048, 128, "abd").unwrap().root.uuid, a.root.uuid);
        assert!(layout(100, 128, "x").is_err());
    }

    #[test]
    fn gpt_is_readable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.raw");
        let l = layout(256, 64, "seed").unwrap();
        write_gpt(&p, &l).unwrap();
        let disk = gpt::GptConfig::new().open(&p).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts[&1].part_type_guid, gpt::partition_types::EFI);
        assert_eq!(parts[&2].part_guid, l.root.uuid);
        assert_eq!(*disk.guid(), l.disk_guid);
    }
}
