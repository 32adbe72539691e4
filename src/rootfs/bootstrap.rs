//! The base layer's tree, bootstrapped with mmdebstrap.

use std::path::Path;
use std::time::Duration;

use crate::exec::Cmd;
use crate::plan::Mirrors;
use crate::recipe::layer::Bootstrap;

/// One bootstrap: what to install, from where, into which (empty) directory.
pub struct Job<'a> {
    pub bootstrap: &'a Bootstrap,
    pub mirrors: &'a Mirrors,
    /// The base layer's packages.
    pub include: &'a [String],
    pub tree: &'a Path,
    /// Shared downloaded-package cache.
    pub apt_archives: &'a Path,
    pub sde: i64,
    pub timeout: Duration,
    pub label: &'a str,
    /// RLIMIT_AS for mmdebstrap and everything it runs.
    pub memory_max: Option<u64>,
}

/// Bootstrap into the empty directory `job.tree`.
///
/// The mirrors are passed explicitly (never mmdebstrap's own default), so what is
/// installed is what the plan resolved against. Downloaded packages are synced through
/// `apt_archives`, so bootstrapping again after a cache wipe does not download again.
pub async fn mmdebstrap(job: &Job<'_>) -> anyhow::Result<()> {
    let Job {
        bootstrap: b,
        mirrors,
        include,
        tree,
        apt_archives,
        sde,
        timeout,
        label,
        memory_max,
    } = *job;
    std::fs::create_dir_all(apt_archives)?;
    let archives = apt_archives.display().to_string();
    let mut cmd = Cmd::new("mmdebstrap")
        .label(label)
        .timeout(timeout)
        .memory_limit(memory_max)
        .env("SOURCE_DATE_EPOCH", sde.to_string())
        .arg("--mode=root")
        .arg(format!("--variant={}", b.variant.get_ref()))
        .arg(format!("--architectures={}", b.architecture.get_ref()))
        .arg(format!("--components={}", b.components.join(",")))
        .arg("--aptopt=Acquire::Retries \"3\"")
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {archives} /var/cache/apt/archives/"
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {archives}"
        ));
    if crate::rootless::inside() {
        // sysfs can only be mounted by the owner of the network namespace, which a user
        // namespace sharing the host's network is not; nothing in a bootstrap needs it.
        cmd = cmd.arg("--skip=chroot/mount/sys");
    }
    if !include.is_empty() {
        cmd = cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd = cmd.arg(&b.suite).arg(tree);
    for line in mirrors.sources_lines(b) {
        cmd = cmd.arg(line);
    }
    cmd.run().await.map_err(|e| {
        anyhow::anyhow!(
            "bootstrapping {} {} from {} failed: {e}",
            b.distro.get_ref(),
            b.suite,
            mirrors.describe()
        )
    })?;
    remove_device_nodes(&tree.join("dev"))?;
    Ok(())
}

/// mmdebstrap populates /dev with device nodes only where it may create them (as real
/// root). They are dropped everywhere: a booted image gets devtmpfs and a container its
/// runtime's /dev, and a base layer must be the same whether it was built as root or
/// rootless (where no device node can be created, nor extracted from a cached layer).
fn remove_device_nodes(dev: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(rd) = std::fs::read_dir(dev) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let ft = e.file_type()?;
        if ft.is_char_device() || ft.is_block_device() {
            std::fs::remove_file(e.path())?;
        } else if ft.is_dir() {
            remove_device_nodes(&e.path())?;
        }
    }
    Ok(())
}
