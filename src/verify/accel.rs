//! Choosing the accelerator: KVM when it really works, else TCG.
//!
//! `/dev/kvm` existing proves little: on nested hosts (like the build machines this was
//! written on) QEMU aborts as soon as a vCPU starts ("failed to set MSR"). So `auto`
//! starts a throw-away guest under KVM once per host and remembers the answer in the
//! cache directory, keyed by the QEMU version and the host kernel, which are what decide
//! it. `kvm` and `tcg` force the choice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::qmp::Qmp;
use super::VerifyError;
use crate::exec::Cmd;

/// How long the probe guest must run without QEMU aborting or KVM reporting an error.
const PROBE_RUN: Duration = Duration::from_millis(1500);

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            o => Err(format!("unknown accelerator '{o}' (auto, kvm, tcg)")),
        }
    }
}

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelKind {
    Kvm,
    Tcg,
}

impl AccelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccelKind::Kvm => "kvm",
            AccelKind::Tcg => "tcg",
        }
    }

    /// `-accel` and `-cpu` arguments.
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            AccelKind::Kvm => ["-accel", "kvm", "-cpu", "host"],
            // `max` gives the guest every feature TCG emulates (x86-64-v2 and more), which
            // current distribution kernels and glibc expect.
            AccelKind::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// The decision and why it was made (recorded in every BootRecord).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accel {
    pub kind: AccelKind,
    pub reason: String,
}

/// Where the probe looks; tests point these elsewhere.
#[derive(Debug, Clone)]
pub struct ProbeEnv {
    pub qemu: PathBuf,
    pub kvm_device: PathBuf,
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    /// Where the probe result is cached (None: never cached).
    pub cache_dir: Option<PathBuf>,
}

/// The cached probe result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ProbeCache {
    key: String,
    kvm_works: bool,
    detail: String,
}

/// Decide which accelerator to use.
pub async fn choose(choice: AccelChoice, env: &ProbeEnv) -> Result<Accel, VerifyError> {
    match choice {
        AccelChoice::Tcg => Ok(Accel {
            kind: AccelKind::Tcg,
            reason: "TCG forced by verify.accelerator = \"tcg\"".into(),
        }),
        AccelChoice::Kvm => {
            if let Err(why) = device_usable(&env.kvm_device) {
                return Err(VerifyError::KvmUnavailable(why));
            }
            Ok(Accel {
                kind: AccelKind::Kvm,
                reason: "KVM forced by verify.accelerator = \"kvm\"".into(),
            })
        }
        AccelChoice::Auto => Ok(auto(env).await),
    }
}

async fn auto(env: &ProbeEnv) -> Accel {
    if let Err(why) = device_usable(&env.kvm_device) {
        return tcg(format!("{why}; using TCG"));
    }
    let key = probe_key(&env.qemu).await;
    let cache_file = env
        .cache_dir
        .as_ref()
        .map(|d| d.join("verify").join("kvm-probe.json"));
    if let Some(f) = &cache_file {
        if let Ok(c) = crate::fsutil::read_json::<ProbeCache>(f) {
            if c.key == key {
                return decision(c.kvm_works, &c.detail, " (cached probe result)");
            }
        }
    }
    let (works, detail) = match probe(env).await {
        Ok(()) => (true, "a KVM probe guest ran".to_string()),
        Err(why) => (false, why),
    };
    if let Some(f) = &cache_file {
        let c = ProbeCache {
            key,
            kvm_works: works,
            detail: detail.clone(),
        };
        if let Err(e) = crate::fsutil::atomic_write_json(f, &c) {
            tracing::debug!(target: "goldsmith::verify", "cannot cache the KVM probe in {}: {e}", f.display());
        }
    }
    decision(works, &detail, "")
}

fn decision(works: bool, detail: &str, suffix: &str) -> Accel {
    if works {
        Accel {
            kind: AccelKind::Kvm,
            reason: format!("KVM works: {detail}{suffix}"),
        }
    } else {
        tcg(format!("KVM probe failed: {detail}{suffix}; using TCG"))
    }
}

fn tcg(reason: String) -> Accel {
    Accel {
        kind: AccelKind::Tcg,
        reason,
    }
}

/// Can we open the KVM device read-write?
fn device_usable(dev: &Path) -> Result<(), String> {
    if !dev.exists() {
        return Err(format!("{} does not exist", dev.display()));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map(|_| ())
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))
}

/// What decides whether KVM works: the QEMU build and the host kernel.
async fn probe_key(qemu: &Path) -> String {
    let version = Cmd::new(qemu)
        .arg("--version")
        .timeout(Duration::from_secs(20))
        .run()
        .await
        .map(|o| o.stdout_str().lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{version} | kernel {kernel}")
}

/// Start a guest under KVM with the firmware verify boots with (no disk), let it run
/// briefly, and ask QEMU whether it is still running.
async fn probe(env: &ProbeEnv) -> Result<(), String> {
    let dir = super::run_temp_dir("kvm-probe").map_err(|e| format!("temp dir: {e}"))?;
    let vars = dir.path().join("vars.fd");
    std::fs::copy(&env.ovmf_vars, &vars)
        .map_err(|e| format!("cannot copy {}: {e}", env.ovmf_vars.display()))?;
    let qmp_path = dir.path().join("qmp.sock");
    let mut args: Vec<String> = AccelKind::Kvm
        .qemu_args()
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(
        [
            "-machine",
            "q35",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "none",
        ]
        .map(String::from),
    );
    args.extend(super::qemu::pflash_args(&env.ovmf_code, &vars));
    args.push("-qmp".into());
    args.push(format!(
        "unix:{},server=on,wait=off",
        super::qemu::escape_opt(&qmp_path)
    ));
    let mut running = Cmd::new(&env.qemu)
        .args(&args)
        .env("TMPDIR", dir.path())
        .stdout_null()
        .label("kvm probe")
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = tokio::time::Instant::now();
    // Wait for the run time, or for QEMU to die (it aborts within milliseconds here).
    while started.elapsed() < PROBE_RUN {
        if let Some(st) = running.try_wait() {
            running.kill();
            let tail = running.stderr_tail().await;
            return Err(format!(
                "QEMU exited ({st}) under KVM: {}",
                last_meaningful_line(&tail)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = match Qmp::connect(&qmp_path).await {
        Ok(mut q) => q.status().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    running.kill();
    let _ = running.wait().await;
    match status {
        Ok(s) if s == "running" => Ok(()),
        Ok(s) => {
            let tail = running.stderr_tail().await;
            Err(format!(
                "the KVM guest is in state '{s}': {}",
                last_meaningful_line(&tail)
            ))
        }
        Err(e) => Err(format!("cannot query the KVM probe guest: {e}")),
    }
}

fn last_meaningful_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.contains("warning:"))
        .or_else(|| stderr.lines().next_back())
        .unwrap_or("no error output")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parses() {
        assert_eq!("auto".parse::<AccelChoice>(), Ok(AccelChoice::Auto));
        assert!("xen".parse::<AccelChoice>().is_err());
    }

    #[test]
    fn missing_device_is_explained() {
        let e = device_usable(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn abort_line_is_picked_from_stderr() {
        let s = "qemu-system-x86_64: warning: host doesn't support requested feature\n\
                 qemu-system-x86_64: ../kvm.c:3183: kvm_buf_set_msrs: Assertion failed.\n";
        assert!(last_meaningful_line(s).contains("kvm_buf_set_msrs"));
    }
}
