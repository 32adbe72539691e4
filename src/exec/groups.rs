//! The registry of live process groups: every group goldsmith starts is recorded here (in
//! memory for the signal handler, as a pidfile for the reaper of a later run) until it is
//! killed or has ended.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::RUN_ID_ENV;

/// Owns one live process group: registered for signal-time cleanup and with a pidfile
/// for the reaper; killing or dropping it kills the group.
pub(super) struct GroupGuard {
    pub(super) pgid: i32,
    pub(super) own_group: bool,
    pub(super) live: bool,
}

impl GroupGuard {
    pub(super) fn register(pgid: i32, own_group: bool, display: &str) -> Self {
        if own_group && pgid > 0 {
            live_groups()
                .lock()
                .unwrap()
                .insert(pgid, display.to_string());
            if let Some(dir) = pid_dir() {
                let body = format!("{} {} {}\n", std::process::id(), run_id(), display);
                let _ = std::fs::write(dir.join(format!("{pgid}.pid")), body);
            }
        }
        GroupGuard {
            pgid,
            own_group,
            live: true,
        }
    }

    pub(super) fn kill(&mut self) {
        if !self.live {
            return;
        }
        self.live = false;
        if self.own_group && self.pgid > 0 {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
            live_groups().lock().unwrap().remove(&self.pgid);
            if let Some(dir) = pid_dir() {
                let _ = std::fs::remove_file(dir.join(format!("{}.pid", self.pgid)));
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn live_groups() -> &'static Mutex<HashMap<i32, String>> {
    static G: OnceLock<Mutex<HashMap<i32, String>>> = OnceLock::new();
    G.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Kill every live process group (used by the signal handler before the pipeline unwinds).
pub fn kill_all() {
    let groups: Vec<i32> = live_groups().lock().unwrap().keys().copied().collect();
    for g in groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
}

/// Number of process groups currently alive (tests use it to prove nothing leaked).
pub fn live_group_count() -> usize {
    live_groups().lock().unwrap().len()
}

pub(super) fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )
    })
}

static PID_DIR: RwLock<Option<PathBuf>> = RwLock::new(None);

fn pid_dir() -> Option<PathBuf> {
    PID_DIR.read().unwrap().clone()
}

/// Set the directory where live process groups leave pidfiles, then kill whatever an
/// earlier goldsmith that died without cleaning up (SIGKILL, power loss) left running.
/// Returns how many orphaned groups were reaped.
pub fn init_reaper(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    *PID_DIR.write().unwrap() = Some(dir.to_owned());
    let mut reaped = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pgid) = name
            .strip_suffix(".pid")
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut it = body.split_whitespace();
        let owner: i32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let owner_run = it.next().unwrap_or("").to_string();
        if owner > 0 && process_alive_with_run(owner, None) {
            continue; // a concurrent goldsmith still owns it
        }
        // Kill only processes that carry the dead run's id: a reused pgid is left alone.
        for pid in processes_in_group(pgid) {
            if process_alive_with_run(pid, Some(&owner_run)) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                reaped += 1;
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
    if reaped > 0 {
        tracing::warn!("reaped {reaped} process(es) left behind by an earlier goldsmith run");
    }
    Ok(reaped)
}

fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state ppid pgrp ...
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.get(2).and_then(|s| s.parse::<i32>().ok()) == Some(pgid) {
                out.push(pid);
            }
        }
    }
    out
}

/// Is `pid` alive (and, when `run` is given, a child of that goldsmith run)?
fn process_alive_with_run(pid: i32, run: Option<&str>) -> bool {
    match run {
        None => Path::new(&format!("/proc/{pid}")).exists(),
        Some(run) => std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| {
                let needle = format!("{RUN_ID_ENV}={run}");
                env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
            })
            .unwrap_or(false),
    }
}
