//! Upstream-aware rebuilds against a real local apt repository (packages made with
//! dpkg-deb, indexes with apt-ftparchive, served as a file: URL): a new package version
//! rebuilds exactly the layer that gets it and those above; nothing new rebuilds nothing;
//! a lower layer rebuilt to identical bytes does not rebuild the layers above; `--locked`
//! keeps a version while the archive has it; an unreachable repository fails with its URL.

mod support;

use std::path::Path;
use std::process::Command;

use support::{Project, Run};

/// A flat apt repository in a folder.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::Builder::new()
            .prefix("gs-repo-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        Repo { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Repo {
    /// goldsmith keeps an apt state per set of sources in the shared cache (120 MB of
    /// Debian's lists with this repository's); nothing will use this one again.
    fn drop(&mut self) {
        let states = support::shared_cache().join("apt/state");
        let needle = self.path().display().to_string();
        for e in std::fs::read_dir(states).into_iter().flatten().flatten() {
            let sources = std::fs::read_to_string(e.path().join("etc/sources.list"));
            if sources.is_ok_and(|s| s.contains(&needle)) {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(e.path().with_extension("lock"));
            }
        }
    }
}

impl Repo {
    /// Build `gs-demo_<version>_all.deb` (it installs /usr/share/gs-demo/version).
    fn add(&self, version: &str) {
        let src = tempfile::tempdir().unwrap();
        let root = src.path().join("pkg");
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/gs-demo")).unwrap();
        std::fs::write(
            root.join("usr/share/gs-demo/version"),
            format!("{version}\n"),
        )
        .unwrap();
        std::fs::write(
            root.join("DEBIAN/control"),
            format!(
                "Package: gs-demo\nVersion: {version}\nArchitecture: all\nMaintainer: goldsmith tests <tests@example.invalid>\nDescription: goldsmith upstream test package\n"
            ),
        )
        .unwrap();
        let deb = self.path().join(format!("gs-demo_{version}_all.deb"));
        run_ok(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "-Zgzip", "--build"])
                .arg(&root)
                .arg(&deb),
        );
        self.index();
    }

    fn remove(&self, version: &str) {
        std::fs::remove_file(self.path().join(format!("gs-demo_{version}_all.deb"))).unwrap();
        self.index();
    }

    /// Packages + Release for a flat repository.
    fn index(&self) {
        let out = Command::new("apt-ftparchive")
            .args(["packages", "."])
            .current_dir(self.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(self.path().join("Packages"), &out.stdout).unwrap();
        let out = Command::new("apt-ftparchive")
            .args(["release", "."])
            .current_dir(self.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(self.path().join("Release"), &out.stdout).unwrap();
        // apt decides "unchanged" by the Release file's modification time as well.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }

    fn uri(&self) -> String {
        format!("file://{}", self.path().display())
    }
}

fn run_ok(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Image `u`: debian-base + `demo` (installs gs-demo from the repo) + `above` (a file).
fn project(repo: &Repo) -> Project {
    let p = Project::example();
    p.write(
        "recipes/demo/layer.toml",
        &format!(
            "[[repositories]]\nuri = \"{}\"\nsuite = \"./\"\ntrusted = true\n\n[packages]\ninstall = [\"gs-demo\"]\n",
            repo.uri()
        ),
    );
    let nonce = format!("{:?}", std::time::SystemTime::now());
    p.write("recipes/above/files/note", &format!("above {nonce}\n"));
    p.write(
        "recipes/above/layer.toml",
        "[[files]]\nsource = \"note\"\ndest = \"/etc/above-note\"\n",
    );
    p.write(
        "images/u.toml",
        "layers = [\"debian-base\", \"demo\", \"above\"]\nformats = [\"raw\"]\n",
    );
    p
}

fn build(p: &Project, extra: &[&str]) -> (Run, serde_json::Value) {
    let mut args = vec!["build", "u", "--json"];
    args.extend_from_slice(extra);
    let r = p.run(&args).expect(0);
    let v = r.json()[0].clone();
    (r, v)
}

/// What this run did per layer (an up-to-date build's record is the earlier build's).
fn rebuilt(v: &serde_json::Value) -> Vec<bool> {
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["rebuilt"].as_bool().unwrap())
        .collect()
}

fn installed(v: &serde_json::Value, name: &str) -> Option<String> {
    v["record"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p["version"].as_str().unwrap().to_string())
}

#[test]
fn a_new_upstream_version_rebuilds_exactly_the_layers_that_get_it() {
    let repo = Repo::new();
    repo.add("1.0");
    let p = project(&repo);

    let (_, first) = build(&p, &[]);
    assert_eq!(
        rebuilt(&first),
        [false, true, true],
        "debian-base cached, demo and above new"
    );
    assert_eq!(installed(&first, "gs-demo").as_deref(), Some("1.0"));

    // Nothing new upstream: nothing is rebuilt.
    let (r, second) = build(&p, &[]);
    assert_eq!(second["up_to_date"], true, "{}", r.stderr);
    assert!(!r.stderr.contains(": building"), "{}", r.stderr);
    // ... and apt is not even asked: the same lists and requests give the remembered sets.
    let debug = |args: &[&str]| {
        Run::from(
            p.cmd()
                .env("GOLDSMITH_LOG", "goldsmith=debug")
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let again = debug(&["plan", "u"]).expect(0);
    assert_eq!(
        again.stderr.matches("from the resolution memo").count(),
        2,
        "debian-base and demo (the top layer installs nothing): {}",
        again.stderr
    );
    assert!(!again.stderr.contains(" -s -q install"), "{}", again.stderr);

    // gs-demo 1.1 appears upstream: demo's lists (the archive's plus the local
    // repository's) changed, so demo is resolved again; debian-base's did not.
    repo.add("1.1");
    let plan = debug(&["plan", "u"]).expect(0);
    assert!(
        !plan.stderr.contains("resolution memo layer=demo")
            && plan.stderr.contains("resolution memo layer=debian-base")
            && plan.stderr.contains(" -s -q install"),
        "{}",
        plan.stderr
    );
    assert!(plan.stdout.contains("gs-demo 1.0 → 1.1"), "{}", plan.stdout);
    let pj = p.run(&["plan", "u", "--json"]).expect(0).json();
    let layers = pj["images"][0]["layers"].as_array().unwrap();
    assert_eq!(
        layers[0]["cached"], true,
        "debian-base is untouched by gs-demo"
    );
    assert_eq!(layers[1]["cached"], false);
    assert_eq!(layers[2]["cached"], false);
    let moved = &layers[1]["changes"]["packages"];
    assert_eq!(
        moved,
        &serde_json::json!([{"name": "gs-demo", "old": "1.0", "new": "1.1"}])
    );

    let (_, third) = build(&p, &[]);
    assert_eq!(rebuilt(&third), [false, true, true]);
    assert_eq!(installed(&third, "gs-demo").as_deref(), Some("1.1"));
    let changes = &third["record"]["changes"];
    assert!(
        changes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["layer"] == "demo"
                && c["packages"]
                    == serde_json::json!([{"name": "gs-demo", "old": "1.0", "new": "1.1"}])),
        "build.json names the package move: {changes}"
    );
}

#[test]
fn locked_builds_keep_a_version_while_the_archive_has_it() {
    let repo = Repo::new();
    repo.add("1.0");
    let p = project(&repo);
    let r = p.run(&["lock", "u"]).expect(0);
    assert!(r.stdout.contains("u.lock"), "{}", r.stdout);
    let lock = p.read("images/u.lock");
    assert!(lock.contains("gs-demo 1.0 all"), "{lock}");

    repo.add("1.1");
    let (_, v) = build(&p, &["--locked"]);
    assert_eq!(
        installed(&v, "gs-demo").as_deref(),
        Some("1.0"),
        "the lock wins over the newer 1.1"
    );
    let (_, unlocked) = build(&p, &[]);
    assert_eq!(installed(&unlocked, "gs-demo").as_deref(), Some("1.1"));

    repo.remove("1.0");
    let r = p.run(&["build", "u", "--locked"]).expect(1);
    assert!(
        r.stderr.contains("gs-demo 1.0") && r.stderr.contains("no longer in the archive"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("layer demo"), "{}", r.stderr);
}

#[test]
fn identical_output_of_a_rebuilt_lower_layer_does_not_rebuild_the_layers_above() {
    let p = Project::example();
    let nonce = format!("{:?}", std::time::SystemTime::now());
    p.write(
        "recipes/mid/scripts/setup.sh",
        &format!(
            "#!/bin/sh\n# setup, version {nonce}\nset -e\necho configured > /etc/mid-configured\n"
        ),
    );
    p.write(
        "recipes/mid/layer.toml",
        "[[scripts]]\npath = \"setup.sh\"\n",
    );
    p.write("recipes/top/files/note", &format!("top {nonce}\n"));
    p.write(
        "recipes/top/layer.toml",
        "[[files]]\nsource = \"note\"\ndest = \"/etc/top-note\"\n",
    );
    p.write(
        "images/e.toml",
        "layers = [\"debian-base\", \"mid\", \"top\"]\nformats = [\"raw\"]\n",
    );
    let first = p.run(&["build", "e", "--json"]).expect(0).json();
    assert_eq!(first[0]["layers"][2]["rebuilt"], true);

    // Reword a comment: the script's digest changes, what it writes does not.
    p.edit(
        "recipes/mid/scripts/setup.sh",
        "# setup, version",
        "# Set the layer up; version",
    );
    let r = p.run(&["build", "e", "--json"]).expect(0);
    let second = r.json();
    let layers = second[0]["layers"].as_array().unwrap();
    assert_eq!(layers[1]["rebuilt"], true, "mid ran again");
    assert_ne!(layers[1]["digest"], first[0]["layers"][1]["digest"]);
    assert_eq!(
        layers[1]["output_digest"],
        first[0]["layers"][1]["output_digest"]
    );
    assert_eq!(
        layers[2]["rebuilt"], false,
        "top was not rebuilt: {}",
        r.stderr
    );
    assert!(r.stderr.contains("output identical"), "{}", r.stderr);
    let top_line = r
        .stderr
        .lines()
        .find(|l| l.contains("layer top "))
        .unwrap_or_default();
    assert!(top_line.contains(": cached"), "stage log: {}", r.stderr);
}

#[test]
fn an_unreachable_repository_fails_with_its_url() {
    let p = Project::example();
    let url = "http://127.0.0.1:9/debian-nowhere";
    p.write(
        "recipes/remote/layer.toml",
        &format!("[[repositories]]\nuri = \"{url}\"\nsuite = \"stable\"\ncomponents = [\"main\"]\n\n[packages]\ninstall = [\"gs-demo\"]\n"),
    );
    p.write(
        "images/r.toml",
        "layers = [\"debian-base\", \"remote\"]\nformats = [\"raw\"]\n",
    );
    let r = p.run(&["plan", "r"]).expect(1);
    assert!(r.stderr.contains(url), "{}", r.stderr);
    assert!(r.stderr.contains("layer remote"), "{}", r.stderr);
    assert!(
        r.stderr.contains("--offline"),
        "offers --offline: {}",
        r.stderr
    );
    let r = p.run(&["build", "r"]).expect(1);
    assert!(r.stderr.contains(url), "{}", r.stderr);
}

/// apt runs without its own locks (`Debug::NoLocking`), so goldsmith's must
/// keep concurrent runs on one cache (parallel CI jobs, two workers) from refreshing the
/// lists one of them is reading, and two runs that meet the same apt states in opposite
/// orders must not wait for each other for ever: every run resolves the same digests.
#[test]
fn concurrent_runs_on_one_cache_resolve_alike() {
    let repo = Repo::new();
    repo.add("1.0");
    let repo2 = Repo::new();
    repo2.add("2.0");
    let p = project(&repo);
    p.write(
        "recipes/demo2/layer.toml",
        &format!(
            "[[repositories]]\nuri = \"{}\"\nsuite = \"./\"\ntrusted = true\n\n[packages]\ninstall = [\"gs-demo\"]\n",
            repo2.uri()
        ),
    );
    p.write(
        "images/u2.toml",
        "layers = [\"debian-base\", \"demo2\"]\nformats = [\"raw\"]\n",
    );
    let orders = [["u", "u2"], ["u2", "u"], ["u", "u2"], ["u2", "u"]];
    let mut children: Vec<_> = orders
        .iter()
        .map(|o| {
            p.cmd()
                .args(["plan", "--json", o[0], o[1]])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // A deadlock would hang: fail instead (generous, the machine may be busy).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        if std::time::Instant::now() > deadline {
            for c in &mut children {
                let _ = c.kill();
            }
            panic!("concurrent plans did not finish: waiting for each other's locks?");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut seen = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "a concurrent plan failed: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut by_name: Vec<(String, serde_json::Value)> = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["name"].as_str().unwrap().to_string(), i["layers"].clone()))
            .collect();
        by_name.sort_by(|a, b| a.0.cmp(&b.0));
        seen.push(by_name);
    }
    assert!(seen.iter().all(|l| *l == seen[0]), "{seen:?}");
    assert_eq!(seen[0].len(), 2);
    assert_eq!(seen[0][0].1.as_array().map(|a| a.len()), Some(3));
}
