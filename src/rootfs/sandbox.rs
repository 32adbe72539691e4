//! Run a program inside an image tree with bubblewrap.
//!
//! The tree becomes `/`; `/proc`, a minimal `/dev`, a read-only `/sys` and fresh tmpfs on
//! `/tmp` and `/run` are provided; IPC, PID, UTS and cgroup namespaces are private, and so
//! is the network unless the step asks for it. Nothing of the host is visible except what
//! is bound in explicitly (read-only unless stated), so a recipe script cannot touch the
//! host's files, and mounts vanish with the sandbox instead of leaking to the host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::exec::Cmd;

/// A bind mount into the sandbox.
#[derive(Debug, Clone)]
pub struct Bind {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

/// How to run one step inside a tree.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub tree: PathBuf,
    pub network: bool,
    pub binds: Vec<Bind>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub label: String,
}

impl Sandbox {
    pub fn new(tree: &Path, label: impl Into<String>) -> Sandbox {
        Sandbox {
            tree: tree.to_owned(),
            network: false,
            binds: Vec::new(),
            env: Vec::new(),
            timeout: Duration::from_secs(600),
            label: label.into(),
        }
    }

    pub fn bind(mut self, host: &Path, guest: &str, writable: bool) -> Self {
        self.binds.push(Bind {
            host: host.to_owned(),
            guest: guest.to_string(),
            writable,
        });
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The bwrap command running `argv` inside the tree.
    pub fn command<S: AsRef<str>>(&self, argv: &[S]) -> Cmd {
        let mut c = Cmd::new("bwrap")
            .label(self.label.clone())
            .timeout(self.timeout)
            .arg("--bind")
            .arg(&self.tree)
            .arg("/")
            .args([
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--ro-bind",
                "/sys",
                "/sys",
            ])
            .args(["--perms", "01777", "--tmpfs", "/tmp"])
            .args(["--perms", "0755", "--tmpfs", "/run"])
            // No user namespace: as root, dpkg must be able to chown files to any uid.
            .args([
                "--unshare-ipc",
                "--unshare-pid",
                "--unshare-uts",
                "--unshare-cgroup-try",
            ])
            .args(["--die-with-parent", "--new-session", "--clearenv"])
            .args(["--hostname", "goldsmith-build"]);
        if !self.network {
            c = c.arg("--unshare-net");
        } else if Path::new("/etc/resolv.conf").exists() {
            c = c.args(["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]);
        }
        for b in &self.binds {
            c = c
                .arg(if b.writable { "--bind" } else { "--ro-bind" })
                .arg(&b.host)
                .arg(&b.guest);
        }
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            ("HOME".to_string(), "/root".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string()),
            ("SYSTEMD_OFFLINE".to_string(), "1".to_string()),
        ];
        env.extend(self.env.iter().cloned());
        for (k, v) in env {
            c = c.args(["--setenv", &k, &v]);
        }
        c.args(["--chdir", "/", "--"])
            .args(argv.iter().map(|a| a.as_ref()))
    }
}
