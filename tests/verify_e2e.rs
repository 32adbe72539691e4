//! End to end through the CLI: `goldsmith verify web` boots the latest build of `web`
//! under TCG and fetches its page through the forwarded port.

mod support;

use std::process::Command;
use std::time::Duration;

use goldsmith::artifact::VerifyRecord;
use goldsmith::recipe::Format;
use support::verify::*;

#[test]
fn verify_web_passes_with_its_http_check() {
    let image = web_image();
    let _vm = vm_lock();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path();
    project(
        root,
        "web",
        r#"[[checks]]
name = "ssh running"
service = { unit = "ssh.service" }
"#,
        r#"[[checks]]
name = "home page"
http = { port = 80, path = "/", status = 200, body_regex = "Served by goldsmith" }
"#,
    );
    let dir = fake_build(&root.join("builds"), "web", &[(Format::Qcow2, &image)]);
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(root.join("goldsmith.toml"))
        .args(["verify", "web", "--json"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let rec: VerifyRecord = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rec.passed);
    let boot = &rec.boots[0];
    assert_eq!(boot.format, Format::Qcow2);
    assert_eq!(
        boot.accelerator, "tcg",
        "this machine cannot run KVM guests"
    );
    let page = boot.checks.iter().find(|c| c.name == "home page").unwrap();
    assert!(
        page.passed && page.detail.contains("returned 200"),
        "{page:?}"
    );
    assert_eq!(page.origin, "image web");
    let ssh = boot
        .checks
        .iter()
        .find(|c| c.name == "ssh running")
        .unwrap();
    assert!(ssh.passed && ssh.origin == "layer tbase", "{ssh:?}");
    // Stored beside the build, for publish and for people.
    assert_eq!(VerifyRecord::load(&dir).unwrap(), rec);
    assert!(
        std::fs::metadata(dir.join("console-qcow2.log"))
            .unwrap()
            .len()
            > 1000
    );
    // Nothing of the run is left: no VM, no temp directory.
    assert_no_qemu("goldsmith-web-", Duration::from_secs(5));
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
}
