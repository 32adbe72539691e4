//! Publishing to the local store, through the real binary: versions, signatures, SBOM,
//! fetch, channels, promote, revoke, gc, races.

#[path = "support/publish.rs"]
mod publish_support;
mod support;

use std::path::Path;
use std::process::Command;

use publish_support::{fake_build, with_signing_key, BuildSpec};
use support::Project;

fn project() -> Project {
    let p = Project::example();
    with_signing_key(&p);
    p
}

fn publish(p: &Project, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "publish", "web"];
    args.extend_from_slice(extra);
    p.run(&args).expect(0).json()
}

fn list(p: &Project) -> serde_json::Value {
    p.run(&["--json", "list", "web"]).expect(0).json()
}

fn versions(p: &Project) -> Vec<String> {
    list(p)[0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect()
}

fn channel(p: &Project, ch: &str) -> serde_json::Value {
    list(p)[0]["channels"][ch].clone()
}

fn sha256(path: &Path) -> String {
    goldsmith::fsutil::sha256_file(path).unwrap().1
}

#[test]
fn publish_list_fetch_with_signature_check() {
    let p = project();
    let b = fake_build(&p, &BuildSpec::new("web", "build-1"));
    let out = publish(&p, &[]);
    assert_eq!(out["status"], "published");
    let version = out["version"].as_str().unwrap().to_string();
    let today = chrono::Utc::now().format("%Y.%m.%d.1").to_string();
    assert_eq!(version, today, "first calendar version of the day");
    assert_eq!(out["moves"][0]["channel"], "nightly");
    assert!(out["moves"][0]["old"].is_null());

    assert_eq!(versions(&p), vec![version.clone()]);
    assert_eq!(channel(&p, "nightly"), version.as_str());

    // The store holds the committed layout.
    let vdir = p.path("artifacts/web").join(&version);
    for f in [
        "CLAIM",
        "COMMITTED",
        "manifest.json",
        "manifest.json.minisig",
        "sbom.cdx.json",
        "verify.json",
        "build.json",
        "verify/console-qcow2.log",
        "web.qcow2",
        "oci/index.json",
    ] {
        assert!(vdir.join(f).is_file(), "{f} missing from the version");
    }

    // Fetch by channel: every file arrives and matches the build.
    let dest = p.path("fetched");
    let got = p
        .run(&["--json", "fetch", "web", "nightly", "--dest", "fetched"])
        .expect(0)
        .json();
    assert_eq!(got["signature"], "verified");
    let fdir = dest.join("web").join(&version);
    assert_eq!(p.root().join(got["dir"].as_str().unwrap()), fdir);
    assert_eq!(
        sha256(&fdir.join("web.qcow2")),
        b.record.artifacts[0].sha256
    );
    for f in &b.record.artifacts[1].files {
        assert_eq!(sha256(&fdir.join(&f.path)), f.sha256, "{}", f.path);
    }
    // No temp folder is left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(dest.join("web"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // The manifest says what it must.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fdir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["image"], "web");
    assert_eq!(m["version"], version.as_str());
    assert_eq!(m["content_digest"], b.record.content_digest.as_str());
    assert_eq!(
        m["source"]["git_commit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(m["source"]["dirty"], true);
    assert_eq!(m["verify"]["passed"], true);
    assert_eq!(m["packages"].as_array().unwrap().len(), 4);
    assert_eq!(m["layers"][0]["name"], "debian-base");
    let files: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for f in [
        "web.qcow2",
        "sbom.cdx.json",
        "verify.json",
        "build.json",
        "verify/console-qcow2.log",
    ] {
        assert!(files.contains(&f), "manifest lists {f}: {files:?}");
    }
    let qcow = &m["artifacts"][0];
    assert_eq!(qcow["format"], "qcow2");
    assert!(qcow["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("web/{version}/web.qcow2")));

    // Debian's minisign accepts the signature.
    let mv = Command::new("minisign")
        .args(["-V", "-m"])
        .arg(fdir.join("manifest.json"))
        .arg("-p")
        .arg(p.path("keys/goldsmith.key.pub"))
        .output()
        .unwrap();
    assert!(
        mv.status.success(),
        "minisign -V: {}",
        String::from_utf8_lossy(&mv.stderr)
    );
    assert!(String::from_utf8_lossy(&mv.stdout).contains(&format!("version={version}")));
    // ...and rejects a changed manifest.
    let changed = p.path("changed.json");
    let mut bytes = std::fs::read(fdir.join("manifest.json")).unwrap();
    bytes.extend_from_slice(b" ");
    std::fs::write(&changed, bytes).unwrap();
    std::fs::copy(
        fdir.join("manifest.json.minisig"),
        p.path("changed.json.minisig"),
    )
    .unwrap();
    let bad = Command::new("minisign")
        .args(["-V", "-m"])
        .arg(&changed)
        .arg("-p")
        .arg(p.path("keys/goldsmith.key.pub"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // goldsmith verify-signature agrees with minisign.
    let manifest_arg = fdir.join("manifest.json");
    let manifest_arg = manifest_arg.to_str().unwrap();
    p.run(&["verify-signature", manifest_arg]).expect(0);
    let r = p
        .run(&["verify-signature", changed.to_str().unwrap()])
        .expect(1);
    assert!(r.stderr.contains("does not verify"), "{}", r.stderr);

    // The SBOM passes the CycloneDX validator and lists the packages with purls.
    let sbom = fdir.join("sbom.cdx.json");
    let v = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, json\n\
             from cyclonedx.validation.json import JsonStrictValidator\n\
             from cyclonedx.schema import SchemaVersion\n\
             doc = open(sys.argv[1]).read()\n\
             err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(doc)\n\
             print('INVALID', err) if err else print('VALID')\n",
        )
        .arg(&sbom)
        .output()
        .unwrap();
    let vout = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success() && vout.trim() == "VALID",
        "{vout}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&sbom).unwrap()).unwrap();
    assert_eq!(s["specVersion"], "1.5");
    assert_eq!(s["metadata"]["component"]["name"], "web");
    assert_eq!(s["metadata"]["timestamp"], "2026-01-02T03:04:05Z");
    let purls: Vec<&str> = s["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["purl"].as_str().unwrap())
        .collect();
    assert!(
        purls.contains(&"pkg:deb/debian/openssh-server@1%3A9.2p1-2%2Bdeb12u3?arch=amd64"),
        "{purls:?}"
    );

    // Fetching again into the same place refuses rather than mixing.
    let r = p
        .run(&["fetch", "web", &version, "--dest", "fetched"])
        .expect(1);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);

    // show prints the version, verified.
    let show = p
        .run(&["--json", "show", "web", "nightly"])
        .expect(0)
        .json();
    assert_eq!(show["manifest"]["version"], version.as_str());
    assert_eq!(show["signature"], "verified");
}

#[test]
fn unchanged_content_publishes_nothing() {
    let p = project();
    fake_build(&p, &BuildSpec::new("web", "same"));
    let first = publish(&p, &[]);
    let v1 = first["version"].as_str().unwrap().to_string();

    let again = p.run(&["publish", "web"]).expect(0);
    assert!(again.stdout.contains("unchanged"), "{}", again.stdout);
    let j = publish(&p, &[]);
    assert_eq!(j["status"], "unchanged");
    assert_eq!(j["version"], v1.as_str());
    assert_eq!(versions(&p), vec![v1.clone()], "nothing new in the store");

    // A rebuild with the same content (another build id) is still unchanged.
    fake_build(
        &p,
        &BuildSpec {
            build_id: "rebuild",
            ..BuildSpec::new("web", "same")
        },
    );
    assert_eq!(publish(&p, &[])["status"], "unchanged");

    // --force publishes anyway, as the next number of the day.
    let forced = publish(&p, &["--force"]);
    assert_eq!(forced["status"], "published");
    let v2 = forced["version"].as_str().unwrap();
    assert!(v2.ends_with(".2"), "{v2}");

    // New content moves the channel from the old head.
    fake_build(&p, &BuildSpec::new("web", "new-content"));
    let third = publish(&p, &[]);
    assert_eq!(third["status"], "published");
    assert_eq!(third["moves"][0]["old"], v2);
    assert_eq!(versions(&p).len(), 3);
}

#[test]
fn existing_versions_never_change() {
    let p = project();
    fake_build(&p, &BuildSpec::new("web", "a"));
    publish(&p, &["--version", "1.0.0"]);
    let before = std::fs::read(p.path("artifacts/web/1.0.0/manifest.json")).unwrap();

    fake_build(&p, &BuildSpec::new("web", "b"));
    let r = p.run(&["publish", "web", "--version", "1.0.0"]).expect(1);
    assert!(r.stderr.contains("conflict"), "{}", r.stderr);
    assert!(r.stderr.contains("1.0.0 already exists"), "{}", r.stderr);
    let after = std::fs::read(p.path("artifacts/web/1.0.0/manifest.json")).unwrap();
    assert_eq!(before, after);

    // Bad version syntax is a usage error (exit 2); so is a bad channel.
    let r = p.run(&["publish", "web", "--version", "v1/../x"]).expect(2);
    assert!(r.stderr.contains("invalid version"), "{}", r.stderr);
    let r = p.run(&["publish", "web", "--channel", "Stable"]).expect(2);
    assert!(r.stderr.contains("invalid channel"), "{}", r.stderr);
}

#[test]
fn only_verified_builds_are_published() {
    let p = project();
    let r = p.run(&["publish", "web"]).expect(1);
    assert!(r.stderr.contains("goldsmith build web"), "{}", r.stderr);

    fake_build(
        &p,
        &BuildSpec {
            verified: None,
            ..BuildSpec::new("web", "x")
        },
    );
    let r = p.run(&["publish", "web"]).expect(1);
    assert!(
        r.stderr.contains("not verified") && r.stderr.contains("no verify.json"),
        "{}",
        r.stderr
    );

    fake_build(
        &p,
        &BuildSpec {
            verified: Some(false),
            ..BuildSpec::new("web", "y")
        },
    );
    let r = p.run(&["publish", "web"]).expect(1);
    assert!(r.stderr.contains("verification failed"), "{}", r.stderr);

    // verify.json of another build.
    let b = fake_build(&p, &BuildSpec::new("web", "z"));
    let other = fake_build(
        &p,
        &BuildSpec {
            build_id: "other",
            ..BuildSpec::new("web", "w")
        },
    );
    std::fs::copy(b.dir.join("verify.json"), other.dir.join("verify.json")).unwrap();
    let r = p.run(&["publish", "web"]).expect(1);
    assert!(r.stderr.contains("is for build z"), "{}", r.stderr);

    // An artifact changed after the build.
    let c = fake_build(&p, &BuildSpec::new("web", "c"));
    std::fs::write(c.dir.join("web.qcow2"), b"changed").unwrap();
    let r = p.run(&["publish", "web"]).expect(1);
    assert!(
        r.stderr.contains("web.qcow2") && r.stderr.contains("rebuild"),
        "{}",
        r.stderr
    );

    assert!(
        !p.path("artifacts/web").exists(),
        "nothing reached the store"
    );
}

#[test]
fn publishing_without_a_key_says_how_to_make_one() {
    let p = Project::example();
    fake_build(&p, &BuildSpec::new("web", "k"));
    let r = p.run(&["publish", "web"]).expect(1);
    assert!(r.stderr.contains("goldsmith keygen"), "{}", r.stderr);
    assert!(!p.path("artifacts/web").exists());
}

#[test]
fn concurrent_publishes_of_one_version_have_one_winner() {
    let p = project();
    fake_build(&p, &BuildSpec::new("web", "race"));
    // Two real processes, started together, racing for the same version.
    let spawn = || {
        p.cmd()
            .args(["publish", "web", "--version", "7.0.0", "--force"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1], "one wins, one loses: {codes:?}");
    let loser = outs.iter().find(|o| !o.status.success()).unwrap();
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(err.contains("conflict"), "{err}");
    // The winner's version is whole: it fetches and checks out.
    p.run(&["fetch", "web", "7.0.0", "--dest", "out"]).expect(0);
    assert_eq!(versions(&p), vec!["7.0.0".to_string()]);
}

#[test]
fn promote_and_revoke_move_pointers() {
    let p = project();
    fake_build(&p, &BuildSpec::new("web", "one"));
    publish(&p, &["--version", "1.0.0"]);
    let pr = p
        .run(&["--json", "promote", "web", "1.0.0", "--to", "stable"])
        .expect(0)
        .json();
    assert_eq!(pr["moves"][0]["channel"], "stable");
    assert!(pr["moves"][0]["old"].is_null());

    fake_build(&p, &BuildSpec::new("web", "two"));
    publish(&p, &["--version", "2.0.0"]);
    assert_eq!(channel(&p, "nightly"), "2.0.0");
    assert_eq!(channel(&p, "stable"), "1.0.0");

    // Promotion moves the same bytes: the store is not written besides the pointer.
    let manifest_before = std::fs::read(p.path("artifacts/web/2.0.0/manifest.json")).unwrap();
    let pr = p
        .run(&["--json", "promote", "web", "2.0.0", "--to", "stable"])
        .expect(0)
        .json();
    assert_eq!(pr["moves"][0]["old"], "1.0.0");
    assert_eq!(pr["moves"][0]["new"], "2.0.0");
    assert_eq!(
        std::fs::read(p.path("artifacts/web/2.0.0/manifest.json")).unwrap(),
        manifest_before
    );
    // Promoting again changes nothing.
    let again = p
        .run(&["promote", "web", "2.0.0", "--to", "stable"])
        .expect(0);
    assert!(again.stdout.contains("unchanged"), "{}", again.stdout);
    // Unknown versions are refused.
    let r = p
        .run(&["promote", "web", "9.9.9", "--to", "stable"])
        .expect(1);
    assert!(r.stderr.contains("not published"), "{}", r.stderr);

    // Revoke 2.0.0: both channels fall back to 1.0.0.
    let rv = p
        .run(&[
            "--json",
            "revoke",
            "web",
            "2.0.0",
            "--reason",
            "CVE-2026-0001 in openssl",
        ])
        .expect(0)
        .json();
    let mut moved: Vec<(String, String)> = rv["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["reason"], "revoke");
            assert_eq!(m["old"], "2.0.0");
            (
                m["channel"].as_str().unwrap().to_string(),
                m["new"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    moved.sort();
    assert_eq!(
        moved,
        vec![
            ("nightly".to_string(), "1.0.0".to_string()),
            ("stable".to_string(), "1.0.0".to_string())
        ]
    );
    assert_eq!(channel(&p, "nightly"), "1.0.0");
    assert_eq!(channel(&p, "stable"), "1.0.0");
    // The version itself is untouched, and marked.
    assert_eq!(
        std::fs::read(p.path("artifacts/web/2.0.0/manifest.json")).unwrap(),
        manifest_before
    );
    let revoked: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("artifacts/web/2.0.0/REVOKED")).unwrap())
            .unwrap();
    assert_eq!(revoked["reason"], "CVE-2026-0001 in openssl");
    assert!(list(&p)[0]["versions"][1]["revoked"].as_bool().unwrap());

    // A revoked version is never promoted again, nor fetched by default.
    let r = p
        .run(&["promote", "web", "2.0.0", "--to", "stable"])
        .expect(1);
    assert!(r.stderr.contains("revoked"), "{}", r.stderr);
    let r = p.run(&["fetch", "web", "2.0.0", "--dest", "out"]).expect(1);
    assert!(r.stderr.contains("revoked"), "{}", r.stderr);
    p.run(&["fetch", "web", "2.0.0", "--dest", "out", "--allow-revoked"])
        .expect(0);

    // The next publish of new content moves nightly on from 1.0.0.
    fake_build(&p, &BuildSpec::new("web", "three"));
    let j = publish(&p, &["--version", "3.0.0"]);
    assert_eq!(j["moves"][0]["old"], "1.0.0");

    // Revoking the only version a channel ever had leaves it empty.
    let r = p
        .run(&["--json", "revoke", "web", "1.0.0", "--reason", "old"])
        .expect(0)
        .json();
    assert_eq!(r["emptied_channels"], serde_json::json!(["stable"]));
    let r = p
        .run(&["fetch", "web", "stable", "--dest", "out2"])
        .expect(1);
    assert!(r.stderr.contains("points at no version"), "{}", r.stderr);
}

#[test]
fn gc_keeps_what_channels_need_and_removes_debris() {
    let p = project();
    p.edit("goldsmith.toml", "keep_versions = 10", "keep_versions = 1");
    for (c, v) in [
        ("a", "1.0.0"),
        ("b", "2.0.0"),
        ("c", "3.0.0"),
        ("d", "4.0.0"),
    ] {
        fake_build(&p, &BuildSpec::new("web", c));
        publish(&p, &["--version", v]);
    }
    p.run(&["promote", "web", "2.0.0", "--to", "stable"])
        .expect(0);
    // Debris: a publish from another host that started just now (maybe still running),
    // and one from long ago.
    let claim = |host: &str, started: &str| {
        serde_json::json!({
            "publish_id": "x", "host": host, "pid": 1, "started": started,
            "content_digest": "sha256:00", "goldsmith_version": "0"
        })
        .to_string()
    };
    let now = chrono::Utc::now().to_rfc3339();
    p.write("artifacts/web/5.0.0/CLAIM", &claim("elsewhere", &now));
    p.write("artifacts/web/5.0.0/web.qcow2", "half");
    p.write(
        "artifacts/web/0.9.0/CLAIM",
        &claim("elsewhere", "2020-01-01T00:00:00Z"),
    );
    p.write("artifacts/web/0.9.0/web.qcow2", "old half");

    // Dry run: reports, deletes nothing.
    let dry = p.run(&["--json", "gc"]).expect(0).json();
    let removed: Vec<String> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(removed, vec!["0.9.0", "1.0.0", "3.0.0"]);
    assert!(p.path("artifacts/web/1.0.0/manifest.json").exists());
    assert_eq!(dry["skipped"][0]["version"], "5.0.0");

    p.run(&["gc", "--yes"]).expect(0);
    assert!(!p.path("artifacts/web/1.0.0").exists());
    assert!(!p.path("artifacts/web/3.0.0").exists());
    assert!(!p.path("artifacts/web/0.9.0").exists());
    assert!(
        p.path("artifacts/web/5.0.0/CLAIM").exists(),
        "young foreign claim kept"
    );
    // stable's 2.0.0 and nightly's (and newest) 4.0.0 remain, and still fetch.
    assert_eq!(versions(&p), vec!["2.0.0", "4.0.0"]);
    p.run(&["fetch", "web", "stable", "--dest", "o1"]).expect(0);
    p.run(&["fetch", "web", "nightly", "--dest", "o2"])
        .expect(0);
}

#[test]
fn tampered_files_fail_fetch_naming_the_file() {
    let p = project();
    let b = fake_build(&p, &BuildSpec::new("web", "t"));
    publish(&p, &["--version", "1.0.0"]);
    // Writing into the build's disk image in place (as a developer's boot might) does
    // not reach the published copy.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(b.dir.join("web.qcow2"))
            .unwrap();
        f.write_all(b"booted and changed").unwrap();
    }
    p.run(&["fetch", "web", "1.0.0", "--dest", "first"])
        .expect(0);
    let blob = std::fs::read_dir(p.path("artifacts/web/1.0.0/oci/blobs/sha256"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = blob.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(&blob, b"evil layer").unwrap();
    let r = p.run(&["fetch", "web", "1.0.0", "--dest", "out"]).expect(1);
    assert!(
        r.stderr.contains(&format!("oci/blobs/sha256/{name}")) && r.stderr.contains("tampered"),
        "{}",
        r.stderr
    );
    // Nothing half-downloaded is visible.
    let visible: Vec<_> = std::fs::read_dir(p.path("out/web"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(visible.is_empty(), "{visible:?}");
    let hidden: Vec<_> = std::fs::read_dir(p.path("out/web")).unwrap().collect();
    assert!(hidden.is_empty(), "temp folder removed too");

    // A manifest edited in the store fails the signature check.
    let mpath = p.path("artifacts/web/1.0.0/manifest.json");
    let m = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, m.replace("\"verify\"", "\"verify\" ")).unwrap();
    let r = p.run(&["fetch", "web", "1.0.0", "--dest", "out"]).expect(1);
    assert!(r.stderr.contains("signature"), "{}", r.stderr);
}
