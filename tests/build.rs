//! `goldsmith build` end to end: real mmdebstrap, real mkfs, every format checked with
//! tools nobody here wrote (qemu-img, sfdisk, skopeo, mtools, tar).
//!
//! Layers are shared between tests through the shared cache: debian-base is bootstrapped
//! once per machine. Tests that change a layer give it content of their own, so nothing
//! they do touches what other tests use.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use support::{Project, Run};

fn tool(cmd: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn record(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("build.json")).unwrap()).unwrap()
}

fn build_dir_of(r: &Run) -> PathBuf {
    let v = r.json();
    PathBuf::from(v[0]["dir"].as_str().unwrap())
}

/// The example's `base` image, built once for every test of this file.
fn built_base() -> &'static (Project, PathBuf) {
    static B: OnceLock<(Project, PathBuf)> = OnceLock::new();
    B.get_or_init(|| {
        let p = Project::example();
        let r = p.run(&["build", "base", "--json"]).expect(0);
        let dir = build_dir_of(&r);
        (p, dir)
    })
}

#[test]
fn base_image_formats_pass_third_party_checks() {
    let (_p, dir) = built_base();
    let rec = record(dir);
    let formats: Vec<&str> = rec["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["format"].as_str().unwrap())
        .collect();
    assert_eq!(
        formats,
        ["raw", "qcow2", "vmdk", "ova", "vhd", "tar", "oci"]
    );
    let f = |name: &str| dir.join(name).display().to_string();
    let size = 2048u64 << 20;

    // GPT with an ESP and an x86-64 root (UAPI types), and no complaints.
    let (ok, out) = tool("sfdisk", &["--json", &f("base.raw")]);
    assert!(ok, "{out}");
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    let parts = t["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(t["partitiontable"]["label"], "gpt");
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    let (ok, out) = tool("sfdisk", &["--verify", &f("base.raw")]);
    assert!(ok && out.contains("No errors detected"), "{out}");
    assert!(!out.to_lowercase().contains("corrupt"), "{out}");
    assert_eq!(std::fs::metadata(f("base.raw")).unwrap().len(), size);

    // The ESP holds systemd-boot, the kernel, the initrd and an entry pointing at root.
    let esp = format!("{}@@1M", f("base.raw"));
    let (ok, out) = tool("mdir", &["-i", &esp, "-/", "-b", "::/"]);
    assert!(ok, "{out}");
    for want in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/goldsmith/vmlinuz",
        "::/goldsmith/initrd",
        "::/loader/loader.conf",
    ] {
        assert!(out.contains(want), "ESP lacks {want}:\n{out}");
    }
    let (ok, entry) = tool("mtype", &["-i", &esp, "::/loader/entries/goldsmith.conf"]);
    assert!(ok, "{entry}");
    let root_uuid = parts[1]["uuid"].as_str().unwrap().to_lowercase();
    assert!(
        entry.contains(&format!("root=PARTUUID={root_uuid}")),
        "{entry}"
    );
    assert!(entry.contains("console=ttyS0"), "{entry}");

    // qcow2 and VMDK: consistent, right format and size.
    for (name, fmt) in [("base.qcow2", "qcow2"), ("base.vmdk", "vmdk")] {
        let (ok, out) = tool("qemu-img", &["check", &f(name)]);
        assert!(ok && out.contains("No errors"), "{name}: {out}");
        let (ok, out) = tool("qemu-img", &["info", "--output=json", &f(name)]);
        assert!(ok, "{out}");
        let info: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(info["format"], fmt);
        assert_eq!(info["virtual-size"], size);
    }
    let (_, out) = tool("qemu-img", &["info", "--output=json", &f("base.vmdk")]);
    assert!(out.contains("streamOptimized"), "{out}");
    let (_, out) = tool("qemu-img", &["info", "--output=json", &f("base.qcow2")]);
    assert!(out.contains("\"compression-type\": \"zstd\""), "{out}");
    // VHD: qemu-img check has no vpc support; info -f vpc reads the footer.
    let (ok, out) = tool(
        "qemu-img",
        &["info", "-f", "vpc", "--output=json", &f("base.vhd")],
    );
    assert!(ok, "{out}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["virtual-size"], size);
    assert_eq!(
        std::fs::metadata(f("base.vhd")).unwrap().len(),
        size + 512,
        "fixed VHD = disk + footer"
    );

    // OVA: OVF first, and the .mf sums verify after extraction.
    let x = tempfile::tempdir().unwrap();
    let (ok, list) = tool("tar", &["-tf", &f("base.ova")]);
    assert!(ok, "{list}");
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        ["base.ovf", "base.mf", "base-disk1.vmdk"]
    );
    let (ok, out) = tool(
        "tar",
        &["-xf", &f("base.ova"), "-C", &x.path().display().to_string()],
    );
    assert!(ok, "{out}");
    let mf = std::fs::read_to_string(x.path().join("base.mf")).unwrap();
    assert_eq!(mf.lines().count(), 2);
    for line in mf.lines() {
        let (name, sum) = line
            .strip_prefix("SHA256(")
            .and_then(|l| l.split_once(")= "))
            .unwrap_or_else(|| panic!("bad .mf line {line}"));
        let (_, real) = goldsmith::fsutil::sha256_file(&x.path().join(name)).unwrap();
        assert_eq!(real, sum, "{name}");
    }
    let ovf = std::fs::read_to_string(x.path().join("base.ovf")).unwrap();
    assert!(
        ovf.contains("vmw:value=\"efi\"") && ovf.contains(&format!("ovf:capacity=\"{size}\"")),
        "{ovf}"
    );

    // OCI: skopeo reads the manifest, and copying verifies every blob.
    let layout = format!(
        "oci:{}:base-{}",
        f("base.oci"),
        &rec["content_digest"].as_str().unwrap()[..12]
    );
    let (ok, out) = tool("skopeo", &["inspect", &layout]);
    assert!(ok, "{out}");
    let inspect: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        inspect["Layers"].as_array().unwrap().len(),
        2,
        "one OCI layer per recipe layer"
    );
    assert_eq!(inspect["Labels"]["org.opencontainers.image.title"], "base");
    assert_eq!(inspect["Created"], "2025-01-01T00:00:00Z");
    let copy = tempfile::tempdir().unwrap();
    let (ok, out) = tool(
        "skopeo",
        &["copy", &layout, &format!("dir:{}", copy.path().display())],
    );
    assert!(ok, "{out}");
    // /boot is excluded from the OCI layers by the image.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.path().join("manifest.json")).unwrap()).unwrap();
    let base_layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let (ok, names) = tool(
        "tar",
        &["-tzf", &copy.path().join(base_layer).display().to_string()],
    );
    assert!(ok);
    assert!(
        names.lines().any(|l| l.starts_with("etc/")),
        "layer has files"
    );
    assert!(
        !names.lines().any(|l| l.starts_with("boot/")),
        "/boot excluded"
    );

    // rootfs tar.zst: a template without machine identity.
    let (ok, names) = tool("tar", &["--zstd", "-tf", &f("base.rootfs.tar.zst")]);
    assert!(ok, "{names}");
    assert!(names.lines().any(|l| l == "etc/machine-id"));
    assert!(
        !names.lines().any(|l| l.starts_with("etc/ssh/ssh_host_")),
        "no SSH host keys"
    );
    assert!(
        !names.lines().any(|l| l == "etc/resolv.conf"),
        "no build-host resolv.conf"
    );
    let lists: Vec<&str> = names
        .lines()
        .filter(|l| l.starts_with("var/lib/apt/lists/"))
        .collect();
    assert_eq!(
        lists,
        ["var/lib/apt/lists/lock", "var/lib/apt/lists/partial"],
        "no apt lists"
    );

    // The record describes every file truthfully.
    for a in rec["artifacts"].as_array().unwrap() {
        if a["files"].as_array().is_some_and(|f| !f.is_empty()) {
            continue;
        }
        let (size, sha) =
            goldsmith::fsutil::sha256_file(&dir.join(a["path"].as_str().unwrap())).unwrap();
        assert_eq!(a["size"], size);
        assert_eq!(a["sha256"], sha);
    }
    assert!(rec["packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "openssh-server"));
}

#[test]
fn a_second_build_with_nothing_changed_is_a_no_op() {
    let (p, dir) = built_base();
    let r = p.run(&["build", "base", "--json"]).expect(0);
    let v = r.json();
    assert_eq!(v[0]["up_to_date"], true);
    assert_eq!(PathBuf::from(v[0]["dir"].as_str().unwrap()), *dir);
}

/// A project whose image `t` is debian-base plus a small layer of this test's own.
fn project_with_top(extra_layer_toml: &str, files: &[(&str, &str)]) -> Project {
    let p = Project::example();
    let nonce = format!("{:?}-{}", std::time::SystemTime::now(), std::process::id());
    p.write(
        "recipes/top/layer.toml",
        &format!("[[files]]\nsource = \"motd\"\ndest = \"/etc/motd\"\nmode = \"0644\"\n{extra_layer_toml}"),
    );
    p.write("recipes/top/files/motd", &format!("test layer {nonce}\n"));
    for (f, c) in files {
        p.write(f, c);
    }
    p.write(
        "images/t.toml",
        "layers = [\"debian-base\", \"top\"]\nformats = [\"raw\", \"oci\"]\n[oci]\nexclude = [\"/boot\"]\n",
    );
    p
}

#[test]
fn changing_the_top_layer_rebuilds_only_it() {
    let p = project_with_top("", &[]);
    let first = p.run(&["build", "t", "--json"]).expect(0);
    let rec1 = record(&build_dir_of(&first));
    assert_eq!(
        rec1["layers"][0]["rebuilt"], false,
        "debian-base comes from the cache"
    );
    p.edit("recipes/top/files/motd", "test layer", "changed layer");
    let second = p.run(&["build", "t", "--json"]).expect(0);
    let rec2 = record(&build_dir_of(&second));
    assert_eq!(rec2["layers"][0]["rebuilt"], false);
    assert_eq!(rec2["layers"][0]["digest"], rec1["layers"][0]["digest"]);
    assert_eq!(rec2["layers"][1]["rebuilt"], true);
    assert_ne!(rec2["layers"][1]["digest"], rec1["layers"][1]["digest"]);
    // The stage log says so too, and mmdebstrap never ran.
    assert!(
        second.stderr.contains("layer debian-base") && second.stderr.contains(": cached"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("layer top") && second.stderr.contains(": building"),
        "{}",
        second.stderr
    );
    assert!(!second.stderr.contains("mmdebstrap"), "{}", second.stderr);
}

#[test]
fn a_corrupt_cache_entry_is_discarded_and_rebuilt() {
    let p = project_with_top("", &[]);
    let first = p.run(&["build", "t", "--json"]).expect(0);
    let rec1 = record(&build_dir_of(&first));
    let top = rec1["layers"][1]["digest"].as_str().unwrap().to_string();
    let entry = support::shared_cache()
        .join("layers")
        .join(&top)
        .join("diff.tar.zst");
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let second = p.run(&["build", "t", "--force", "--json"]).expect(0);
    assert!(
        second.stderr.contains("is corrupt") && second.stderr.contains("discarded"),
        "{}",
        second.stderr
    );
    let rec2 = record(&build_dir_of(&second));
    assert_eq!(rec2["layers"][1]["rebuilt"], true);
    assert_eq!(
        rec2["layers"][1]["output_digest"], rec1["layers"][1]["output_digest"],
        "rebuilt to the same bytes"
    );
}

#[test]
fn rebuilding_an_unchanged_layer_gives_identical_bytes() {
    // Besides plain files, what the tree a layer was built on holds and an extraction of
    // the layer does not: a sparse file, a sub-second mtime, a hard link to a file of the
    // layer below, a socket.
    let p = project_with_top(
        r#"[[scripts]]
run = '''
echo configured > /etc/configured; touch /var/tmp/scratch; mkdir -p /srv/data
truncate -s 8M /srv/data/sparse; touch -d '2020-01-01 00:00:00.5' /etc/subsecond
ln /etc/debian_version /srv/data/version-link
perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => "/srv/data/s.sock", Listen => 1) or die'
'''
"#,
        &[],
    );
    let a = p.run(&["build", "t", "--json"]).expect(0);
    let dir_a = build_dir_of(&a);
    let rec_a = record(&dir_a);
    let top = rec_a["layers"][1]["digest"].as_str().unwrap();
    std::fs::remove_dir_all(support::shared_cache().join("layers").join(top)).unwrap();
    let _ = std::fs::remove_file(
        support::shared_cache()
            .join("outputs")
            .join(rec_a["layers"][1]["output_digest"].as_str().unwrap()),
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = p.run(&["build", "t", "--force", "--json"]).expect(0);
    let dir_b = build_dir_of(&b);
    let rec_b = record(&dir_b);
    assert_eq!(
        rec_b["layers"][1]["rebuilt"], true,
        "the layer really ran again"
    );
    assert_eq!(
        rec_a["layers"][1]["output_digest"], rec_b["layers"][1]["output_digest"],
        "layer diff is byte-identical"
    );
    let art = |r: &serde_json::Value, f: &str| {
        r["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["format"] == f)
            .unwrap()
            .clone()
    };
    assert_eq!(
        art(&rec_a, "raw")["sha256"],
        art(&rec_b, "raw")["sha256"],
        "raw disk is byte-identical"
    );
    assert_eq!(
        art(&rec_a, "oci")["sha256"],
        art(&rec_b, "oci")["sha256"],
        "OCI layout is byte-identical"
    );
    assert_eq!(
        art(&rec_a, "oci")["oci_manifest_digest"],
        art(&rec_b, "oci")["oci_manifest_digest"]
    );
    // Every layer cached now: the tree comes from a parked one when there is one (b's,
    // unless a concurrent test took it), and with no trees kept from a fresh extraction.
    // Neither may differ by a byte from the tree the top layer was built on.
    let c = p.run(&["build", "t", "--force", "--json"]).expect(0);
    let rec_c = record(&build_dir_of(&c));
    assert_eq!(rec_c["layers"][1]["rebuilt"], false);
    assert_eq!(
        art(&rec_a, "raw")["sha256"],
        art(&rec_c, "raw")["sha256"],
        "raw disk from the built tree == raw disk from a parked tree"
    );
    p.edit("goldsmith.toml", "[cache]\n", "[cache]\nkeep_trees = 0\n");
    let d = Run::from(
        p.cmd()
            .env("GOLDSMITH_LOG", "goldsmith=debug")
            .args(["build", "t", "--force", "--json"])
            .output()
            .unwrap(),
    )
    .expect(0);
    assert!(
        d.stderr.contains("run: mkfs.ext4"),
        "debug log: {}",
        d.stderr
    );
    assert!(!d.stderr.contains("parked tree"), "{}", d.stderr);
    assert_eq!(
        art(&rec_a, "raw")["sha256"],
        art(&record(&build_dir_of(&d)), "raw")["sha256"],
        "raw disk from the built tree == raw disk from a fresh extraction"
    );
}

/// A failed build names the layer and the cause, leaves no temp folder, and publishes
/// nothing that looks like a build.
fn assert_failed_cleanly(p: &Project, image: &str, r: &Run, wants: &[&str]) {
    support::assert_failed_cleanly(p, &support::shared_cache(), image, r, wants);
}

#[test]
fn a_package_that_does_not_exist_fails_naming_layer_and_package() {
    let p = project_with_top("[packages]\ninstall = [\"gs-no-such-package\"]\n", &[]);
    std::fs::rename(p.path("images/t.toml"), p.path("images/badpkg.toml")).unwrap();
    let r = p.run(&["build", "badpkg"]);
    assert_failed_cleanly(
        &p,
        "badpkg",
        &r,
        &[
            "layer top",
            "gs-no-such-package",
            "Unable to locate package",
        ],
    );
}

#[test]
fn a_failing_script_fails_naming_layer_and_script() {
    let p = project_with_top(
        "[[scripts]]\npath = \"broken.sh\"\n",
        &[(
            "recipes/top/scripts/broken.sh",
            "#!/bin/sh\necho 'about to fail' >&2\nexit 3\n",
        )],
    );
    std::fs::rename(p.path("images/t.toml"), p.path("images/badscript.toml")).unwrap();
    let r = p.run(&["build", "badscript"]);
    assert_failed_cleanly(
        &p,
        "badscript",
        &r,
        &[
            "layer top: script broken.sh failed",
            "exit code 3",
            "about to fail",
        ],
    );
}

#[test]
fn a_disk_smaller_than_the_content_fails_naming_the_image() {
    let p = project_with_top("", &[]);
    p.write(
        "images/tiny.toml",
        "layers = [\"debian-base\", \"top\"]\nformats = [\"raw\"]\n[disk]\nsize = \"300M\"\n",
    );
    let r = p.run(&["build", "tiny"]);
    assert_failed_cleanly(&p, "tiny", &r, &["image tiny", "does not fit", "disk.size"]);
}

/// `[cache] max_size`: a build ends by removing the least recently used layers beyond the
/// bound, never a layer of its image; `gc` reports and removes the same way. The cache is
/// a private one seeded from the shared cache, so nothing other tests use is touched.
#[test]
fn a_bounded_cache_drops_stale_layers_never_the_images_own() {
    let _ = built_base(); // base's layers are in the shared cache now
    let p = Project::example();
    let plan = p.run(&["plan", "--json", "base"]).expect(0).json();
    let layers: Vec<String> = plan["images"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let cache = p.path("cache");
    let mut want = Vec::new();
    for d in &layers {
        // An entry may live under the digest of an earlier identical output.
        let rep = std::fs::read_to_string(support::shared_cache().join("equiv").join(d))
            .map(|r| r.trim().to_string())
            .unwrap_or_else(|_| d.clone());
        if &rep != d {
            p.write(&format!("cache/equiv/{d}"), &rep);
        }
        support::copy_dir(
            &support::shared_cache().join("layers").join(&rep),
            &cache.join("layers").join(&rep),
        );
        want.push(rep);
    }
    want.sort();
    want.dedup();
    support::copy_archive_apt_states(&cache);
    // Layers no image uses any more, last used days ago (1 MiB each).
    let stale = |digest: &str, days: u64| {
        let dir = cache.join("layers").join(digest);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("diff.tar.zst"), vec![0u8; 1 << 20]).unwrap();
        let meta = serde_json::json!({
            "digest": digest, "name": format!("old-{digest}"), "output_digest": format!("o{digest}"),
            "tar_size": 1, "zst_sha256": "0", "zst_size": 1 << 20, "packages": [], "build_secs": 0.0
        });
        std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
        p.write(&format!("cache/outputs/o{digest}"), digest);
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86400);
        filetime::set_file_mtime(&dir, filetime::FileTime::from_system_time(t)).unwrap();
    };
    stale("aaaa1111", 3);
    stale("bbbb2222", 5);
    let entries = || {
        let mut v: Vec<String> = std::fs::read_dir(cache.join("layers"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let shared = support::shared_cache().display().to_string();
    p.edit("goldsmith.toml", &shared, &cache.display().to_string());

    // A bound that is not a size is a configuration error naming file and field.
    let good = p.read("goldsmith.toml");
    p.write(
        "goldsmith.toml",
        &good.replace("[cache]\n", "[cache]\nmax_size = \"lots\"\n"),
    );
    let r = p.run(&["plan", "--offline"]).expect(2);
    assert!(
        r.stderr.contains("goldsmith.toml") && r.stderr.contains("cache.max_size: 'lots'"),
        "{}",
        r.stderr
    );

    // A bound only the image's own layers fit in: both stale entries go, the image's stay.
    p.write(
        "goldsmith.toml",
        &good.replace("[cache]\n", "[cache]\nmax_size = \"2M\"\n"),
    );
    let r = p
        .run(&["build", "base", "--format", "raw", "--offline"])
        .expect(0);
    assert!(
        r.stderr
            .contains("layer cache: 2 least recently used entries removed"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("over cache.max_size"), "{}", r.stderr);
    assert_eq!(entries(), want);
    // Nothing points at what went.
    assert!(!cache.join("outputs/oaaaa1111").exists());
    assert!(!cache.join("outputs/obbbb2222").exists());

    // gc: a dry run lists what would go and keeps it; --yes removes it.
    stale("cccc3333", 2);
    let dry = p.run(&["--json", "gc"]).expect(0).json();
    assert_eq!(dry["cache"]["removed"][0]["digest"], "cccc3333");
    assert_eq!(dry["cache"]["removed"][0]["layer"], "old-cccc3333");
    assert_eq!(dry["cache"]["removed"].as_array().unwrap().len(), 1);
    assert!(cache.join("layers/cccc3333").exists());
    let r = p.run(&["gc", "--yes"]).expect(0);
    assert!(
        r.stdout.contains("removed cached layer old-cccc3333"),
        "{}",
        r.stdout
    );
    assert_eq!(entries(), want);
}
