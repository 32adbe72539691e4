//! The root file system as a deterministic `tar.zst` (sorted entries, clamped mtimes,
//! numeric owners, xattrs), for container imports and inspection.

use std::io::Write;
use std::path::Path;

use crate::rootfs::{layer_tar, tree};

/// Write `tree` as `out` (zstd, all cores).
pub fn write(tree_dir: &Path, out: &Path, sde: i64) -> anyhow::Result<()> {
    let snap = tree::snapshot(tree_dir)?;
    let d = tree::full_tree(&snap);
    let f = std::fs::File::create(out)?;
    let mut enc =
        zstd::stream::write::Encoder::new(std::io::BufWriter::with_capacity(1 << 20, f), 3)?;
    enc.multithread(
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(2),
    )?;
    let (enc, _) = layer_tar::write_diff_tar(tree_dir, &d, sde, enc)?;
    let mut w = enc.finish()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}
