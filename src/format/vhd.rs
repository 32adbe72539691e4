//! VHD, fixed size, for Azure: the virtual size must be a whole number of MiB (image
//! sizes are whole MiB) and must not be rounded to a CHS geometry (`force_size`).

use std::path::Path;
use std::time::Duration;

use crate::exec::Cmd;

/// Convert the raw disk to a fixed VHD.
pub async fn convert(raw: &Path, out: &Path, timeout: Duration) -> anyhow::Result<()> {
    Cmd::new("qemu-img")
        .timeout(timeout)
        .args(["convert", "-q", "-f", "raw", "-O", "vpc"])
        .args(["-o", "subformat=fixed,force_size=on"])
        .arg(raw)
        .arg(out)
        .run()
        .await
        .map_err(|e| anyhow::anyhow!("VHD conversion failed: {e}"))?;
    Ok(())
}
