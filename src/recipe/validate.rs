//! Semantic checks of layers and images, beyond what the TOML types enforce.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use super::check::CheckDef;
use super::image::{parse_size_mib, ImageDef};
use super::source::{ConfigErrors, SourceFile};
use super::Layer;
use crate::config::Config;

const DISTROS: &[&str] = &["debian", "ubuntu"];
const VARIANTS: &[&str] = &[
    "minbase",
    "essential",
    "apt",
    "required",
    "important",
    "standard",
];

/// Checks that need only the layer itself.
pub(super) fn layer(layer: &Layer) -> ConfigErrors {
    let mut errs = ConfigErrors::default();
    let src = &layer.source;
    let def = &layer.def;
    if let Some(b) = &def.bootstrap {
        let b = b.get_ref();
        if !DISTROS.contains(&b.distro.get_ref().as_str()) {
            errs.push(src.error_at(
                b.distro.span(),
                format!(
                    "bootstrap.distro: '{}' is not supported (expected one of {})",
                    b.distro.get_ref(),
                    DISTROS.join(", ")
                ),
            ));
        }
        if !VARIANTS.contains(&b.variant.get_ref().as_str()) {
            errs.push(src.error_at(
                b.variant.span(),
                format!(
                    "bootstrap.variant: '{}' is not an mmdebstrap variant (expected one of {})",
                    b.variant.get_ref(),
                    VARIANTS.join(", ")
                ),
            ));
        }
        if b.architecture.get_ref() != "amd64" {
            errs.push(src.error_at(
                b.architecture.span(),
                format!(
                    "bootstrap.architecture: '{}' is not supported; images are booted as x86-64 (amd64)",
                    b.architecture.get_ref()
                ),
            ));
        }
    }
    for r in &def.repositories {
        let u = r.uri.get_ref();
        if !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with("file:/")) {
            errs.push(src.error_at(
                r.uri.span(),
                format!("repositories.uri: '{u}' must start with http://, https:// or file:/"),
            ));
        }
    }
    for p in def
        .packages
        .install
        .iter()
        .chain(def.packages.remove.iter())
    {
        if !valid_package(p.get_ref()) {
            errs.push(src.error_at(
                p.span(),
                format!(
                    "packages: '{}' is not a valid package name (NAME or NAME=VERSION)",
                    p.get_ref()
                ),
            ));
        }
    }
    for (i, f) in def.files.iter().enumerate() {
        if let Err(m) = resolve_source(&layer.dir, "files", f.source.get_ref()) {
            errs.push(src.error_at(f.source.span(), format!("files[{i}].source: {m}")));
        }
        if let Err(m) = absolute_dest(f.dest.get_ref()) {
            errs.push(src.error_at(f.dest.span(), format!("files[{i}].dest: {m}")));
        }
        if let Some(mode) = &f.mode {
            if let Err(m) = parse_mode(mode.get_ref()) {
                errs.push(src.error_at(mode.span(), format!("files[{i}].mode: {m}")));
            }
        }
    }
    for (i, s) in def.scripts.iter().enumerate() {
        match (&s.path, &s.run) {
            (Some(p), None) => {
                if let Err(m) = resolve_source(&layer.dir, "scripts", p.get_ref()) {
                    errs.push(src.error_at(p.span(), format!("scripts[{i}].path: {m}")));
                }
            }
            (None, Some(_)) => {}
            (Some(p), Some(_)) => errs.push(src.error_at(
                p.span(),
                format!("scripts[{i}]: set either 'path' or 'run', not both"),
            )),
            (None, None) => errs.push(src.error(format!(
                "scripts[{i}]: set 'path' (a file in scripts/) or 'run' (inline shell)"
            ))),
        }
        if s.timeout_secs == 0 {
            errs.push(src.error(format!("scripts[{i}].timeout_secs: must be at least 1")));
        }
    }
    for (i, s) in def.secrets.iter().enumerate() {
        if s.env.is_some() == s.file.is_some() {
            errs.push(src.error(format!(
                "secrets[{i}] '{}': set exactly one of 'env' or 'file'",
                s.name
            )));
        }
        // The name becomes /run/goldsmith/secrets/NAME inside the sandbox.
        let name_ok = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name != "."
            && s.name != ".."
            && s.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !name_ok {
            errs.push(src.error(format!(
                "secrets[{i}].name: '{}' must be a plain file name (letters, digits, '.', '_', '-')",
                s.name
            )));
        }
        if let Some(v) = &s.env {
            if !crate::config::is_env_name(v) {
                // Maybe the secret itself was pasted here: never repeat it.
                crate::exec::register_secret(v);
                errs.push(src.error(format!(
                    "secrets[{i}] '{}': env must name an environment variable (capital \
                     letters, digits and '_'), not hold the secret itself",
                    s.name
                )));
            }
        }
    }
    errs.extend(checks(src, "checks", &def.checks));
    errs
}

/// Checks of an image definition; returns the resolved layer stack.
pub(super) fn image<'a>(
    config: &Config,
    layers: &'a BTreeMap<String, Layer>,
    src: &SourceFile,
    def: &ImageDef,
) -> Result<Vec<&'a Layer>, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let mut stack = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    if def.layers.is_empty() {
        errs.push(src.error("layers: an image needs at least one layer (the base layer)"));
    }
    for (i, entry) in def.layers.iter().enumerate() {
        let name = entry.get_ref().as_str();
        if let Some(first) = seen.get(name) {
            let (line, _) = super::source::line_col_of(&src.text, *first);
            errs.push(src.error_at(
                entry.span(),
                format!("layers[{i}]: layer '{name}' is listed twice (first on line {line})"),
            ));
            continue;
        }
        seen.insert(name, entry.span().start);
        let Some(layer) = layers.get(name) else {
            errs.push(src.error_at(
                entry.span(),
                format!(
                    "layers[{i}]: layer '{name}' not found (no {}/{name}/layer.toml); known layers: {}",
                    config.def.recipes_dir,
                    layers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
            continue;
        };
        if i == 0 && !layer.is_base() {
            errs.push(src.error_at(
                entry.span(),
                format!(
                    "layers[0]: layer '{name}' has no [bootstrap] table, so it cannot be the base layer; the first layer must bootstrap the tree"
                ),
            ));
        }
        if i > 0 && layer.is_base() {
            let b = layer.def.bootstrap.as_ref().expect("is_base");
            let (line, _) = super::source::line_col_of(&layer.source.text, b.span().start);
            errs.push(src.error_at(
                entry.span(),
                format!(
                    "layers[{i}]: layer '{name}' bootstraps a tree ({}:{line}) but is not first; only the base layer may have [bootstrap]",
                    layer.source.display.display()
                ),
            ));
        }
        stack.push(layer);
    }
    if let Err(m) = parse_size_mib(def.disk.size.get_ref()) {
        errs.push(src.error_at(def.disk.size.span(), format!("disk.size: {m}")));
    }
    if def.disk.boot.get_ref() != "uefi" {
        errs.push(src.error_at(
            def.disk.boot.span(),
            format!(
                "disk.boot: '{}' is not supported; images boot with UEFI (systemd-boot): use \"uefi\"",
                def.disk.boot.get_ref()
            ),
        ));
    }
    let qc = &def.disk.qcow2_compression;
    if !["zstd", "zlib"].contains(&qc.get_ref().as_str()) {
        errs.push(src.error_at(
            qc.span(),
            format!(
                "disk.qcow2_compression: '{}' is not one of zstd, zlib",
                qc.get_ref()
            ),
        ));
    }
    if def.disk.esp_mib < 64 {
        errs.push(src.error("disk.esp_mib: the EFI system partition needs at least 64 MiB"));
    }
    if def.disk.esp_mib > 65536 {
        errs.push(src.error("disk.esp_mib: at most 65536 (64 GiB)"));
    }
    // Test VMs get bounded memory and CPUs: the host's caps are in goldsmith.toml.
    let host = &config.def.verify;
    if def.vm.memory_mib < 256 || def.vm.memory_mib > host.max_memory_mib {
        errs.push(src.error(format!(
            "vm.memory_mib: {} is outside 256..={} (verify.max_memory_mib in goldsmith.toml)",
            def.vm.memory_mib, host.max_memory_mib
        )));
    }
    if def.vm.cpus == 0 || def.vm.cpus > host.max_cpus {
        errs.push(src.error(format!(
            "vm.cpus: {} is outside 1..={} (verify.max_cpus in goldsmith.toml)",
            def.vm.cpus, host.max_cpus
        )));
    }
    if def.formats.is_empty() {
        errs.push(src.error("formats: list at least one output format"));
    }
    for t in &def.publish.targets {
        if let Some(target) = config.def.targets.get(t.get_ref()) {
            let has = |f: &str| def.formats.iter().any(|x| x.get_ref().as_str() == f);
            let (kind, needs) = if target.registry.is_some() {
                ("an OCI registry", "oci")
            } else {
                ("an AWS AMI", "raw")
            };
            if !has(needs) {
                errs.push(src.error_at(
                    t.span(),
                    format!(
                        "publish.targets: '{}' is {kind} target, which needs the \"{needs}\" format; add it to formats",
                        t.get_ref()
                    ),
                ));
            }
        }
        if !config.def.targets.contains_key(t.get_ref()) {
            errs.push(src.error_at(
                t.span(),
                format!(
                    "publish.targets: '{}' is not a target in goldsmith.toml (known: {})",
                    t.get_ref(),
                    if config.def.targets.is_empty() {
                        "none".to_string()
                    } else {
                        config
                            .def
                            .targets
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ));
        }
    }
    for p in &def.oci.exclude {
        if !p.starts_with('/') {
            errs.push(src.error(format!("oci.exclude: '{p}' is not an absolute path")));
        }
    }
    errs.extend(checks(src, "checks", &def.checks));
    errs.into_result(stack)
}

fn checks(src: &SourceFile, key: &str, checks: &[CheckDef]) -> ConfigErrors {
    let mut errs = ConfigErrors::default();
    let mut names: HashMap<&str, ()> = HashMap::new();
    for (i, c) in checks.iter().enumerate() {
        let kinds = c.kinds();
        if kinds.len() != 1 {
            errs.push(src.error_at(
                c.name.span(),
                format!(
                    "{key}[{i}] '{}': set exactly one of command, file, service, port, http (found {})",
                    c.name.get_ref(),
                    kinds.len()
                ),
            ));
        }
        if names.insert(c.name.get_ref(), ()).is_some() {
            errs.push(src.error_at(
                c.name.span(),
                format!(
                    "{key}[{i}]: check name '{}' is used twice",
                    c.name.get_ref()
                ),
            ));
        }
        for re in c.regexes() {
            if let Err(e) = regex::Regex::new(re.get_ref()) {
                errs.push(src.error_at(
                    re.span(),
                    format!("{key}[{i}]: invalid regex: {}", first_line(&e.to_string())),
                ));
            }
        }
        if let Some(f) = &c.file {
            if let Some(m) = &f.mode {
                if let Err(msg) = parse_mode(m.get_ref()) {
                    errs.push(src.error_at(m.span(), format!("{key}[{i}].file.mode: {msg}")));
                }
            }
            if !f.path.starts_with('/') {
                errs.push(src.error_at(
                    c.name.span(),
                    format!("{key}[{i}].file.path: '{}' is not an absolute path", f.path),
                ));
            }
        }
        if let Some(cmd) = &c.command {
            if cmd.argv.is_empty() {
                errs.push(src.error_at(
                    c.name.span(),
                    format!("{key}[{i}].command.argv: must not be empty"),
                ));
            }
        }
    }
    errs
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| s.lines().last().unwrap_or(s))
}

/// Parse an octal mode string such as "0644" or "755".
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.strip_prefix("0o").unwrap_or(s);
    if t.is_empty() || t.len() > 5 || !t.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(format!(
            "'{s}' is not an octal file mode (write it as a string, e.g. \"0644\")"
        ));
    }
    let m = u32::from_str_radix(t, 8).map_err(|e| e.to_string())?;
    if m > 0o7777 {
        return Err(format!("'{s}' is larger than 07777"));
    }
    Ok(m)
}

/// Resolve `rel` inside `layer_dir/sub`, refusing anything that leads outside the layer
/// folder: absolute paths, `..`, and symlinks whose target lies outside.
pub fn resolve_source(layer_dir: &Path, sub: &str, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.is_empty() {
        return Err("must not be empty".into());
    }
    if p.is_absolute() {
        return Err(format!(
            "'{rel}' is an absolute path; sources are relative to the layer's {sub}/ folder"
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "'{rel}' escapes the layer folder ('..' is not allowed)"
        ));
    }
    let full = layer_dir.join(sub).join(p);
    if full.symlink_metadata().is_err() {
        return Err(format!(
            "'{rel}' not found in {}",
            layer_dir.join(sub).display()
        ));
    }
    let real = full
        .canonicalize()
        .map_err(|e| format!("'{rel}': cannot resolve: {e} (a dangling symlink?)"))?;
    let root = layer_dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve the layer folder: {e}"))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "'{rel}' is a symlink that points outside the layer folder (to {})",
            real.display()
        ));
    }
    Ok(full)
}

fn absolute_dest(d: &str) -> Result<(), String> {
    let p = Path::new(d);
    if !p.is_absolute() {
        return Err(format!(
            "'{d}' is not an absolute path (e.g. \"/etc/motd\")"
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("'{d}' must not contain '..'"));
    }
    Ok(())
}

fn valid_package(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"^[a-z0-9][a-z0-9+.\-]*(:[a-z0-9]+)?(=[A-Za-z0-9.+~:\-]+)?$").unwrap()
    })
    .is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert!(parse_mode("0648").is_err());
        assert!(parse_mode("rw-r--r--").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn package_names() {
        assert!(valid_package("openssh-server"));
        assert!(valid_package("libc6:amd64"));
        assert!(valid_package("gs-demo=1.0"));
        assert!(valid_package("g++"));
        assert!(!valid_package("Bad Name"));
        assert!(!valid_package("-flag"));
    }

    #[test]
    fn sources_stay_inside_the_layer() {
        let d = tempfile::tempdir().unwrap();
        let layer = d.path().join("l");
        std::fs::create_dir_all(layer.join("files/sub")).unwrap();
        std::fs::write(layer.join("files/ok"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", layer.join("files/evil")).unwrap();
        std::os::unix::fs::symlink("ok", layer.join("files/fine-link")).unwrap();
        assert!(resolve_source(&layer, "files", "ok").is_ok());
        assert!(resolve_source(&layer, "files", "fine-link").is_ok());
        assert!(resolve_source(&layer, "files", "sub").is_ok());
        assert!(resolve_source(&layer, "files", "../x")
            .unwrap_err()
            .contains("escapes"));
        assert!(resolve_source(&layer, "files", "/etc/passwd")
            .unwrap_err()
            .contains("absolute"));
        assert!(resolve_source(&layer, "files", "evil")
            .unwrap_err()
            .contains("outside"));
        assert!(resolve_source(&layer, "files", "missing")
            .unwrap_err()
            .contains("not found"));
    }
}
