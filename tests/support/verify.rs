//! Helpers for the verify tests: test images derived from one base image (cached under
//! target/ and built once, under a lock), fake builds around them, a lock that keeps
//! VMs of different tests from competing for the two cores, and process-table checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use goldsmith::artifact::{Artifact, BuildRecord, LatestPointer, SourceInfo, VmSpec};
use goldsmith::fsutil::FileLock;
use goldsmith::recipe::Format;
use sha2::{Digest, Sha256};

/// Where test images and locks live (survives between test runs).
pub fn images_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("verify-images");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Only one test VM at a time, across test threads and test binaries: TCG boots on a
/// two-core machine slow each other down until timeouts mean nothing.
pub fn vm_lock() -> FileLock {
    FileLock::acquire(&images_dir().join("vm.lock")).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The base every test image derives from: the example `base` image (Debian 12 with
/// systemd, the cloud kernel, qemu-guest-agent, OpenSSH, hardening), built once with
/// `goldsmith build` through the layer cache the build tests share, and kept until the
/// recipes change. `GOLDSMITH_TEST_BASE_IMAGE` (a bootable qcow2) skips the build.
pub fn base_image() -> PathBuf {
    let dir = images_dir();
    let _l = FileLock::acquire(&dir.join("images.lock")).unwrap();
    if let Ok(src) = std::env::var("GOLDSMITH_TEST_BASE_IMAGE") {
        let dst = dir.join(format!("base-env-{}.qcow2", short_hash(src.as_bytes())));
        if !dst.exists() {
            let tmp = dst.with_extension("tmp");
            std::fs::copy(&src, &tmp).unwrap();
            std::fs::rename(&tmp, &dst).unwrap();
        }
        return dst;
    }
    let dst = dir.join(format!("base-{}.qcow2", recipes_hash()));
    if dst.exists() {
        return dst;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let proj = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for sub in ["recipes", "images"] {
        copy_tree(&repo.join(sub), &proj.path().join(sub));
    }
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("goldsmith-cache");
    std::fs::write(
        proj.path().join("goldsmith.toml"),
        format!(
            "build_dir = \"builds\"\n[cache]\ndir = \"{}\"\n",
            cache.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_goldsmith"))
        .current_dir(proj.path())
        .args(["build", "base", "--format", "qcow2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "goldsmith build base failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let build = PathBuf::from(v[0]["dir"].as_str().unwrap());
    let tmp = dst.with_extension("tmp");
    std::fs::copy(build.join("base.qcow2"), &tmp).unwrap();
    std::fs::rename(&tmp, &dst).unwrap();
    // Test images of an earlier base are never used again.
    let key = dst.file_stem().unwrap().to_string_lossy().into_owned();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let image = [".qcow2", ".vhd", ".ova"].iter().any(|x| name.ends_with(x));
        if image && !name.contains(&key) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    dst
}

/// What the base image is built from: the example recipes and images.
fn recipes_hash() -> String {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut h = Sha256::new();
    for sub in ["recipes", "images"] {
        for e in walkdir::WalkDir::new(repo.join(sub)).sort_by_file_name() {
            let e = e.unwrap();
            if e.file_type().is_file() {
                h.update(
                    e.path()
                        .strip_prefix(&repo)
                        .unwrap()
                        .to_string_lossy()
                        .as_bytes(),
                );
                h.update(std::fs::read(e.path()).unwrap());
            }
        }
    }
    hex::encode(&h.finalize()[..6])
}

fn short_hash(b: &[u8]) -> String {
    hex::encode(&Sha256::digest(b)[..6])
}

fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Changes that turn the base image into a test image.
#[derive(Debug, Default, Clone)]
pub struct Edit {
    /// (guest path, content, mode): regular files owned by root.
    pub files: Vec<(String, String, u32)>,
    /// (link path, target).
    pub links: Vec<(String, String)>,
    /// Appended to the kernel command line.
    pub cmdline: Vec<String>,
}

impl Edit {
    pub fn file(mut self, path: &str, content: &str, mode: u32) -> Self {
        self.files.push((path.into(), content.into(), mode));
        self
    }
    pub fn link(mut self, path: &str, target: &str) -> Self {
        self.links.push((path.into(), target.into()));
        self
    }
    /// A unit file plus its `WantedBy` link.
    pub fn unit(self, name: &str, content: &str, wanted_by: &str) -> Self {
        let path = format!("/etc/systemd/system/{name}");
        self.file(&path, content, 0o644).link(
            &format!("/etc/systemd/system/{wanted_by}.wants/{name}"),
            &path,
        )
    }
    pub fn cmdline(mut self, arg: &str) -> Self {
        self.cmdline.push(arg.into());
        self
    }
    fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("{self:?}"));
        hex::encode(&h.finalize()[..6])
    }
}

/// The base image with `edit` applied, as qcow2 (cached by the edit's hash).
pub fn derived_image(name: &str, edit: &Edit) -> PathBuf {
    let base = base_image();
    let dir = images_dir();
    let base_key = base.file_stem().unwrap().to_string_lossy().into_owned();
    let out = dir.join(format!("{name}-{}-{base_key}.qcow2", edit.key()));
    let _l = FileLock::acquire(&dir.join("images.lock")).unwrap();
    if out.exists() {
        return out;
    }
    let raw = dir.join(format!("{name}.raw.tmp"));
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&base)
        .arg(&raw));
    let (esp, root) = partitions(&raw);
    let rootdev = format!("{}?offset={}", raw.display(), root);
    let work = tempfile::tempdir().unwrap();
    let mut cmds = String::new();
    for (i, (path, content, mode)) in edit.files.iter().enumerate() {
        let host = work.path().join(format!("f{i}"));
        std::fs::write(&host, content).unwrap();
        let mut parent = PathBuf::from("/");
        for c in Path::new(path).parent().unwrap().components().skip(1) {
            parent.push(c);
            cmds.push_str(&format!("mkdir {}\n", parent.display()));
        }
        cmds.push_str(&format!("rm {path}\nwrite {} {path}\n", host.display()));
        cmds.push_str(&format!(
            "sif {path} mode 0{:o}\nsif {path} uid 0\nsif {path} gid 0\n",
            0o100000 | mode
        ));
    }
    for (path, target) in &edit.links {
        let parent = Path::new(path).parent().unwrap();
        cmds.push_str(&format!(
            "mkdir {}\nrm {path}\nsymlink {path} {target}\n",
            parent.display()
        ));
    }
    if !cmds.is_empty() {
        let f = work.path().join("cmds");
        std::fs::write(&f, &cmds).unwrap();
        run(Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&f)
            .arg(&rootdev));
        // debugfs goes on after a failed command: read every file back to be sure.
        for (path, content, _) in &edit.files {
            let got = run(Command::new("debugfs")
                .arg("-R")
                .arg(format!("cat {path}"))
                .arg(&rootdev));
            assert_eq!(got, *content, "{path} was not written into the test image");
        }
    }
    if !edit.cmdline.is_empty() {
        let img = format!("{}@@{}", raw.display(), esp);
        let entry = "::/loader/entries/goldsmith.conf";
        let text = run(Command::new("mtype").args(["-i", &img, entry]));
        let new: String = text
            .lines()
            .map(|l| {
                if l.starts_with("options ") {
                    format!("{l} {}\n", edit.cmdline.join(" "))
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let f = work.path().join("entry.conf");
        std::fs::write(&f, new).unwrap();
        run(Command::new("mcopy")
            .args(["-o", "-i", &img])
            .arg(&f)
            .arg(entry));
    }
    // Compressed like the images goldsmith builds: the test images share a small disk.
    let tmp = out.with_extension("qcow2.tmp");
    run(Command::new("qemu-img")
        .args(["convert", "-c", "-o", "compression_type=zstd"])
        .args(["-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&tmp));
    std::fs::remove_file(&raw).unwrap();
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// Byte offsets of the ESP and the root partition.
fn partitions(raw: &Path) -> (u64, u64) {
    let j: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(raw))).unwrap();
    let t = &j["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    let mut esp = None;
    let mut root = None;
    for p in t["partitions"].as_array().unwrap() {
        let start = p["start"].as_u64().unwrap() * sector;
        if p["type"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
        {
            esp = Some(start);
        } else {
            root = Some(start);
        }
    }
    (esp.expect("an ESP"), root.expect("a root partition"))
}

/// A tiny HTTP server without any package: systemd socket activation plus a shell
/// script that answers `GET /` with `page` and everything else with 404.
pub fn with_web_server(edit: Edit, port: u16, page: &str) -> Edit {
    let script = "#!/bin/sh\n\
        read -r method path proto\n\
        cr=$(printf '\\r')\n\
        while read -r l; do case \"$l\" in \"\"|\"$cr\") break;; esac; done\n\
        if [ \"$path\" = / ]; then\n\
          printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/html\\r\\nConnection: close\\r\\n\\r\\n'\n\
          cat /srv/www/index.html\n\
        else\n\
          printf 'HTTP/1.0 404 Not Found\\r\\nContent-Type: text/plain\\r\\nConnection: close\\r\\n\\r\\nnot found\\n'\n\
        fi\n";
    edit.file("/usr/local/bin/testweb", script, 0o755)
        .file("/srv/www/index.html", page, 0o644)
        .unit(
            "testweb.socket",
            &format!("[Unit]\nDescription=test web server\n[Socket]\nListenStream={port}\nAccept=yes\n[Install]\nWantedBy=sockets.target\n"),
            "sockets.target",
        )
        .file(
            "/etc/systemd/system/testweb@.service",
            "[Unit]\nDescription=test web request\n[Service]\nExecStart=/usr/local/bin/testweb\nStandardInput=socket\nStandardOutput=socket\nStandardError=journal\n",
            0o644,
        )
}

/// The page the test web server serves.
pub const PAGE: &str = "<html><body><h1>goldsmith test page</h1><p>Served by goldsmith image test.</p></body></html>\n";

/// The standard "good" test image: base + web server on port 80.
pub fn web_image() -> PathBuf {
    derived_image("web", &with_web_server(Edit::default(), 80, PAGE))
}

/// A base image with a service that always fails.
pub fn broken_image() -> PathBuf {
    derived_image(
        "broken",
        &Edit::default().unit(
            "goldsmith-broken.service",
            "[Unit]\nDescription=A service that fails on purpose\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo goldsmith-broken: giving up >&2; exit 3'\n[Install]\nWantedBy=multi-user.target\n",
            "multi-user.target",
        ),
    )
}

/// sha256 of a file.
pub fn sha256(p: &Path) -> String {
    goldsmith::fsutil::sha256_file(p).unwrap().1
}

/// Hard-link (or copy) an image into a build directory.
pub fn link_or_copy(src: &Path, dst: &Path) {
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    let _ = std::fs::remove_file(dst);
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).unwrap();
    }
}

/// Write a build directory with build.json and latest.json, as the build stage would.
/// `artifacts` are (format, source path); they are linked into the build directory.
pub fn fake_build(build_root: &Path, image: &str, artifacts: &[(Format, &Path)]) -> PathBuf {
    let build_id = "20250101T000000Z-test".to_string();
    let dir = build_root.join(image).join(&build_id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut recs = Vec::new();
    for (f, src) in artifacts {
        let name = format!("{image}.{}", ext(*f));
        let dst = dir.join(&name);
        link_or_copy(src, &dst);
        let (size, sha) = goldsmith::fsutil::sha256_file(&dst).unwrap();
        recs.push(Artifact {
            format: *f,
            path: name,
            size,
            sha256: sha,
            files: vec![],
            oci_manifest_digest: None,
        });
    }
    let rec = BuildRecord {
        schema: 1,
        image: image.into(),
        build_id: build_id.clone(),
        content_digest: "sha256:test".into(),
        source_date_epoch: 1_735_689_600,
        finished: "2025-01-01T00:00:00Z".into(),
        goldsmith_version: goldsmith::VERSION.into(),
        source: SourceInfo::default(),
        layers: vec![],
        artifacts: recs,
        packages: vec![],
        disk_mib: 2048,
        vm: VmSpec {
            memory_mib: 1024,
            cpus: 2,
        },
        kernel_cmdline: vec![],
        stages: vec![],
        changes: vec![],
    };
    goldsmith::fsutil::atomic_write_json(&dir.join("build.json"), &rec).unwrap();
    goldsmith::fsutil::atomic_write_json(
        &build_root.join(image).join("latest.json"),
        &LatestPointer { build_id },
    )
    .unwrap();
    dir
}

fn ext(f: Format) -> &'static str {
    match f {
        Format::Vhd => "vhd",
        Format::Ova => "ova",
        Format::Raw => "raw",
        Format::Qcow2 => "qcow2",
        Format::Vmdk => "vmdk",
        Format::Tar => "tar.zst",
        Format::Oci => "oci",
    }
}

/// A goldsmith project for CLI tests: goldsmith.toml, one base layer with `layer_checks`
/// (TOML `[[checks]]` tables) and image `image` with `image_extra` appended.
pub fn project(dir: &Path, image: &str, layer_checks: &str, image_extra: &str) {
    std::fs::create_dir_all(dir.join("recipes/tbase")).unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::write(
        dir.join("goldsmith.toml"),
        "build_dir = \"builds\"\n[cache]\ndir = \"cache\"\n[verify]\naccelerator = \"auto\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("recipes/tbase/layer.toml"),
        format!("[bootstrap]\ndistro = \"debian\"\nsuite = \"bookworm\"\n\n{layer_checks}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("images/{image}.toml")),
        format!("layers = [\"tbase\"]\n{image_extra}\n"),
    )
    .unwrap();
}

/// Live (non-zombie) QEMU processes whose command line contains `marker`.
pub fn qemu_processes(marker: &str) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next().unwrap_or('?'));
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-system") && cmd.contains(marker) && state != Some('Z') {
            v.push((pid, cmd));
        }
    }
    v
}

/// Wait (up to `within`) until no QEMU process with `marker` is left; panic otherwise.
pub fn assert_no_qemu(marker: &str, within: Duration) {
    let t = Instant::now();
    loop {
        let left = qemu_processes(marker);
        if left.is_empty() {
            return;
        }
        if t.elapsed() > within {
            panic!("QEMU processes left behind: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Entries in a directory (to prove temp directories were removed).
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
