//! A broken image: a service that fails to start must fail verification, name the unit,
//! and leave the console log beside the build.

#[path = "support/verify.rs"]
mod verify_support;

use std::process::Command;
use std::time::Duration;

use goldsmith::artifact::VerifyRecord;
use goldsmith::recipe::Format;
use verify_support::*;

#[test]
fn failed_unit_fails_verification_by_name() {
    let image = broken_image();
    let _vm = vm_lock();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path();
    project(root, "broken", "", "");
    let dir = fake_build(&root.join("builds"), "broken", &[(Format::Qcow2, &image)]);
    let out = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(root.join("goldsmith.toml"))
        .args(["verify", "broken"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The summary says what failed and where the console log is.
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains("goldsmith-broken.service"), "{stdout}");
    assert!(stdout.contains("console log:"), "{stdout}");

    let rec = VerifyRecord::load(&dir).unwrap();
    assert!(!rec.passed);
    let boot = &rec.boots[0];
    let failure = boot.failure.as_deref().unwrap();
    assert!(
        failure.contains("degraded") && failure.contains("goldsmith-broken.service"),
        "{failure}"
    );
    let running = boot
        .checks
        .iter()
        .find(|c| c.name.contains("is-system-running"))
        .unwrap();
    assert!(!running.passed);
    // The unit's own journal lines explain why.
    assert!(running.detail.contains("giving up"), "{}", running.detail);
    // The whole serial console is saved beside the build and shows the failed unit.
    let console = std::fs::read_to_string(dir.join(&boot.console_log)).unwrap();
    assert!(
        console.contains("A service that fails on purpose"),
        "console log has {} bytes",
        console.len()
    );
    assert_no_qemu("goldsmith-broken-", Duration::from_secs(5));
}

#[test]
fn degraded_is_accepted_when_the_image_allows_it() {
    let image = broken_image();
    let _vm = vm_lock();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path();
    project(root, "tolerant", "", "[verify]\nallow_degraded = true\n");
    fake_build(&root.join("builds"), "tolerant", &[(Format::Qcow2, &image)]);
    let out = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(root.join("goldsmith.toml"))
        .args(["verify", "tolerant", "--json"])
        .output()
        .unwrap();
    let rec: VerifyRecord = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{rec:#?}");
    let running = rec.boots[0]
        .checks
        .iter()
        .find(|c| c.name.contains("is-system-running"))
        .unwrap();
    // Allowed, but never silently: the failed unit is still named.
    assert!(
        running.passed && running.detail.contains("goldsmith-broken.service"),
        "{running:?}"
    );
}
