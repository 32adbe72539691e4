//! End to end through the CLI, under TCG: `goldsmith build web`, then `goldsmith verify
//! web` boots that build and fetches the page rendered from the layer's template through
//! the forwarded port.

mod support;
#[path = "support/verify.rs"]
mod verify_support;

use std::time::Duration;

use goldsmith::artifact::VerifyRecord;
use goldsmith::recipe::Format;
use support::Project;
use verify_support::*;

#[test]
fn build_then_verify_web() {
    let p = Project::example();
    // The page's title comes from the image's `site_title` variable through the layer's
    // handlebars template; the layer's own check looks for the template's fixed text.
    let image_toml = p.read("images/web.toml");
    p.write(
        "images/web.toml",
        &format!(
            "{image_toml}\n[[checks]]\nname = \"templated title\"\n\
             http = {{ port = 80, path = \"/\", body_regex = \"<title>Welcome to the goldsmith web template</title>\" }}\n"
        ),
    );
    let built = p
        .run(&["build", "web", "--format", "qcow2", "--json"])
        .expect(0);
    let dir = std::path::PathBuf::from(built.json()[0]["dir"].as_str().unwrap());

    let _vm = vm_lock();
    let tmp = p.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = p
        .cmd()
        .args(["verify", "web", "--json"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let rec: VerifyRecord = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rec.passed);
    let build: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    assert_eq!(rec.build_id, build["build_id"].as_str().unwrap());
    assert_eq!(
        rec.content_digest,
        build["content_digest"].as_str().unwrap()
    );
    let boot = &rec.boots[0];
    assert_eq!(boot.format, Format::Qcow2);
    assert_eq!(
        boot.accelerator, "tcg",
        "this machine cannot run KVM guests"
    );
    assert!(boot.boot_secs.is_some());
    let check = |name: &str| {
        let c = boot
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert!(c.passed && !c.skipped, "{c:?}");
        c.clone()
    };
    // The layer's check and the image's, both through the forwarded port.
    assert!(check("home page").detail.contains("returned 200"));
    assert_eq!(check("home page").origin, "layer web");
    assert_eq!(check("templated title").origin, "image web");
    check("nginx active");
    check("sshd refuses passwords");
    // Stored beside the build, for publish and for people.
    assert_eq!(VerifyRecord::load(&dir).unwrap(), rec);
    let console = std::fs::read_to_string(dir.join("console-qcow2.log")).unwrap();
    // The whole boot from the kernel's first line. Not the login prompt: the checks can
    // pass before getty (Type=idle) prints it, and the VM is stopped right after them.
    assert!(
        console.contains("Linux version") && console.contains("systemd"),
        "console log lacks the boot ({} bytes): {}",
        console.len(),
        console.chars().take(2000).collect::<String>()
    );
    // Nothing of the run is left: no VM, no temp directory.
    assert_no_qemu("goldsmith-web-", Duration::from_secs(5));
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
}
