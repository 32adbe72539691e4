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
    } = *job;
    std::fs::create_dir_all(apt_archives)?;
    let archives = apt_archives.display().to_string();
    let mut cmd = Cmd::new("mmdebstrap")
        .label(label)
        .timeout(timeout)
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
    Ok(())
}
