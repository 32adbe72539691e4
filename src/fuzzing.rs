//! Entry points for fuzzing the parsers (`fuzz/`, cargo-fuzz) and for the bounded
//! no-panic property test that runs in the normal suite (`tests/fuzz_parsers.rs`).
//!
//! Every entry point feeds arbitrary bytes through the same path a user's file takes: the
//! bytes are written into a small scratch project and loaded with the real loaders, so
//! reading, TOML parsing, validation, cross-references and template rendering are all
//! covered. Errors are expected and ignored; a panic is the bug being looked for.

use crate::config::Config;
use crate::{recipe, rollout};
use std::path::{Path, PathBuf};

const CONFIG: &str = "recipes_dir = \"recipes\"\nimages_dir = \"images\"\ninventory = \"inventory.toml\"\n\n[sinks.tf.terraform]\ndir = \"tf\"\n";
const BASE: &str = "[bootstrap]\ndistro = \"debian\"\nsuite = \"bookworm\"\nvariant = \"minbase\"\n\n[packages]\ninstall = [\"systemd\"]\n\n[variables]\nowner = \"ops\"\n";
const LAYER: &str = "[[files]]\nsource = \"motd.tmpl\"\ndest = \"/etc/motd\"\ntemplate = true\n";
const IMAGE: &str =
    "layers = [\"base\", \"fz\"]\nformats = [\"raw\"]\n[publish]\nchannel = \"nightly\"\n";
const INVENTORY: &str =
    "[groups.g]\nimage = \"img\"\nchannel = \"nightly\"\nsinks = [\"tf\"]\ncount = 2\n";

/// A scratch project that loads cleanly; each entry point replaces one of its files.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("goldsmith-fuzz-")
            .tempdir()
            .expect("a scratch folder for fuzzing");
        let s = Scratch { dir };
        s.put("goldsmith.toml", CONFIG.as_bytes());
        s.put("recipes/base/layer.toml", BASE.as_bytes());
        s.put("recipes/fz/layer.toml", LAYER.as_bytes());
        s.put("recipes/fz/files/motd.tmpl", b"owned by {{owner}}\n");
        s.put("images/img.toml", IMAGE.as_bytes());
        s.put("inventory.toml", INVENTORY.as_bytes());
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn put(&self, rel: &str, bytes: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("inside the scratch folder"))
            .expect("scratch folder writable");
        std::fs::write(p, bytes).expect("scratch folder writable");
    }

    /// Load everything the way `goldsmith validate` does.
    fn load_all(&self) {
        let Ok(config) = Config::load(&self.path("goldsmith.toml"), true) else {
            return;
        };
        let _ = recipe::load(&config, &[]);
        let _ = rollout::inventory::load(&config);
    }
}

thread_local! {
    // One scratch project per thread: the property test runs its cases on several threads.
    static SCRATCH: Scratch = Scratch::new();
}

/// Replace one file of the scratch project with `data`, load, and put the original back.
fn with_file(rel: &str, original: &str, data: &[u8]) {
    SCRATCH.with(|s| {
        s.put(rel, data);
        s.load_all();
        s.put(rel, original.as_bytes());
    });
}

/// Whether the untouched scratch project loads without an error (else the fuzzers would
/// stop at that error and reach nothing behind it).
pub fn baseline_loads() -> bool {
    SCRATCH.with(|s| {
        let Ok(config) = Config::load(&s.path("goldsmith.toml"), true) else {
            return false;
        };
        recipe::load(&config, &[]).is_ok()
            && matches!(rollout::inventory::load(&config), Ok(Some(_)))
    })
}

/// `goldsmith.toml` from arbitrary bytes.
pub fn config(data: &[u8]) {
    with_file("goldsmith.toml", CONFIG, data);
}

/// A layer's `layer.toml` from arbitrary bytes (stacked on a valid base layer).
pub fn layer(data: &[u8]) {
    with_file("recipes/fz/layer.toml", LAYER, data);
}

/// An image definition from arbitrary bytes.
pub fn image(data: &[u8]) {
    with_file("images/img.toml", IMAGE, data);
}

/// `inventory.toml` from arbitrary bytes.
pub fn inventory(data: &[u8]) {
    with_file("inventory.toml", INVENTORY, data);
}

/// A template and its variables: the bytes before the first NUL are the template, the
/// rest a TOML table of variables (a fixed table when it does not parse).
pub fn template(data: &[u8]) {
    let (text, vars) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let vars: serde_json::Value = std::str::from_utf8(vars)
        .ok()
        .and_then(|v| toml::from_str::<toml::Table>(v).ok())
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or_else(|| serde_json::json!({"name": "web", "n": 3, "list": [1, 2]}));
    let _ = recipe::template::render(&text, &vars);
}

/// Where a fuzz target's seed inputs are: the bundled example's own files.
pub fn seeds(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for rel in ["goldsmith.toml", "inventory.toml"] {
        if let Ok(b) = std::fs::read(repo.join(rel)) {
            out.push((rel.to_string(), b));
        }
    }
    for dir in ["recipes", "images"] {
        for e in walkdir::WalkDir::new(repo.join(dir)).into_iter().flatten() {
            if e.file_type().is_file() {
                if let Ok(b) = std::fs::read(e.path()) {
                    let rel = e.path().strip_prefix(repo).unwrap_or(e.path());
                    out.push((rel.display().to_string(), b));
                }
            }
        }
    }
    out
}
