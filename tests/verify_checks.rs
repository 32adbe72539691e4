//! One boot of a test image with every kind of declared check, each once where it must
//! pass and once where it must fail: no check can pass by accident. The same boot proves
//! that the artifact is never written and that nothing is left running.

#[path = "support/verify.rs"]
mod verify_support;

use std::time::Duration;

use goldsmith::recipe::check::CheckDef;
use goldsmith::recipe::image::VerifyDef;
use goldsmith::recipe::{Format, SourcedCheck};
use goldsmith::verify::{self, AccelChoice, HostSettings, ImageChecks};
use verify_support::*;

fn check(toml_text: &str) -> SourcedCheck {
    SourcedCheck {
        origin: "image checks-web".into(),
        check: toml::from_str::<CheckDef>(toml_text).unwrap_or_else(|e| panic!("{toml_text}: {e}")),
    }
}

pub fn host(cache: &std::path::Path) -> HostSettings {
    HostSettings {
        qemu: "qemu-system-x86_64".into(),
        accelerator: AccelChoice::Auto,
        ovmf_code: verify::OVMF_CODE.into(),
        ovmf_vars: verify::OVMF_VARS.into(),
        kvm_device: "/dev/kvm".into(),
        cache_dir: Some(cache.to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_check_kind_passes_and_fails_for_real() {
    let image = web_image();
    let _vm = vm_lock();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = fake_build(
        &work.path().join("builds"),
        "checks-web",
        &[(Format::Qcow2, &image)],
    );
    let artifact = dir.join("checks-web.qcow2");
    let before = sha256(&artifact);

    // (name, check, must pass)
    // A service on the host's loopback: slirp would expose it to the guest as 10.0.2.2.
    let host_service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    let isolation = format!(
        r#"name = "guest cannot reach the host"
command = {{ argv = ["sh", "-c", "timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.2.2/{host_port}' && echo reached || echo isolated"], stdout_regex = "^isolated$" }}"#
    );
    let cases: Vec<(SourcedCheck, bool)> = vec![
        (check(&isolation), true),
        (
            check(
                r#"name = "cmd ok"
command = { argv = ["sh", "-c", "echo hello; echo to-stderr >&2"], stdout_regex = "^hello$" }"#,
            ),
            true,
        ),
        (
            check(
                r#"name = "cmd exit 3 expected"
command = { argv = ["sh", "-c", "exit 3"], exit_code = 3 }"#,
            ),
            true,
        ),
        (
            check(
                r#"name = "cmd wrong exit"
timeout_secs = 5
command = { argv = ["false"] }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "cmd stdout mismatch"
timeout_secs = 5
command = { argv = ["echo", "bye"], stdout_regex = "^hello$" }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "cmd missing program"
timeout_secs = 5
command = { argv = ["/nonexistent/program"] }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "cmd too slow"
timeout_secs = 2
command = { argv = ["sleep", "30"] }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "file via symlink"
file = { path = "/etc/os-release", content_regex = "(?m)^ID=debian$" }"#,
            ),
            true,
        ),
        (
            check(
                r#"name = "file mode"
file = { path = "/usr/local/bin/testweb", mode = "0755" }"#,
            ),
            true,
        ),
        (
            check(
                r#"name = "file missing"
timeout_secs = 5
file = { path = "/etc/goldsmith-no-such-file" }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "file wrong mode"
timeout_secs = 5
file = { path = "/usr/local/bin/testweb", mode = "0644" }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "file wrong content"
timeout_secs = 5
file = { path = "/srv/www/index.html", content_regex = "not on the page" }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "service ok"
service = { unit = "ssh.service" }"#,
            ),
            true,
        ),
        (
            check(
                r#"name = "service missing"
timeout_secs = 3
service = { unit = "goldsmith-no-such.service" }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "port with banner"
port = { port = 22 }"#,
            ),
            true,
        ),
        (
            check(
                r#"name = "port silent server"
port = { port = 80 }"#,
            ),
            true,
        ),
        (
            check(
                r#"name = "port closed"
timeout_secs = 3
port = { port = 9 }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "http ok"
http = { port = 80, path = "/", status = 200, body_regex = "Served by goldsmith" }"#,
            ),
            true,
        ),
        (
            check(
                r#"name = "http 404"
timeout_secs = 10
http = { port = 80, path = "/missing" }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "http body mismatch"
timeout_secs = 10
http = { port = 80, body_regex = "not on the page" }"#,
            ),
            false,
        ),
        (
            check(
                r#"name = "http nothing listening"
timeout_secs = 3
http = { port = 8081 }"#,
            ),
            false,
        ),
    ];
    let checks: Vec<SourcedCheck> = cases.iter().map(|(c, _)| c.clone()).collect();
    let vdef = VerifyDef {
        boot_timeout_secs: 300,
        allow_degraded: false,
    };
    let build = goldsmith::artifact::BuildRecord::load(&dir).unwrap();
    let rec = verify::run(
        &dir,
        &build,
        ImageChecks {
            checks: &checks,
            verify: &vdef,
        },
        &[Format::Qcow2],
        &host(&work.path().join("cache")),
    )
    .await
    .unwrap();

    let boot = &rec.boots[0];
    assert!(boot.boot_secs.is_some(), "{boot:#?}");
    for (c, must_pass) in &cases {
        let name = c.check.name.get_ref();
        let r = boot
            .checks
            .iter()
            .find(|r| &r.name == name)
            .unwrap_or_else(|| panic!("no result for {name}"));
        assert_eq!(r.passed, *must_pass, "{name}: {}", r.detail);
        assert!(!r.skipped, "{name} was skipped");
        assert!(!r.detail.is_empty(), "{name} has no detail");
    }
    let detail = |n: &str| {
        boot.checks
            .iter()
            .find(|r| r.name == n)
            .unwrap()
            .detail
            .clone()
    };
    assert!(
        detail("cmd wrong exit").contains("exit code 1, expected 0"),
        "{}",
        detail("cmd wrong exit")
    );
    assert!(
        detail("port silent server").contains("accepted"),
        "{}",
        detail("port silent server")
    );
    let banner = detail("port with banner");
    assert!(
        banner.contains("SSH-") || banner.contains("accepted"),
        "{banner}"
    );
    assert!(
        detail("http 404").contains("returned 404"),
        "{}",
        detail("http 404")
    );
    let body = detail("http body mismatch");
    assert!(body.contains("does not match"), "{body}");
    // Built-ins passed, so the failure is a declared check's.
    for b in boot.checks.iter().filter(|c| c.origin == "builtin") {
        assert!(b.passed, "{}: {}", b.name, b.detail);
    }
    assert!(!boot.passed && !rec.passed);
    assert!(
        boot.failure.as_deref().unwrap().contains("cmd wrong exit"),
        "{:?}",
        boot.failure
    );
    assert!(!boot.accelerator_reason.is_empty());

    // The record and console log are where publish and people look for them.
    let on_disk = goldsmith::artifact::VerifyRecord::load(&dir).unwrap();
    assert_eq!(on_disk, rec);
    let console = std::fs::read_to_string(dir.join(&boot.console_log)).unwrap();
    assert!(
        console.contains("Linux version"),
        "console log: {} bytes",
        console.len()
    );

    // snapshot=on: the artifact is byte-for-byte what it was.
    assert_eq!(
        sha256(&artifact),
        before,
        "the artifact was modified by booting it"
    );
    assert_eq!(goldsmith::exec::live_group_count(), 0);
    assert_no_qemu("goldsmith-checks-web", Duration::from_secs(5));
}
