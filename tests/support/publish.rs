//! Helpers for the publish tests: fake build directories (small files + build.json +
//! verify.json, as `goldsmith build`/`verify` write them), a moto S3 server on a free
//! loopback port (killed on drop), and a signing key for a project.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use goldsmith::artifact::{
    Artifact, BootRecord, BuildRecord, CheckResult, FileRecord, LatestPointer, LayerRecord,
    SourceInfo, StageTiming, VerifyRecord, VmSpec, RECORD_SCHEMA,
};
use goldsmith::plan::ResolvedPackage;
use goldsmith::recipe::Format;

use super::support::Project;

/// A fake build on disk.
pub struct FakeBuild {
    pub dir: PathBuf,
    pub record: BuildRecord,
}

/// Options for [`fake_build`].
#[derive(Clone)]
pub struct BuildSpec<'a> {
    pub image: &'a str,
    pub build_id: &'a str,
    /// Distinguishes builds: it is the content digest and seeds the file contents.
    pub content: &'a str,
    /// Size of an extra sparse `disk.raw` (0: none).
    pub raw_bytes: u64,
    /// Write verify.json (passed or failed); None: no verify.json.
    pub verified: Option<bool>,
}

impl<'a> BuildSpec<'a> {
    pub fn new(image: &'a str, content: &'a str) -> BuildSpec<'a> {
        BuildSpec {
            image,
            build_id: content,
            content,
            raw_bytes: 0,
            verified: Some(true),
        }
    }
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> FileRecord {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    FileRecord {
        path: rel.to_string(),
        size: bytes.len() as u64,
        sha256: sha(bytes),
    }
}

/// The content digest a spec's build gets.
pub fn digest_of(content: &str) -> String {
    format!("sha256:{}", sha(content.as_bytes()))
}

/// Write a build directory under the project's build dir and point latest.json at it.
pub fn fake_build(p: &Project, spec: &BuildSpec) -> FakeBuild {
    let root = p.path("target/goldsmith").join(spec.image);
    let dir = root.join(spec.build_id);
    std::fs::create_dir_all(&dir).unwrap();
    let digest = digest_of(spec.content);
    let mut artifacts = Vec::new();

    let q = write(
        &dir,
        &format!("{}.qcow2", spec.image),
        format!("QFI fake qcow2 of {}\n", spec.content)
            .repeat(200)
            .as_bytes(),
    );
    artifacts.push(Artifact {
        format: Format::Qcow2,
        path: q.path,
        size: q.size,
        sha256: q.sha256,
        files: vec![],
        oci_manifest_digest: None,
    });

    if spec.raw_bytes > 0 {
        let rel = format!("{}.raw", spec.image);
        let f = std::fs::File::create(dir.join(&rel)).unwrap();
        f.set_len(spec.raw_bytes).unwrap();
        drop(f);
        let (size, sha256) = goldsmith::fsutil::sha256_file(&dir.join(&rel)).unwrap();
        artifacts.push(Artifact {
            format: Format::Raw,
            path: rel,
            size,
            sha256,
            files: vec![],
            oci_manifest_digest: None,
        });
    }

    let blob = format!("layer of {}", spec.content);
    let blob_sha = sha(blob.as_bytes());
    let files = vec![
        write(
            &dir,
            &format!("oci/blobs/sha256/{blob_sha}"),
            blob.as_bytes(),
        ),
        write(
            &dir,
            "oci/index.json",
            br#"{"schemaVersion":2,"manifests":[]}"#,
        ),
        write(&dir, "oci/oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
    ];
    let listing: String = files
        .iter()
        .map(|f| format!("{} {} {}\n", f.sha256, f.size, f.path))
        .collect();
    artifacts.push(Artifact {
        format: Format::Oci,
        path: "oci".into(),
        size: files.iter().map(|f| f.size).sum(),
        sha256: sha(listing.as_bytes()),
        files,
        oci_manifest_digest: Some(format!("sha256:{blob_sha}")),
    });

    write(
        &dir,
        "verify/console-qcow2.log",
        b"[    0.000000] Linux version 6.1\nlogin: \n",
    );

    let packages = vec![
        pkg("base-files", "12.4+deb12u5", "amd64"),
        pkg("libstdc++6", "12.2.0-14", "amd64"),
        pkg("openssh-server", "1:9.2p1-2+deb12u3", "amd64"),
        pkg("tzdata", "2024a-0+deb12u1", "all"),
    ];
    let record = BuildRecord {
        schema: RECORD_SCHEMA,
        image: spec.image.to_string(),
        build_id: spec.build_id.to_string(),
        content_digest: digest.clone(),
        source_date_epoch: 1_735_689_600,
        finished: "2026-01-02T03:04:05Z".into(),
        goldsmith_version: goldsmith::VERSION.into(),
        source: SourceInfo {
            git_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            dirty: true,
            repository: None,
        },
        layers: vec![LayerRecord {
            name: "debian-base".into(),
            digest: "sha256:aa".into(),
            output_digest: format!("sha256:{blob_sha}"),
            diff_size: 123,
            rebuilt: true,
        }],
        artifacts,
        packages,
        disk_mib: 2048,
        vm: VmSpec {
            memory_mib: 1024,
            cpus: 2,
        },
        kernel_cmdline: vec![],
        stages: vec![StageTiming {
            stage: "rootfs".into(),
            secs: 1.5,
        }],
        changes: vec![],
    };
    goldsmith::fsutil::atomic_write_json(&dir.join("build.json"), &record).unwrap();
    if let Some(passed) = spec.verified {
        let v = VerifyRecord {
            schema: RECORD_SCHEMA,
            image: spec.image.to_string(),
            build_id: spec.build_id.to_string(),
            content_digest: digest,
            passed,
            started: "2026-01-02T03:05:00Z".into(),
            boots: vec![BootRecord {
                format: Format::Qcow2,
                artifact: format!("{}.qcow2", spec.image),
                artifact_sha256: record.artifacts[0].sha256.clone(),
                passed,
                accelerator: "tcg".into(),
                accelerator_reason: "test".into(),
                boot_secs: Some(27.0),
                duration_secs: 40.0,
                checks: vec![CheckResult {
                    name: "system-running".into(),
                    origin: "builtin".into(),
                    passed,
                    skipped: false,
                    duration_ms: 100,
                    detail: String::new(),
                }],
                console_log: "verify/console-qcow2.log".into(),
                attempts: 1,
                failure: (!passed).then(|| "check system-running failed".into()),
            }],
        };
        goldsmith::fsutil::atomic_write_json(&dir.join("verify.json"), &v).unwrap();
    }
    goldsmith::fsutil::atomic_write_json(
        &root.join("latest.json"),
        &LatestPointer {
            build_id: spec.build_id.to_string(),
        },
    )
    .unwrap();
    FakeBuild { dir, record }
}

fn pkg(name: &str, version: &str, arch: &str) -> ResolvedPackage {
    ResolvedPackage {
        name: name.into(),
        version: version.into(),
        arch: arch.into(),
    }
}

/// Create a signing key in the project and configure `[signing]`.
pub fn with_signing_key(p: &Project) {
    p.run(&["keygen", "--out", "keys/goldsmith.key"]).expect(0);
    p.config_append("[signing]\nkey = \"keys/goldsmith.key\"\n");
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto S3 server on loopback, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

pub const ACCESS_KEY: &str = "AKIAGOLDSMITHTEST";
pub const SECRET_KEY: &str = "goldsmith-test-secret-value";

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto server (pip install 'moto[server]')");
        let m = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (moto does not check signatures, so a bare PUT will do).
    pub fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
    }

    /// Configure a project to use bucket `bucket` on this server.
    pub fn configure(&self, p: &Project, bucket: &str) {
        self.create_bucket(bucket);
        p.config_append(&format!(
            "[store.s3]\nbucket = \"{bucket}\"\nprefix = \"images\"\nendpoint = \"{}\"\nmax_attempts = 3\n",
            self.endpoint()
        ));
    }

    /// The S3 definition for library-level tests.
    pub fn def(&self, bucket: &str) -> goldsmith::config::S3Def {
        self.create_bucket(bucket);
        toml::from_str(&format!(
            "bucket = \"{bucket}\"\nprefix = \"p\"\nendpoint = \"{}\"\nmax_attempts = 3\naccess_key_env = \"GS_TEST_KEY\"\nsecret_key_env = \"GS_TEST_SECRET\"\n",
            self.endpoint()
        ))
        .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set the credentials `Moto::def` names (process-wide; same values for every test).
pub fn set_test_credentials() {
    std::env::set_var("GS_TEST_KEY", ACCESS_KEY);
    std::env::set_var("GS_TEST_SECRET", SECRET_KEY);
}

/// A command in the project with the S3 credentials set.
pub fn s3_cmd(p: &Project) -> Command {
    let mut c = p.cmd();
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_SESSION_TOKEN");
    c
}
