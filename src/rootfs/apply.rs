//! Apply one layer to a tree: repositories, packages, users and groups, files, sysctl,
//! scripts, services — each step inside the bubblewrap sandbox, so paths resolve inside
//! the tree and nothing reaches the host.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::sandbox::Sandbox;
use super::tree::resolve_in;
use crate::fsutil::FileLock;
use crate::recipe::{FileKind, Layer, RenderedLayer};

/// What applying a layer needs besides the layer.
pub struct ApplyCtx<'a> {
    /// The layer cache root (shared apt archives and locks live there).
    pub cache_root: &'a Path,
    pub sde: i64,
    /// Limit for package installation steps.
    pub step_timeout: Duration,
    /// Build-time secrets: name -> value, visible to scripts only.
    pub secrets: &'a [(String, Vec<u8>)],
    /// RLIMIT_AS for every sandboxed step (`build.memory_max`).
    pub memory_max: Option<u64>,
    /// Local (`file:`) repositories the image's layers declare, bound read-only into
    /// package steps. Only declared ones: a source list a script wrote into the tree must
    /// not make goldsmith show the sandbox a folder of the host.
    pub file_repositories: Vec<PathBuf>,
}

/// The `file:` repositories among `repos`, as host folders.
pub fn declared_file_repositories<'a>(
    repos: impl IntoIterator<Item = &'a crate::recipe::layer::Repository>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for r in repos {
        if let Some(p) = r.uri.get_ref().strip_prefix("file:") {
            let p = PathBuf::from(format!("/{}", p.trim_start_matches('/')));
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Where the layer's files and scripts are staged, mounted read-only in the sandbox.
const STAGE: &str = "/run/goldsmith/stage";
const SECRETS: &str = "/run/goldsmith/secrets";

/// Apply everything but the bootstrap. `exact` replaces the layer's declared installs
/// with exact `name=version` pins (the plan's resolution).
pub async fn apply_layer(
    ctx: &ApplyCtx<'_>,
    layer: &Layer,
    rendered: &RenderedLayer,
    exact: Option<&[String]>,
    tree: &Path,
) -> anyhow::Result<()> {
    let def = &layer.def;
    let stage = tempfile::Builder::new()
        .prefix("goldsmith-stage-")
        .tempdir()
        .context("cannot create a staging folder")?;
    let base = Sandbox::new(tree, format!("layer {}", layer.name))
        .bind(stage.path(), STAGE, false)
        .env("SOURCE_DATE_EPOCH", &ctx.sde.to_string())
        .env("GOLDSMITH_LAYER", &layer.name)
        .memory_max(ctx.memory_max);
    install_policy_rc_d(tree)?;
    let result = async {
        if !def.repositories.is_empty() {
            write_repositories(layer, tree)?;
        }
        let install: Vec<&str> = match exact {
            Some(pins) => pins.iter().map(String::as_str).collect(),
            None => def
                .packages
                .install
                .iter()
                .map(|p| p.get_ref().as_str())
                .collect(),
        };
        let remove: Vec<&str> = def
            .packages
            .remove
            .iter()
            .map(|p| p.get_ref().as_str())
            .collect();
        // The base layer's packages came with the bootstrap.
        let install = if layer.is_base() { Vec::new() } else { install };
        if !install.is_empty() || !remove.is_empty() {
            packages(ctx, layer, &base, &install, &remove).await?;
        }
        let script = config_script(layer, rendered, stage.path())?;
        if !script.is_empty() {
            std::fs::write(stage.path().join("configure.sh"), &script)?;
            base.clone()
                .timeout(ctx.step_timeout)
                .command(&["/bin/sh", &format!("{STAGE}/configure.sh")])?
                .run()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "layer {}: applying files, users and groups failed {}",
                        layer.name,
                        e.outcome()
                    )
                })?;
        }
        run_scripts(ctx, layer, rendered, &base, stage.path()).await?;
        services(layer, &base, ctx.step_timeout).await?;
        anyhow::Ok(())
    }
    .await;
    remove_policy_rc_d(tree);
    result
}

/// Keep package maintainer scripts from starting daemons inside the build sandbox.
fn install_policy_rc_d(tree: &Path) -> std::io::Result<()> {
    let p = resolve_in(tree, "usr/sbin/policy-rc.d", true)?;
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        &p,
        "#!/bin/sh\n# goldsmith: no daemons during image builds\nexit 101\n",
    )?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
}

fn remove_policy_rc_d(tree: &Path) {
    if let Ok(p) = resolve_in(tree, "usr/sbin/policy-rc.d", false) {
        let _ = std::fs::remove_file(p);
    }
}

fn write_repositories(layer: &Layer, tree: &Path) -> anyhow::Result<()> {
    let mut s = String::from("# Added by goldsmith layer ");
    s.push_str(&layer.name);
    s.push('\n');
    for r in &layer.def.repositories {
        let opts = if r.trusted { "[trusted=yes] " } else { "" };
        let _ = writeln!(
            s,
            "deb {opts}{} {} {}",
            r.uri.get_ref(),
            r.suite,
            r.components.join(" ")
        );
    }
    let p = resolve_in(
        tree,
        format!("etc/apt/sources.list.d/goldsmith-{}.list", layer.name),
        true,
    )?;
    std::fs::create_dir_all(p.parent().expect("has parent"))?;
    std::fs::write(&p, s.trim_end().to_string() + "\n")?;
    Ok(())
}

async fn packages(
    ctx: &ApplyCtx<'_>,
    layer: &Layer,
    base: &Sandbox,
    install: &[&str],
    remove: &[&str],
) -> anyhow::Result<()> {
    let archives = ctx.cache_root.join("apt/archives");
    std::fs::create_dir_all(archives.join("partial"))?;
    let lists = tempfile::Builder::new()
        .prefix("goldsmith-lists-")
        .tempdir()?;
    std::fs::create_dir_all(lists.path().join("partial"))?;
    // apt locks the shared archive folder; builds on this host take turns here.
    let _lock = FileLock::acquire(&ctx.cache_root.join("locks/apt-archives.lock"))?;
    let mut script = String::from("set -eu\n");
    // The sandbox is the isolation; apt's own _apt user could not read file: repositories
    // in folders only root may enter.
    script.push_str(
        "APT='-o APT::Sandbox::User=root'\napt-get $APT update -q -o Acquire::Retries=3\n",
    );
    if !install.is_empty() {
        let _ = writeln!(
            script,
            "apt-get $APT install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold {}",
            install.join(" ")
        );
    }
    if !remove.is_empty() {
        let _ = writeln!(script, "apt-get $APT purge -y -q {}", remove.join(" "));
    }
    let mut sb = base
        .clone()
        .network(true)
        .timeout(ctx.step_timeout)
        .bind(&archives, "/var/cache/apt/archives", true)
        .bind(lists.path(), "/var/lib/apt/lists", true);
    for p in ctx.file_repositories.iter().filter(|p| p.is_dir()) {
        let s = p.display().to_string();
        sb = sb.bind(p, &s, false);
    }
    with_resolv_conf(&base.tree, || async {
        sb.command(&["/bin/sh", "-c", &script])?
            .run()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "layer {}: installing packages [{}] failed {}",
                    layer.name,
                    install.join(", "),
                    e.outcome()
                )
            })
    })
    .await?;
    Ok(())
}

/// Make the build host's resolver visible for a networked step without leaving it in
/// the image: a symlink the image ships (systemd-resolved) is moved aside and restored,
/// and a mount point bwrap had to create is removed again.
async fn with_resolv_conf<F, Fut, T>(tree: &Path, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let p = resolve_in(tree, "etc/resolv.conf", false)?;
    let aside = p.with_file_name(".resolv.conf.goldsmith");
    let before = p.symlink_metadata().ok();
    let moved = match &before {
        Some(m) if m.file_type().is_symlink() => {
            std::fs::rename(&p, &aside)?;
            true
        }
        _ => false,
    };
    let r = f().await;
    if moved {
        let _ = std::fs::remove_file(&p);
        std::fs::rename(&aside, &p)?;
    } else if before.is_none() {
        let _ = std::fs::remove_file(&p);
    }
    r
}

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Groups, users, files and sysctl as one shell script run inside the tree.
fn config_script(layer: &Layer, rendered: &RenderedLayer, stage: &Path) -> anyhow::Result<String> {
    let def = &layer.def;
    let mut s = String::new();
    for g in &def.groups {
        let mut args = String::new();
        if let Some(gid) = g.gid {
            let _ = write!(args, " --gid {gid}");
        }
        if g.system {
            args.push_str(" --system");
        }
        let _ = writeln!(
            s,
            "getent group {n} >/dev/null || groupadd{args} {n}",
            n = q(&g.name)
        );
    }
    for u in &def.users {
        let n = q(&u.name);
        let mut args = format!(" --create-home --shell {}", q(&u.shell));
        if let Some(uid) = u.uid {
            let _ = write!(args, " --uid {uid}");
        }
        if let Some(h) = &u.home {
            let _ = write!(args, " --home-dir {}", q(h));
        }
        if u.system {
            args.push_str(" --system");
        }
        let _ = writeln!(
            s,
            "if ! id -u {n} >/dev/null 2>&1; then if getent group {n} >/dev/null; then useradd{args} -g {n} {n}; else useradd{args} --user-group {n}; fi; fi"
        );
        if !u.groups.is_empty() {
            let gs = u.groups.iter().map(|g| q(g)).collect::<Vec<_>>().join(",");
            let _ = writeln!(s, "usermod -a -G {gs} {n}");
        }
        if !u.ssh_authorized_keys.is_empty() {
            let keys: String = u
                .ssh_authorized_keys
                .iter()
                .map(|k| format!(" {}", q(k)))
                .collect();
            let _ = writeln!(
                s,
                "h=$(getent passwd {n} | cut -d: -f6); g=$(id -gn {n}); install -d -m 700 -o {n} -g \"$g\" \"$h/.ssh\"; printf '%s\\n'{keys} > \"$h/.ssh/authorized_keys\"; chown {n}:\"$g\" \"$h/.ssh/authorized_keys\"; chmod 600 \"$h/.ssh/authorized_keys\""
            );
        }
        if u.sudo {
            let _ = writeln!(
                s,
                "install -d -m 750 /etc/sudoers.d; printf '%s ALL=(ALL) NOPASSWD:ALL\\n' {n} > /etc/sudoers.d/90-goldsmith-{}; chmod 440 /etc/sudoers.d/90-goldsmith-{}",
                u.name, u.name
            );
        }
    }
    let files_dir = stage.join("files");
    for (i, f) in rendered.files.iter().enumerate() {
        let dest = q(&f.dest);
        let own = format!("{}:{}", q(&f.owner), q(&f.group));
        let mode = format!("{:04o}", f.mode);
        match &f.kind {
            FileKind::Dir => {
                let _ = writeln!(s, "install -d -m {mode} {dest}; chown {own} {dest}");
            }
            FileKind::Symlink(target) => {
                let _ = writeln!(
                    s,
                    "mkdir -p \"$(dirname {dest})\"; rm -rf {dest}; ln -s {} {dest}; chown -h {own} {dest}",
                    q(target)
                );
            }
            FileKind::Inline(bytes) => {
                std::fs::create_dir_all(&files_dir)?;
                std::fs::write(files_dir.join(i.to_string()), bytes)?;
                let _ = writeln!(
                    s,
                    "mkdir -p \"$(dirname {dest})\"; rm -f {dest}; install -m {mode} -o {} -g {} {STAGE}/files/{i} {dest}",
                    q(&f.owner),
                    q(&f.group)
                );
            }
            FileKind::Disk { path, size, sha256 } => {
                std::fs::create_dir_all(&files_dir)?;
                // Copy (not link): the stage is read-only to the sandbox anyway, and the
                // layer folder must never be reachable from inside the tree.
                copy_checked(path, &files_dir.join(i.to_string()), *size, sha256).with_context(
                    || format!("layer {}: files: copying {}", layer.name, path.display()),
                )?;
                let _ = writeln!(
                    s,
                    "mkdir -p \"$(dirname {dest})\"; rm -f {dest}; install -m {mode} -o {} -g {} {STAGE}/files/{i} {dest}",
                    q(&f.owner),
                    q(&f.group)
                );
            }
        }
    }
    if !def.sysctl.is_empty() {
        let mut body = format!("# goldsmith layer {}\n", layer.name);
        for (k, v) in &def.sysctl {
            let _ = writeln!(body, "{k} = {v}");
        }
        std::fs::create_dir_all(&files_dir)?;
        std::fs::write(files_dir.join("sysctl.conf"), body)?;
        let _ = writeln!(
            s,
            "install -d -m 755 /etc/sysctl.d; install -m 0644 {STAGE}/files/sysctl.conf /etc/sysctl.d/90-goldsmith-{}.conf",
            layer.name
        );
    }
    if s.is_empty() {
        return Ok(s);
    }
    Ok(format!("set -eux\n{s}"))
}

/// Copy a file of the layer folder into the stage: streaming (bounded memory for any
/// size), holes kept as holes (a sparse multi-GiB file stays small), never through a
/// symlink, and checked against the size and sha256 the layer digest was made from, so
/// the bytes built are the bytes planned even if the file changed in between.
fn copy_checked(src: &Path, dest: &Path, size: u64, sha256: &str) -> anyhow::Result<()> {
    use sha2::Digest as _;
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt;
    const CHUNK: usize = 1 << 16;
    let mut inp = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)?;
    let mut out = std::fs::File::create(dest)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = inp.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        if buf[..n].iter().all(|&b| b == 0) {
            out.seek(std::io::SeekFrom::Current(n as i64))?;
        } else {
            out.write_all(&buf[..n])?;
        }
    }
    out.set_len(total)?;
    let got = hex::encode(h.finalize());
    if total != size || got != sha256 {
        anyhow::bail!(
            "the file changed since the plan was made (now {total} bytes, sha256 {got}; \
             planned {size} bytes, {sha256}); run the build again"
        );
    }
    Ok(())
}

async fn run_scripts(
    ctx: &ApplyCtx<'_>,
    layer: &Layer,
    rendered: &RenderedLayer,
    base: &Sandbox,
    stage: &Path,
) -> anyhow::Result<()> {
    if rendered.scripts.is_empty() {
        return Ok(());
    }
    let dir = stage.join("scripts");
    std::fs::create_dir_all(&dir)?;
    // Secrets are files on the sandbox's own tmpfs under /run, filled from in-memory
    // descriptors: no byte of them is ever on the host's disk or inside the tree.
    let secrets: Vec<(String, std::sync::Arc<Vec<u8>>)> = ctx
        .secrets
        .iter()
        .map(|(name, value)| {
            (
                format!("{SECRETS}/{name}"),
                std::sync::Arc::new(value.clone()),
            )
        })
        .collect();
    for (i, s) in rendered.scripts.iter().enumerate() {
        let file = format!("{i:02}-{}", sanitize(&s.name));
        let p = dir.join(&file);
        std::fs::write(&p, &s.body)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        let guest = format!("{STAGE}/scripts/{file}");
        let argv: Vec<&str> = if s.body.starts_with(b"#!") {
            vec![&guest]
        } else {
            vec!["/bin/sh", &guest]
        };
        let mut sb = base
            .clone()
            .network(s.network)
            .timeout(Duration::from_secs(s.timeout_secs));
        for (guest, value) in &secrets {
            sb = sb.secret(guest, value.clone());
        }
        let run = || async {
            sb.command(&argv)?.run().await.map_err(|e| {
                anyhow::anyhow!(
                    "layer {}: script {} failed {}",
                    layer.name,
                    s.name,
                    e.outcome()
                )
            })
        };
        if s.network {
            with_resolv_conf(&base.tree, run).await?;
        } else {
            run().await?;
        }
    }
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

async fn services(layer: &Layer, base: &Sandbox, timeout: Duration) -> anyhow::Result<()> {
    let sv = &layer.def.services;
    let mut script = String::new();
    for (verb, units) in [
        ("enable", &sv.enable),
        ("disable", &sv.disable),
        ("mask", &sv.mask),
    ] {
        if !units.is_empty() {
            let _ = writeln!(
                script,
                "systemctl {verb} {}",
                units.iter().map(|u| q(u)).collect::<Vec<_>>().join(" ")
            );
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    base.clone()
        .timeout(timeout)
        .command(&["/bin/sh", "-c", &format!("set -eu\n{script}")])?
        .run()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "layer {}: configuring services failed {}",
                layer.name,
                e.outcome()
            )
        })?;
    Ok(())
}
