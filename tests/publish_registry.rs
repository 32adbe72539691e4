//! The OCI registry target against Debian's docker-registry on a loopback port, checked
//! with skopeo (inspect, and a full pull that downloads and verifies every blob).

#[path = "support/servers.rs"]
mod servers;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use goldsmith::config::RegistryTarget;
use goldsmith::publish::registry::{self, Credentials, PushRequest, RegistryError};
use goldsmith::publish::retry::RetryPolicy;
use serde_json::json;
use servers::{DockerRegistry, REGISTRY_PASSWORD, REGISTRY_USER};
use sha2::{Digest, Sha256};

const VERSION: &str = "2026.11.23.1";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What the test layout holds.
struct Layout {
    dir: tempfile::TempDir,
    manifest: Vec<u8>,
    manifest_digest: String,
    config_digest: String,
    layer_digests: Vec<String>,
}

impl Layout {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let p = dir.join("blobs/sha256").join(&digest[7..]);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
    digest
}

/// A small OCI image layout as the build writes one: two gzip layers (one per recipe
/// layer), an image config, a manifest with the standard annotations, an index.
fn make_layout(seed: &str) -> Layout {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut layer_digests = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layers = Vec::new();
    for (i, name) in ["base", "web"].iter().enumerate() {
        let mut tar = tar::Builder::new(Vec::new());
        let content = format!("layer {name} of {seed}\n").repeat(200 + i * 50);
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_735_689_600);
        h.set_cksum();
        tar.append_data(
            &mut h,
            format!("etc/goldsmith/{name}.txt"),
            content.as_bytes(),
        )
        .unwrap();
        let tar = tar.into_inner().unwrap();
        diff_ids.push(sha256(&tar));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let digest = put_blob(dir.path(), &gz);
        layers.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": gz.len(),
            "annotations": {"org.opencontainers.image.title": name},
        }));
        layer_digests.push(digest);
    }
    let config = serde_json::to_vec(&json!({
        "created": "2025-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = put_blob(dir.path(), &config);
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layers,
        "annotations": {
            "org.opencontainers.image.version": VERSION,
            "org.opencontainers.image.created": "2025-01-01T00:00:00Z",
            "org.opencontainers.image.title": "web",
            "org.opencontainers.image.revision": seed,
            "org.opencontainers.image.source": "https://example.invalid/recipes",
        },
    }))
    .unwrap();
    let manifest_digest = put_blob(dir.path(), &manifest);
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": VERSION},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    Layout {
        dir,
        manifest,
        manifest_digest,
        config_digest,
        layer_digests,
    }
}

fn target(addr: &str) -> RegistryTarget {
    RegistryTarget {
        registry: addr.into(),
        repository: "goldsmith/{image}".into(),
        insecure: true,
        username_env: None,
        password_env: None,
    }
}

fn tags() -> Vec<String> {
    vec![VERSION.into(), "nightly".into()]
}

async fn push(
    cfg: &RegistryTarget,
    layout: &Path,
    creds: Option<&Credentials>,
    retry: &RetryPolicy,
) -> Result<registry::PushOutcome, RegistryError> {
    let tags = tags();
    let req = PushRequest {
        target: "registry",
        config: cfg,
        image: "web",
        layout,
        tags: &tags,
    };
    registry::push_layout(&req, creds, retry).await
}

fn skopeo(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn creds_args(auth: bool) -> Vec<String> {
    if auth {
        vec![
            "--creds".into(),
            format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"),
        ]
    } else {
        vec![]
    }
}

/// `skopeo inspect` of a tag: (digest, layer digests).
fn inspect(reg: &DockerRegistry, tag: &str) -> (String, Vec<String>) {
    let image = format!("docker://{}/goldsmith/web:{tag}", reg.addr);
    let mut args = vec!["inspect", "--tls-verify=false"];
    let creds = creds_args(reg.auth);
    args.extend(creds.iter().map(String::as_str));
    args.push(&image);
    let out = skopeo(&args).expect("skopeo inspect");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let layers = v["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    (v["Digest"].as_str().unwrap().to_string(), layers)
}

/// Pull `tag` into an empty `dir:` directory (skopeo downloads every blob and checks its
/// digest) and compare what arrived with the layout, byte for byte.
fn pull_back(reg: &DockerRegistry, tag: &str, layout: &Layout) -> Result<(), String> {
    let out = tempfile::tempdir().unwrap();
    let src = format!("docker://{}/goldsmith/web:{tag}", reg.addr);
    let dst = format!("dir:{}", out.path().display());
    let mut args = vec!["copy", "--src-tls-verify=false"];
    let creds: Vec<String> = creds_args(reg.auth)
        .into_iter()
        .map(|a| a.replace("--creds", "--src-creds"))
        .collect();
    args.extend(creds.iter().map(String::as_str));
    args.extend([src.as_str(), dst.as_str()]);
    skopeo(&args)?;
    let manifest = std::fs::read(out.path().join("manifest.json")).map_err(|e| e.to_string())?;
    if manifest != layout.manifest {
        return Err("the pulled manifest differs from the layout's".into());
    }
    for d in layout
        .layer_digests
        .iter()
        .chain(std::iter::once(&layout.config_digest))
    {
        let pulled = std::fs::read(out.path().join(&d[7..]))
            .map_err(|e| format!("blob {d} was not pulled: {e}"))?;
        let ours = std::fs::read(layout.path().join("blobs/sha256").join(&d[7..])).unwrap();
        if pulled != ours || sha256(&pulled) != *d {
            return Err(format!("blob {d} differs"));
        }
    }
    Ok(())
}

fn registry_blob_data(reg: &DockerRegistry, digest: &str) -> PathBuf {
    let hex = &digest[7..];
    reg.storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test]
async fn push_tags_version_and_channel_and_pulls_back_identical() {
    let reg = DockerRegistry::start();
    let layout = make_layout("one");
    let cfg = target(&reg.addr);

    let out = push(&cfg, layout.path(), None, &RetryPolicy::quick(3))
        .await
        .unwrap();
    assert_eq!(out.pushed.digest, layout.manifest_digest);
    assert_eq!(
        out.pushed.reference,
        format!("{}/goldsmith/web@{}", reg.addr, layout.manifest_digest)
    );
    assert_eq!(out.pushed.tags, tags());
    assert_eq!(out.pushed.target, "registry");
    assert_eq!((out.blobs_uploaded, out.blobs_present), (3, 0));

    for tag in tags() {
        let (digest, layers) = inspect(&reg, &tag);
        assert_eq!(digest, layout.manifest_digest, "tag {tag}");
        assert_eq!(layers, layout.layer_digests, "tag {tag}");
        pull_back(&reg, &tag, &layout).unwrap();
    }
    // Pull by the recorded reference, too.
    let by_digest = format!("docker://{}", out.pushed.reference);
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &by_digest]).unwrap();
    assert_eq!(
        raw, layout.manifest,
        "the manifest bytes are pushed unchanged"
    );

    // A second push of the same content uploads nothing and gives the same record.
    let again = push(&cfg, layout.path(), None, &RetryPolicy::quick(3))
        .await
        .unwrap();
    assert_eq!(again.pushed, out.pushed);
    assert_eq!((again.blobs_uploaded, again.blobs_present), (0, 3));
}

#[tokio::test]
async fn pull_back_catches_a_missing_blob_and_a_push_repairs_it() {
    let reg = DockerRegistry::start();
    let layout = make_layout("two");
    let cfg = target(&reg.addr);
    push(&cfg, layout.path(), None, &RetryPolicy::quick(3))
        .await
        .unwrap();
    pull_back(&reg, "nightly", &layout).unwrap();

    // Lose a layer's data in the registry: inspect (manifest only) still passes, the
    // full pull must not.
    let data = registry_blob_data(&reg, &layout.layer_digests[1]);
    std::fs::remove_file(&data).unwrap();
    let (digest, _) = inspect(&reg, "nightly");
    assert_eq!(digest, layout.manifest_digest);
    let err = pull_back(&reg, "nightly", &layout).unwrap_err();
    assert!(!err.is_empty());

    // The registry reports the blob missing, so the next push uploads it again.
    let out = push(&cfg, layout.path(), None, &RetryPolicy::quick(3))
        .await
        .unwrap();
    assert_eq!((out.blobs_uploaded, out.blobs_present), (1, 2));
    pull_back(&reg, "nightly", &layout).unwrap();
}

#[tokio::test]
async fn registry_down_fails_after_retries_naming_the_registry() {
    let addr = format!("127.0.0.1:{}", servers::free_port());
    let layout = make_layout("down");
    let start = std::time::Instant::now();
    let err = push(&target(&addr), layout.path(), None, &RetryPolicy::quick(3))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::Unavailable { attempts: 3, .. }),
        "{msg}"
    );
    assert!(msg.contains("'registry'") && msg.contains(&addr), "{msg}");
    assert!(msg.contains("3 attempts"), "{msg}");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
}

/// A loopback proxy that answers the first `fail` requests with 503 and forwards the
/// rest to `upstream`.
async fn flaky_proxy(upstream: String, fail: usize) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let failed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&failed);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            if counter.fetch_add(1, Ordering::SeqCst) < fail {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                          Connection: close\r\n\r\n",
                    )
                    .await;
                continue;
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                }
            });
        }
    });
    (addr, failed)
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let reg = DockerRegistry::start();
    let layout = make_layout("flaky");

    // Two 503s, then the real registry: the push succeeds.
    let (addr, count) = flaky_proxy(reg.addr.clone(), 2).await;
    let out = push(&target(&addr), layout.path(), None, &RetryPolicy::quick(4))
        .await
        .unwrap();
    assert!(count.load(Ordering::SeqCst) > 2);
    assert_eq!(out.pushed.digest, layout.manifest_digest);

    // A registry that keeps failing: the error names it and the status.
    let (addr, _) = flaky_proxy(reg.addr.clone(), usize::MAX).await;
    let err = push(&target(&addr), layout.path(), None, &RetryPolicy::quick(2))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Unavailable { .. }), "{msg}");
    assert!(msg.contains(&addr) && msg.contains("503"), "{msg}");
}

#[tokio::test]
async fn authentication_required_rejected_and_accepted() {
    let reg = DockerRegistry::start_with_auth();
    let layout = make_layout("auth");
    let mut cfg = target(&reg.addr);

    // No credentials configured: the error says which settings are missing.
    let err = push(&cfg, layout.path(), None, &RetryPolicy::quick(2))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{msg}");
    assert!(
        msg.contains("'registry'") && msg.contains("username_env"),
        "{msg}"
    );

    // Credentials named but not set in the environment.
    cfg.username_env = Some("GOLDSMITH_TEST_REGISTRY_USER_UNSET".into());
    cfg.password_env = Some("GOLDSMITH_TEST_REGISTRY_PASSWORD_UNSET".into());
    let err = registry::credentials_from_env("registry", &cfg).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::MissingCredential { .. }),
        "{msg}"
    );
    assert!(msg.contains("GOLDSMITH_TEST_REGISTRY_USER_UNSET"), "{msg}");

    // Wrong password: rejected, naming the variables, never showing the password.
    let wrong = registry::credentials_from("registry", &cfg, |v| {
        Some(if v.ends_with("USER_UNSET") {
            REGISTRY_USER.to_string()
        } else {
            "not-the-password-123".to_string()
        })
    })
    .unwrap()
    .unwrap();
    let err = push(&cfg, layout.path(), Some(&wrong), &RetryPolicy::quick(2))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::AuthRejected { .. }), "{msg}");
    assert!(
        msg.contains("GOLDSMITH_TEST_REGISTRY_PASSWORD_UNSET"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-password-123"), "{msg}");

    // Right credentials: pushed and pullable.
    let right = registry::credentials_from("registry", &cfg, |v| {
        Some(if v.ends_with("USER_UNSET") {
            REGISTRY_USER.to_string()
        } else {
            REGISTRY_PASSWORD.to_string()
        })
    })
    .unwrap()
    .unwrap();
    let out = push(&cfg, layout.path(), Some(&right), &RetryPolicy::quick(2))
        .await
        .unwrap();
    assert_eq!(out.pushed.digest, layout.manifest_digest);
    assert_eq!(inspect(&reg, "nightly").0, layout.manifest_digest);
    pull_back(&reg, VERSION, &layout).unwrap();
}

#[tokio::test]
async fn a_broken_layout_is_refused_before_any_upload() {
    // No server: the layout is checked first, so nothing is contacted.
    let cfg = target("127.0.0.1:9");
    let layout = make_layout("broken");
    let manifest_file = layout
        .path()
        .join("blobs/sha256")
        .join(&layout.manifest_digest[7..]);
    std::fs::write(&manifest_file, b"{\"schemaVersion\": 2}").unwrap();
    let err = push(&cfg, layout.path(), None, &RetryPolicy::quick(1))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Layout { .. }), "{msg}");
    assert!(msg.contains(&layout.manifest_digest[7..]), "{msg}");

    let layout = make_layout("missing-layer");
    std::fs::remove_file(
        layout
            .path()
            .join("blobs/sha256")
            .join(&layout.layer_digests[0][7..]),
    )
    .unwrap();
    let msg = push(&cfg, layout.path(), None, &RetryPolicy::quick(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("layer 1") && msg.contains("missing"), "{msg}");
}
