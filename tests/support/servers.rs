//! Real servers for integration tests, each on a free loopback port in its own temp dir:
//! Debian's `docker-registry` (an OCI distribution registry) and moto server (S3, EBS
//! direct, EC2). Dropping the handle kills the server and removes its directory; the
//! servers also die with the test thread that started them (PR_SET_PDEATHSIG), so a
//! crashed test leaves nothing running. Create and drop a server in the same test.
//!
//! Use it from a test file with
//! `#[path = "support/servers.rs"] mod servers;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// User name of [`DockerRegistry::start_with_auth`].
pub const REGISTRY_USER: &str = "tester";
/// Password of [`DockerRegistry::start_with_auth`].
pub const REGISTRY_PASSWORD: &str = "goldsmith-test-pw";
/// bcrypt hash of [`REGISTRY_PASSWORD`] (htpasswd wants bcrypt; cost 4 keeps it fast).
/// moto's request recording, in the server's directory.
const RECORDING: &str = "recording.jsonl";
const REGISTRY_HTPASSWD: &str =
    "tester:$2b$04$tg4HQ8cxofKfhyxcu0ogCeo.SB6FcRE3J0gWEJB9g20igQGcR9PhG";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// Status code of `GET path` on `addr`, or None when nothing answers HTTP there.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    let line = std::str::from_utf8(&head).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// A child process on a loopback port with its own directory.
struct Server {
    name: &'static str,
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    /// Start `make_cmd(port, dir)` on a free port and wait until `GET ready_path` answers.
    /// A port taken between choosing and binding it is retried with another.
    fn start(
        name: &'static str,
        ready_path: &str,
        timeout: Duration,
        mut dir: tempfile::TempDir,
        make_cmd: impl Fn(u16, &Path) -> Command,
    ) -> (Server, u16) {
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = dir.path().join(format!("{name}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let mut cmd = make_cmd(port, dir.path());
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name}: {e} (run ci/install-deps.sh)"));
            let mut server = Server {
                name,
                child,
                dir,
                log,
            };
            let addr = format!("127.0.0.1:{port}");
            let start = Instant::now();
            loop {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // exited: most likely the port was taken; try another
                }
                if http_status(&addr, ready_path).is_some() {
                    return (server, port);
                }
                if start.elapsed() > timeout {
                    panic!(
                        "{name} did not answer on {addr} within {timeout:?}:\n{}",
                        server.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_log = server.log_text();
            let _ = server.child.wait();
            dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
        }
        panic!("{name} failed to start three times; last log:\n{last_log}");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log_text());
        }
    }
}

/// Debian's docker-registry (distribution 2.8) with filesystem storage.
pub struct DockerRegistry {
    server: Server,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Where the registry keeps its data (`docker/registry/v2/…`).
    pub storage: PathBuf,
    /// Whether it demands [`REGISTRY_USER`] / [`REGISTRY_PASSWORD`].
    pub auth: bool,
}

impl DockerRegistry {
    /// An open registry.
    pub fn start() -> DockerRegistry {
        Self::launch(false)
    }

    /// A registry that demands basic auth with [`REGISTRY_USER`] / [`REGISTRY_PASSWORD`].
    pub fn start_with_auth() -> DockerRegistry {
        Self::launch(true)
    }

    fn launch(auth: bool) -> DockerRegistry {
        let dir = tempfile::tempdir().unwrap();
        let (server, port) = Server::start(
            "docker-registry",
            "/v2/",
            Duration::from_secs(20),
            dir,
            |port, dir| {
                let storage = dir.join("data");
                let mut cfg = format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: \
                     127.0.0.1:{port}\n  secret: goldsmith-test-secret\n",
                    storage.display()
                );
                if auth {
                    let htpasswd = dir.join("htpasswd");
                    std::fs::write(&htpasswd, format!("{REGISTRY_HTPASSWD}\n")).unwrap();
                    cfg.push_str(&format!(
                        "auth:\n  htpasswd:\n    realm: goldsmith-test\n    path: {}\n",
                        htpasswd.display()
                    ));
                }
                let cfg_path = dir.join("config.yml");
                std::fs::write(&cfg_path, cfg).unwrap();
                let mut cmd = Command::new("docker-registry");
                cmd.arg("serve").arg(cfg_path);
                cmd
            },
        );
        let storage = server.dir.path().join("data");
        DockerRegistry {
            server,
            addr: format!("127.0.0.1:{port}"),
            storage,
            auth,
        }
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        self.server.log_text()
    }
}

/// moto server (PyPI `moto[server]`) recording every request it receives.
pub struct Moto {
    server: Server,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    recording: PathBuf,
}

/// One request moto received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub url: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The URL path without the query.
    pub fn path(&self) -> &str {
        let after_host = self
            .url
            .split_once("://")
            .map(|(_, rest)| rest.find('/').map(|i| &rest[i..]).unwrap_or("/"))
            .unwrap_or(&self.url);
        after_host.split('?').next().unwrap_or(after_host)
    }

    /// The body as a form (the EC2 query protocol), percent-decoded.
    pub fn form(&self) -> BTreeMap<String, String> {
        String::from_utf8_lossy(&self.body)
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    /// The EC2 query action (`RegisterImage`, …), if this is an EC2 request.
    pub fn ec2_action(&self) -> Option<String> {
        self.form().get("Action").cloned()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let (server, port) = Server::start(
            "moto",
            "/moto-api/",
            Duration::from_secs(60),
            dir,
            |port, dir| {
                let mut cmd = Command::new("python3");
                cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                    .arg(port.to_string())
                    .env("MOTO_ENABLE_RECORDING", "true")
                    .env("MOTO_RECORDER_FILEPATH", dir.join(RECORDING));
                cmd
            },
        );
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            recording: server.dir.path().join(RECORDING),
            server,
        }
    }

    /// Every request moto received since start (or the last [`Moto::reset_recording`]).
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        let text = std::fs::read_to_string(&self.recording).unwrap_or_default();
        // moto appends each request as one write of its JSON and then a newline, so
        // concurrent requests give `{a}{b}\n\n`: read a stream of values, not lines.
        serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .map(|v| {
                let v = v.expect("moto's recording is a stream of JSON objects");
                let body = v["body"].as_str().unwrap_or_default();
                let body = if v["body_encoded"].as_bool().unwrap_or(false) {
                    base64::engine::general_purpose::STANDARD
                        .decode(body)
                        .expect("base64 body")
                } else {
                    body.as_bytes().to_vec()
                };
                RecordedRequest {
                    method: v["method"].as_str().unwrap_or_default().into(),
                    url: v["url"].as_str().unwrap_or_default().into(),
                    headers: v["headers"]
                        .as_object()
                        .map(|h| {
                            h.iter()
                                .map(|(k, v)| {
                                    (
                                        k.to_ascii_lowercase(),
                                        v.as_str().unwrap_or_default().into(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    body,
                }
            })
            .collect()
    }

    /// Forget the requests recorded so far.
    pub fn reset_recording(&self) {
        std::fs::write(&self.recording, "").unwrap();
    }

    /// moto's log so far.
    pub fn log(&self) -> String {
        self.server.log_text()
    }
}
