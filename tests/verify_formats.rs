//! `--all-formats` boots every disk format of a build: here a fixed VHD (QEMU's `vpc`
//! driver) and an OVA, whose streamOptimized VMDK is unpacked and booted.

#[path = "support/verify.rs"]
mod verify_support;

use std::process::Command;
use std::time::Duration;

use goldsmith::artifact::VerifyRecord;
use goldsmith::recipe::Format;
use verify_support::*;

/// The test image as a fixed VHD and as an OVA (cached beside the other test images).
fn vhd_and_ova() -> (std::path::PathBuf, std::path::PathBuf) {
    let src = web_image();
    let dir = images_dir();
    let _l = goldsmith::fsutil::FileLock::acquire(&dir.join("images.lock")).unwrap();
    let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
    let vhd = dir.join(format!("{stem}.vhd"));
    let ova = dir.join(format!("{stem}.ova"));
    let convert = |fmt: &str, opts: &str, out: &std::path::Path| {
        let tmp = out.with_extension("tmp");
        let st = Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", fmt, "-o", opts])
            .arg(&src)
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::rename(&tmp, out).unwrap();
    };
    if !vhd.exists() {
        convert("vpc", "subformat=fixed,force_size=on", &vhd);
    }
    if !ova.exists() {
        let vmdk = dir.join(format!("{stem}.vmdk"));
        convert("vmdk", "subformat=streamOptimized", &vmdk);
        let tmp = ova.with_extension("tmp");
        let mut b = tar::Builder::new(std::fs::File::create(&tmp).unwrap());
        let ovf = b"<?xml version=\"1.0\"?><Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"/>\n";
        let mut h = tar::Header::new_ustar();
        h.set_size(ovf.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "web.ovf", &ovf[..]).unwrap();
        b.append_path_with_name(&vmdk, "web-disk1.vmdk").unwrap();
        b.finish().unwrap();
        std::fs::remove_file(&vmdk).unwrap();
        std::fs::rename(&tmp, &ova).unwrap();
    }
    (vhd, ova)
}

#[test]
fn all_formats_boots_vhd_and_the_ova_disk() {
    let (vhd, ova) = vhd_and_ova();
    let _vm = vm_lock();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path();
    project(
        root,
        "formats",
        "",
        r#"[[checks]]
name = "home page"
http = { port = 80, body_regex = "Served by goldsmith" }
"#,
    );
    let dir = fake_build(
        &root.join("builds"),
        "formats",
        &[(Format::Vhd, &vhd), (Format::Ova, &ova)],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(root.join("goldsmith.toml"))
        .args(["verify", "formats", "--all-formats", "--json"])
        .output()
        .unwrap();
    let rec: VerifyRecord = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{rec:#?}");
    let formats: Vec<Format> = rec.boots.iter().map(|b| b.format).collect();
    assert_eq!(formats, vec![Format::Vhd, Format::Ova]);
    for b in &rec.boots {
        assert!(b.passed && b.boot_secs.is_some(), "{b:#?}");
        assert!(dir.join(&b.console_log).is_file());
    }
    assert_ne!(rec.boots[0].console_log, rec.boots[1].console_log);
    assert_no_qemu("goldsmith-formats-", Duration::from_secs(5));
}

#[test]
fn a_format_the_build_lacks_is_an_error_not_a_pass() {
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path();
    project(root, "lacking", "", "");
    let fake = root.join("disk.raw");
    std::fs::write(&fake, vec![0u8; 4096]).unwrap();
    fake_build(&root.join("builds"), "lacking", &[(Format::Raw, &fake)]);
    let out = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(root.join("goldsmith.toml"))
        .args(["verify", "lacking", "--format", "vmdk"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has no vmdk artifact (it has: raw)"),
        "{stderr}"
    );
}

#[test]
fn an_artifact_changed_after_the_build_is_not_booted() {
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path();
    project(root, "tampered", "", "");
    let fake = root.join("disk.raw");
    std::fs::write(&fake, vec![0u8; 4096]).unwrap();
    let dir = fake_build(&root.join("builds"), "tampered", &[(Format::Raw, &fake)]);
    std::fs::write(dir.join("tampered.raw"), vec![1u8; 4096]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(root.join("goldsmith.toml"))
        .args(["verify", "tampered", "--format", "raw", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rec: VerifyRecord = serde_json::from_slice(&out.stdout).unwrap();
    let f = rec.boots[0].failure.as_deref().unwrap();
    assert!(f.contains("changed since the build"), "{f}");
    assert_eq!(rec.boots[0].accelerator, "none");
}
