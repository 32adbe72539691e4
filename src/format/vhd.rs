//! VHD, fixed size, for Azure: the virtual size must be a whole number of MiB (image
//! sizes are whole MiB) and must not be rounded to a CHS geometry (`force_size`).

use std::path::Path;
use std::time::Duration;

/// Convert the raw disk to a fixed VHD.
pub async fn convert(raw: &Path, out: &Path, timeout: Duration) -> anyhow::Result<()> {
    super::qemu_img_convert(
        raw,
        out,
        "vpc",
        &["-o", "subformat=fixed,force_size=on"],
        timeout,
    )
    .await
}
