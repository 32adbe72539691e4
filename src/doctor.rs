//! `goldsmith doctor`: is this host able to run the pipeline, and what to install if not.

use std::path::Path;

use serde::Serialize;

use crate::config::Config;
use crate::exec::{which, Cmd};

/// A program the pipeline runs.
struct Tool {
    program: &'static str,
    version_args: &'static [&'static str],
    minimum: &'static str,
    package: &'static str,
    needed_for: &'static str,
    required: bool,
}

const TOOLS: &[Tool] = &[
    Tool {
        program: "mmdebstrap",
        version_args: &["--version"],
        minimum: "1.3",
        package: "mmdebstrap",
        needed_for: "bootstrapping base layers",
        required: true,
    },
    Tool {
        program: "apt-get",
        version_args: &["--version"],
        minimum: "2.6",
        package: "apt",
        needed_for: "resolving package versions",
        required: true,
    },
    Tool {
        program: "bwrap",
        version_args: &["--version"],
        minimum: "0.8",
        package: "bubblewrap",
        needed_for: "running layer scripts isolated from the host",
        required: true,
    },
    Tool {
        program: "mkfs.ext4",
        version_args: &["-V"],
        minimum: "1.47",
        package: "e2fsprogs",
        needed_for: "the root file system (mkfs.ext4 -d)",
        required: true,
    },
    Tool {
        program: "mkfs.fat",
        version_args: &["--help"],
        minimum: "4.2",
        package: "dosfstools",
        needed_for: "the EFI system partition (--invariant, --offset)",
        required: true,
    },
    Tool {
        program: "mcopy",
        version_args: &["--version"],
        minimum: "4.0",
        package: "mtools",
        needed_for: "filling the ESP without mounting it",
        required: true,
    },
    Tool {
        program: "qemu-img",
        version_args: &["--version"],
        minimum: "5.1",
        package: "qemu-utils",
        needed_for: "qcow2/VMDK/VHD conversion (zstd qcow2 needs 5.1)",
        required: true,
    },
    Tool {
        program: "qemu-system-x86_64",
        version_args: &["--version"],
        minimum: "7.0",
        package: "qemu-system-x86",
        needed_for: "boot smoke tests",
        required: true,
    },
    Tool {
        program: "skopeo",
        version_args: &["--version"],
        minimum: "1.9",
        package: "skopeo",
        needed_for: "checking OCI output in tests (optional)",
        required: false,
    },
    Tool {
        program: "minisign",
        version_args: &["-v"],
        minimum: "0.9",
        package: "minisign",
        needed_for: "checking signatures by hand (optional)",
        required: false,
    },
];

const FIRMWARE: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"),
    (
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "systemd-boot-efi",
    ),
];

#[derive(Debug, Serialize)]
pub struct ToolReport {
    pub program: String,
    pub found: Option<String>,
    pub version: Option<String>,
    pub minimum: String,
    pub ok: bool,
    pub required: bool,
    pub package: String,
    pub needed_for: String,
}

#[derive(Debug, Serialize)]
pub struct DiskReport {
    pub path: String,
    pub free_gib: f64,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tools: Vec<ToolReport>,
    pub firmware: Vec<(String, bool)>,
    pub kvm: KvmReport,
    pub rootless: RootlessReport,
    pub disk: Vec<DiskReport>,
    /// apt packages to install to fix what is missing.
    pub install: Vec<String>,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct KvmReport {
    pub device: bool,
    pub accessible: bool,
    /// Only a real guest start tells whether KVM works (it does not on nested hosts whose
    /// MSRs cannot be set); `verify` probes that and falls back to TCG.
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct RootlessReport {
    pub running_as_root: bool,
    /// The current user can build inside a user namespace (for root: the host would let
    /// root's own user namespace be created; root needs none).
    pub user_namespaces: bool,
    /// What stops rootless builds (empty when nothing does).
    pub problems: Vec<String>,
    pub note: String,
}

/// Check the host.
pub async fn run(config: &Config) -> Report {
    let mut tools = Vec::new();
    let mut install = Vec::new();
    for t in TOOLS {
        let r = check_tool(t).await;
        if !r.ok && !install.contains(&t.package.to_string()) {
            install.push(t.package.to_string());
        }
        tools.push(r);
    }
    let mut firmware = Vec::new();
    for (p, pkg) in FIRMWARE {
        let ok = Path::new(p).exists();
        if !ok && !install.contains(&pkg.to_string()) {
            install.push(pkg.to_string());
        }
        firmware.push((p.to_string(), ok));
    }
    let kvm = kvm_report();
    let rootless = rootless_report().await;
    let mut disk = Vec::new();
    for p in [config.cache_dir(), config.store_dir(), config.build_dir()] {
        let probe = existing_ancestor(&p);
        let free = nix::sys::statvfs::statvfs(&probe)
            .map(|s| s.blocks_available() as f64 * s.fragment_size() as f64 / (1u64 << 30) as f64)
            .unwrap_or(0.0);
        disk.push(DiskReport {
            path: p.display().to_string(),
            free_gib: (free * 10.0).round() / 10.0,
            ok: free >= 10.0,
        });
    }
    let ok = tools.iter().all(|t| t.ok || !t.required)
        && firmware.iter().all(|(_, ok)| *ok)
        && disk.iter().all(|d| d.ok);
    Report {
        tools,
        firmware,
        kvm,
        rootless,
        disk,
        install,
        ok,
    }
}

async fn check_tool(t: &Tool) -> ToolReport {
    let found = which(t.program);
    let version = match &found {
        Some(p) => Cmd::new(p)
            .args(t.version_args)
            .timeout(std::time::Duration::from_secs(10))
            .run_unchecked()
            .await
            .ok()
            .and_then(|o| first_version(&format!("{}\n{}", o.stdout_str(), o.stderr_tail))),
        None => None,
    };
    let ok = match &version {
        Some(v) => version_at_least(v, t.minimum),
        None => false,
    };
    ToolReport {
        program: t.program.into(),
        found: found.map(|p| p.display().to_string()),
        version,
        minimum: t.minimum.into(),
        ok,
        required: t.required,
        package: t.package.into(),
        needed_for: t.needed_for.into(),
    }
}

fn first_version(s: &str) -> Option<String> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\b(\d+\.\d+(?:\.\d+)?)").unwrap())
        .captures(s)
        .map(|c| c[1].to_string())
}

/// Compare dotted versions numerically.
pub fn version_at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (a, b) = (parse(v), parse(min));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x > y;
        }
    }
    true
}

fn kvm_report() -> KvmReport {
    let device = Path::new("/dev/kvm").exists();
    let accessible = device
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
    let note = if !device {
        "no /dev/kvm: guests run under TCG (slower, still correct)".into()
    } else if !accessible {
        "/dev/kvm is not accessible to this user: guests run under TCG".into()
    } else {
        "/dev/kvm is accessible; `verify` probes a real guest once and falls back to TCG if KVM fails".into()
    };
    KvmReport {
        device,
        accessible,
        note,
    }
}

async fn rootless_report() -> RootlessReport {
    let root = nix::unistd::geteuid().is_root();
    let mut a = crate::rootless::check();
    // The files can look right while something else (seccomp, a container runtime, a
    // security module) still refuses: only creating the namespace proves it works.
    if !root && a.available {
        let probe = crate::rootless::namespace_command(Path::new("/bin/true"))
            .timeout(std::time::Duration::from_secs(20))
            .run()
            .await;
        if let Err(e) = probe {
            a.available = false;
            a.problems
                .push(format!("creating the user namespace failed: {e}"));
        }
    }
    let note = match (root, a.available) {
        (true, _) => format!(
            "running as root: builds need no user namespace{}",
            if a.problems.is_empty() {
                String::new()
            } else {
                format!(
                    " (user {} could not build rootless: {})",
                    a.user,
                    a.problems.join("; ")
                )
            }
        ),
        (false, true) => format!(
            "user {} builds rootless, inside a user namespace (subordinate ids from \
             /etc/subuid and /etc/subgid)",
            a.user
        ),
        (false, false) => format!(
            "user {} cannot build: {}; build as root or fix this",
            a.user,
            a.problems.join("; ")
        ),
    };
    RootlessReport {
        running_as_root: root,
        user_namespaces: a.available,
        problems: a.problems,
        note,
    }
}

fn existing_ancestor(p: &Path) -> std::path::PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        if !cur.pop() {
            return "/".into();
        }
    }
    cur
}

/// The report for people.
pub fn to_text(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("programs:\n");
    for t in &r.tools {
        s.push_str(&format!(
            "  {} {:<20} {:<10} (min {}{})  {}\n",
            if t.ok {
                "ok  "
            } else if t.required {
                "MISS"
            } else {
                "opt "
            },
            t.program,
            t.version.clone().unwrap_or_else(|| "-".into()),
            t.minimum,
            if t.required { "" } else { ", optional" },
            t.needed_for
        ));
    }
    s.push_str("firmware and boot files:\n");
    for (p, ok) in &r.firmware {
        s.push_str(&format!("  {} {p}\n", if *ok { "ok  " } else { "MISS" }));
    }
    s.push_str(&format!("kvm: {}\n", r.kvm.note));
    s.push_str(&format!("rootless: {}\n", r.rootless.note));
    s.push_str("free disk:\n");
    for d in &r.disk {
        s.push_str(&format!(
            "  {} {:>7.1} GiB  {}\n",
            if d.ok { "ok  " } else { "LOW " },
            d.free_gib,
            d.path
        ));
    }
    if !r.install.is_empty() {
        s.push_str(&format!(
            "install the missing pieces with:\n  apt-get install -y --allow-downgrades {}\n(or run ./ci/install-deps.sh)\n",
            r.install
                .iter()
                .map(|p| if p == "qemu-utils" { "qemu-utils/bookworm".to_string() } else { p.clone() })
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    s.push_str(if r.ok {
        "all good\n"
    } else {
        "some checks failed\n"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("7.2.22", "5.1"));
        assert!(version_at_least("1.47.0", "1.47"));
        assert!(!version_at_least("1.46.5", "1.47"));
        assert!(version_at_least("10.0", "7.0"));
        assert_eq!(
            first_version("mke2fs 1.47.0 (5-Feb-2023)").as_deref(),
            Some("1.47.0")
        );
    }
}
