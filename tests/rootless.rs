//! `goldsmith build` as an unprivileged user: it re-executes itself in a user namespace
//! and the image's files still belong to root (and to the users the recipe creates).
//!
//! The test (running as root) creates the user `gsrootless` with subordinate id ranges,
//! gives it a copy of the example project and a layer cache of its own (kept between
//! runs; the first run bootstraps debian-base once, a few minutes), and runs the real
//! binary through `runuser`.

#[path = "support/hostile.rs"]
mod hostile;
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const USER: &str = "gsrootless";

fn sh(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The test user, with a subordinate uid/gid range (created when missing).
fn user() -> (u32, u32) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates a user: run the suite as root (CI does)"
    );
    if nix::unistd::User::from_name(USER).unwrap().is_none() {
        sh("useradd", &["--create-home", "--shell", "/bin/sh", USER]);
    }
    let u = nix::unistd::User::from_name(USER).unwrap().unwrap();
    let has = |f: &str| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{USER}:")))
    };
    if !has("/etc/subuid") || !has("/etc/subgid") {
        sh(
            "usermod",
            &[
                "--add-subuids",
                "300000-365535",
                "--add-subgids",
                "300000-365535",
                USER,
            ],
        );
    }
    // The user runs the binary and builds under target/: every folder above them must let
    // others pass through (a CI checkout may sit below a 0700 folder).
    for p in [support::bin(), PathBuf::from(env!("CARGO_TARGET_TMPDIR"))] {
        for dir in p.ancestors().filter(|d| d.is_dir()) {
            let mode = dir.metadata().unwrap().permissions().mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                    .unwrap();
            }
        }
    }
    (u.uid.as_raw(), u.gid.as_raw())
}

fn chown_r(p: &Path, uid: u32, gid: u32) {
    sh(
        "chown",
        &["-R", &format!("{uid}:{gid}"), &p.display().to_string()],
    );
}

/// The user's own layer cache, kept between runs. Packages the shared cache already
/// downloaded are copied in, so the bootstrap does not fetch them again.
fn user_cache(uid: u32, gid: u32) -> PathBuf {
    let c = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("goldsmith-cache-rootless");
    let archives = c.join("apt/archives");
    std::fs::create_dir_all(&archives).unwrap();
    if let Ok(rd) = std::fs::read_dir(support::shared_cache().join("apt/archives")) {
        for e in rd.flatten() {
            let dest = archives.join(e.file_name());
            if e.path().extension().is_some_and(|x| x == "deb") && !dest.exists() {
                let _ = std::fs::copy(e.path(), dest);
            }
        }
    }
    chown_r(&c, uid, gid);
    c
}

fn runuser(dir: &Path, args: &[&str]) -> support::Run {
    let o = Command::new("runuser")
        .args(["-u", USER, "--"])
        .arg(support::bin())
        .args(args)
        .current_dir(dir)
        .env_remove("SOURCE_DATE_EPOCH")
        .env("GOLDSMITH_LOG", "goldsmith=info")
        .output()
        .unwrap();
    support::Run::from(o)
}

#[test]
fn an_unprivileged_user_builds_an_image_with_root_owned_files() {
    let (uid, gid) = user();
    let cache = user_cache(uid, gid);
    let p = support::Project::example();
    p.edit(
        "goldsmith.toml",
        &support::shared_cache().display().to_string(),
        &cache.display().to_string(),
    );
    hostile::add_image(
        &p,
        "rootless",
        r#"
[[users]]
name = "alice"
uid = 1500

[[files]]
source = "motd"
dest = "/etc/motd"
owner = "alice"
group = "alice"

[[scripts]]
run = "touch /var/lib/owned-by-sshd && chown sshd /var/lib/owned-by-sshd"
"#,
        &[("files/motd", "built without root\n")],
        r#"["raw"]"#,
    );
    chown_r(p.root(), uid, gid);

    // (doctor's exit code also reflects free disk space; only its rootless part matters)
    let doctor = runuser(p.root(), &["doctor", "--json"]).json();
    assert_eq!(doctor["rootless"]["running_as_root"], false, "{doctor}");
    assert_eq!(doctor["rootless"]["user_namespaces"], true, "{doctor}");

    let r = runuser(p.root(), &["build", "rootless", "--json"]).expect(0);
    let dir = hostile::build_dir(&r);
    // The build's files belong to the user who ran it.
    let raw = dir.join("rootless.raw");
    assert_eq!(raw.metadata().unwrap().uid(), uid);
    // Inside the image: root's files are root's, the recipe's user and a package's
    // system user own theirs.
    assert_eq!(hostile::owner_in_disk(&raw, "/etc/passwd"), (0, 0));
    assert_eq!(hostile::owner_in_disk(&raw, "/usr/bin/passwd"), (0, 0));
    assert_eq!(hostile::owner_in_disk(&raw, "/etc/motd"), (1500, 1500));
    assert_eq!(hostile::owner_in_disk(&raw, "/home/alice"), (1500, 1500));
    let passwd = Command::new("debugfs")
        .arg("-R")
        .arg("cat /etc/passwd")
        .arg(format!(
            "{}?offset={}",
            raw.display(),
            hostile::partition_offset(&raw, 1)
        ))
        .output()
        .unwrap();
    let passwd = String::from_utf8_lossy(&passwd.stdout);
    let sshd_uid: u32 = passwd
        .lines()
        .find(|l| l.starts_with("sshd:"))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no sshd user in the image:\n{passwd}"));
    assert_eq!(
        hostile::owner_in_disk(&raw, "/var/lib/owned-by-sshd").0,
        sshd_uid
    );
    // No work tree is left in the user's cache.
    let work: Vec<_> = std::fs::read_dir(cache.join("work"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(work.is_empty(), "{work:?}");
}

#[test]
fn a_user_without_subordinate_ids_is_told_what_is_missing() {
    // nobody has no /etc/subuid range on a stock system.
    let text = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    assert!(!text.lines().any(|l| l.starts_with("nobody:")));
    let p = support::Project::example();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    support::copy_dir(p.root(), &dir);
    // Its own cache and build dir, both writable by nobody.
    let cfg = std::fs::read_to_string(dir.join("goldsmith.toml"))
        .unwrap()
        .replace(
            &support::shared_cache().display().to_string(),
            &dir.join("cache").display().to_string(),
        );
    std::fs::write(dir.join("goldsmith.toml"), cfg).unwrap();
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    sh(
        "chown",
        &["-R", "nobody:nogroup", &dir.display().to_string()],
    );
    let o = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(support::bin())
        .args(["build", "base"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let r = support::Run::from(o);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("needs user namespaces")
            && r.stderr.contains("/etc/subuid has no range for nobody"),
        "{}",
        r.stderr
    );
}
