//! The QEMU process of one boot: its command line, its temp directory (firmware
//! variables, sockets, console, snapshot overlay) and its lifetime.
//!
//! The artifact is attached with `snapshot=on`: guest writes go to a temporary overlay
//! inside the run's temp directory (QEMU honours TMPDIR), the artifact file itself is
//! only read. Dropping a [`Vm`] kills QEMU's process group and then removes the temp
//! directory, so a cancelled or failed verify leaves nothing behind.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

use super::accel::AccelKind;
use super::VerifyError;
use crate::exec::{Cmd, Running};

/// How long QEMU may take to create its sockets.
const STARTUP: Duration = Duration::from_secs(20);
/// Attempts when a picked loopback port was taken by someone else in the meantime.
const PORT_ATTEMPTS: usize = 3;

/// The disk to boot.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    /// QEMU block driver: raw, qcow2, vmdk, vpc.
    pub driver: &'static str,
}

/// Everything QEMU needs for one boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub qemu: PathBuf,
    pub name: String,
    pub accel: AccelKind,
    pub memory_mib: u32,
    pub cpus: u32,
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    pub disk: Disk,
    /// Guest TCP ports to forward from 127.0.0.1.
    pub forwards: Vec<u16>,
}

/// A running VM. Field order matters: QEMU dies before its directory is removed.
pub struct Vm {
    running: Running,
    /// When QEMU was started: the zero of `boot_secs`.
    pub started: Instant,
    /// Guest port -> host port on 127.0.0.1.
    pub forwards: BTreeMap<u16, u16>,
    pub console_path: PathBuf,
    pub qmp_path: PathBuf,
    pub agent_path: PathBuf,
    exit: Option<ExitStatus>,
    dir: tempfile::TempDir,
}

impl Vm {
    /// Start QEMU and wait until its control sockets exist.
    pub async fn start(cfg: &VmConfig) -> Result<Vm, VerifyError> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::try_start(cfg).await {
                Err(VerifyError::Qemu(msg)) if msg.contains("host forwarding rule") => {
                    // Someone took a port between our probe and QEMU's bind: pick again.
                    last = msg;
                }
                other => return other,
            }
        }
        Err(VerifyError::Qemu(last))
    }

    async fn try_start(cfg: &VmConfig) -> Result<Vm, VerifyError> {
        let dir = super::run_temp_dir("vm")?;
        let vars = dir.path().join("OVMF_VARS.fd");
        // A fresh copy per run: the firmware writes boot entries into it, and no run may
        // see what an earlier one left there.
        std::fs::copy(&cfg.ovmf_vars, &vars).map_err(|e| {
            VerifyError::Setup(format!("cannot copy {}: {e}", cfg.ovmf_vars.display()))
        })?;
        let forwards = free_ports(&cfg.forwards)?;
        let console_path = dir.path().join("console.log");
        let qmp_path = dir.path().join("qmp.sock");
        let agent_path = dir.path().join("qga.sock");
        let mut args = common_args(cfg, &vars);
        // The image under test is not trusted with the host's loopback services.
        args.extend(net_args(&forwards, true));
        args.extend([
            "-chardev".into(),
            format!(
                "socket,id=qmp,path={},server=on,wait=off",
                escape_opt(&qmp_path)
            ),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-chardev".into(),
            format!(
                "socket,id=qga0,path={},server=on,wait=off",
                escape_opt(&agent_path)
            ),
            "-device".into(),
            "virtio-serial-pci,id=vser0".into(),
            "-device".into(),
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0,id=qga-port"
                .into(),
            "-chardev".into(),
            format!("file,id=con0,path={}", escape_opt(&console_path)),
            "-serial".into(),
            "chardev:con0".into(),
            // A guest that reboots (panic=N, a failed boot) makes QEMU exit instead of
            // looping; pvpanic reports a panic as a QMP event.
            "-no-reboot".into(),
            "-device".into(),
            "pvpanic".into(),
        ]);
        let mut running = Cmd::new(&cfg.qemu)
            .args(&args)
            .env("TMPDIR", dir.path())
            .stdout_null()
            .label(cfg.name.clone())
            .spawn()
            .map_err(|e| VerifyError::Qemu(e.to_string()))?;
        let started = Instant::now();
        // The sockets appear while QEMU initialises, before the guest runs.
        loop {
            if let Some(st) = running.try_wait() {
                running.kill();
                let tail = running.stderr_tail().await;
                return Err(VerifyError::Qemu(format!(
                    "QEMU exited at start ({st}): {tail}"
                )));
            }
            if qmp_path.exists() && agent_path.exists() {
                break;
            }
            if started.elapsed() > STARTUP {
                return Err(VerifyError::Qemu(format!(
                    "QEMU did not create its sockets within {}s",
                    STARTUP.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::debug!(target: "goldsmith::verify", pid = running.pid(), ?forwards, "qemu started");
        Ok(Vm {
            running,
            started,
            forwards,
            console_path,
            qmp_path,
            agent_path,
            exit: None,
            dir,
        })
    }

    /// QEMU's process (group) id.
    pub fn pid(&self) -> i32 {
        self.running.pid()
    }

    /// The run's temp directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Has QEMU exited? Non-blocking.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.running.try_wait();
        }
        self.exit
    }

    /// Wait until QEMU exits (polls; the caller races this against other events).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        loop {
            if let Some(st) = self.exited() {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// QEMU's last stderr lines (after it exited).
    pub async fn stderr_tail(&mut self) -> String {
        self.running.stderr_tail().await
    }

    /// Kill QEMU and wait for it, then remove the temp directory.
    pub async fn stop(mut self) {
        self.running.kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.running.wait()).await;
    }
}

/// The arguments every boot shares (verify and `goldsmith boot`).
pub fn common_args(cfg: &VmConfig, vars: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-name".into(),
        cfg.name.clone(),
        "-machine".into(),
        "q35".into(),
    ];
    a.extend(cfg.accel.qemu_args().iter().map(|s| s.to_string()));
    a.extend([
        "-m".into(),
        cfg.memory_mib.to_string(),
        "-smp".into(),
        cfg.cpus.max(1).to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
    ]);
    a.extend(pflash_args(&cfg.ovmf_code, vars));
    a.extend([
        "-drive".into(),
        format!(
            "file={},format={},if=none,id=disk0,snapshot=on,cache=unsafe",
            escape_opt(&cfg.disk.path),
            cfg.disk.driver
        ),
        "-device".into(),
        "virtio-blk-pci,drive=disk0,bootindex=0".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
    ]);
    a
}

/// User-mode networking with the given forwards (guest port -> host port). An isolated
/// guest reaches neither the host (whose loopback services slirp would otherwise expose
/// at 10.0.2.2) nor the internet; DHCP and the forwards still work.
pub fn net_args(forwards: &BTreeMap<u16, u16>, isolated: bool) -> Vec<String> {
    let mut netdev = "user,id=net0".to_string();
    if isolated {
        netdev.push_str(",restrict=on");
    }
    for (guest, host) in forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
    ]
}

/// The firmware: code read-only, variables from the run's own copy.
pub fn pflash_args(code: &Path, vars: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            escape_opt(code)
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", escape_opt(vars)),
    ]
}

/// QEMU option values separate with commas; a literal comma is written twice.
pub fn escape_opt(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// A free loopback port for every guest port. The listeners are closed before QEMU binds;
/// [`Vm::start`] retries if another process takes one in between.
fn free_ports(guest_ports: &[u16]) -> Result<BTreeMap<u16, u16>, VerifyError> {
    let mut held = Vec::new();
    let mut map = BTreeMap::new();
    for g in guest_ports {
        if map.contains_key(g) {
            continue;
        }
        let l = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| VerifyError::Setup(format!("cannot find a free loopback port: {e}")))?;
        let port = l
            .local_addr()
            .map_err(|e| VerifyError::Setup(e.to_string()))?
            .port();
        held.push(l);
        map.insert(*g, port);
    }
    drop(held);
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_in_paths_are_escaped() {
        assert_eq!(escape_opt(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn forwards_bind_loopback_only() {
        let m = free_ports(&[80, 22, 80]).unwrap();
        assert_eq!(m.len(), 2);
        let a = net_args(&m, true);
        assert!(a[1].contains("restrict=on"), "{a:?}");
        assert!(
            a[1].contains(&format!("hostfwd=tcp:127.0.0.1:{}-:80", m[&80])),
            "{a:?}"
        );
        assert!(!a[1].contains("0.0.0.0"));
    }
}
