//! Run a program inside an image tree with bubblewrap.
//!
//! The tree becomes `/`; `/proc`, a minimal `/dev`, a read-only `/sys` and fresh tmpfs on
//! `/tmp` and `/run` are provided; IPC, PID, UTS and cgroup namespaces are private, and so
//! is the network unless the step asks for it. Nothing of the host is visible except what
//! is bound in explicitly (read-only unless stated), so a recipe script cannot touch the
//! host's files, and mounts vanish with the sandbox instead of leaking to the host.
//!
//! The step runs as root (dpkg must chown to any uid) but with only the capabilities a
//! package manager needs: bubblewrap keeps *all* of root's capabilities by default, and
//! with CAP_SYS_ADMIN and CAP_MKNOD a script could create a node for the host's disk and
//! mount it, or remount /sys writable. /proc/sys is read-only: even without those
//! capabilities, root could otherwise set the host's core_pattern. Build-time
//! secrets reach the sandbox through descriptors (`--ro-bind-data`), never through a file
//! on the host's disk or an argument list.

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::exec::{self, Cmd};

/// The capabilities a sandboxed step keeps: Docker's default set without CAP_MKNOD and
/// CAP_NET_RAW. Everything else (SYS_ADMIN, MKNOD, SYS_PTRACE, DAC_READ_SEARCH, SYS_MODULE,
/// NET_ADMIN, ...) is dropped from the effective and bounding sets.
pub const KEPT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

/// A file that exists only inside the sandbox, read-only, mode 0400.
#[derive(Clone)]
pub struct SecretFile {
    pub guest: String,
    pub value: Arc<Vec<u8>>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({}, {} bytes)", self.guest, self.value.len())
    }
}

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
    pub secrets: Vec<SecretFile>,
    /// RLIMIT_AS for everything in the sandbox (`build.memory_max`).
    pub memory_max: Option<u64>,
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
            secrets: Vec::new(),
            memory_max: None,
        }
    }

    /// A read-only file `guest` holding `value`, visible only inside the sandbox.
    pub fn secret(mut self, guest: &str, value: Arc<Vec<u8>>) -> Self {
        self.secrets.push(SecretFile {
            guest: guest.to_string(),
            value,
        });
        self
    }

    pub fn memory_max(mut self, bytes: Option<u64>) -> Self {
        self.memory_max = bytes;
        self
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
    pub fn command<S: AsRef<str>>(&self, argv: &[S]) -> std::io::Result<Cmd> {
        let mut c = Cmd::new("bwrap")
            .label(self.label.clone())
            .timeout(self.timeout)
            .memory_limit(self.memory_max)
            .arg("--bind")
            .arg(&self.tree)
            .arg("/")
            .args(["--proc", "/proc"])
            // Sysctls are the host's (core_pattern runs a program as host root on the next
            // crash), and bubblewrap's /proc leaves them writable for root.
            .args(["--ro-bind", "/proc/sys", "/proc/sys"])
            .args(["--dev", "/dev", "--ro-bind", "/sys", "/sys"])
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
            .args(["--hostname", "goldsmith-build"])
            .args(["--cap-drop", "ALL"]);
        for cap in KEPT_CAPABILITIES {
            c = c.args(["--cap-add", cap]);
        }
        if Path::new("/proc/sysrq-trigger").exists() {
            c = c.args(["--ro-bind", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]);
        }
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
        for sf in &self.secrets {
            let fd = secret_fd(&sf.value)?;
            c = c
                .args(["--perms", "0400", "--ro-bind-data"])
                .arg(fd.as_raw_fd().to_string())
                .arg(&sf.guest)
                .pass_fd(fd);
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
        Ok(c.args(["--chdir", "/", "--"])
            .args(argv.iter().map(|a| a.as_ref())))
    }
}

/// An anonymous in-memory file holding `value`, positioned at its start.
fn secret_fd(value: &[u8]) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Seek as _;
    let fd =
        nix::sys::memfd::memfd_create(c"goldsmith-secret", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(std::io::Error::from)?;
    let mut f = std::fs::File::from(exec::inheritable_fd(fd)?);
    f.write_all(value)?;
    f.rewind()?;
    Ok(f.into())
}
