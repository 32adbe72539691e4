//! `goldsmith boot`: the image with its serial console on this terminal.
//!
//! Same machine as verify (q35, OVMF with a fresh variables copy, `snapshot=on`, so the
//! artifact is never written), but the console and QEMU's monitor are multiplexed on
//! stdio: Ctrl-A X quits, Ctrl-A C switches to the monitor.

use std::collections::BTreeMap;
use std::path::Path;

use super::accel::Accel;
use super::qemu::{self, Disk, VmConfig};
use super::{HostSettings, VerifyError};
use crate::artifact::VmSpec;
use crate::exec::Cmd;

/// Boot `disk` interactively; returns QEMU's exit code.
pub async fn boot(
    host: &HostSettings,
    accel: &Accel,
    disk: Disk,
    vm: VmSpec,
    ssh_port: Option<u16>,
    name: &str,
) -> Result<i32, VerifyError> {
    host.check_firmware()?;
    let dir = super::run_temp_dir("boot")?;
    let vars = dir.path().join("OVMF_VARS.fd");
    std::fs::copy(&host.ovmf_vars, &vars).map_err(|e| {
        VerifyError::Setup(format!("cannot copy {}: {e}", host.ovmf_vars.display()))
    })?;
    let cfg = VmConfig {
        qemu: host.qemu.clone(),
        name: name.to_string(),
        accel: accel.kind,
        memory_mib: vm.memory_mib,
        cpus: vm.cpus,
        ovmf_code: host.ovmf_code.clone(),
        ovmf_vars: host.ovmf_vars.clone(),
        disk,
        forwards: Vec::new(),
    };
    let args = boot_args(&cfg, &vars, ssh_port);
    let _term = TermRestore::save();
    let running = Cmd::new(&host.qemu)
        .args(&args)
        .env("TMPDIR", dir.path())
        .interactive()
        .label(name.to_string())
        .spawn()
        .map_err(|e| VerifyError::Qemu(e.to_string()))?;
    // An interactive child shares our process group (for the terminal), so the exec
    // wrapper's group kill does not reach it: kill it ourselves if we are dropped.
    let mut guard = KillOnDrop(running);
    let st = guard
        .0
        .wait()
        .await
        .map_err(|e| VerifyError::Qemu(e.to_string()))?;
    drop(dir);
    Ok(st.code().unwrap_or(1))
}

/// QEMU's arguments for an interactive boot.
pub fn boot_args(cfg: &VmConfig, vars: &Path, ssh_port: Option<u16>) -> Vec<String> {
    let mut args = qemu::common_args(cfg, vars);
    let mut fw = BTreeMap::new();
    if let Some(p) = ssh_port {
        fw.insert(22u16, p);
    }
    // A developer's guest may install packages: it keeps its way out.
    args.extend(qemu::net_args(&fw, false));
    args.extend(["-serial".into(), "mon:stdio".into()]);
    args
}

struct KillOnDrop(crate::exec::Running);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// Puts the terminal back as it was: QEMU switches it to raw mode and cannot undo that
/// if it is killed.
struct TermRestore(Option<libc::termios>);

impl TermRestore {
    fn save() -> TermRestore {
        // SAFETY: tcgetattr fills a plain C struct for fd 0; on failure we keep nothing.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 {
                TermRestore(Some(t))
            } else {
                TermRestore(None)
            }
        }
    }
}

impl Drop for TermRestore {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the attributes read by tcgetattr on the same fd.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::AccelKind;

    #[test]
    fn boot_uses_snapshot_and_loopback_ssh() {
        let cfg = VmConfig {
            qemu: "qemu-system-x86_64".into(),
            name: "t".into(),
            accel: AccelKind::Tcg,
            memory_mib: 512,
            cpus: 1,
            ovmf_code: "/code.fd".into(),
            ovmf_vars: "/vars.fd".into(),
            disk: Disk {
                path: "/img/disk.qcow2".into(),
                driver: "qcow2",
            },
            forwards: vec![],
        };
        let a = boot_args(&cfg, Path::new("/tmp/x/vars.fd"), Some(2222)).join(" ");
        assert!(
            a.contains("file=/img/disk.qcow2,format=qcow2,if=none,id=disk0,snapshot=on"),
            "{a}"
        );
        assert!(a.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{a}");
        assert!(a.contains("-serial mon:stdio"), "{a}");
        assert!(a.contains("readonly=on,file=/code.fd"), "{a}");
        assert!(a.contains("unit=1,file=/tmp/x/vars.fd"), "{a}");
    }
}
