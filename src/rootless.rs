//! Rootless builds: `goldsmith build` and `goldsmith nightly` started by an unprivileged
//! user re-execute themselves inside a user namespace in which they are root.
//!
//! The namespace maps the user to root and the user's `/etc/subuid`/`/etc/subgid` range
//! to ids 1..65536 (`unshare --map-auto --map-root-user`, through the setuid
//! `newuidmap`/`newgidmap` of the `uidmap` package), so dpkg can chown files to `_apt` or
//! `sshd` and mkfs.ext4 records them with the ids the image expects. It has its own mount
//! and PID namespaces: mmdebstrap and bubblewrap can mount what they need, and when the
//! inner goldsmith (PID 1 there) ends, the kernel kills everything left in it.
//!
//! Nothing else changes: goldsmith assembles disks without loop devices or mounts anyway,
//! and QEMU runs unprivileged. The outer goldsmith only forwards SIGINT and SIGTERM (so
//! the inner one cleans up as usual) and returns the inner one's exit code.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;

use crate::exec::{self, Cmd};

/// Set in the re-executed goldsmith, so it does not try again.
pub const ENV: &str = "GOLDSMITH_USERNS";

/// The size of the id range the namespace maps besides root: Debian's `nobody` (65534)
/// must be inside it.
const NEEDED_IDS: u64 = 65535;

/// Whether an unprivileged user can build here, and what is missing if not.
#[derive(Debug, Clone, Serialize)]
pub struct Availability {
    /// The user the check was made for.
    pub user: String,
    pub available: bool,
    /// What stops it (empty when available).
    pub problems: Vec<String>,
}

/// Is this goldsmith the one re-executed inside the namespace?
pub fn inside() -> bool {
    std::env::var_os(ENV).is_some() && nix::unistd::geteuid().is_root()
}

/// Must a command that builds trees re-execute itself in a namespace?
pub fn needed() -> bool {
    !nix::unistd::geteuid().is_root() && std::env::var_os(ENV).is_none()
}

/// Check the host for the current user (or `user`, by name and uid).
pub fn check() -> Availability {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    check_for(&name, uid.as_raw())
}

/// The check for one user.
pub fn check_for(user: &str, uid: u32) -> Availability {
    let mut problems = Vec::new();
    let max_ns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if max_ns == 0 {
        problems.push("the kernel allows no user namespaces (user.max_user_namespaces = 0)".into());
    }
    if std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
        .is_ok_and(|s| s.trim() == "0")
    {
        problems.push(
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"
                .into(),
        );
    }
    if std::fs::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        .is_ok_and(|s| s.trim() == "1")
    {
        problems.push(
            "AppArmor restricts unprivileged user namespaces \
             (kernel.apparmor_restrict_unprivileged_userns = 1)"
                .into(),
        );
    }
    for prog in ["unshare", "newuidmap", "newgidmap"] {
        if exec::which(prog).is_none() {
            problems.push(format!(
                "{prog} is not installed (package {})",
                if prog == "unshare" {
                    "util-linux"
                } else {
                    "uidmap"
                }
            ));
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let ids = subordinate_ids(&text, user, uid);
        if ids < NEEDED_IDS {
            problems.push(if ids == 0 {
                format!(
                    "{file} has no range for {user} (add one: usermod --add-subuids \
                     100000-165535 --add-subgids 100000-165535 {user})"
                )
            } else {
                format!("{file} gives {user} only {ids} ids; {NEEDED_IDS} are needed")
            });
        }
    }
    Availability {
        user: user.to_string(),
        available: problems.is_empty(),
        problems,
    }
}

/// How many subordinate ids `/etc/subuid`-style `text` gives the user (by name or uid).
pub fn subordinate_ids(text: &str, user: &str, uid: u32) -> u64 {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, _start, count) = (f.next()?, f.next()?, f.next()?);
            (who == user || who == uid.to_string())
                .then(|| count.trim().parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// Run this goldsmith again inside a user namespace and return its exit code.
pub async fn reexec() -> u8 {
    let a = check();
    if !a.available {
        eprintln!(
            "error: building as an unprivileged user ({}) needs user namespaces, which are \
             not usable here: {}. Run as root, or fix this (`goldsmith doctor` checks it).",
            a.user,
            a.problems.join("; ")
        );
        return 1;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find the goldsmith binary to re-execute: {e}");
            return 1;
        }
    };
    let Ok((mut int, mut term)) = crate::exec::termination_signals() else {
        eprintln!("error: cannot install signal handlers");
        return 1;
    };
    tracing::debug!("not root: re-executing inside a user namespace");
    let mut running = match namespace_command(&exe)
        .args(std::env::args_os().skip(1))
        .env(ENV, "1")
        .passthrough()
        .label("user namespace")
        .spawn()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let status = loop {
        tokio::select! {
            st = running.wait() => break st,
            _ = int.recv() => running.signal(Signal::SIGINT),
            _ = term.recv() => running.signal(Signal::SIGTERM),
        }
    };
    match status {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            match (st.code(), st.signal()) {
                (Some(c), _) => c as u8,
                (None, Some(s)) => (128 + s) as u8,
                _ => 1,
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `unshare … -- program`: the namespace goldsmith builds in.
///
/// The namespace's PID 1 is a shell that starts `program` and waits: processes orphaned
/// inside (a sandbox's inner bubblewrap once its monitor exits) are reparented to PID 1,
/// and the shell's wait reaps them, where goldsmith would leave them as zombies.
pub fn namespace_command(program: &Path) -> Cmd {
    Cmd::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--map-auto",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--",
            "/bin/sh",
            "-c",
            "\"$@\" & wait $!",
            "goldsmith-init",
        ])
        .arg(program)
        // A nightly runs for hours; its stages enforce their own timeouts.
        .timeout(Duration::from_secs(7 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_counted_by_name_or_uid() {
        let t = "alice:100000:65536\n1001:200000:10\nbob:300000:65536\n";
        assert_eq!(subordinate_ids(t, "alice", 1000), 65536);
        assert_eq!(subordinate_ids(t, "carol", 1001), 10);
        assert_eq!(subordinate_ids(t, "dave", 1002), 0);
        assert_eq!(subordinate_ids("garbage\n:::\n", "dave", 1002), 0);
    }
}
