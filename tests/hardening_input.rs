//! Hostile and broken input: symlinks in `files/` that point out of the layer, a
//! multi-GiB file, names that are not UTF-8, a recipe that fills the disk, and a store
//! whose objects were changed behind goldsmith's back.

#[path = "support/hostile.rs"]
mod hostile;
#[path = "support/publish.rs"]
mod publish_support;
mod support;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hostile::nonce;
use support::assert_failed_cleanly;
use support::{shared_cache, Project};

#[test]
fn a_symlinked_source_folder_pointing_out_of_the_layer_is_refused() {
    let p = Project::example();
    let outside = p.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("host-secret"), "host only").unwrap();
    hostile::add_image(
        &p,
        "symdir",
        "[[files]]\nsource = \"conf\"\ndest = \"/etc/app\"\n",
        &[],
        r#"["raw"]"#,
    );
    std::fs::create_dir_all(p.path("recipes/symdir-top/files")).unwrap();
    std::os::unix::fs::symlink(&outside, p.path("recipes/symdir-top/files/conf")).unwrap();
    let r = p.run(&["validate"]).expect(2);
    assert!(
        r.stderr.contains("recipes/symdir-top/layer.toml:2:")
            && r.stderr
                .contains("'conf' is a symlink that points outside the layer folder"),
        "{}",
        r.stderr
    );
}

#[test]
fn symlinks_inside_a_copied_folder_are_copied_as_symlinks_never_followed() {
    let marker = nonce("host-only-bytes");
    let p = Project::example();
    let outside = p.path("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("file"), &marker).unwrap();
    std::fs::write(outside.join("dir/inner"), &marker).unwrap();
    hostile::add_image(
        &p,
        "symtree",
        "[[files]]\nsource = \"tree\"\ndest = \"/opt/tree\"\n",
        &[("files/tree/real.conf", "a real file\n")],
        r#"["tar"]"#,
    );
    let tree = p.path("recipes/symtree-top/files/tree");
    std::os::unix::fs::symlink(outside.join("file"), tree.join("abs-file")).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), tree.join("abs-dir")).unwrap();
    std::os::unix::fs::symlink("../../../../outside/file", tree.join("rel-file")).unwrap();
    let r = p.run(&["build", "symtree", "--json"]).expect(0);
    let dir = hostile::build_dir(&r);
    let tar = dir.join("symtree.rootfs.tar.zst");
    let listing = Command::new("tar")
        .args(["--zstd", "-tvf"])
        .arg(&tar)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for (name, target) in [
        (
            "opt/tree/abs-file",
            outside.join("file").display().to_string(),
        ),
        (
            "opt/tree/abs-dir",
            outside.join("dir").display().to_string(),
        ),
        ("opt/tree/rel-file", "../../../../outside/file".to_string()),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with('l') && l.contains(&format!("{name} -> {target}"))),
            "{name} is not a symlink to {target}:\n{listing}"
        );
    }
    assert!(listing.contains("opt/tree/real.conf"));
    assert!(!listing.contains("opt/tree/abs-dir/inner"), "{listing}");
    assert!(
        !hostile::zstd_contains(&tar, marker.as_bytes()),
        "bytes of a host file reached the image"
    );
}

/// Run a command and return its exit status and peak resident memory (KiB), from
/// wait4's rusage: no sampling, no extra tool.
// The child is reaped by wait4, which clippy does not see.
#[allow(clippy::zombie_processes)]
fn run_measured(mut cmd: Command) -> (i32, u64, String) {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is fully written by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    (
        libc::WEXITSTATUS(status),
        ru.ru_maxrss as u64,
        reader.join().unwrap(),
    )
}

#[test]
fn a_gigantic_file_is_hashed_in_bounded_memory() {
    let p = Project::example();
    hostile::add_image(
        &p,
        "huge",
        "[[files]]\nsource = \"huge.img\"\ndest = \"/var/lib/huge.img\"\n",
        &[],
        r#"["raw"]"#,
    );
    // 3 GiB, sparse, with data at both ends.
    std::fs::create_dir_all(p.path("recipes/huge-top/files")).unwrap();
    let f = std::fs::File::create(p.path("recipes/huge-top/files/huge.img")).unwrap();
    f.set_len(3 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", (3 << 30) - 4).unwrap();
    drop(f);
    let mut cmd = p.cmd();
    cmd.args(["plan", "--json", "--no-resolve"]);
    let (code, rss_kib, stderr) = run_measured(cmd);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        rss_kib < 256 * 1024,
        "hashing a 3 GiB file peaked at {} MiB resident",
        rss_kib / 1024
    );
}

#[test]
fn a_file_name_that_is_not_utf8_is_a_clear_error() {
    let p = Project::example();
    hostile::add_image(
        &p,
        "badname",
        "[[files]]\nsource = \"conf\"\ndest = \"/etc/app\"\n",
        &[("files/conf/ok.conf", "fine\n")],
        r#"["raw"]"#,
    );
    let dir = p.path("recipes/badname-top/files/conf");
    let bad = std::ffi::OsStr::from_bytes(b"bad-\xff\xfe.conf");
    std::fs::write(dir.join(bad), "x").unwrap();
    let r = p.run(&["validate"]).expect(2);
    assert!(
        r.stderr.contains("recipes/badname-top/layer.toml:2:")
            && r.stderr.contains("bad-")
            && r.stderr.contains("not UTF-8"),
        "{}",
        r.stderr
    );
    // A symlink whose target is not UTF-8, likewise.
    std::fs::remove_file(dir.join(bad)).unwrap();
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(b"/x\xff"), dir.join("link")).unwrap();
    let r = p.run(&["validate"]).expect(2);
    assert!(
        r.stderr.contains("recipes/badname-top/layer.toml:2:")
            && r.stderr.contains("target is not UTF-8"),
        "{}",
        r.stderr
    );
}

/// A small ext4 file system on a loop device, unmounted (and the device freed) on drop.
struct SmallFs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(mib: u64) -> SmallFs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a loop device: run the suite as root (CI does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("gs-smallfs-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let ok = |c: &mut Command| {
            let o = c.output().unwrap();
            assert!(
                o.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ok(Command::new("mkfs.ext4").args(["-q", "-m", "0"]).arg(&img));
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mount));
        SmallFs { mount, _dir: dir }
    }

    fn used_kib(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.mount).unwrap();
        (s.blocks() - s.blocks_free()) as u64 * s.fragment_size() as u64 / 1024
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn dir_size(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[test]
fn a_recipe_that_fills_the_disk_fails_cleanly_and_frees_its_space() {
    // debian-base in the shared cache, to copy into the small file system's cache.
    let p = Project::example();
    hostile::add_image(
        &p,
        "fill",
        "[[scripts]]\nrun = 'dd if=/dev/zero of=/var/fill bs=1M'\n",
        &[],
        r#"["raw"]"#,
    );
    let plan = p.run(&["plan", "--json"]).expect(0).json();
    let img = plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "fill")
        .unwrap()
        .clone();
    let base = img["layers"][0]["digest"].as_str().unwrap().to_string();
    let shared_entry = shared_cache().join("layers").join(&base);
    if !shared_entry.join("meta.json").is_file() {
        // Nothing built debian-base in this cache yet: do it once (other tests reuse it).
        p.run(&["build", "base", "--format", "raw"]).expect(0);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shared_entry.join("meta.json")).unwrap()).unwrap();
    // Room for the cached layer, its extracted tree, apt's package lists and some
    // slack; not for the fill.
    let tree_mib = meta["tar_size"].as_u64().unwrap() >> 20;
    let zst_mib = meta["zst_size"].as_u64().unwrap() >> 20;
    let state_mib = support::archive_apt_states()
        .iter()
        .map(|s| dir_size(s))
        .sum::<u64>()
        >> 20;
    let fs = SmallFs::new(tree_mib + zst_mib + state_mib + 400);
    let cache = fs.mount.join("cache");
    support::copy_dir(&shared_entry, &cache.join("layers").join(&base));
    support::copy_archive_apt_states(&cache);
    p.edit(
        "goldsmith.toml",
        &shared_cache().display().to_string(),
        &cache.display().to_string(),
    );
    // Package resolution settles its lists in the small cache first.
    p.run(&["plan", "--json"]).expect(0);
    let before = fs.used_kib();
    let r = p.run(&["build", "fill"]);
    assert_failed_cleanly(
        &p,
        &cache,
        "fill",
        &r,
        &[
            "layer fill-top: script inline-0 failed",
            "No space left on device",
        ],
    );
    // Nothing is published, nothing is cached for the failed layer, and the work tree
    // and staging space are given back.
    assert!(!p.path("artifacts").exists() || dir_size(&p.path("artifacts")) == 0);
    let top = img["layers"][1]["digest"].as_str().unwrap();
    assert!(!cache.join("layers").join(top).exists());
    let after = fs.used_kib();
    assert!(
        after <= before + 1024,
        "{} KiB still used after the failed build (was {before} KiB)",
        after
    );
    // The cache still works: the base layer is intact and usable.
    assert!(
        r.stderr.contains("layer debian-base") && r.stderr.contains(": cached"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_corrupted_store_object_is_detected_and_never_served() {
    let p = Project::example();
    publish_support::with_signing_key(&p);
    publish_support::fake_build(&p, &publish_support::BuildSpec::new("web", "t"));
    p.run(&["--json", "publish", "web", "--version", "1.0.0"])
        .expect(0);
    let vdir = p.path("artifacts/web/1.0.0");
    let flip = |path: &Path, at: usize| {
        let mut b = std::fs::read(path).unwrap();
        let at = at.min(b.len() - 1);
        b[at] ^= 0x01;
        std::fs::write(path, b).unwrap();
    };
    let no_output = |dest: &str| {
        let d = p.path(dest).join("web");
        let left: Vec<_> = std::fs::read_dir(&d)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dest}: {left:?}");
    };
    // One bit of an artifact, same size.
    let qcow2 = vdir.join("web.qcow2");
    let len = std::fs::metadata(&qcow2).unwrap().len() as usize;
    flip(&qcow2, len / 2);
    let r = p
        .run(&["fetch", "web", "1.0.0", "--dest", "out1"])
        .expect(1);
    assert!(
        r.stderr.contains("web.qcow2") && r.stderr.contains("tampered"),
        "{}",
        r.stderr
    );
    no_output("out1");
    flip(&qcow2, len / 2);
    p.run(&["fetch", "web", "1.0.0", "--dest", "ok"]).expect(0);
    // One bit of the manifest (the signature no longer matches).
    let m = vdir.join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    flip(&m, text.find("\"sha256\"").unwrap() + 12);
    let r = p
        .run(&["fetch", "web", "1.0.0", "--dest", "out2"])
        .expect(1);
    assert!(r.stderr.contains("signature"), "{}", r.stderr);
    no_output("out2");
}
