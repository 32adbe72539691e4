//! Helpers for the hardening tests: small images on top of the shared `debian-base`,
//! loopback servers, and byte searches through every kind of output.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::{Project, Run};

/// A value no other test (or run) uses.
pub fn nonce(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The example project plus image `image` = debian-base + layer `<image>-top`, whose
/// layer.toml is `layer_toml`; `files` are written relative to the layer folder.
pub fn image_on_base(
    image: &str,
    layer_toml: &str,
    files: &[(&str, &str)],
    formats: &str,
) -> Project {
    let p = Project::example();
    add_image(&p, image, layer_toml, files, formats);
    p
}

/// Add such an image to an existing project.
pub fn add_image(
    p: &Project,
    image: &str,
    layer_toml: &str,
    files: &[(&str, &str)],
    formats: &str,
) {
    let layer = format!("{image}-top");
    p.write(&format!("recipes/{layer}/layer.toml"), layer_toml);
    for (f, c) in files {
        p.write(&format!("recipes/{layer}/{f}"), c);
    }
    p.write(
        &format!("images/{image}.toml"),
        &format!("layers = [\"debian-base\", \"{layer}\"]\nformats = {formats}\n[oci]\nexclude = [\"/boot\"]\n"),
    );
}

/// The build directory a successful `build --json` reported.
pub fn build_dir(r: &Run) -> PathBuf {
    PathBuf::from(
        r.json()[0]["dir"]
            .as_str()
            .expect("build dir in JSON")
            .to_string(),
    )
}

/// Does the stream contain `needle`? Reads in 8 MiB windows that overlap by the
/// needle's length, so memory stays small whatever the size.
pub fn stream_contains(mut r: impl Read, needle: &[u8]) -> bool {
    assert!(!needle.is_empty());
    let finder = memchr::memmem::Finder::new(needle);
    let finder = |hay: &[u8]| finder.find(hay).is_some();
    let mut buf = vec![0u8; 8 << 20];
    let keep = needle.len() - 1;
    let mut have = 0;
    loop {
        let n = r.read(&mut buf[have..]).expect("read");
        if n == 0 {
            return finder(&buf[..have]);
        }
        have += n;
        if have == buf.len() {
            if finder(&buf[..have]) {
                return true;
            }
            buf.copy_within(have - keep.., 0);
            have = keep;
        }
    }
}

/// Does the file contain `needle`?
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    stream_contains(std::fs::File::open(path).unwrap(), needle)
}

/// Does any blob of an OCI layout contain `needle` (gzip blobs decompressed)?
pub fn oci_contains(layout: &Path, needle: &[u8]) -> bool {
    let blobs = layout.join("blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        let mut head = [0u8; 2];
        let mut f = std::fs::File::open(e.path()).unwrap();
        let n = f.read(&mut head).unwrap();
        let f = std::fs::File::open(e.path()).unwrap();
        let found = if n == 2 && head == [0x1f, 0x8b] {
            stream_contains(flate2::read::GzDecoder::new(f), needle)
        } else {
            stream_contains(f, needle)
        };
        if found {
            return true;
        }
    }
    false
}

/// Does the zstd-compressed file contain `needle` once decompressed?
pub fn zstd_contains(path: &Path, needle: &[u8]) -> bool {
    stream_contains(
        zstd::stream::read::Decoder::new(std::fs::File::open(path).unwrap()).unwrap(),
        needle,
    )
}

/// A loopback HTTP/1.0 server that serves `body` only to requests carrying
/// `Authorization: Bearer <token>` (403 otherwise), counting every connection.
pub struct TokenServer {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub authorized: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TokenServer {
    pub fn start(token: &str, body: &str) -> TokenServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let authorized = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, a, s) = (connections.clone(), authorized.clone(), stop.clone());
        let want = format!("authorization: bearer {}", token.to_lowercase());
        let body = body.to_string();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let mut ok = false;
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if line.trim().to_lowercase() == want {
                        ok = true;
                    }
                    if line == "\r\n" || line == "\n" {
                        break;
                    }
                    line.clear();
                }
                let resp = if ok {
                    a.fetch_add(1, Ordering::SeqCst);
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                let _ = conn.write_all(resp.as_bytes());
            }
        });
        TokenServer {
            port,
            connections,
            authorized,
            stop,
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Start sector (in bytes) of partition `n` of a GPT disk, from `sfdisk --json`.
pub fn partition_offset(disk: &Path, n: usize) -> u64 {
    let o = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    t["partitiontable"]["partitions"][n]["start"]
        .as_u64()
        .unwrap()
        * 512
}

/// `debugfs -R 'stat PATH'` on the root file system of a raw disk: (uid, gid).
pub fn owner_in_disk(disk: &Path, path: &str) -> (u32, u32) {
    let off = partition_offset(disk, 1);
    let o = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(format!("{}?offset={off}", disk.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("User:"))
        .unwrap_or_else(|| {
            panic!(
                "no {path} in the disk: {text}{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
    let nums: Vec<u32> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}
