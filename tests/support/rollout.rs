//! Helpers for rollout tests: a throw-away project (goldsmith.toml, images, inventory,
//! local store), manifests and channel moves built directly, and the example webhook
//! receiver (`examples/receiver.py`) as a real HTTP server on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use goldsmith::artifact::{LayerChange, PackageChange, SourceInfo, VmSpec};
use goldsmith::config::Config;
use goldsmith::plan::ResolvedPackage;
use goldsmith::publish::model::{
    AmiRecord, BuildSummary, ChannelMove, Manifest, MoveReason, OciPushed, PublishedArtifact,
    TargetRecords, VerifySummary,
};
use goldsmith::recipe::Format;
use goldsmith::store::local::LocalStore;
use serde_json::Value;

/// A `whsec_` secret (base64 of 24 fixed bytes).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A different secret, for the wrong-secret test.
pub const OTHER_SECRET: &str = "whsec_dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGtleQ==";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A project in a temp dir. `sinks` is the `[sinks.*]` TOML; the inventory has the
/// groups `bastion` (base, stable), `web-canary` (web, nightly) and `web-fleet`
/// (web, stable), each notifying the sinks named in `group_sinks`.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(sinks_toml: &str, group_sinks: &[&str]) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        // The bundled images (their host_groups name bastion, web-canary, web-fleet),
        // built from the bundled recipes, so `goldsmith validate` passes as a whole.
        std::fs::create_dir_all(p.join("images")).unwrap();
        for image in ["base", "web"] {
            std::fs::copy(
                repo_root().join(format!("images/{image}.toml")),
                p.join(format!("images/{image}.toml")),
            )
            .unwrap();
        }
        let project = Project { dir };
        project.set_sinks(sinks_toml);
        let p = project.path();
        let sinks = group_sinks
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            p.join("inventory.toml"),
            format!(
                r#"
[groups.bastion]
image = "base"
channel = "stable"
sinks = [{sinks}]
hosts = ["bastion-1", "bastion-2"]

[groups.web-canary]
image = "web"
channel = "nightly"
sinks = [{sinks}]
count = 2

[groups.web-fleet]
image = "web"
channel = "stable"
sinks = [{sinks}]
count = 8

[[groups.web-fleet.waves]]
name = "canary"
size = 1
pause_secs = 600

[[groups.web-fleet.waves]]
name = "quarter"
percent = 25
health_gate = "web-healthy"

[[groups.web-fleet.waves]]
name = "rest"
rest = true
"#
            ),
        )
        .unwrap();
        project
    }

    /// Rewrite goldsmith.toml with these `[sinks.*]`.
    pub fn set_sinks(&self, sinks_toml: &str) {
        std::fs::write(
            self.path().join("goldsmith.toml"),
            format!(
                "recipes_dir = \"{}\"\ninventory = \"inventory.toml\"\n[store]\npath = \"store\"\n\n{sinks_toml}\n",
                repo_root().join("recipes").display()
            ),
        )
        .unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> Config {
        Config::load(&self.path().join("goldsmith.toml"), true).unwrap()
    }

    pub fn store(&self) -> LocalStore {
        LocalStore::new(self.path().join("store"))
    }

    /// Outbox records as JSON, oldest first by file name order.
    pub fn outbox(&self) -> Vec<Value> {
        let dir = self.path().join("store/rollout/outbox");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "json"));
        files.sort();
        files
            .iter()
            .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
            .collect()
    }

    /// `goldsmith --config <project>/goldsmith.toml ARGS…` with the webhook secret set.
    pub fn goldsmith(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_goldsmith"))
            .arg("--config")
            .arg(self.path().join("goldsmith.toml"))
            .args(args)
            .env("ROLLOUT_TEST_SECRET", SECRET)
            .env_remove("GOLDSMITH_TEST_PAUSE_BEFORE_DELIVERY_MS")
            .output()
            .unwrap()
    }
}

/// `[sinks.hook]`: a webhook to `url` with fast backoff, secret from ROLLOUT_TEST_SECRET.
pub fn webhook_sink(url: &str, max_attempts: u32) -> String {
    format!(
        "[sinks.hook.webhook]\nurl = \"{url}\"\nsecret_env = \"ROLLOUT_TEST_SECRET\"\n\
         max_attempts = {max_attempts}\nbackoff_min_ms = 20\nbackoff_max_secs = 1\ntimeout_secs = 5\n"
    )
}

/// `[sinks.tf]`: Terraform variables into `<project>/tf`.
pub fn terraform_sink() -> String {
    "[sinks.tf.terraform]\ndir = \"tf\"\n".into()
}

fn pkg(name: &str, version: &str) -> ResolvedPackage {
    ResolvedPackage {
        name: name.into(),
        version: version.into(),
        arch: "amd64".into(),
    }
}

/// A verified manifest of `image` at `version`; `n` varies digests, packages, AMI ids.
pub fn manifest(image: &str, version: &str, n: u32) -> Manifest {
    let digest = format!("{:064x}", 0xd16e57u64 * 1000 + n as u64);
    let sha = |what: &str| format!("{:064x}", (what.len() as u64) << 32 | n as u64);
    let base = format!("file:///srv/store/{image}/{version}");
    Manifest {
        schema: 1,
        image: image.into(),
        version: version.into(),
        content_digest: format!("sha256:{digest}"),
        published: format!("2026-11-{:02}T03:00:00Z", 1 + n % 28),
        goldsmith_version: "0.1.0".into(),
        source: SourceInfo::default(),
        layers: vec![],
        artifacts: vec![
            PublishedArtifact {
                format: Format::Qcow2,
                path: format!("{image}.qcow2"),
                url: format!("{base}/{image}.qcow2"),
                size: 170_000_000 + n as u64,
                sha256: sha("qcow2"),
            },
            PublishedArtifact {
                format: Format::Vmdk,
                path: format!("{image}.vmdk"),
                url: format!("{base}/{image}.vmdk"),
                size: 160_000_000 + n as u64,
                sha256: sha("vmdk-file"),
            },
        ],
        files: vec![],
        build: BuildSummary {
            build_id: format!("b{n}"),
            finished: "2026-11-01T02:00:00Z".into(),
            source_date_epoch: 1_735_689_600,
            disk_mib: 2048,
            vm: VmSpec {
                memory_mib: 1024,
                cpus: 2,
            },
            stages: vec![],
        },
        verify: VerifySummary {
            passed: true,
            accelerator: "tcg".into(),
            boot_secs: Some(27.0),
            checks_passed: 5,
            checks_total: 5,
        },
        // Version n has nginx 1.22.1-9+deb12u<n>, openssl 3.0.<n>, and curl only when n is even.
        packages: {
            let mut p = vec![
                pkg("nginx", &format!("1.22.1-9+deb12u{n}")),
                pkg("openssl", &format!("3.0.{n}-1~deb12u1")),
                pkg("base-files", "12.4+deb12u8"),
            ];
            if n.is_multiple_of(2) {
                p.push(pkg("curl", "7.88.1-10+deb12u8"));
            }
            p
        },
        targets: TargetRecords {
            oci: vec![OciPushed {
                target: "registry".into(),
                reference: format!("127.0.0.1:5000/goldsmith/{image}@sha256:{digest}"),
                digest: format!("sha256:{digest}"),
                tags: vec![version.into()],
            }],
            ami: vec![
                AmiRecord {
                    target: "aws".into(),
                    region: "eu-west-1".into(),
                    image_id: format!("ami-0{n:016x}"),
                    snapshot_id: format!("snap-0{n:016x}"),
                },
                AmiRecord {
                    target: "aws".into(),
                    region: "us-east-1".into(),
                    image_id: format!("ami-1{n:016x}"),
                    snapshot_id: format!("snap-1{n:016x}"),
                },
            ],
        },
        changes: vec![LayerChange {
            layer: "debian-base".into(),
            inputs: vec![],
            packages: vec![PackageChange {
                name: "openssl".into(),
                old: Some(format!("3.0.{}-1~deb12u1", n.saturating_sub(1))),
                new: Some(format!("3.0.{n}-1~deb12u1")),
            }],
        }],
    }
}

pub fn channel_move(
    channel: &str,
    reason: MoveReason,
    old: Option<&Manifest>,
    new: &Manifest,
) -> ChannelMove {
    ChannelMove {
        image: new.image.clone(),
        channel: channel.into(),
        reason,
        note: match reason {
            MoveReason::Publish => "nightly".into(),
            MoveReason::Promote => "promoted by test".into(),
            MoveReason::Revoke => "revoked: broken nginx config".into(),
        },
        old: old.cloned(),
        new: new.clone(),
    }
}

/// A free TCP port on loopback (nothing listens on it when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `examples/receiver.py` running on loopback; killed on drop.
pub struct Receiver {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Start it on `port` (0: any) with `secret`; `extra` are further flags.
    pub fn start(port: u16, secret: &str, extra: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let mut child = Command::new("python3")
            .arg(repo_root().join("examples/receiver.py"))
            .args([
                "--port",
                &port.to_string(),
                "--secret-env",
                "RECEIVER_SECRET",
            ])
            .arg("--log")
            .arg(&log)
            .arg("--schema")
            .arg(repo_root().join("schemas/rollout-event.v1.json"))
            .args(extra)
            .env("RECEIVER_SECRET", secret)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("python3 runs examples/receiver.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("receiver did not start: {line:?}"))
            .to_string();
        Receiver {
            child,
            url,
            log,
            _dir: dir,
        }
    }

    /// One JSON object per request received so far.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Requests answered 200 with "accepted" (first delivery of an id).
    pub fn accepted(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["status"] == 200 && r["duplicate"] == false)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Validate JSON values against `schemas/rollout-event.v1.json` with Python's
/// `jsonschema` (Draft 2020-12, formats checked). Returns the error messages.
pub fn schema_errors(events: &[Value]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("events.json");
    std::fs::write(&f, serde_json::to_vec(events).unwrap()).unwrap();
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
for i, ev in enumerate(json.load(open(sys.argv[2]))):
    for e in v.iter_errors(ev):
        print(f"event {i}: {e.json_path}: {e.message}")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(repo_root().join("schemas/rollout-event.v1.json"))
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "schema check crashed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}
