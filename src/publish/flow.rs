//! The publish flow: a verified build becomes an immutable, signed version, and the
//! channel moves to it.
//!
//! Order (each step only after the one before succeeded):
//! 1. check the build is verified and its files are what build.json says;
//! 2. `CLAIM` the version folder (put-if-absent: one publisher per version);
//! 3. upload every file (artifacts streamed, OCI layout file by file, build and verify
//!    records, console logs, SBOM);
//! 4. run the image's targets (registry, AMI);
//! 5. write `manifest.json` and its minisign signature;
//! 6. `COMMITTED` (put-if-absent): the version exists from here on;
//! 7. move the channel pointer (compare-and-swap), then tell the observer.
//!
//! Killed anywhere before 6, nothing is visible (readers need `COMMITTED`) and no channel
//! moved; `gc` removes the folder. A failure before 6 removes what this publish wrote.

use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};

use super::channel::{self, ChannelError};
use super::layout::{self, Claim, Commit, LayoutError};
use super::model::{
    BuildSummary, ChannelMove, Manifest, MoveReason, PublishedArtifact, TargetRecords,
    VerifySummary, MANIFEST_SCHEMA,
};
use super::sign::{SignError, Signer};
use super::target::{NamedTarget, TargetContext};
use super::{sbom, version, ChannelObserver};
use crate::artifact::{BuildRecord, FileRecord, VerifyRecord};
use crate::store::{check_key, Store, StoreError};

/// Files uploaded at once.
const UPLOADS_IN_FLIGHT: usize = 4;

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub image: String,
    /// The build directory (`artifact::latest_build_dir`), holding build.json and
    /// verify.json.
    pub build_dir: PathBuf,
    /// The channel to move (the image's `publish.channel` or `--channel`).
    pub channel: String,
    /// Explicit version; None for the next calendar version.
    pub version: Option<String>,
    /// Publish even when the channel head has the same content digest.
    pub force: bool,
}

/// What `publish` did.
#[derive(Debug, Clone)]
pub enum PublishOutcome {
    /// The channel head already has this content: nothing was published.
    Unchanged {
        image: String,
        channel: String,
        version: String,
        content_digest: String,
    },
    Published {
        manifest: Box<Manifest>,
        /// The channel moves handed to the observer (empty if the channel already
        /// pointed at the version, which cannot happen for a new version).
        moves: Vec<ChannelMove>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Bad arguments (version or channel syntax, image name).
    #[error("{0}")]
    Usage(String),
    #[error("no build of image '{image}' in {dir}: run `goldsmith build {image}` first")]
    NotBuilt { image: String, dir: PathBuf },
    #[error(
        "{image} build {build_id} is not verified ({reason}); only verified builds are \
         published: run `goldsmith verify {image}`"
    )]
    NotVerified {
        image: String,
        build_id: String,
        reason: String,
    },
    #[error(
        "{path}: {problem}; the build directory changed since build.json was written, rebuild"
    )]
    BuildChanged { path: PathBuf, problem: String },
    #[error(
        "conflict: {image} {version} already exists in {store}; a published version never \
         changes (publish a new version, or omit --version)"
    )]
    VersionExists {
        image: String,
        version: String,
        store: String,
    },
    #[error(
        "conflict: {image} {version} is being published by another publisher ({holder}); \
         nothing of it was touched. If that publish died, `goldsmith gc --yes` removes \
         its remains"
    )]
    Conflict {
        image: String,
        version: String,
        holder: String,
    },
    #[error("publish target '{name}' failed; nothing was committed and the channel did not move: {source:#}")]
    Target { name: String, source: anyhow::Error },
    #[error(
        "{image} {version} is published and channel(s) {channels} moved, but the rollout \
         hook failed: {source:#}"
    )]
    Observer {
        image: String,
        version: String,
        channels: String,
        source: anyhow::Error,
    },
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// One file to upload: where it is and what it must be.
#[derive(Debug, Clone)]
struct Upload {
    /// Relative to the version folder (and to the build directory).
    rel: String,
    src: PathBuf,
    size: u64,
    sha256: String,
}

/// Check that `image` can be a top-level folder of the store.
pub fn check_image_name(image: &str) -> Result<(), PublishError> {
    if image == layout::CHANNELS || image.contains('/') || check_key(image).is_err() {
        return Err(PublishError::Usage(format!(
            "image name '{image}' cannot be published ('{}' is reserved for channel pointers)",
            layout::CHANNELS
        )));
    }
    Ok(())
}

/// Load the build and its verify record; refuse anything not verified for this build.
pub fn load_verified(
    image: &str,
    build_dir: &Path,
) -> Result<(BuildRecord, VerifyRecord), PublishError> {
    let build = BuildRecord::load(build_dir).map_err(|_| PublishError::NotBuilt {
        image: image.to_string(),
        dir: build_dir.to_owned(),
    })?;
    let not_verified = |reason: String| PublishError::NotVerified {
        image: image.to_string(),
        build_id: build.build_id.clone(),
        reason,
    };
    if build.image != image {
        return Err(PublishError::Usage(format!(
            "{} holds a build of '{}', not '{image}'",
            build_dir.display(),
            build.image
        )));
    }
    if !build_dir.join("verify.json").is_file() {
        return Err(not_verified("no verify.json in the build directory".into()));
    }
    let verify = VerifyRecord::load(build_dir).map_err(|e| not_verified(format!("{e:#}")))?;
    if verify.content_digest != build.content_digest || verify.build_id != build.build_id {
        return Err(not_verified(format!(
            "verify.json is for build {} with content digest {}, not this build's {}",
            verify.build_id, verify.content_digest, build.content_digest
        )));
    }
    if !verify.passed {
        let failed: Vec<String> = verify
            .boots
            .iter()
            .filter(|b| !b.passed)
            .map(|b| {
                format!(
                    "{}: {}",
                    b.format,
                    b.failure.clone().unwrap_or_else(|| "failed".into())
                )
            })
            .collect();
        return Err(not_verified(format!(
            "verification failed: {}",
            if failed.is_empty() {
                "no boot passed".to_string()
            } else {
                failed.join("; ")
            }
        )));
    }
    if verify.boots.is_empty() {
        return Err(not_verified("verify.json records no boot".into()));
    }
    Ok((build, verify))
}

/// Every file of the version, checked against build.json (artifacts) or hashed now
/// (records and logs).
async fn collect_uploads(
    build_dir: &Path,
    build: &BuildRecord,
    verify: &VerifyRecord,
) -> Result<Vec<Upload>, PublishError> {
    let mut wanted: Vec<(String, Option<(u64, String)>)> = Vec::new();
    for a in &build.artifacts {
        if a.files.is_empty() {
            wanted.push((a.path.clone(), Some((a.size, a.sha256.clone()))));
        } else {
            for f in &a.files {
                wanted.push((f.path.clone(), Some((f.size, f.sha256.clone()))));
            }
        }
    }
    wanted.push(("build.json".into(), None));
    wanted.push(("verify.json".into(), None));
    for b in &verify.boots {
        if !b.console_log.is_empty() && build_dir.join(&b.console_log).is_file() {
            wanted.push((b.console_log.clone(), None));
        }
    }
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    wanted.dedup_by(|a, b| a.0 == b.0);

    let mut out = Vec::with_capacity(wanted.len());
    for (rel, expected) in wanted {
        let src = build_dir.join(&rel);
        let bad = |problem: String| PublishError::BuildChanged {
            path: src.clone(),
            problem,
        };
        if check_key(&rel).is_err()
            || layout::CONTROL.contains(&rel.as_str())
            || rel == layout::SBOM
        {
            return Err(bad(format!(
                "'{rel}' cannot be a file of a published version"
            )));
        }
        let p = src.clone();
        let (size, sha256) = tokio::task::spawn_blocking(move || crate::fsutil::sha256_file(&p))
            .await
            .map_err(|e| bad(e.to_string()))?
            .map_err(|e| bad(e.to_string()))?;
        if let Some((esize, esha)) = expected {
            if esha != sha256 || esize != size {
                return Err(bad(format!(
                    "sha256 {sha256} ({size} bytes), but build.json says {esha} ({esize} bytes)"
                )));
            }
        }
        out.push(Upload {
            rel,
            src,
            size,
            sha256,
        });
    }
    Ok(out)
}

fn verify_summary(v: &VerifyRecord) -> VerifySummary {
    VerifySummary {
        passed: v.passed,
        accelerator: v
            .boots
            .first()
            .map(|b| b.accelerator.clone())
            .unwrap_or_default(),
        boot_secs: v.boots.iter().filter_map(|b| b.boot_secs).reduce(f64::max),
        checks_passed: v
            .boots
            .iter()
            .map(|b| b.checks.iter().filter(|c| c.passed).count())
            .sum(),
        checks_total: v.boots.iter().map(|b| b.checks.len()).sum(),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// This host's name as recorded in claims (gc uses it to find its own dead publishes).
pub fn this_host() -> String {
    hostname()
}

/// Publish the verified build in `req.build_dir`. See the module docs for the order.
pub async fn publish(
    store: &dyn Store,
    signer: &Signer,
    targets: &[NamedTarget],
    req: &PublishRequest,
    observer: &dyn ChannelObserver,
) -> Result<PublishOutcome, PublishError> {
    let image = req.image.as_str();
    check_image_name(image)?;
    version::validate_channel(&req.channel).map_err(PublishError::Usage)?;
    if let Some(v) = &req.version {
        version::validate(v).map_err(PublishError::Usage)?;
    }
    let (build, verify) = load_verified(image, &req.build_dir)?;

    let head = channel::read(store, image, &req.channel).await?;
    if let Some(h) = head.as_ref().and_then(|(p, _)| p.head.as_ref()) {
        if h.content_digest == build.content_digest && !req.force {
            return Ok(PublishOutcome::Unchanged {
                image: image.to_string(),
                channel: req.channel.clone(),
                version: h.version.clone(),
                content_digest: h.content_digest.clone(),
            });
        }
    }

    let uploads = collect_uploads(&req.build_dir, &build, &verify).await?;

    let states = layout::scan(store, image).await?;
    let version = match &req.version {
        Some(v) => v.clone(),
        None => {
            let names: Vec<String> = states.iter().map(|s| s.version.clone()).collect();
            version::next_calver(&names, chrono::Utc::now())
        }
    };
    if let Some(s) = states.iter().find(|s| s.version == version) {
        if s.committed {
            return Err(PublishError::VersionExists {
                image: image.to_string(),
                version,
                store: store.describe(),
            });
        }
    }

    // 2. Claim.
    let publish_id = uuid::Uuid::new_v4().to_string();
    let claim = Claim {
        publish_id: publish_id.clone(),
        host: hostname(),
        pid: std::process::id(),
        started: channel::now(),
        content_digest: build.content_digest.clone(),
        goldsmith_version: crate::VERSION.to_string(),
    };
    let claim_key = layout::key(image, &version, layout::CLAIM);
    match store
        .put_if_absent(&claim_key, layout::to_json(&claim))
        .await
    {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            return Err(conflict(store, image, &version).await);
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!("publishing {image} {version} to {}", store.describe());

    // 3-6, cleaning up after ourselves on failure (we hold the claim, so the folder is ours).
    let committed = upload_and_commit(
        store,
        signer,
        targets,
        req,
        &build,
        &verify,
        &uploads,
        &version,
        &publish_id,
    )
    .await;
    let manifest = match committed {
        Ok(m) => m,
        Err(e) => {
            if !matches!(e, PublishError::Conflict { .. }) {
                remove_own_folder(store, image, &version, &publish_id).await;
            }
            return Err(e);
        }
    };

    // 7. Channel, then the observer (only after the pointer moved).
    let moves: Vec<ChannelMove> = channel::move_to(
        store,
        &req.channel,
        &manifest,
        MoveReason::Publish,
        "publish",
    )
    .await?
    .into_iter()
    .collect();
    if !moves.is_empty() {
        observer
            .channel_moved(&moves)
            .await
            .map_err(|source| PublishError::Observer {
                image: image.to_string(),
                version: version.clone(),
                channels: req.channel.clone(),
                source,
            })?;
    }
    Ok(PublishOutcome::Published {
        manifest: Box::new(manifest),
        moves,
    })
}

/// Who holds a claimed version (for the conflict message).
async fn conflict(store: &dyn Store, image: &str, version: &str) -> PublishError {
    if layout::is_committed(store, image, version)
        .await
        .unwrap_or(false)
    {
        return PublishError::VersionExists {
            image: image.to_string(),
            version: version.to_string(),
            store: store.describe(),
        };
    }
    let holder =
        match layout::get_json::<Claim>(store, &layout::key(image, version, layout::CLAIM)).await {
            Ok(Some(c)) => format!(
                "publish {} on {} pid {}, started {}",
                c.publish_id, c.host, c.pid, c.started
            ),
            _ => "unknown".into(),
        };
    PublishError::Conflict {
        image: image.to_string(),
        version: version.to_string(),
        holder,
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload_and_commit(
    store: &dyn Store,
    signer: &Signer,
    targets: &[NamedTarget],
    req: &PublishRequest,
    build: &BuildRecord,
    verify: &VerifyRecord,
    uploads: &[Upload],
    version: &str,
    publish_id: &str,
) -> Result<Manifest, PublishError> {
    let image = req.image.as_str();

    // 3. Files.
    futures::stream::iter(uploads.iter().map(Ok::<_, PublishError>))
        .try_for_each_concurrent(UPLOADS_IN_FLIGHT, |u| async move {
            tracing::debug!("uploading {} ({} bytes)", u.rel, u.size);
            store
                .put_file(&layout::key(image, version, &u.rel), &u.src)
                .await?;
            Ok(())
        })
        .await?;
    let sbom_bytes = layout::to_json(&sbom::sbom(build, version));
    let sbom_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sbom_bytes));
    let sbom_size = sbom_bytes.len() as u64;
    store
        .put(&layout::key(image, version, layout::SBOM), sbom_bytes)
        .await?;

    // 4. Targets.
    let mut records = TargetRecords::default();
    let location = format!(
        "{}{}",
        store.describe(),
        layout::version_dir(image, version)
    );
    for t in targets {
        let ctx = TargetContext {
            name: &t.name,
            def: &t.def,
            image,
            channel: &req.channel,
            store_location: &location,
        };
        tracing::info!("publish target {}", t.name);
        let outcome = t
            .target
            .publish(&ctx, &req.build_dir, build, version)
            .await
            .map_err(|source| PublishError::Target {
                name: t.name.clone(),
                source,
            })?;
        outcome.record(&mut records);
    }

    // 5. Manifest and signature.
    let mut files: Vec<FileRecord> = uploads
        .iter()
        .map(|u| FileRecord {
            path: u.rel.clone(),
            size: u.size,
            sha256: u.sha256.clone(),
        })
        .collect();
    files.push(FileRecord {
        path: layout::SBOM.into(),
        size: sbom_size,
        sha256: sbom_sha,
    });
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA,
        image: image.to_string(),
        version: version.to_string(),
        content_digest: build.content_digest.clone(),
        published: channel::now(),
        goldsmith_version: crate::VERSION.to_string(),
        source: build.source.clone(),
        layers: build.layers.clone(),
        artifacts: build
            .artifacts
            .iter()
            .map(|a| PublishedArtifact {
                format: a.format,
                path: a.path.clone(),
                url: store.url(&layout::key(image, version, &a.path)),
                size: a.size,
                sha256: a.sha256.clone(),
            })
            .collect(),
        files,
        build: BuildSummary {
            build_id: build.build_id.clone(),
            finished: build.finished.clone(),
            source_date_epoch: build.source_date_epoch,
            disk_mib: build.disk_mib,
            vm: build.vm,
            stages: build.stages.clone(),
        },
        verify: verify_summary(verify),
        packages: build.packages.clone(),
        targets: records,
        changes: build.changes.clone(),
    };
    let manifest_bytes = layout::to_json(&manifest);
    let trusted = format!(
        "goldsmith image={image} version={version} content_digest={}",
        build.content_digest
    );
    let signature = signer.sign(&manifest_bytes, &trusted)?;
    let manifest_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest_bytes));
    store
        .put(
            &layout::key(image, version, layout::MANIFEST),
            manifest_bytes,
        )
        .await?;
    store
        .put(
            &layout::key(image, version, layout::SIGNATURE),
            signature.into_bytes(),
        )
        .await?;

    // 6. Commit.
    let commit = Commit {
        publish_id: publish_id.to_string(),
        version: version.to_string(),
        content_digest: build.content_digest.clone(),
        manifest_sha256,
        committed: channel::now(),
    };
    match store
        .put_if_absent(
            &layout::key(image, version, layout::COMMITTED),
            layout::to_json(&commit),
        )
        .await
    {
        Ok(_) => Ok(manifest),
        // Only possible if our claim was removed (gc) and another publisher took the
        // version: theirs now, leave it alone.
        Err(StoreError::Conflict { .. }) => Err(conflict(store, image, version).await),
        Err(e) => Err(e.into()),
    }
}

/// Remove a failed publish's folder, claim last, but only while the claim is still ours.
async fn remove_own_folder(store: &dyn Store, image: &str, version: &str, publish_id: &str) {
    let claim_key = layout::key(image, version, layout::CLAIM);
    match layout::get_json::<Claim>(store, &claim_key).await {
        Ok(Some(c)) if c.publish_id == publish_id => {}
        _ => return,
    }
    let keys = match store.list(&layout::version_dir(image, version)).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("cannot clean up {image} {version}: {e}; `goldsmith gc` will");
            return;
        }
    };
    let rest = keys.iter().filter(|k| **k != claim_key);
    let removed = futures::stream::iter(rest)
        .map(|k| store.delete(k))
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await;
    match removed {
        Ok(_) => {
            if let Err(e) = store.delete(&claim_key).await {
                tracing::warn!("cannot remove {claim_key}: {e}; `goldsmith gc` will");
            }
        }
        Err(e) => tracing::warn!("cannot clean up {image} {version}: {e}; `goldsmith gc` will"),
    }
}
