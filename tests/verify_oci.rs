//! OCI layouts are verified without booting: the layers are unpacked in order with
//! whiteouts applied, and file checks run on the resulting tree.

use std::path::Path;

use goldsmith::artifact::VmSpec;
use goldsmith::recipe::check::CheckDef;
use goldsmith::recipe::image::VerifyDef;
use goldsmith::recipe::{Format, SourcedCheck};
use goldsmith::verify::{self, AccelChoice, HostSettings, ImageChecks};
use sha2::{Digest, Sha256};

enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a str, u32),
    Link(&'a str, &'a str),
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        match e {
            E::Dir(p, m) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*m);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, c, m) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*m);
                h.set_size(c.len() as u64);
                b.append_data(&mut h, p, c.as_bytes()).unwrap();
            }
            E::Link(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// Three layers: gzip, plain tar, zstd; with a whiteout and an opaque directory.
fn layout(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let l1 = tar_of(&[
        E::Dir("etc", 0o755),
        E::Dir("usr/lib", 0o755),
        E::File(
            "usr/lib/os-release",
            "ID=debian\nVERSION_ID=\"12\"\n",
            0o644,
        ),
        E::Link("etc/os-release", "../usr/lib/os-release"),
        E::File("etc/gone", "removed by layer 2\n", 0o644),
        E::Dir("etc/opq", 0o755),
        E::File("etc/opq/old", "hidden by layer 2\n", 0o644),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &l1).unwrap();
    let l1 = gz.finish().unwrap();
    let l2 = tar_of(&[
        E::File("etc/.wh.gone", "", 0o644),
        E::Dir("etc/opq", 0o755),
        E::File("etc/opq/.wh..wh..opq", "", 0o644),
        E::File("etc/opq/new", "added by layer 2\n", 0o644),
        E::File("etc/app.conf", "listen = 80\n", 0o600),
    ]);
    let l3 = zstd::encode_all(
        &tar_of(&[E::File("etc/app.conf", "listen = 8080\n", 0o600)])[..],
        3,
    )
    .unwrap();
    let layers = [
        (
            put_blob(dir, &l1),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            l1.len(),
        ),
        (
            put_blob(dir, &l2),
            "application/vnd.oci.image.layer.v1.tar",
            l2.len(),
        ),
        (
            put_blob(dir, &l3),
            "application/vnd.oci.image.layer.v1.tar+zstd",
            l3.len(),
        ),
    ];
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_d = put_blob(dir, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": layers.iter().map(|(d, m, s)| serde_json::json!({"mediaType": m, "digest": d, "size": s})).collect::<Vec<_>>(),
    });
    let mb = serde_json::to_vec(&manifest).unwrap();
    let md = put_blob(dir, &mb);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mb.len()}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    layers.iter().map(|(d, _, _)| d.clone()).collect()
}

fn check(toml_text: &str) -> SourcedCheck {
    SourcedCheck {
        origin: "image oci".into(),
        check: toml::from_str::<CheckDef>(toml_text).unwrap(),
    }
}

fn host() -> HostSettings {
    HostSettings {
        qemu: "/nonexistent/qemu".into(), // an OCI verification must not start QEMU
        accelerator: AccelChoice::Tcg,
        ovmf_code: "/nonexistent".into(),
        ovmf_vars: "/nonexistent".into(),
        kvm_device: "/nonexistent".into(),
        cache_dir: None,
    }
}

async fn run(
    layout: &Path,
    checks: &[SourcedCheck],
    out: &Path,
) -> goldsmith::artifact::VerifyRecord {
    let vdef = VerifyDef::default();
    verify::run_artifact(
        layout,
        None,
        "oci",
        VmSpec {
            memory_mib: 512,
            cpus: 1,
        },
        ImageChecks {
            checks,
            verify: &vdef,
        },
        out,
        &host(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn file_checks_run_on_the_unpacked_layers() {
    let d = tempfile::tempdir().unwrap();
    let lay = d.path().join("layout");
    layout(&lay);
    let cases = [
        (
            r#"name = "symlinked os-release"
file = { path = "/etc/os-release", content_regex = "(?m)^ID=debian$" }"#,
            true,
        ),
        (
            r#"name = "upper layer wins"
file = { path = "/etc/app.conf", mode = "0600", content_regex = "listen = 8080" }"#,
            true,
        ),
        (
            r#"name = "old content gone"
file = { path = "/etc/app.conf", content_regex = "listen = 80$" }"#,
            false,
        ),
        (
            r#"name = "wrong mode"
file = { path = "/etc/app.conf", mode = "0644" }"#,
            false,
        ),
        (
            r#"name = "whited out"
file = { path = "/etc/gone" }"#,
            false,
        ),
        (
            r#"name = "hidden by opaque dir"
file = { path = "/etc/opq/old" }"#,
            false,
        ),
        (
            r#"name = "added under opaque dir"
file = { path = "/etc/opq/new" }"#,
            true,
        ),
        (
            r#"name = "never existed"
file = { path = "/etc/nope" }"#,
            false,
        ),
    ];
    let checks: Vec<SourcedCheck> = cases.iter().map(|(t, _)| check(t)).collect();
    let rec = run(&lay, &checks, &d.path().join("out")).await;
    let boot = &rec.boots[0];
    assert_eq!(boot.format, Format::Oci);
    let structural = &boot.checks[0];
    assert!(
        structural.passed && structural.detail.contains("3 layer(s)"),
        "{structural:?}"
    );
    for (t, must_pass) in cases {
        let name = t
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("name = ")
            .trim_matches('"');
        let r = boot.checks.iter().find(|c| c.name == name).unwrap();
        assert_eq!(r.passed, must_pass, "{name}: {}", r.detail);
    }
    assert!(!rec.passed, "failing file checks must fail the record");
    assert!(d.path().join("out/verify.json").is_file());
}

#[tokio::test]
async fn checks_that_need_a_running_system_are_skipped_not_passed_silently() {
    let d = tempfile::tempdir().unwrap();
    let lay = d.path().join("layout");
    layout(&lay);
    let checks = vec![
        check(
            r#"name = "os-release"
file = { path = "/usr/lib/os-release" }"#,
        ),
        check(
            r#"name = "nginx"
service = { unit = "nginx.service" }"#,
        ),
        check(
            r#"name = "page"
http = { port = 80 }"#,
        ),
    ];
    let rec = run(&lay, &checks, &d.path().join("out")).await;
    assert!(rec.passed, "{rec:#?}");
    for n in ["nginx", "page"] {
        let c = rec.boots[0].checks.iter().find(|c| c.name == n).unwrap();
        assert!(c.skipped && c.detail.starts_with("skipped"), "{c:?}");
    }
    let f = rec.boots[0]
        .checks
        .iter()
        .find(|c| c.name == "os-release")
        .unwrap();
    assert!(f.passed && !f.skipped);
}

#[tokio::test]
async fn a_tampered_blob_fails() {
    let d = tempfile::tempdir().unwrap();
    let lay = d.path().join("layout");
    let layers = layout(&lay);
    // Change one byte of the plain-tar layer (inside a file's content).
    let blob = lay
        .join("blobs/sha256")
        .join(layers[1].trim_start_matches("sha256:"));
    let mut b = std::fs::read(&blob).unwrap();
    let pos = b.windows(6).position(|w| w == b"listen").unwrap();
    b[pos] = b'L';
    std::fs::write(&blob, b).unwrap();
    let checks = vec![check(
        r#"name = "os-release"
file = { path = "/usr/lib/os-release" }"#,
    )];
    let rec = run(&lay, &checks, &d.path().join("out")).await;
    assert!(!rec.passed);
    let s = &rec.boots[0].checks[0];
    assert!(!s.passed && s.detail.contains("corrupt"), "{s:?}");
    let f = &rec.boots[0].checks[1];
    assert!(!f.passed && f.skipped, "{f:?}");
}
