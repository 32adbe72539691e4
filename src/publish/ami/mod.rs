//! The AWS AMI target: upload the raw disk as an EBS snapshot through the EBS direct APIs
//! (no S3 bucket, no vmimport role; see [`snapshot`]), register it as an AMI (x86_64,
//! UEFI, ENA, HVM, gp3 root on `/dev/xvda`), tag snapshot and AMI with the image, version
//! and content digest, and optionally copy it to more regions and grant launch
//! permissions to listed accounts.
//!
//! EBS direct goes through the AWS SDK (`aws-sdk-ebs`, a small crate); credentials come
//! from the SDK's standard chain (`aws-config`: environment, profiles and
//! credential_process, web identity, container and instance metadata). EC2 goes through
//! the small query-API client in [`ec2`] (why: see there). The SDK's own retries are
//! switched off so that every call retries the same way (backon, [`RetryPolicy`]) and
//! fails with one kind of message. The endpoint can be overridden (a local emulator), so
//! the same code runs against AWS and against moto in the tests.
//!
//! If a step fails after resources were created, the AMIs and snapshots this call made
//! are removed again (best effort; a failure to remove is logged), so a failed publish
//! leaves no half-published AMI. A rerun finds an AMI of the same name and content digest
//! and reuses it instead of uploading again; one with other content is an error.

mod aws;
pub mod ec2;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_credential_types::Credentials;

use self::aws::Aws;
use self::ec2::RegisterImage;
pub use self::snapshot::{SnapshotUpload, EBS_BLOCK_SIZE};
use super::model::AmiRecord;
use super::retry::RetryPolicy;
use crate::config::AmiTarget;

/// Root device of the AMI.
pub const ROOT_DEVICE: &str = "/dev/xvda";
/// Tag keys set on snapshots and AMIs.
pub const TAG_IMAGE: &str = "goldsmith:image";
pub const TAG_VERSION: &str = "goldsmith:version";
pub const TAG_DIGEST: &str = "goldsmith:digest";

/// What to publish as an AMI.
#[derive(Debug, Clone, Copy)]
pub struct AmiRequest<'a> {
    /// The target's name in goldsmith.toml (`[targets.NAME.ami]`).
    pub target: &'a str,
    pub config: &'a AmiTarget,
    /// The raw disk image (GPT, UEFI-bootable).
    pub raw_disk: &'a Path,
    pub image: &'a str,
    pub version: &'a str,
    /// The image's content digest (`sha256:…`), recorded as a tag.
    pub content_digest: &'a str,
}

/// How the AMI target talks to AWS.
#[derive(Debug, Clone)]
pub struct AmiOptions {
    /// Use these credentials instead of the standard AWS credential chain.
    pub credentials: Option<Credentials>,
    /// Retry budget of every API call and every block.
    pub retry: RetryPolicy,
    /// Blocks uploaded at the same time.
    pub block_concurrency: usize,
    /// How long to wait for a snapshot to complete or an AMI (copy) to become available.
    pub wait_timeout: Duration,
    /// Poll interval while waiting.
    pub poll_interval: Duration,
}

impl Default for AmiOptions {
    fn default() -> Self {
        AmiOptions {
            credentials: None,
            retry: RetryPolicy::default(),
            block_concurrency: 16,
            wait_timeout: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// Why the AMI target failed. Every message names the target.
#[derive(Debug, thiserror::Error)]
pub enum AmiError {
    #[error("target '{target}': {message}")]
    Config { target: String, message: String },
    #[error(
        "target '{target}': no usable AWS credentials ({detail}); set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE, \
         or run where a role provides them"
    )]
    MissingCredentials { target: String, detail: String },
    #[error("target '{target}': cannot read {}: {source}", path.display())]
    Io {
        target: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "target '{target}': AWS endpoint {endpoint} ({call}) is unreachable or failing; gave \
         up after {attempts} attempts: {detail}"
    )]
    Unavailable {
        target: String,
        endpoint: String,
        /// What was called where: `DescribeImages in us-east-1`.
        call: String,
        attempts: usize,
        detail: String,
    },
    #[error("target '{target}': AWS refused the credentials ({operation} in {region}): {detail}")]
    AuthRejected {
        target: String,
        region: String,
        operation: String,
        detail: String,
    },
    #[error("target '{target}': {operation} in {region} failed: {detail}")]
    Api {
        target: String,
        region: String,
        operation: String,
        detail: String,
    },
    #[error(
        "target '{target}': an AMI named '{name}' already exists in {region} ({image_id}) \
         with other content (its {TAG_DIGEST} tag is {found:?}); AMI names are unique per \
         region: deregister it, or publish under another version"
    )]
    NameTaken {
        target: String,
        region: String,
        name: String,
        image_id: String,
        found: Option<String>,
    },
    #[error("target '{target}': {what} in {region} ended in state '{state}'")]
    BadState {
        target: String,
        region: String,
        what: String,
        state: String,
    },
    #[error("target '{target}': {what} in {region} did not finish within {secs}s")]
    Timeout {
        target: String,
        region: String,
        what: String,
        secs: u64,
    },
}

/// The AMI name goldsmith uses for a version (AMI names are unique per region).
pub fn ami_name(image: &str, version: &str) -> String {
    format!("goldsmith-{image}-{version}")
}

/// Upload `req.raw_disk` as a snapshot, register it as an AMI, tag it, copy it to the
/// configured regions and grant the configured launch permissions. One record per region,
/// the target's own region first.
pub async fn publish_ami(
    req: &AmiRequest<'_>,
    opts: &AmiOptions,
) -> Result<Vec<AmiRecord>, AmiError> {
    validate(req)?;
    let aws = Aws::connect(req, opts).await?;
    let mut created = Created::default();
    let result = publish(&aws, req, &mut created).await;
    if result.is_err() {
        roll_back(&aws, created).await;
    }
    result
}

fn validate(req: &AmiRequest<'_>) -> Result<(), AmiError> {
    let cfg = req.config;
    let bad = |message: String| AmiError::Config {
        target: req.target.into(),
        message,
    };
    let region_ok = |r: &str| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    for r in std::iter::once(&cfg.region).chain(&cfg.copy_to_regions) {
        if !region_ok(r) {
            return Err(bad(format!("'{r}' is not an AWS region name")));
        }
    }
    for a in &cfg.launch_permissions {
        if a.len() != 12 || !a.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad(format!(
                "launch_permissions: '{a}' is not a 12-digit AWS account id"
            )));
        }
    }
    let name = ami_name(req.image, req.version);
    let name_ok = (3..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if !name_ok {
        return Err(bad(format!(
            "AMI name '{name}' is not allowed (3-128 characters: letters, digits, spaces and ( ) [ ] . / - ' @ _)"
        )));
    }
    if let Some(ep) = &cfg.endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(bad(format!(
                "endpoint '{ep}' must start with http:// or https://"
            )));
        }
    }
    Ok(())
}

/// Resources this call created, removed again if a later step fails.
#[derive(Debug, Default)]
struct Created {
    /// (region, snapshot id)
    snapshots: Vec<(String, String)>,
    /// (region, image id)
    images: Vec<(String, String)>,
}

async fn publish(
    aws: &Aws<'_>,
    req: &AmiRequest<'_>,
    created: &mut Created,
) -> Result<Vec<AmiRecord>, AmiError> {
    let name = ami_name(req.image, req.version);
    let description = format!(
        "goldsmith image {} version {} ({})",
        req.image, req.version, req.content_digest
    );
    let tags = [
        (TAG_IMAGE, req.image),
        (TAG_VERSION, req.version),
        (TAG_DIGEST, req.content_digest),
    ];
    let region = aws.region.clone();

    let (image_id, snapshot_id) =
        match existing_image(aws, &region, &name, req.content_digest).await? {
            Some(found) => {
                tracing::info!(
                    target_name = aws.target,
                    "AMI {} ({name}) already holds this content in {region}; reusing it",
                    found.0
                );
                found
            }
            None => {
                let up = aws
                    .upload_snapshot(req.raw_disk, &description, &tags, &mut created.snapshots)
                    .await?;
                aws.wait_snapshot(&region, &up.snapshot_id).await?;
                let register = RegisterImage {
                    name: &name,
                    description: &description,
                    snapshot_id: &up.snapshot_id,
                    volume_size_gib: up.volume_size_gib,
                    root_device: ROOT_DEVICE,
                };
                let image_id = aws
                    .call(&region, "RegisterImage", &[], || {
                        aws.ec2.register_image(&register)
                    })
                    .await?;
                created.images.push((region.clone(), image_id.clone()));
                tag(aws, &region, &image_id, &tags).await?;
                (image_id, up.snapshot_id)
            }
        };
    aws.wait_image(&region, &image_id).await?;
    grant(aws, &region, &image_id, &req.config.launch_permissions).await?;
    let mut records = vec![AmiRecord {
        target: aws.target.into(),
        region: region.clone(),
        image_id: image_id.clone(),
        snapshot_id,
    }];

    let mut seen = vec![region.clone()];
    for dest in &req.config.copy_to_regions {
        if seen.contains(dest) {
            continue;
        }
        seen.push(dest.clone());
        let copy = Copy {
            dest,
            source_image: &image_id,
            name: &name,
            description: &description,
            tags: &tags,
            digest: req.content_digest,
            accounts: &req.config.launch_permissions,
        };
        records.push(copy_to(aws, &copy, created).await?);
    }
    Ok(records)
}

/// An AMI of this name owned by us: reuse it when it holds this content digest, refuse
/// when it holds other content. `(image_id, root snapshot id)`.
async fn existing_image(
    aws: &Aws<'_>,
    region: &str,
    name: &str,
    digest: &str,
) -> Result<Option<(String, String)>, AmiError> {
    let ec2 = aws.ec2_in(region);
    let images = aws
        .call(region, "DescribeImages", &[], || {
            ec2.describe_own_images_named(name)
        })
        .await?;
    let Some(img) = images.into_iter().next() else {
        return Ok(None);
    };
    let found = img.tags.get(TAG_DIGEST).cloned();
    if found.as_deref() != Some(digest) {
        return Err(AmiError::NameTaken {
            target: aws.target.into(),
            region: region.into(),
            name: name.into(),
            image_id: img.image_id,
            found,
        });
    }
    Ok(Some((img.image_id, img.root_snapshot.unwrap_or_default())))
}

async fn tag(aws: &Aws<'_>, region: &str, id: &str, tags: &[(&str, &str)]) -> Result<(), AmiError> {
    let ec2 = aws.ec2_in(region);
    // A new AMI may not be visible to CreateTags for a moment.
    aws.call(region, "CreateTags", &["InvalidAMIID.NotFound"], || {
        ec2.create_tags(id, tags)
    })
    .await
}

async fn grant(
    aws: &Aws<'_>,
    region: &str,
    image_id: &str,
    accounts: &[String],
) -> Result<(), AmiError> {
    if accounts.is_empty() {
        return Ok(());
    }
    let ec2 = aws.ec2_in(region);
    aws.call(region, "ModifyImageAttribute", &[], || {
        ec2.add_launch_permissions(image_id, accounts)
    })
    .await
}

/// One copy of the AMI into another region.
struct Copy<'a> {
    dest: &'a str,
    source_image: &'a str,
    name: &'a str,
    description: &'a str,
    tags: &'a [(&'a str, &'a str)],
    digest: &'a str,
    accounts: &'a [String],
}

async fn copy_to(
    aws: &Aws<'_>,
    c: &Copy<'_>,
    created: &mut Created,
) -> Result<AmiRecord, AmiError> {
    let ec2 = aws.ec2_in(c.dest);
    let image_id = match existing_image(aws, c.dest, c.name, c.digest).await? {
        Some((id, _)) => id,
        None => {
            // One token for every attempt: a retried CopyImage does not copy twice.
            let token = hex::encode(rand::random::<[u8; 16]>());
            let id = aws
                .call(c.dest, "CopyImage", &[], || {
                    ec2.copy_image(c.source_image, &aws.region, c.name, c.description, &token)
                })
                .await?;
            created.images.push((c.dest.to_string(), id.clone()));
            tag(aws, c.dest, &id, c.tags).await?;
            id
        }
    };
    aws.wait_image(c.dest, &image_id).await?;
    let info = aws
        .call(c.dest, "DescribeImages", &[], || {
            ec2.describe_image(&image_id)
        })
        .await?;
    let snapshot_id = info.and_then(|i| i.root_snapshot).unwrap_or_default();
    grant(aws, c.dest, &image_id, c.accounts).await?;
    Ok(AmiRecord {
        target: aws.target.into(),
        region: c.dest.into(),
        image_id,
        snapshot_id,
    })
}

/// Remove what this call created (best effort, newest first). Deregistering an AMI keeps
/// its snapshot, so each AMI's root snapshot is looked up first and deleted too (a copy
/// that failed halfway has one we never saw).
async fn roll_back(aws: &Aws<'_>, created: Created) {
    let mut snapshots = created.snapshots;
    for (region, id) in created.images.iter().rev() {
        let ec2 = aws.ec2_in(region);
        if let Ok(Some(snap)) = ec2
            .describe_image(id)
            .await
            .map(|i| i.and_then(|i| i.root_snapshot))
        {
            let entry = (region.clone(), snap);
            if !snapshots.contains(&entry) {
                snapshots.push(entry);
            }
        }
        if let Err(e) = ec2.deregister_image(id).await {
            tracing::warn!(
                target_name = aws.target,
                "could not deregister AMI {id} in {region} after the failure: {e}"
            );
        }
    }
    for (region, id) in snapshots.iter().rev() {
        if let Err(e) = aws.ec2_in(region).delete_snapshot(id).await {
            tracing::warn!(
                target_name = aws.target,
                "could not delete snapshot {id} in {region} after the failure (AWS abandons \
                 an unfinished one after {} minutes): {e}",
                snapshot::SNAPSHOT_TIMEOUT_MINUTES
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_bad_field() {
        let cfg = AmiTarget {
            region: "us-east-1".into(),
            copy_to_regions: vec![],
            launch_permissions: vec!["12345".into()],
            endpoint: None,
        };
        let req = AmiRequest {
            target: "aws",
            config: &cfg,
            raw_disk: Path::new("/nonexistent"),
            image: "web",
            version: "2026.11.23.1",
            content_digest: "sha256:00",
        };
        let e = validate(&req).unwrap_err().to_string();
        assert!(e.contains("'aws'") && e.contains("12345"), "{e}");
        let regions = AmiTarget {
            launch_permissions: vec![],
            copy_to_regions: vec!["US East".into()],
            ..cfg.clone()
        };
        let e = validate(&AmiRequest {
            config: &regions,
            ..req
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("US East"), "{e}");
        let endpoint = AmiTarget {
            launch_permissions: vec![],
            endpoint: Some("127.0.0.1:5000".into()),
            ..cfg.clone()
        };
        let e = validate(&AmiRequest {
            config: &endpoint,
            ..req
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("http://"), "{e}");
    }
}
