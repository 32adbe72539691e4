//! `goldsmith nightly` end to end: real builds, real TCG boots, the local store, a
//! Terraform rollout sink; one image failing in isolation, a no-op second run, SIGTERM in
//! the middle, and two CI workers sharing one S3 layer cache.

#[path = "support/publish.rs"]
mod publish_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use publish_support::{s3_cmd, with_signing_key, Moto};
use support::{processes_matching, Project, Run};

/// The example with a signing key and an inventory whose groups are told through a
/// Terraform sink writing into `tf/`.
fn project() -> Project {
    let p = Project::example();
    with_signing_key(&p);
    p.write(
        "inventory.toml",
        "[groups.bastion]\nimage = \"base\"\nchannel = \"nightly\"\nsinks = [\"tf\"]\ncount = 2\n\n\
         [groups.web-canary]\nimage = \"web\"\nchannel = \"nightly\"\nsinks = [\"tf\"]\ncount = 1\n",
    );
    p.config_prepend("inventory = \"inventory.toml\"");
    p.config_append("[sinks.tf.terraform]\ndir = \"tf\"\n");
    // host_groups in the example images name groups of the repo's own inventory.
    for img in ["images/base.toml", "images/web.toml"] {
        let s = p.read(img);
        let s: String = s
            .lines()
            .filter(|l| !l.starts_with("host_groups"))
            .map(|l| format!("{l}\n"))
            .collect();
        p.write(img, &s);
    }
    p
}

fn report_dir(p: &Project) -> PathBuf {
    let root = p.path("artifacts/reports");
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|d| d.join("report.json").is_file())
        .collect();
    runs.sort();
    runs.pop().expect("a report")
}

fn report(p: &Project) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(report_dir(p).join("report.json")).unwrap()).unwrap()
}

fn image<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == name)
        .unwrap()
}

/// JUnit as junitparser (a parser nobody here wrote) sees it: (cases, failures).
fn junit_counts(path: &Path) -> (usize, Vec<String>) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, junitparser\n\
             x = junitparser.JUnitXml.fromfile(sys.argv[1])\n\
             cases = [c for s in x for c in s]\n\
             print(len(cases))\n\
             for c in cases:\n\
             \x20   for r in c.result:\n\
             \x20       if isinstance(r, junitparser.Failure): print(c.classname + ' ' + c.name)\n",
            &path.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let n = lines.next().unwrap().parse().unwrap();
    (n, lines.map(str::to_string).collect())
}

#[test]
fn one_image_fails_in_isolation_and_a_second_run_changes_nothing() {
    let p = project();
    // A broken layer under web's own; web-copy stacks the same layers: whichever of the
    // two reaches the broken layer first fails, the other is skipped naming it.
    p.write(
        "recipes/broken/scripts/fail.sh",
        "#!/bin/sh\necho 'the layer is broken' >&2\nexit 7\n",
    );
    p.write(
        "recipes/broken/layer.toml",
        "[[scripts]]\npath = \"fail.sh\"\n",
    );
    p.edit(
        "images/web.toml",
        "\"hardening\", \"web\"",
        "\"hardening\", \"broken\", \"web\"",
    );
    let web = p.read("images/web.toml");
    p.write("images/web-copy.toml", &web);

    let r = p.run(&["nightly"]);
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let rep = report(&p);
    assert_eq!(rep["exit_code"], 1);
    let base = image(&rep, "base");
    assert_eq!(base["status"], "published", "{base}");
    assert!(base["version"].as_str().unwrap().len() > 8);
    let web = image(&rep, "web");
    let copy = image(&rep, "web-copy");
    // Whichever of the two reached the shared layer first failed; the other is skipped
    // naming it.
    let (failed, skipped) = if web["status"] == "failed" {
        (web, copy)
    } else {
        (copy, web)
    };
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["failed_stage"], "build");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("layer broken: script fail.sh failed (exit code 7)"),
        "{failed}"
    );
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    assert!(
        skipped["error"]
            .as_str()
            .unwrap()
            .contains("layer broken failed while building image"),
        "{skipped}"
    );
    for s in ["verify", "publish", "rollout"] {
        let st = failed["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["stage"] == s)
            .unwrap();
        assert_eq!(st["status"], "skipped");
    }
    // base really was booted and published, and its host group was told.
    let bs = base["stages"].as_array().unwrap();
    assert!(bs.iter().all(|s| s["status"] == "passed"), "{base}");
    assert!(base["boot_secs"].as_f64().unwrap() > 1.0);
    assert_eq!(base["rollout_events"], 1);
    let tf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("tf/bastion.auto.tfvars.json")).unwrap())
            .unwrap();
    assert_eq!(tf["image_version"], base["version"]);
    let list = p.run(&["list", "base", "--json"]).expect(0).json();
    assert!(
        list.to_string().contains(base["version"].as_str().unwrap()),
        "{list}"
    );

    // The report names the failure and its stage; JUnit has exactly one failure.
    let dir = report_dir(&p);
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("build") && md.contains("broken"), "{md}");
    let (cases, failures) = junit_counts(&dir.join("junit.xml"));
    assert_eq!(cases, 3 * 4, "one case per image x stage");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].ends_with(" build"), "{failures:?}");
    for f in ["index.html", "goldsmith.prom", "summary.md", "report.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }

    // Second night: nothing changed for base. Nothing rebuilt, published or triggered.
    let events_before = p.run(&["rollout", "history", "--json"]).expect(0).json();
    let t = Instant::now();
    let r = p.run(&["nightly", "base"]).expect(0);
    let took = t.elapsed();
    eprintln!("no-op nightly of base took {took:?}");
    let rep2 = report(&p);
    let base2 = image(&rep2, "base");
    assert_eq!(base2["status"], "unchanged", "{base2}\n{}", r.stderr);
    assert_eq!(base2["version"], base["version"]);
    assert_eq!(base2["layers_rebuilt"], serde_json::json!([]));
    assert_eq!(base2["rollout_events"], 0);
    assert!(!r.stderr.contains(": building"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("booting"),
        "the same verified build is not booted again: {}",
        r.stderr
    );
    let events_after = p.run(&["rollout", "history", "--json"]).expect(0).json();
    assert_eq!(events_before, events_after, "no new rollout event");
    let versions = p.run(&["list", "base", "--json"]).expect(0).json();
    assert_eq!(versions, list, "no new version");
}

#[test]
fn sigterm_during_a_nightly_leaves_no_process_and_a_consistent_store() {
    let p = project();
    let marker = p.root().display().to_string();
    let mut child = p
        .cmd()
        .args(["nightly", "base"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the VM (or, on a cold cache, mmdebstrap) of this project runs.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let busy = processes_matching("qemu-system")
            .into_iter()
            .chain(processes_matching("mmdebstrap"))
            .any(|(_, c)| c.contains(&marker) || c.contains("mmdebstrap"));
        if busy {
            break;
        }
        assert!(Instant::now() < deadline, "no VM started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "nightly ended before it booted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<_> = processes_matching("qemu-system")
        .into_iter()
        .filter(|(_, c)| c.contains(&marker))
        .collect();
    assert!(left.is_empty(), "qemu left behind: {left:?}");
    let left: Vec<_> = processes_matching("mmdebstrap")
        .into_iter()
        .filter(|(_, c)| !c.contains("cargo"))
        .collect();
    assert!(left.is_empty(), "mmdebstrap left behind: {left:?}");
    // Nothing half-published, no temp build folder left.
    let list = p.run(&["list", "--json"]).expect(0).json();
    assert!(
        !list.to_string().contains("\"version\""),
        "nothing was published: {list}"
    );
    let root = p.path("target/goldsmith/base");
    if root.exists() {
        let tmp: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "temp build folders left: {tmp:?}");
    }
}

/// Two workers with their own (empty) local caches, one S3 endpoint for the store and
/// the shared layer cache, each building one unit of the same plan: the layer both units
/// share is built once.
#[test]
fn two_workers_share_the_base_layer_through_s3() {
    let moto = Moto::start();
    moto.create_bucket("layers");
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let make = |cache: &str| {
        let p = Project::example();
        // A small base (the essential set only) keeps this test quick; the images are
        // container-only, so they need no kernel.
        p.write(
            "recipes/mini/layer.toml",
            &format!("description = \"{nonce}\"\n[bootstrap]\ndistro = \"debian\"\nsuite = \"bookworm\"\nvariant = \"essential\"\n"),
        );
        for (name, file) in [("a", "one"), ("b", "two")] {
            p.write(
                &format!("recipes/top-{name}/files/f"),
                &format!("{file} {nonce}\n"),
            );
            p.write(
                &format!("recipes/top-{name}/layer.toml"),
                &format!("[[files]]\nsource = \"f\"\ndest = \"/etc/{file}\"\n"),
            );
            p.write(
                &format!("images/{name}.toml"),
                &format!("layers = [\"mini\", \"top-{name}\"]\nformats = [\"oci\"]\n"),
            );
        }
        let cfg = p.read("goldsmith.toml").replace(
            &support::shared_cache().display().to_string(),
            &p.path(cache).display().to_string(),
        );
        p.write("goldsmith.toml", &cfg);
        p.config_append(&format!(
            "[cache.s3]\nbucket = \"layers\"\nprefix = \"cache\"\nendpoint = \"{}\"\n",
            moto.endpoint()
        ));
        p
    };
    let w1 = make("cache-1");
    let w2 = make("cache-2");
    let units = w1.run(&["plan", "--matrix"]).expect(0).json();
    let units: Vec<String> = units["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap().to_string())
        .filter(|u| u == "image:a" || u == "image:b")
        .collect();
    assert_eq!(units, ["image:a", "image:b"]);
    let spawn = |p: &Project, unit: &str| {
        s3_cmd(p)
            .args(["build", "--unit", unit, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn(&w1, &units[0]);
    let b = spawn(&w2, &units[1]);
    let ra = Run::from(a.wait_with_output().unwrap()).expect(0);
    let rb = Run::from(b.wait_with_output().unwrap()).expect(0);
    let built = |r: &Run| {
        r.stderr
            .lines()
            .any(|l| l.contains("layer mini") && l.contains(": building"))
    };
    let fetched = |r: &Run| r.stderr.contains("fetched from the shared cache");
    assert!(
        built(&ra) ^ built(&rb),
        "exactly one worker bootstraps the shared layer\n--- a\n{}\n--- b\n{}",
        ra.stderr,
        rb.stderr
    );
    assert!(
        fetched(&ra) || fetched(&rb),
        "the other one fetched it\n--- a\n{}\n--- b\n{}",
        ra.stderr,
        rb.stderr
    );
    // Both images carry the very same base layer.
    let base = |r: &Run| r.json()[0]["record"]["layers"][0]["output_digest"].clone();
    assert_eq!(base(&ra), base(&rb));
}
