//! Turning an artifact into something QEMU boots: detect its format from its bytes,
//! hash it, and unpack an OVA's VMDK.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::qemu::Disk;
use super::VerifyError;
use crate::recipe::Format;

/// The QEMU block driver of a disk format.
pub fn driver(f: Format) -> Option<&'static str> {
    match f {
        Format::Raw => Some("raw"),
        Format::Qcow2 => Some("qcow2"),
        Format::Vmdk | Format::Ova => Some("vmdk"),
        Format::Vhd => Some("vpc"),
        Format::Tar | Format::Oci => None,
    }
}

/// Detect an artifact's format from its content (not its name).
pub fn detect(path: &Path) -> Result<Format, VerifyError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| VerifyError::Artifact(format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        if path.join("oci-layout").is_file() {
            return Ok(Format::Oci);
        }
        return Err(VerifyError::Artifact(format!(
            "{} is a directory without an oci-layout file",
            path.display()
        )));
    }
    let mut f = std::fs::File::open(path)
        .map_err(|e| VerifyError::Artifact(format!("{}: {e}", path.display())))?;
    let mut head = vec![0u8; 1024];
    let n = read_full(&mut f, &mut head);
    head.truncate(n);
    if head.starts_with(b"QFI\xfb") {
        return Ok(Format::Qcow2);
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        return Ok(Format::Vmdk);
    }
    if head.starts_with(b"conectix") {
        return Ok(Format::Vhd); // dynamic VHD: footer copy at the start
    }
    if head.len() > 262 && &head[257..262] == b"ustar" {
        return Ok(Format::Ova);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(Format::Tar); // zstd: the rootfs tarball
    }
    // A fixed VHD is a raw disk with a 512-byte footer.
    if meta.len() >= 512 {
        let mut foot = [0u8; 8];
        if f.seek(SeekFrom::End(-512)).is_ok()
            && read_full(&mut f, &mut foot) == 8
            && &foot == b"conectix"
        {
            return Ok(Format::Vhd);
        }
    }
    Ok(Format::Raw)
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// A disk ready to boot; holds the temp directory of an unpacked OVA.
pub struct Prepared {
    pub disk: Disk,
    _tmp: Option<tempfile::TempDir>,
}

/// Make `path` (of format `f`) bootable by QEMU.
pub fn prepare(path: &Path, f: Format) -> Result<Prepared, VerifyError> {
    match f {
        Format::Ova => {
            let tmp = super::run_temp_dir("ova")?;
            let vmdk = unpack_ova_disk(path, tmp.path())?;
            Ok(Prepared {
                disk: Disk {
                    path: vmdk,
                    driver: "vmdk",
                },
                _tmp: Some(tmp),
            })
        }
        f => {
            let driver = driver(f).ok_or_else(|| {
                VerifyError::Artifact(format!(
                    "{f} artifacts do not boot; only raw, qcow2, vmdk, ova and vhd do"
                ))
            })?;
            Ok(Prepared {
                disk: Disk {
                    path: path.to_owned(),
                    driver,
                },
                _tmp: None,
            })
        }
    }
}

/// Extract the (first) VMDK of an OVA into `dir`.
fn unpack_ova_disk(ova: &Path, dir: &Path) -> Result<PathBuf, VerifyError> {
    let bad = |e: String| VerifyError::Artifact(format!("{}: {e}", ova.display()));
    let f = std::fs::File::open(ova).map_err(|e| bad(e.to_string()))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(f));
    for entry in ar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if name
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("vmdk"))
        {
            let dst = dir.join("disk.vmdk");
            let mut out = std::fs::File::create(&dst).map_err(|e| bad(e.to_string()))?;
            std::io::copy(&mut entry, &mut out).map_err(|e| bad(e.to_string()))?;
            return Ok(dst);
        }
    }
    Err(bad("the OVA holds no .vmdk disk".into()))
}

/// sha256 of a file, or of a directory as the build records it (its sorted file list
/// with their digests), off the async threads.
pub async fn sha256(path: &Path) -> Result<String, VerifyError> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if p.is_dir() {
            dir_digest(&p)
        } else {
            crate::fsutil::sha256_file(&p).map(|(_, h)| h)
        }
    })
    .await
    .map_err(|e| VerifyError::Artifact(e.to_string()))?
    .map_err(|e| VerifyError::Artifact(format!("cannot hash {}: {e}", path.display())))
}

fn dir_digest(dir: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.map_err(std::io::Error::other)?;
        if e.file_type().is_file() {
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap_or(e.path())
                .to_string_lossy()
                .into_owned();
            let (_, h) = crate::fsutil::sha256_file(e.path())?;
            files.push(format!("{h}  {rel}\n"));
        }
    }
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_from_content() {
        let d = tempfile::tempdir().unwrap();
        let w = |name: &str, bytes: &[u8]| {
            let p = d.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        // Names lie on purpose: content decides.
        assert_eq!(
            detect(&w("a.raw", b"QFI\xfb\0\0\0\x03")).unwrap(),
            Format::Qcow2
        );
        assert_eq!(
            detect(&w("b.img", b"KDMV\x03\0\0\0")).unwrap(),
            Format::Vmdk
        );
        let mut fixed_vhd = vec![0u8; 4096];
        fixed_vhd.extend(b"conectix");
        fixed_vhd.extend([0u8; 504]);
        assert_eq!(detect(&w("c.bin", &fixed_vhd)).unwrap(), Format::Vhd);
        assert_eq!(detect(&w("d.qcow2", &[0u8; 4096])).unwrap(), Format::Raw);
        std::fs::write(d.path().join("oci-layout"), "{}").unwrap();
        assert_eq!(detect(d.path()).unwrap(), Format::Oci);
        assert!(detect(&d.path().join("missing")).is_err());
    }
}
