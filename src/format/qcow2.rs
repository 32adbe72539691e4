//! qcow2, compressed. zstd compression with out-of-order parallel writes is several times
//! faster than qemu-img's default single-threaded zlib (QEMU >= 5.1 reads it); images for
//! older consumers can ask for zlib.

use std::path::Path;
use std::time::Duration;

/// Convert the raw disk to a compressed qcow2.
pub async fn convert(
    raw: &Path,
    out: &Path,
    compression: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let opt = format!("compression_type={compression}");
    // Out-of-order writes with 8 coroutines keep every core compressing.
    super::qemu_img_convert(
        raw,
        out,
        "qcow2",
        &["-c", "-o", &opt, "-W", "-m", "8"],
        timeout,
    )
    .await
}
