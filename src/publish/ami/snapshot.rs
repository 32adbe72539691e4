//! Upload a raw disk as an EBS snapshot through the EBS direct APIs.
//!
//! The contract (the one the `coldsnap` tool follows too): 512 KiB blocks, each sent with
//! the base64 SHA-256 of its bytes; blocks that are all zeroes are not sent, because a
//! volume made from the snapshot reads zeroes there anyway; CompleteSnapshot carries the
//! number of blocks sent and the SHA-256 over their SHA-256s in block order (the LINEAR
//! aggregation), so that AWS can verify nothing was lost. Holes of the sparse raw file are
//! found with SEEK_DATA/SEEK_HOLE and never read. Blocks go up in parallel (bounded by
//! [`super::AmiOptions::block_concurrency`]), each with its own retries.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm};
use base64::Engine as _;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::aws::Aws;
use super::AmiError;

/// EBS snapshot block size. The EBS direct API always uses 512 KiB blocks (StartSnapshot
/// reports it too; local emulators may report something else, which is ignored).
pub const EBS_BLOCK_SIZE: u64 = 512 * 1024;
const GIB: u64 = 1 << 30;
/// Minutes AWS keeps a started snapshot pending before it abandons it: an upload that is
/// killed halfway cleans itself up.
pub const SNAPSHOT_TIMEOUT_MINUTES: i32 = 60;

/// What a snapshot upload sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotUpload {
    pub snapshot_id: String,
    pub volume_size_gib: i64,
    /// Blocks of the raw disk (its size rounded up to 512 KiB).
    pub blocks_total: u64,
    /// Blocks sent (the rest were all zeroes).
    pub blocks_uploaded: u64,
    /// Base64 SHA-256 over the uploaded blocks' SHA-256s, in block order.
    pub aggregate_checksum: String,
}

impl Aws<'_> {
    /// Upload `path` as a new snapshot in the target's region. The snapshot id is pushed
    /// to `created` as soon as it exists, so a later failure can delete it.
    pub(super) async fn upload_snapshot(
        &self,
        path: &Path,
        description: &str,
        tags: &[(&str, &str)],
        created: &mut Vec<(String, String)>,
    ) -> Result<SnapshotUpload, AmiError> {
        let io_err = |source| AmiError::Io {
            target: self.target.into(),
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        if size == 0 {
            return Err(AmiError::Config {
                target: self.target.into(),
                message: format!("raw disk {} is empty", path.display()),
            });
        }
        let volume_size_gib = size.div_ceil(GIB).max(1) as i64;
        let blocks_total = size.div_ceil(EBS_BLOCK_SIZE);
        let candidates = data_blocks(&file, size);
        let region = self.region.clone();

        let ebs_tags: Vec<_> = tags
            .iter()
            .map(|(k, v)| aws_sdk_ebs::types::Tag::builder().key(*k).value(*v).build())
            .collect();
        let started = self
            .call(&region, "StartSnapshot", &[], || {
                self.ebs
                    .start_snapshot()
                    .volume_size(volume_size_gib)
                    .description(description)
                    .timeout(SNAPSHOT_TIMEOUT_MINUTES)
                    .set_tags(Some(ebs_tags.clone()))
                    .send()
            })
            .await?;
        let snapshot_id = started.snapshot_id().unwrap_or_default().to_string();
        if snapshot_id.is_empty() {
            return Err(AmiError::Api {
                target: self.target.into(),
                region,
                operation: "StartSnapshot".into(),
                detail: "the answer carries no snapshot id".into(),
            });
        }
        created.push((region.clone(), snapshot_id.clone()));
        if let Some(bs) = started.block_size() {
            if bs as u64 != EBS_BLOCK_SIZE {
                tracing::debug!("StartSnapshot reports block size {bs}; using {EBS_BLOCK_SIZE}");
            }
        }
        tracing::info!(
            target_name = self.target,
            "uploading {} ({} MiB; {} of {blocks_total} blocks may hold data) to snapshot \
             {snapshot_id} in {region}",
            path.display(),
            size >> 20,
            candidates.len()
        );

        let file = Arc::new(file);
        let sent: Vec<Option<(u64, [u8; 32])>> = stream::iter(candidates)
            .map(|index| {
                let file = Arc::clone(&file);
                let (snapshot_id, region) = (snapshot_id.as_str(), region.as_str());
                async move {
                    let block = tokio::task::spawn_blocking(move || read_block(&file, size, index))
                        .await
                        .expect("block reader panicked")
                        .map_err(io_err)?;
                    if block.iter().all(|b| *b == 0) {
                        return Ok(None);
                    }
                    let sha: [u8; 32] = Sha256::digest(&block).into();
                    let checksum = base64::engine::general_purpose::STANDARD.encode(sha);
                    let data = bytes::Bytes::from(block);
                    let operation = format!("PutSnapshotBlock {index} of {snapshot_id}");
                    // Right after StartSnapshot, AWS may not know the snapshot yet.
                    self.call(region, &operation, &["ResourceNotFoundException"], || {
                        self.ebs
                            .put_snapshot_block()
                            .snapshot_id(snapshot_id)
                            .block_index(index as i32)
                            .block_data(ByteStream::from(data.clone()))
                            .data_length(EBS_BLOCK_SIZE as i32)
                            .checksum(checksum.clone())
                            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                            .send()
                    })
                    .await?;
                    Ok::<_, AmiError>(Some((index, sha)))
                }
            })
            .buffer_unordered(self.opts.block_concurrency.max(1))
            .try_collect()
            .await?;

        let sums: BTreeMap<u64, [u8; 32]> = sent.into_iter().flatten().collect();
        let aggregate_checksum = aggregate_checksum(sums.values());
        let changed = sums.len();
        self.call(&region, "CompleteSnapshot", &[], || {
            self.ebs
                .complete_snapshot()
                .snapshot_id(&snapshot_id)
                .changed_blocks_count(changed as i32)
                .checksum(&aggregate_checksum)
                .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
                .send()
        })
        .await?;
        tracing::info!(
            target_name = self.target,
            "snapshot {snapshot_id}: {changed} blocks sent, {} all-zero blocks skipped",
            blocks_total - changed as u64
        );
        Ok(SnapshotUpload {
            snapshot_id,
            volume_size_gib,
            blocks_total,
            blocks_uploaded: changed as u64,
            aggregate_checksum,
        })
    }
}

/// The LINEAR aggregate: base64 SHA-256 over the blocks' SHA-256s in block order.
pub fn aggregate_checksum<'a>(block_sums: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    let mut aggregate = Sha256::new();
    for sha in block_sums {
        aggregate.update(sha);
    }
    base64::engine::general_purpose::STANDARD.encode(aggregate.finalize())
}

/// Indices of the blocks that may hold data: those overlapping a data extent (SEEK_DATA /
/// SEEK_HOLE). Every block when the file system cannot tell.
fn data_blocks(file: &File, size: u64) -> Vec<u64> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    let all = || (0..size.div_ceil(EBS_BLOCK_SIZE)).collect::<Vec<_>>();
    let mut blocks: Vec<u64> = Vec::new();
    let mut off: i64 = 0;
    while (off as u64) < size {
        let data = match lseek(file, off, Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break,
            Err(_) => return all(),
        };
        let hole = lseek(file, data, Whence::SeekHole)
            .unwrap_or(size as i64)
            .min(size as i64);
        if hole <= data {
            return all();
        }
        let first = data as u64 / EBS_BLOCK_SIZE;
        let last = (hole as u64 - 1) / EBS_BLOCK_SIZE;
        for b in first..=last {
            if blocks.last() != Some(&b) {
                blocks.push(b);
            }
        }
        off = hole;
    }
    blocks
}

/// Block `index`, zero-padded to the full block size at the end of the disk.
fn read_block(file: &File, size: u64, index: u64) -> std::io::Result<Vec<u8>> {
    let offset = index * EBS_BLOCK_SIZE;
    let len = EBS_BLOCK_SIZE.min(size - offset) as usize;
    let mut buf = vec![0u8; EBS_BLOCK_SIZE as usize];
    file.read_exact_at(&mut buf[..len], offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn data_blocks_skip_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let size = 8 * EBS_BLOCK_SIZE + 100;
        let mut f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        f.seek(SeekFrom::Start(3 * EBS_BLOCK_SIZE + 10)).unwrap();
        f.write_all(b"x").unwrap();
        f.seek(SeekFrom::Start(8 * EBS_BLOCK_SIZE + 50)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        let blocks = data_blocks(&f, size);
        // File systems may report data at a coarser granularity, never finer: the blocks
        // written must be there, and most of the holes must be skipped.
        assert!(blocks.contains(&3) && blocks.contains(&8), "{blocks:?}");
        assert!(blocks.len() <= 4, "{blocks:?}");
        let last = read_block(&f, size, 8).unwrap();
        assert_eq!(last.len() as u64, EBS_BLOCK_SIZE);
        assert_eq!(&last[50..54], b"tail");
        assert!(last[100..].iter().all(|b| *b == 0));
    }

    #[test]
    fn aggregate_is_the_hash_of_the_hashes_in_order() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let mut h = Sha256::new();
        h.update(a);
        h.update(b);
        let want = base64::engine::general_purpose::STANDARD.encode(h.finalize());
        assert_eq!(aggregate_checksum([&a, &b]), want);
        assert_ne!(aggregate_checksum([&b, &a]), want);
    }
}
