//! OCI image layout: one OCI layer per recipe layer, built from the cached layer diffs,
//! so images that share base layers share blobs (locally, in the registry, on hosts).
//!
//! Layer blobs are gzip (what every OCI tool reads) and are cached by (layer output
//! digest, excluded paths): the base layer is compressed once, not once per image.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use oci_spec::image::{
    ConfigBuilder, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, RootFsBuilder, Sha256Digest,
};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::rootfs::cache::LayerCache;
use crate::rootfs::layer_tar;

/// What the OCI layout needs to know about the image.
pub struct OciSpec<'a> {
    pub image: &'a str,
    pub description: &'a str,
    /// (layer name, layer digest) base first.
    pub layers: Vec<(String, String)>,
    pub exclude: &'a [String],
    pub cmd: &'a [String],
    pub sde: i64,
    /// `org.opencontainers.image.version` (content-derived; publish tags the calver).
    pub version: String,
    pub revision: Option<String>,
    pub source: Option<String>,
}

/// A compressed layer blob and its uncompressed digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerBlob {
    diff_id: String,
    digest: String,
    size: u64,
}

/// The built layout.
#[derive(Debug, Clone)]
pub struct OciLayout {
    pub dir: PathBuf,
    pub manifest_digest: String,
}

/// Write an OCI image layout into `dir` (which must not exist yet).
pub fn write_layout(cache: &LayerCache, spec: &OciSpec, dir: &Path) -> anyhow::Result<OciLayout> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let created = chrono::DateTime::from_timestamp(spec.sde, 0)
        .context("SOURCE_DATE_EPOCH out of range")?
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (name, digest) in &spec.layers {
        let blob = layer_blob(cache, digest, spec.exclude)
            .with_context(|| format!("OCI layer for layer {name}"))?;
        link_or_copy(
            &cache_blob_path(cache, &blob.digest),
            &blobs.join(&blob.digest),
        )?;
        layer_descs.push(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageLayerGzip)
                .digest(sha(&blob.digest)?)
                .size(blob.size)
                .build()?,
        );
        diff_ids.push(format!("sha256:{}", blob.diff_id));
        history.push(
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(format!(
                    "goldsmith layer {name} {}",
                    crate::plan::short(digest)
                ))
                .build()?,
        );
    }
    let mut annotations = std::collections::HashMap::new();
    annotations.insert(
        "org.opencontainers.image.title".to_string(),
        spec.image.to_string(),
    );
    annotations.insert(
        "org.opencontainers.image.created".to_string(),
        created.clone(),
    );
    annotations.insert(
        "org.opencontainers.image.version".to_string(),
        spec.version.clone(),
    );
    if !spec.description.is_empty() {
        annotations.insert(
            "org.opencontainers.image.description".to_string(),
            spec.description.to_string(),
        );
    }
    if let Some(r) = &spec.revision {
        annotations.insert("org.opencontainers.image.revision".to_string(), r.clone());
    }
    if let Some(s) = &spec.source {
        annotations.insert("org.opencontainers.image.source".to_string(), s.clone());
    }
    let cmd = if spec.cmd.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        spec.cmd.to_vec()
    };
    let config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(oci_spec::image::Arch::Amd64)
        .os(oci_spec::image::Os::Linux)
        .config(
            ConfigBuilder::default()
                .cmd(cmd)
                .labels(annotations.clone())
                .build()?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(diff_ids)
                .build()?,
        )
        .history(history)
        .build()?;
    let (config_digest, config_size) = write_blob(&blobs, &canonical_json(&config)?)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(sha(&config_digest)?)
                .size(config_size)
                .build()?,
        )
        .layers(layer_descs)
        .annotations(annotations)
        .build()?;
    let (manifest_digest, manifest_size) = write_blob(&blobs, &canonical_json(&manifest)?)?;
    let mut index_ann = std::collections::HashMap::new();
    index_ann.insert(
        "org.opencontainers.image.ref.name".to_string(),
        spec.version.clone(),
    );
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(sha(&manifest_digest)?)
            .size(manifest_size)
            .annotations(index_ann)
            .build()?])
        .build()?;
    std::fs::write(dir.join("index.json"), canonical_json(&index)?)?;
    std::fs::write(
        dir.join("oci-layout"),
        b"{\"imageLayoutVersion\":\"1.0.0\"}",
    )?;
    Ok(OciLayout {
        dir: dir.to_owned(),
        manifest_digest: format!("sha256:{manifest_digest}"),
    })
}

fn sha(hex: &str) -> anyhow::Result<oci_spec::image::Digest> {
    let d: Sha256Digest = hex
        .parse()
        .map_err(|e| anyhow::anyhow!("bad digest {hex}: {e}"))?;
    Ok(d.into())
}

fn cache_blob_path(cache: &LayerCache, digest: &str) -> PathBuf {
    cache.root().join("blobs/sha256").join(digest)
}

/// The gzip blob of a cached layer with `exclude` applied, made once and cached.
fn layer_blob(
    cache: &LayerCache,
    layer_digest: &str,
    exclude: &[String],
) -> anyhow::Result<LayerBlob> {
    let meta = cache.verify(layer_digest)?;
    let key = crate::plan::digest::sha256_hex(
        format!("{}\n{}", meta.output_digest, exclude.join("\n")).as_bytes(),
    );
    let index = cache.root().join("oci").join(format!("{key}.json"));
    if let Ok(b) = fsutil::read_json::<LayerBlob>(&index) {
        if cache_blob_path(cache, &b.digest).is_file() {
            return Ok(b);
        }
    }
    let dir = cache.root().join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    let tmp = tempfile::NamedTempFile::new_in(&dir)?;
    let gz = flate2::GzBuilder::new().mtime(0).write(
        layer_tar::HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, tmp.reopen()?)),
        flate2::Compression::new(6),
    );
    let uncompressed = layer_tar::HashingWriter::new(gz);
    let input = BufReader::with_capacity(1 << 20, cache.open_diff(layer_digest)?);
    let uncompressed = layer_tar::filter_tar(input, exclude, uncompressed)?;
    let (gz, diff_id, _) = uncompressed.finish();
    let compressed = gz.finish()?;
    let (mut w, digest, size) = compressed.finish();
    w.flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(&digest)).map_err(|e| e.error)?;
    let blob = LayerBlob {
        diff_id,
        digest,
        size,
    };
    fsutil::atomic_write_json(&index, &blob)?;
    Ok(blob)
}

fn write_blob(dir: &Path, bytes: &[u8]) -> anyhow::Result<(String, u64)> {
    let d = crate::plan::digest::sha256_hex(bytes);
    std::fs::write(dir.join(&d), bytes)?;
    Ok((d, bytes.len() as u64))
}

/// Hard-link when possible (same file system), copy otherwise.
pub fn link_or_copy(src: &Path, dest: &Path) -> std::io::Result<()> {
    if dest.exists() {
        return Ok(());
    }
    if std::fs::hard_link(src, dest).is_err() {
        std::fs::copy(src, dest)?;
    }
    Ok(())
}

/// JSON with object keys sorted: oci-spec keeps annotations in a HashMap, whose order
/// would otherwise change the manifest digest from run to run.
pub fn canonical_json(v: &impl Serialize) -> anyhow::Result<Vec<u8>> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sort(serde_json::to_value(v)?))?)
}

/// Read a blob of a layout (used by verify and tests).
pub fn read_blob(layout: &Path, digest: &str) -> std::io::Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let mut v = Vec::new();
    std::fs::File::open(layout.join("blobs/sha256").join(hex))?.read_to_end(&mut v)?;
    Ok(v)
}
