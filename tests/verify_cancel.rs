//! Cancellation: SIGTERM or SIGINT to `goldsmith verify` in the middle of a boot kills
//! QEMU, removes the run's temp files and exits with 128+signal.

#[path = "support/verify.rs"]
mod verify_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use goldsmith::recipe::Format;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use verify_support::*;

fn cancel_mid_boot(sig: Signal, expected: i32) {
    let image = web_image();
    let name = format!("cancel{}", sig as i32);
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path();
    project(root, &name, "", "");
    let dir = fake_build(&root.join("builds"), &name, &[(Format::Qcow2, &image)]);
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(root.join("goldsmith.toml"))
        .args(["verify", &name])
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let marker = format!("goldsmith-{name}-");
    // Wait until QEMU runs and the guest has been booting for a while.
    let t = Instant::now();
    while qemu_processes(&marker).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "QEMU never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "goldsmith exited early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !qemu_processes(&marker).is_empty(),
        "QEMU is gone before the signal"
    );
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "goldsmith did not exit after {sig}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(expected), "stderr:\n{stderr}");
    assert_no_qemu(&marker, Duration::from_secs(5));
    assert!(
        entries(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        entries(&tmp)
    );
    // A cancelled run writes no verify record: nothing may look verified.
    assert!(!dir.join("verify.json").exists());
}

#[test]
fn sigterm_mid_boot_kills_qemu() {
    let _vm = vm_lock();
    cancel_mid_boot(Signal::SIGTERM, 143);
}

#[test]
fn sigint_mid_boot_kills_qemu() {
    let _vm = vm_lock();
    cancel_mid_boot(Signal::SIGINT, 130);
}
