//! `goldsmith boot`: the serial console on stdio, Ctrl-A X quits, `--ssh` forwards a
//! loopback port to the guest's port 22, and the artifact is not written.

#[path = "support/verify.rs"]
mod verify_support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goldsmith::recipe::Format;
use verify_support::*;

#[test]
fn boot_shows_the_console_forwards_ssh_and_quits_on_ctrl_a_x() {
    let image = web_image();
    let _vm = vm_lock();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path();
    project(root, "devboot", "", "");
    let dir = fake_build(&root.join("builds"), "devboot", &[(Format::Qcow2, &image)]);
    // A private copy, so hashing it proves the boot did not write it.
    let artifact = dir.join("devboot.qcow2");
    std::fs::remove_file(&artifact).unwrap();
    std::fs::copy(&image, &artifact).unwrap();
    let before = sha256(&artifact);
    let ssh_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .arg("--config")
        .arg(root.join("goldsmith.toml"))
        .args(["boot", "devboot", "--ssh", &ssh_port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let c = console.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            c.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let t = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
        if text.contains(" login:") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "goldsmith boot exited early:\n{text}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "no login prompt on the console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // sshd answers through the forwarded loopback port.
    let mut banner = String::new();
    let t = Instant::now();
    while !banner.starts_with("SSH-") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no SSH banner on 127.0.0.1:{ssh_port}: {banner:?}"
        );
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", ssh_port)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 64];
            if let Ok(n) = s.read(&mut b) {
                banner = String::from_utf8_lossy(&b[..n]).into_owned();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Ctrl-A X: QEMU quits, goldsmith boot returns.
    child.stdin.as_mut().unwrap().write_all(b"\x01x").unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "Ctrl-A X did not end the boot"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("Ctrl-A X quits"), "{stderr}");
    assert_eq!(
        sha256(&artifact),
        before,
        "goldsmith boot wrote to the artifact"
    );
    assert_no_qemu("goldsmith-boot-devboot", Duration::from_secs(5));
}
