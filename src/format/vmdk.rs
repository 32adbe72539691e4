//! VMDK, streamOptimized (what OVAs and vSphere imports expect).

use std::path::Path;
use std::time::Duration;

/// Convert the raw disk to a streamOptimized VMDK.
pub async fn convert(raw: &Path, out: &Path, timeout: Duration) -> anyhow::Result<()> {
    super::qemu_img_convert(
        raw,
        out,
        "vmdk",
        &["-o", "subformat=streamOptimized,adapter_type=lsilogic"],
        timeout,
    )
    .await
}
