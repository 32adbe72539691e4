//! Guests that never become ready. A guest that says why (a kernel panic) fails at once;
//! one that just never gets there fails at the boot timeout. Either way no QEMU process
//! and no temp file of the run remains (checked in the process table, not only by the
//! exit code).

#[path = "support/verify.rs"]
mod verify_support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use goldsmith::artifact::VerifyRecord;
use goldsmith::recipe::Format;
use verify_support::*;

/// Run `goldsmith verify NAME` on `image` with the given boot timeout.
fn verify(
    name: &str,
    image: &std::path::Path,
    timeout: u64,
) -> (Output, VerifyRecord, std::path::PathBuf, tempfile::TempDir) {
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path().to_owned();
    project(
        &root,
        name,
        "",
        &format!("[verify]\nboot_timeout_secs = {timeout}\n"),
    );
    fake_build(&root.join("builds"), name, &[(Format::Qcow2, image)]);
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(root.join("goldsmith.toml"))
        .args(["verify", name, "--json"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let rec: VerifyRecord = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out, rec, tmp, work)
}

fn assert_clean(name: &str, tmp: &std::path::Path) {
    assert_no_qemu(&format!("goldsmith-{name}-"), Duration::from_secs(5));
    assert!(
        entries(tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(tmp)
    );
}

#[test]
fn guest_without_agent_fails_at_the_timeout() {
    let image = derived_image(
        "noagent",
        &Edit::default().cmdline("systemd.mask=qemu-guest-agent.service"),
    );
    let _vm = vm_lock();
    let t = Instant::now();
    let (out, rec, tmp, _w) = verify("noagent", &image, 25);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let failure = rec.boots[0].failure.clone().unwrap();
    assert!(
        failure.contains("not ready after 25s") && failure.contains("guest agent"),
        "{failure}"
    );
    assert!(
        took >= Duration::from_secs(25),
        "failed before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(90), "took {took:?}");
    let agent = rec.boots[0]
        .checks
        .iter()
        .find(|c| c.name == "guest agent answers")
        .unwrap();
    assert!(!agent.passed);
    assert_clean("noagent", &tmp);
}

#[test]
fn hanging_unit_fails_at_the_timeout_naming_the_unit() {
    let image = derived_image(
        "hang",
        &Edit::default().unit(
            "goldsmith-hang.service",
            "[Unit]\nDescription=A unit that never finishes starting\n[Service]\nType=oneshot\nExecStart=/bin/sleep infinity\nTimeoutStartSec=infinity\n[Install]\nWantedBy=multi-user.target\n",
            "multi-user.target",
        ),
    );
    let _vm = vm_lock();
    let (out, rec, tmp, _w) = verify("hang", &image, 90);
    assert_eq!(out.status.code(), Some(1));
    let boot = &rec.boots[0];
    let failure = boot.failure.clone().unwrap();
    // The agent answered, systemd never finished: the queued job names the culprit.
    assert!(
        failure.contains("did not finish booting") && failure.contains("goldsmith-hang.service"),
        "{failure}"
    );
    assert!(boot
        .checks
        .iter()
        .any(|c| c.name == "guest agent answers" && c.passed));
    assert!(boot.boot_secs.is_none());
    assert_clean("hang", &tmp);
}

#[test]
fn kernel_panic_fails_fast_with_the_console_tail() {
    let image = derived_image("panic", &Edit::default().cmdline("init=/bin/false"));
    let _vm = vm_lock();
    let t = Instant::now();
    let (out, rec, tmp, _w) = verify("panic", &image, 300);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let boot = &rec.boots[0];
    let failure = boot.failure.clone().unwrap();
    assert!(failure.contains("kernel panic"), "{failure}");
    // Detected from the console, not by waiting out the 300 s timeout.
    assert!(took < Duration::from_secs(120), "took {took:?}");
    let console = boot
        .checks
        .iter()
        .find(|c| c.name.contains("kernel panic"))
        .unwrap();
    assert!(
        !console.passed && console.detail.contains("Attempted to kill init"),
        "{}",
        console.detail
    );
    // The declared checks are listed as not run, not as passed.
    assert!(boot
        .checks
        .iter()
        .filter(|c| c.origin != "builtin")
        .all(|c| !c.passed));
    assert_clean("panic", &tmp);
}

#[test]
fn emergency_shell_fails_fast() {
    let image = derived_image(
        "emergency",
        &Edit::default().cmdline("systemd.unit=emergency.target"),
    );
    let _vm = vm_lock();
    let t = Instant::now();
    let (out, rec, tmp, _w) = verify("emergency", &image, 300);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let failure = rec.boots[0].failure.clone().unwrap();
    assert!(failure.contains("emergency shell"), "{failure}");
    assert!(took < Duration::from_secs(150), "took {took:?}");
    assert_clean("emergency", &tmp);
}
