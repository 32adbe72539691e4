//! Shared test helpers: a copy of the bundled example project in a temp folder, sharing
//! one layer cache between all tests (layers are built once per machine, not per test),
//! and a way to run the real `goldsmith` binary against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The goldsmith binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_goldsmith"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The layer cache every test shares.
pub fn shared_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("goldsmith-cache")
}

/// The shared cache's apt states for the archive (not those of tests' local
/// repositories).
pub fn archive_apt_states() -> Vec<PathBuf> {
    let states = shared_cache().join("apt/state");
    std::fs::read_dir(&states)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read_to_string(p.join("etc/sources.list")).is_ok_and(|s| !s.contains("file:"))
        })
        .collect()
}

/// Copy [`archive_apt_states`] into the cache at `to`, so a private cache resolves
/// without downloading.
pub fn copy_archive_apt_states(to: &Path) {
    for s in archive_apt_states() {
        copy_dir(&s, &to.join("apt/state").join(s.file_name().unwrap()));
    }
}

/// A project in a temp folder.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// The bundled example (recipes, images, goldsmith.toml), with the shared cache and a
    /// private build directory and store.
    pub fn example() -> Project {
        prune_old_projects();
        let dir = tempfile::Builder::new()
            .prefix("gs-test-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        for sub in ["recipes", "images"] {
            copy_dir(&repo().join(sub), &dir.path().join(sub));
        }
        let p = Project { dir };
        let mut cfg: toml::Table =
            toml::from_str(&std::fs::read_to_string(repo().join("goldsmith.toml")).unwrap())
                .unwrap();
        let mut cache = toml::Table::new();
        cache.insert("dir".into(), shared_cache().display().to_string().into());
        cfg.insert("cache".into(), cache.into());
        // The inventory and sinks of the example point into the repo; tests that need
        // them set their own.
        cfg.remove("inventory");
        cfg.remove("sinks");
        // Tests that publish make their own key (tests/support/publish.rs).
        cfg.remove("signing");
        p.write("goldsmith.toml", &toml::to_string(&cfg).unwrap());
        p
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    /// Replace `from` by `to` in a file (the pattern must be there).
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let s = self.read(rel);
        assert!(s.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &s.replacen(from, to, 1));
    }

    /// Add top-level keys to goldsmith.toml (before its first table).
    pub fn config_prepend(&self, text: &str) {
        let s = self.read("goldsmith.toml");
        self.write("goldsmith.toml", &format!("{text}\n{s}"));
    }

    /// Add tables to goldsmith.toml.
    pub fn config_append(&self, text: &str) {
        let s = self.read("goldsmith.toml");
        self.write("goldsmith.toml", &format!("{s}\n{text}\n"));
    }

    /// A `goldsmith` command running in this project.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.current_dir(self.root());
        c.env_remove("SOURCE_DATE_EPOCH");
        c.env("GOLDSMITH_LOG", "goldsmith=info");
        c
    }

    /// Run goldsmith with `args`.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd().args(args).output().unwrap();
        Run::from(out)
    }
}

/// A finished goldsmith run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panic with both streams unless the exit code is `code`.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code {} (wanted {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(from).unwrap();
        let dest = to.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Processes whose command line contains `needle` (from /proc, not from exit codes).
pub fn processes_matching(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Remove test projects an earlier run left behind (tests sharing a project through a
/// static never drop it). Only folders older than two hours go, so a concurrent run's
/// projects stay.
fn prune_old_projects() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(rd) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
            return;
        };
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 7200);
            if old && e.file_name().to_string_lossy().starts_with("gs-test-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

/// A failed build: exit code 1, the messages wanted, no build left in the image's build
/// root and no work tree of the image in `cache`.
pub fn assert_failed_cleanly(p: &Project, cache: &Path, image: &str, r: &Run, wants: &[&str]) {
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    for w in wants {
        assert!(r.stderr.contains(w), "missing {w:?} in:\n{}", r.stderr);
    }
    let root = p.path("target/goldsmith").join(image);
    if root.exists() {
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.is_empty(),
            "build root not empty after a failure: {left:?}"
        );
    }
    let work = cache.join("work");
    if work.exists() {
        let mine: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{image}-"))
            })
            .map(|e| e.file_name())
            .collect();
        assert!(mine.is_empty(), "work trees left behind: {mine:?}");
    }
}
