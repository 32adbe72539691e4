//! The AMI target against moto server on a loopback port. moto implements EBS direct and
//! the EC2 calls but validates almost nothing (block checksums and sizes, RegisterImage
//! parameters), so these tests read the snapshot's blocks back and compare them with the
//! raw disk, and check the parameters goldsmith sent in moto's request recording.

#[path = "support/servers.rs"]
mod servers;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use aws_credential_types::Credentials;
use base64::Engine as _;
use goldsmith::config::AmiTarget;
use goldsmith::publish::ami::ec2::Ec2Client;
use goldsmith::publish::ami::{self, AmiError, AmiOptions, AmiRequest, EBS_BLOCK_SIZE};
use goldsmith::publish::model::AmiRecord;
use goldsmith::publish::retry::RetryPolicy;
use servers::{Moto, RecordedRequest};
use sha2::{Digest, Sha256};

const VERSION: &str = "2026.11.23.1";
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const ACCOUNT: &str = "111122223333";
const BS: usize = EBS_BLOCK_SIZE as usize;

fn creds() -> Credentials {
    Credentials::new(
        "AKIDGOLDSMITHTEST",
        "goldsmith-test-secret-key",
        None,
        None,
        "test",
    )
}

fn options() -> AmiOptions {
    AmiOptions {
        credentials: Some(creds()),
        retry: RetryPolicy::quick(3),
        block_concurrency: 4,
        wait_timeout: Duration::from_secs(30),
        poll_interval: Duration::from_millis(50),
    }
}

fn target(endpoint: &str, copy_to: &[&str], accounts: &[&str]) -> AmiTarget {
    AmiTarget {
        region: "us-east-1".into(),
        copy_to_regions: copy_to.iter().map(|s| s.to_string()).collect(),
        launch_permissions: accounts.iter().map(|s| s.to_string()).collect(),
        endpoint: Some(endpoint.into()),
    }
}

/// A sparse 5 MiB + 1234 B raw disk: data in blocks 0, 3 and the partial last block, a
/// block of explicitly written zeroes (6: allocated, but must not be sent), holes
/// elsewhere. Returns the disk's blocks, zero-padded to 512 KiB.
fn make_disk(path: &Path) -> Vec<Vec<u8>> {
    let size = 5 * (1 << 20) + 1234;
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size as u64).unwrap();
    let mut put = |offset: usize, bytes: &[u8]| {
        f.seek(SeekFrom::Start(offset as u64)).unwrap();
        f.write_all(bytes).unwrap();
    };
    put(0, b"EFI PART-ish header of block zero");
    put(3 * BS + 4096, &[0xa5; 70_000]);
    put(6 * BS, &vec![0u8; BS]);
    put(size - 1000, b"the end of the disk");
    drop(f);
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks(BS)
        .map(|c| {
            let mut b = c.to_vec();
            b.resize(BS, 0);
            b
        })
        .collect()
}

fn nonzero_blocks(blocks: &[Vec<u8>]) -> BTreeSet<usize> {
    (0..blocks.len())
        .filter(|i| blocks[*i].iter().any(|b| *b != 0))
        .collect()
}

async fn publish(
    cfg: &AmiTarget,
    disk: &Path,
    digest: &str,
    opts: &AmiOptions,
) -> Result<Vec<AmiRecord>, AmiError> {
    let req = AmiRequest {
        target: "aws",
        config: cfg,
        raw_disk: disk,
        image: "web",
        version: VERSION,
        content_digest: digest,
    };
    ami::publish_ami(&req, opts).await
}

fn ebs_client(endpoint: &str) -> aws_sdk_ebs::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_ebs::Config::builder()
        .behavior_version(aws_sdk_ebs::config::BehaviorVersion::latest())
        .region(aws_types::region::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds())
        .http_client(http)
        .build();
    aws_sdk_ebs::Client::from_conf(conf)
}

fn ec2_client(endpoint: &str, region: &str) -> Ec2Client {
    Ec2Client::new(
        region,
        Some(endpoint),
        aws_credential_types::provider::SharedCredentialsProvider::new(creds()),
    )
    .unwrap()
}

/// The snapshot's block indices (ListSnapshotBlocks). moto lists them with string
/// indices, which the SDK's strict parser refuses, so this call is made by hand.
async fn list_snapshot_blocks(endpoint: &str, snapshot_id: &str) -> BTreeMap<usize, String> {
    // moto routes by the credential scope and does not check signatures.
    let auth =
        "AWS4-HMAC-SHA256 Credential=AKIDGOLDSMITHTEST/20260101/us-east-1/ebs/aws4_request, \
                SignedHeaders=host, Signature=0";
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{endpoint}/snapshots/{snapshot_id}/blocks"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    v["Blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let idx = match &b["BlockIndex"] {
                serde_json::Value::Number(n) => n.as_u64().unwrap() as usize,
                serde_json::Value::String(s) => s.parse().unwrap(),
                other => panic!("bad BlockIndex {other}"),
            };
            (idx, b["BlockToken"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Read every block of the snapshot back (GetSnapshotBlock) and compare the snapshot
/// with the raw disk: exactly the non-zero blocks, byte for byte.
async fn assert_snapshot_equals_disk(endpoint: &str, snapshot_id: &str, blocks: &[Vec<u8>]) {
    let listed = list_snapshot_blocks(endpoint, snapshot_id).await;
    let want = nonzero_blocks(blocks);
    assert_eq!(
        listed.keys().copied().collect::<BTreeSet<_>>(),
        want,
        "the snapshot holds exactly the disk's non-zero blocks"
    );
    let ebs = ebs_client(endpoint);
    for (idx, token) in &listed {
        let out = ebs
            .get_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(*idx as i32)
            .block_token(token)
            .send()
            .await
            .unwrap();
        let data = out.block_data.collect().await.unwrap().into_bytes();
        assert!(
            data[..] == blocks[*idx][..],
            "block {idx} differs from the disk"
        );
    }
}

fn b64_sha256(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

fn ec2_calls<'a>(recorded: &'a [RecordedRequest], action: &str) -> Vec<&'a RecordedRequest> {
    recorded
        .iter()
        .filter(|r| r.ec2_action().as_deref() == Some(action))
        .collect()
}

fn tags_of(form: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    (1..)
        .map_while(|i| {
            Some((
                form.get(&format!("Tag.{i}.Key"))?.clone(),
                form.get(&format!("Tag.{i}.Value"))?.clone(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn publishes_snapshot_ami_copy_and_permissions_with_the_right_parameters() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let blocks = make_disk(&disk);
    let cfg = target(&moto.endpoint, &["eu-west-1"], &[ACCOUNT]);

    let records = publish(&cfg, &disk, DIGEST, &options()).await.unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    let (home, copy) = (&records[0], &records[1]);
    assert_eq!(
        (home.target.as_str(), home.region.as_str()),
        ("aws", "us-east-1")
    );
    assert_eq!(
        (copy.target.as_str(), copy.region.as_str()),
        ("aws", "eu-west-1")
    );
    assert!(home.image_id.starts_with("ami-") && copy.image_id.starts_with("ami-"));
    assert_ne!(home.image_id, copy.image_id);
    assert!(home.snapshot_id.starts_with("snap-"), "{home:?}");
    assert!(copy.snapshot_id.starts_with("snap-"), "{copy:?}");

    // The snapshot holds the disk.
    assert_snapshot_equals_disk(&moto.endpoint, &home.snapshot_id, &blocks).await;

    let recorded = moto.recorded();
    // StartSnapshot: 1 GiB volume, tagged.
    let start = recorded
        .iter()
        .find(|r| r.method == "POST" && r.path() == "/snapshots")
        .expect("StartSnapshot");
    let body: serde_json::Value = serde_json::from_slice(&start.body).unwrap();
    assert_eq!(body["VolumeSize"], 1);
    assert!(body["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["Key"] == "goldsmith:digest" && t["Value"] == DIGEST));

    // PutSnapshotBlock: full 512 KiB blocks with their own SHA-256, only non-zero ones.
    let puts: Vec<_> = recorded
        .iter()
        .filter(|r| r.method == "PUT" && r.path().contains("/blocks/"))
        .collect();
    let mut sent = BTreeSet::new();
    for p in &puts {
        let idx: usize = p.path().rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(p.body.len(), BS, "block {idx} size");
        assert_eq!(p.body, blocks[idx], "block {idx} content");
        assert_eq!(p.header("x-amz-data-length"), Some("524288"));
        assert_eq!(p.header("x-amz-checksum-algorithm"), Some("SHA256"));
        assert_eq!(
            p.header("x-amz-checksum"),
            Some(b64_sha256(&p.body).as_str()),
            "block {idx} checksum"
        );
        assert!(sent.insert(idx), "block {idx} sent twice");
    }
    assert_eq!(sent, nonzero_blocks(&blocks));
    assert!(!sent.contains(&6), "the written-zero block must be skipped");

    // CompleteSnapshot: changed-block count and the LINEAR aggregate, computed here
    // independently from the disk.
    let complete = recorded
        .iter()
        .find(|r| r.path().starts_with("/snapshots/completion/"))
        .expect("CompleteSnapshot");
    let mut agg = Sha256::new();
    for i in nonzero_blocks(&blocks) {
        agg.update(Sha256::digest(&blocks[i]));
    }
    let agg = base64::engine::general_purpose::STANDARD.encode(agg.finalize());
    assert_eq!(
        complete.header("x-amz-changedblockscount"),
        Some(sent.len().to_string().as_str())
    );
    assert_eq!(complete.header("x-amz-checksum"), Some(agg.as_str()));
    assert_eq!(complete.header("x-amz-checksum-algorithm"), Some("SHA256"));
    assert_eq!(
        complete.header("x-amz-checksum-aggregation-method"),
        Some("LINEAR")
    );

    // RegisterImage: everything moto does not keep.
    let reg = ec2_calls(&recorded, "RegisterImage");
    assert_eq!(reg.len(), 1);
    let f = reg[0].form();
    for (k, v) in [
        ("Name", format!("goldsmith-web-{VERSION}")),
        ("Architecture", "x86_64".into()),
        ("BootMode", "uefi".into()),
        ("EnaSupport", "true".into()),
        ("VirtualizationType", "hvm".into()),
        ("RootDeviceName", "/dev/xvda".into()),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda".into()),
        (
            "BlockDeviceMapping.1.Ebs.SnapshotId",
            home.snapshot_id.clone(),
        ),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3".into()),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "1".into()),
        (
            "BlockDeviceMapping.1.Ebs.DeleteOnTermination",
            "true".into(),
        ),
    ] {
        assert_eq!(f.get(k), Some(&v), "RegisterImage {k}");
    }
    assert!(reg[0]
        .header("authorization")
        .unwrap()
        .contains("/us-east-1/ec2/aws4_request"));

    // Tags on both AMIs.
    let tagged: BTreeMap<String, BTreeMap<String, String>> = ec2_calls(&recorded, "CreateTags")
        .iter()
        .map(|r| {
            let f = r.form();
            (f["ResourceId.1"].clone(), tags_of(&f))
        })
        .collect();
    for id in [&home.image_id, &copy.image_id] {
        let t = tagged.get(id).unwrap_or_else(|| panic!("{id} not tagged"));
        assert_eq!(t.get("goldsmith:image").map(String::as_str), Some("web"));
        assert_eq!(
            t.get("goldsmith:version").map(String::as_str),
            Some(VERSION)
        );
        assert_eq!(t.get("goldsmith:digest").map(String::as_str), Some(DIGEST));
    }

    // CopyImage, sent to the destination region.
    let copies = ec2_calls(&recorded, "CopyImage");
    assert_eq!(copies.len(), 1);
    let f = copies[0].form();
    assert_eq!(f.get("SourceImageId"), Some(&home.image_id));
    assert_eq!(f.get("SourceRegion").map(String::as_str), Some("us-east-1"));
    assert!(copies[0]
        .header("authorization")
        .unwrap()
        .contains("/eu-west-1/ec2/aws4_request"));

    // Launch permissions on both AMIs, as moto stores them.
    let granted: BTreeSet<String> = ec2_calls(&recorded, "ModifyImageAttribute")
        .iter()
        .map(|r| {
            let f = r.form();
            assert_eq!(
                f.get("LaunchPermission.Add.1.UserId").map(String::as_str),
                Some(ACCOUNT)
            );
            f["ImageId"].clone()
        })
        .collect();
    assert_eq!(
        granted,
        [home.image_id.clone(), copy.image_id.clone()].into()
    );
    for (region, id) in [("us-east-1", &home.image_id), ("eu-west-1", &copy.image_id)] {
        let xml = ec2_client(&moto.endpoint, region)
            .call(
                "DescribeImageAttribute",
                &[
                    ("ImageId".into(), id.clone()),
                    ("Attribute".into(), "launchPermission".into()),
                ],
            )
            .await
            .unwrap();
        assert!(xml.contains(ACCOUNT), "{region} {id}: {xml}");
        let img = ec2_client(&moto.endpoint, region)
            .describe_image(id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            img.tags.get("goldsmith:digest").map(String::as_str),
            Some(DIGEST)
        );
    }

    // The secret key never travels or shows.
    assert!(recorded.iter().all(|r| !r
        .headers
        .values()
        .any(|v| v.contains("goldsmith-test-secret-key"))));
}

#[tokio::test]
async fn a_rerun_reuses_the_ami_and_other_content_under_the_name_is_refused() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let cfg = target(&moto.endpoint, &[], &[]);

    let first = publish(&cfg, &disk, DIGEST, &options()).await.unwrap();
    moto.reset_recording();
    let again = publish(&cfg, &disk, DIGEST, &options()).await.unwrap();
    assert_eq!(again[0].image_id, first[0].image_id);
    let recorded = moto.recorded();
    assert!(
        !recorded.iter().any(|r| r.path().starts_with("/snapshots")),
        "a rerun must not upload again"
    );
    assert!(ec2_calls(&recorded, "RegisterImage").is_empty());

    let other = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    let err = publish(&cfg, &disk, other, &options()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AmiError::NameTaken { .. }), "{msg}");
    assert!(
        msg.contains("'aws'") && msg.contains(&first[0].image_id),
        "{msg}"
    );
}

#[tokio::test]
async fn a_failure_after_registering_removes_what_was_created() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let name = ami::ami_name("web", VERSION);

    // The copy region already has an AMI of that name with other content, so the copy
    // step fails after the home region's snapshot and AMI exist.
    let eu = ec2_client(&moto.endpoint, "eu-west-1");
    let squatter = eu
        .register_image(&ami::ec2::RegisterImage {
            name: &name,
            description: "someone else's",
            snapshot_id: "snap-12345678",
            volume_size_gib: 1,
            root_device: "/dev/xvda",
        })
        .await
        .unwrap();
    eu.create_tags(&squatter, &[("goldsmith:digest", "sha256:other")])
        .await
        .unwrap();

    let cfg = target(&moto.endpoint, &["eu-west-1"], &[]);
    let err = publish(&cfg, &disk, DIGEST, &options()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AmiError::NameTaken { .. }), "{msg}");
    assert!(
        msg.contains("eu-west-1") && msg.contains(&squatter),
        "{msg}"
    );

    let recorded = moto.recorded();
    let registered = ec2_calls(&recorded, "RegisterImage");
    let deregistered: Vec<String> = ec2_calls(&recorded, "DeregisterImage")
        .iter()
        .map(|r| r.form()["ImageId"].clone())
        .collect();
    let deleted: Vec<String> = ec2_calls(&recorded, "DeleteSnapshot")
        .iter()
        .map(|r| r.form()["SnapshotId"].clone())
        .collect();
    assert_eq!(registered.len(), 2, "the squatter's and ours");
    assert_eq!(deregistered.len(), 1, "{deregistered:?}");
    let uploaded = recorded
        .iter()
        .find_map(|r| r.path().strip_prefix("/snapshots/completion/"))
        .expect("CompleteSnapshot")
        .to_string();
    assert!(deleted.contains(&uploaded), "{uploaded} not in {deleted:?}");
    let us = ec2_client(&moto.endpoint, "us-east-1");
    assert!(us
        .describe_own_images_named(&name)
        .await
        .unwrap()
        .is_empty());
    let state = us.snapshot_state(&uploaded).await;
    assert!(
        matches!(state, Ok(None)) || state.is_err(),
        "snapshot still there: {state:?}"
    );
    // The squatter is untouched.
    assert_eq!(eu.describe_own_images_named(&name).await.unwrap().len(), 1);
}

#[tokio::test]
async fn endpoint_down_fails_after_retries_naming_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let endpoint = format!("http://127.0.0.1:{}", servers::free_port());
    let err = publish(&target(&endpoint, &[], &[]), &disk, DIGEST, &options())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, AmiError::Unavailable { attempts: 3, .. }),
        "{msg}"
    );
    assert!(msg.contains("'aws'") && msg.contains(&endpoint), "{msg}");
    assert!(msg.contains("3 attempts"), "{msg}");
}

/// Set in the child process that runs with a scrubbed environment.
const CHILD: &str = "GOLDSMITH_AMI_TEST_CHILD";

/// With no credentials anywhere in the standard chain, the error names the target and
/// what to set. The chain reads the environment and ~/.aws, so this runs in a child
/// process with a scrubbed environment and an empty home (and instance metadata off).
#[tokio::test]
async fn missing_credentials_name_the_target_and_what_to_set() {
    if std::env::var_os(CHILD).is_none() {
        let home = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "missing_credentials_name_the_target_and_what_to_set",
                "--exact",
                "--nocapture",
            ])
            .env_clear()
            .env(CHILD, "1")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("AWS_CONFIG_FILE", home.path().join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("none"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("child checked the error"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let endpoint = format!("http://127.0.0.1:{}", servers::free_port());
    let opts = AmiOptions {
        credentials: None,
        ..options()
    };
    let err = publish(&target(&endpoint, &[], &[]), &disk, DIGEST, &opts)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AmiError::MissingCredentials { .. }), "{msg}");
    assert!(
        msg.contains("'aws'") && msg.contains("AWS_ACCESS_KEY_ID"),
        "{msg}"
    );
    println!("child checked the error: {msg}");
}
