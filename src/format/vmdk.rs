//! VMDK, streamOptimized (what OVAs and vSphere imports expect).

use std::path::Path;
use std::time::Duration;

use crate::exec::Cmd;

/// Convert the raw disk to a streamOptimized VMDK.
pub async fn convert(raw: &Path, out: &Path, timeout: Duration) -> anyhow::Result<()> {
    Cmd::new("qemu-img")
        .timeout(timeout)
        .args(["convert", "-q", "-f", "raw", "-O", "vmdk"])
        .args(["-o", "subformat=streamOptimized,adapter_type=lsilogic"])
        .arg(raw)
        .arg(out)
        .run()
        .await
        .map_err(|e| anyhow::anyhow!("VMDK conversion failed: {e}"))?;
    Ok(())
}
