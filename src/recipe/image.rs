//! The image definition: `images/NAME.toml`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::check::CheckDef;

/// An image: an ordered stack of layers plus how to assemble, test and ship it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDef {
    #[serde(default)]
    pub description: String,
    /// Layer names, base first.
    pub layers: Vec<Spanned<String>>,
    /// Variables that override the layers' defaults.
    #[serde(default)]
    pub variables: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub disk: DiskDef,
    /// The VM the image is booted in for tests (and described in the OVA).
    #[serde(default)]
    pub vm: VmDef,
    /// Output formats.
    #[serde(default = "default_formats")]
    pub formats: Vec<Spanned<Format>>,
    #[serde(default)]
    pub oci: OciDef,
    /// Checks on top of those the layers contribute.
    #[serde(default)]
    pub checks: Vec<CheckDef>,
    #[serde(default)]
    pub verify: VerifyDef,
    #[serde(default)]
    pub publish: PublishDef,
    /// Host groups (from the inventory) that run this image.
    #[serde(default)]
    pub host_groups: Vec<Spanned<String>>,
}

fn default_formats() -> Vec<Spanned<Format>> {
    vec![Spanned::new(0..0, Format::Qcow2)]
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Ova,
    Vhd,
    /// The root file system as `tar.zst`.
    Tar,
    /// An OCI image layout, one OCI layer per recipe layer.
    Oci,
}

impl Format {
    pub const ALL: [Format; 7] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Ova,
        Format::Vhd,
        Format::Tar,
        Format::Oci,
    ];

    /// Formats that hold a bootable disk.
    pub fn is_disk(self) -> bool {
        matches!(
            self,
            Format::Raw | Format::Qcow2 | Format::Vmdk | Format::Vhd | Format::Ova
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Ova => "ova",
            Format::Vhd => "vhd",
            Format::Tar => "tar",
            Format::Oci => "oci",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown format '{s}', expected one of {}",
                    Format::ALL.map(|f| f.as_str()).join(", ")
                )
            })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDef {
    /// Disk size, e.g. "2G", "1536M"; rounded up to whole MiB.
    #[serde(default = "default_disk_size")]
    pub size: Spanned<String>,
    /// Boot mode; only `uefi` (systemd-boot) is built today.
    #[serde(default = "default_boot")]
    pub boot: Spanned<String>,
    /// EFI system partition size in MiB.
    #[serde(default = "default_esp_mib")]
    pub esp_mib: u64,
    /// qcow2 compression: `zstd` (fast; QEMU >= 5.1 reads it) or `zlib` (older consumers).
    #[serde(default = "default_qcow2_compression")]
    pub qcow2_compression: Spanned<String>,
}

impl Default for DiskDef {
    fn default() -> Self {
        DiskDef {
            size: default_disk_size(),
            boot: default_boot(),
            esp_mib: default_esp_mib(),
            qcow2_compression: default_qcow2_compression(),
        }
    }
}

fn default_disk_size() -> Spanned<String> {
    Spanned::new(0..0, "2G".into())
}
fn default_boot() -> Spanned<String> {
    Spanned::new(0..0, "uefi".into())
}
fn default_esp_mib() -> u64 {
    128
}
fn default_qcow2_compression() -> Spanned<String> {
    Spanned::new(0..0, "zstd".into())
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmDef {
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
}

impl Default for VmDef {
    fn default() -> Self {
        VmDef {
            memory_mib: default_memory(),
            cpus: default_cpus(),
        }
    }
}

fn default_memory() -> u32 {
    1024
}
fn default_cpus() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OciDef {
    /// Absolute paths left out of the OCI layers (e.g. "/boot").
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Image config: entrypoint/cmd for container use.
    #[serde(default)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyDef {
    /// Seconds the guest has to become ready.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u64,
    /// Skip the built-in `systemctl is-system-running` = running check.
    #[serde(default)]
    pub allow_degraded: bool,
}

impl Default for VerifyDef {
    fn default() -> Self {
        VerifyDef {
            boot_timeout_secs: default_boot_timeout(),
            allow_degraded: false,
        }
    }
}

fn default_boot_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishDef {
    /// Channel that `publish` moves.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Publish targets (named in goldsmith.toml) besides the store.
    #[serde(default)]
    pub targets: Vec<Spanned<String>>,
}

impl Default for PublishDef {
    fn default() -> Self {
        PublishDef {
            channel: default_channel(),
            targets: Vec::new(),
        }
    }
}

fn default_channel() -> String {
    "nightly".into()
}

/// The largest size goldsmith accepts anywhere (64 TiB).
pub const MAX_SIZE_MIB: u64 = 64 << 20;

/// Parse a size like "2G", "1536M", "512MiB" into MiB (rounded up).
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: \"2G\", \"1536M\")"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 1.0,
        "G" | "GB" | "GIB" => 1024.0,
        "T" | "TB" | "TIB" => 1024.0 * 1024.0,
        u => return Err(format!("unknown size unit '{u}' in '{s}' (use M or G)")),
    };
    let mib = (n * mult).ceil();
    if mib < 1.0 {
        return Err(format!("size '{s}' is zero"));
    }
    // Sizes are turned into byte counts later; a bound keeps that arithmetic in range.
    if mib > MAX_SIZE_MIB as f64 {
        return Err(format!("size '{s}' is larger than 64T"));
    }
    Ok(mib as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("2G"), Ok(2048));
        assert_eq!(parse_size_mib("1536M"), Ok(1536));
        assert_eq!(parse_size_mib("1.5GiB"), Ok(1536));
        assert!(parse_size_mib("2X").is_err());
        assert!(parse_size_mib("big").is_err());
    }
}
