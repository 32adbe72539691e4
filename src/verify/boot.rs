//! One boot of one disk artifact: start the VM, wait until the guest is ready (watching
//! for the ways it can fail on the way), run the declared checks, record everything.
//!
//! Readiness is event-driven: the console watcher reports a panic or an emergency shell
//! the moment it is printed, QEMU exiting or a pvpanic event ends the wait at once, and
//! the guest agent is polled only from the moment its channel opens. Only a guest that
//! simply never gets there waits for the boot timeout.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::agent::Agent;
use super::checks::{self, CheckEnv};
use super::console::ConsoleWatch;
use super::qemu::{Disk, Vm, VmConfig};
use super::qmp::Qmp;
use super::{Accel, HostSettings};
use crate::artifact::{BootRecord, CheckResult, VmSpec};
use crate::recipe::image::VerifyDef;
use crate::recipe::{Format, SourcedCheck};

/// Console lines that go into a failure's detail.
pub const CONSOLE_TAIL_LINES: usize = 25;
/// How long one `guest-sync` attempt waits before it is sent again.
const SYNC_ATTEMPT: Duration = Duration::from_secs(2);
/// Time kept back from the boot timeout to list the jobs a stuck boot waits for.
const JOBS_GRACE: Duration = Duration::from_secs(5);

/// What to boot and check.
pub struct BootInput<'a> {
    pub format: Format,
    pub disk: Disk,
    /// The artifact as recorded (relative to the build directory, or as given).
    pub artifact: String,
    pub artifact_sha256: String,
    pub vm: VmSpec,
    pub checks: &'a [SourcedCheck],
    pub verify: &'a VerifyDef,
    /// Where the console log is saved (written atomically after the boot).
    pub console_dest: std::path::PathBuf,
    /// The console log as recorded (relative to the build directory).
    pub console_rel: String,
    pub name: String,
}

/// Why the guest did not become ready.
struct NotReady {
    /// One line.
    reason: String,
    /// Which built-in check failed, with its detail (console tail etc).
    check: &'static str,
    detail: String,
    /// When the agent answered, if it did.
    agent_detail: Option<String>,
}

const CHECK_CONSOLE: &str = "console shows no kernel panic or emergency shell";
const CHECK_AGENT: &str = "guest agent answers";
const CHECK_RUNNING: &str = "systemctl is-system-running: running";

/// Boot the artifact, run the checks, save the console log and return the record.
pub async fn boot_and_check(
    host: &HostSettings,
    accel: &Accel,
    input: BootInput<'_>,
) -> BootRecord {
    let t0 = std::time::Instant::now();
    let mut rec = BootRecord {
        format: input.format,
        artifact: input.artifact.clone(),
        artifact_sha256: input.artifact_sha256.clone(),
        passed: false,
        accelerator: accel.kind.as_str().to_string(),
        accelerator_reason: accel.reason.clone(),
        boot_secs: None,
        duration_secs: 0.0,
        checks: Vec::new(),
        console_log: input.console_rel.clone(),
        attempts: 1,
        failure: None,
    };
    let cfg = VmConfig {
        qemu: host.qemu.clone(),
        name: input.name.clone(),
        accel: accel.kind,
        memory_mib: input.vm.memory_mib,
        cpus: input.vm.cpus,
        ovmf_code: host.ovmf_code.clone(),
        ovmf_vars: host.ovmf_vars.clone(),
        disk: input.disk.clone(),
        forwards: checks::guest_ports(input.checks),
    };
    let mut vm = match Vm::start(&cfg).await {
        Ok(vm) => vm,
        Err(e) => {
            let reason = format!("QEMU did not start: {e}");
            rec.checks
                .push(builtin("QEMU starts", false, reason.clone(), 0));
            not_run_all(&mut rec, input.checks, "not run: QEMU did not start");
            rec.failure = Some(first_line(&reason));
            rec.duration_secs = t0.elapsed().as_secs_f64();
            let _ = crate::fsutil::atomic_write(&input.console_dest, b"");
            return rec;
        }
    };
    let console = ConsoleWatch::start(&vm.console_path, vm.started);
    let ready_t = Instant::now();
    let ready = wait_ready(&mut vm, &console, input.verify).await;
    let ready_ms = ready_t.elapsed().as_millis() as u64;
    match ready {
        Err(nr) => {
            // The built-ins before the one that failed passed; the later ones were not
            // reached.
            let order = [CHECK_CONSOLE, CHECK_AGENT, CHECK_RUNNING];
            let failed_at = order.iter().position(|n| *n == nr.check).unwrap_or(0);
            for (i, name) in order.into_iter().enumerate() {
                rec.checks.push(match i.cmp(&failed_at) {
                    std::cmp::Ordering::Less => {
                        let detail = match name {
                            CHECK_CONSOLE => "no panic or emergency shell seen".to_string(),
                            _ => nr.agent_detail.clone().unwrap_or_else(|| "ok".into()),
                        };
                        builtin(name, true, detail, 0)
                    }
                    std::cmp::Ordering::Equal => builtin(name, false, nr.detail.clone(), ready_ms),
                    std::cmp::Ordering::Greater => {
                        let mut r = builtin(name, false, "not reached".into(), 0);
                        r.skipped = true;
                        r
                    }
                });
            }
            not_run_all(
                &mut rec,
                input.checks,
                "not run: the guest never became ready",
            );
            rec.failure = Some(nr.reason);
        }
        Ok(mut r) => {
            rec.boot_secs = Some(r.boot_secs);
            if let Some(t) = console.state().login_prompt {
                r.running_detail.push_str(&format!(
                    " (console login prompt after {:.1}s)",
                    t.as_secs_f64()
                ));
            }
            rec.checks
                .push(builtin(CHECK_AGENT, true, r.agent_detail.clone(), 0));
            rec.checks.push(builtin(
                CHECK_RUNNING,
                r.running_ok,
                r.running_detail.clone(),
                0,
            ));
            run_declared(&mut vm, &console, &mut r.agent, input.checks, &mut rec).await;
            // The console verdict covers the whole boot, checks included.
            let console_check = match console.state().fatal {
                Some(f) => builtin(
                    CHECK_CONSOLE,
                    false,
                    format!(
                        "{}: {}\n{}",
                        f.what,
                        f.line,
                        console.tail(CONSOLE_TAIL_LINES)
                    ),
                    0,
                ),
                None => builtin(
                    CHECK_CONSOLE,
                    true,
                    "no panic or emergency shell seen".into(),
                    0,
                ),
            };
            rec.checks.insert(0, console_check);
            rec.failure = rec
                .checks
                .iter()
                .find(|c| !c.passed)
                .map(|c| first_line(&format!("{}: {}", c.name, c.detail)));
        }
    }
    rec.passed = rec.failure.is_none() && rec.checks.iter().all(|c| c.passed);
    // Save the console before QEMU's temp directory goes away.
    let log = std::fs::read(&vm.console_path).unwrap_or_default();
    if let Err(e) = crate::fsutil::atomic_write(&input.console_dest, &log) {
        tracing::warn!(target: "goldsmith::verify", "cannot save the console log to {}: {e}", input.console_dest.display());
    }
    drop(console);
    vm.stop().await;
    rec.duration_secs = t0.elapsed().as_secs_f64();
    rec
}

fn builtin(name: &str, passed: bool, detail: String, ms: u64) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        origin: "builtin".into(),
        passed,
        skipped: false,
        duration_ms: ms,
        detail,
    }
}

fn not_run_all(rec: &mut BootRecord, checks: &[SourcedCheck], why: &str) {
    rec.checks
        .extend(checks.iter().map(|c| checks::not_run(c, why, false)));
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// The guest is ready: the agent answered and systemd finished booting.
struct Ready {
    agent: Agent,
    boot_secs: f64,
    agent_detail: String,
    running_ok: bool,
    running_detail: String,
}

async fn wait_ready(
    vm: &mut Vm,
    console: &ConsoleWatch,
    verify: &VerifyDef,
) -> Result<Ready, NotReady> {
    let timeout = Duration::from_secs(verify.boot_timeout_secs.max(1));
    let deadline = vm.started + timeout;
    let stage = Mutex::new("waiting for the guest agent");
    let agent_note = Mutex::new(None);
    let port_open = Notify::new();
    let mut qmp = Qmp::connect(&vm.qmp_path).await.map_err(|e| NotReady {
        reason: format!("cannot talk to QEMU: {e}"),
        check: CHECK_AGENT,
        detail: e.to_string(),
        agent_detail: None,
    })?;
    let agent_path = vm.agent_path.clone();
    let started = vm.started;
    let tail = |n| console.tail(n);
    let guest = guest_ready(
        &agent_path,
        started,
        deadline,
        verify,
        &stage,
        &agent_note,
        &port_open,
    );
    tokio::pin!(guest);
    let events = async {
        while let Some(ev) = qmp.next_event().await {
            match ev.event.as_str() {
                "VSERPORT_CHANGE" if ev.data.get("open").and_then(Value::as_bool) == Some(true) => {
                    port_open.notify_one();
                }
                "GUEST_PANICKED" => return "the guest reported a panic (pvpanic)".to_string(),
                "SHUTDOWN" => {
                    let why = ev
                        .data
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown");
                    return format!("the guest shut down or rebooted during boot ({why})");
                }
                _ => {}
            }
        }
        // QEMU closed the monitor: it is exiting; the exit branch reports it.
        std::future::pending::<String>().await
    };
    tokio::select! {
        r = &mut guest => r,
        f = console.fatal() => Err(NotReady {
            reason: format!("{}: {}", f.what, f.line),
            check: CHECK_CONSOLE,
            detail: format!("{}: {}\nconsole ends with:\n{}", f.what, f.line, tail(CONSOLE_TAIL_LINES)),
            agent_detail: None,
        }),
        why = events => {
            // Give the console a moment to show the panic text that usually explains it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err(NotReady {
                reason: why.clone(),
                check: CHECK_CONSOLE,
                detail: format!("{why}\nconsole ends with:\n{}", tail(CONSOLE_TAIL_LINES)),
                agent_detail: None,
            })
        }
        st = vm.wait_exit() => {
            let stderr = vm.stderr_tail().await;
            let fatal = console.state().fatal;
            let (check, reason) = match fatal {
                Some(f) => (CHECK_CONSOLE, format!("{}: {}", f.what, f.line)),
                None => (CHECK_AGENT, format!("QEMU exited ({st}) before the guest was ready")),
            };
            Err(NotReady {
                reason: reason.clone(),
                check,
                detail: format!("{reason}\nQEMU stderr: {}\nconsole ends with:\n{}", stderr.trim(), tail(CONSOLE_TAIL_LINES)),
                agent_detail: agent_note.lock().unwrap().clone(),
            })
        }
        _ = tokio::time::sleep_until(deadline) => {
            let at = *stage.lock().unwrap();
            let s = console.state();
            let login = match s.login_prompt {
                Some(t) => format!("the console showed a login prompt after {:.1}s", t.as_secs_f64()),
                None => "the console never showed a login prompt".into(),
            };
            let check = if at.starts_with("waiting for the guest agent") { CHECK_AGENT } else { CHECK_RUNNING };
            let reason = format!("not ready after {}s: {at}; {login}", timeout.as_secs());
            Err(NotReady {
                reason: reason.clone(),
                check,
                detail: format!("{reason}\nconsole ends with:\n{}", tail(CONSOLE_TAIL_LINES)),
                agent_detail: agent_note.lock().unwrap().clone(),
            })
        }
    }
}

/// The agent answers, then systemd reaches a final state.
async fn guest_ready(
    agent_path: &std::path::Path,
    started: Instant,
    deadline: Instant,
    verify: &VerifyDef,
    stage: &Mutex<&'static str>,
    agent_note: &Mutex<Option<String>>,
    port_open: &Notify,
) -> Result<Ready, NotReady> {
    let agent_fail = |reason: String| NotReady {
        reason: reason.clone(),
        check: CHECK_AGENT,
        detail: reason,
        agent_detail: None,
    };
    let mut agent = Agent::connect(agent_path)
        .await
        .map_err(|e| agent_fail(e.to_string()))?;
    // Until the guest opens its end of the channel, requests just queue up; each attempt
    // is resent when the port opens (QMP VSERPORT_CHANGE) or after SYNC_ATTEMPT.
    loop {
        let attempt = tokio::select! {
            r = agent.sync(SYNC_ATTEMPT) => Some(r),
            _ = port_open.notified() => None,
        };
        match attempt {
            Some(Ok(())) => break,
            Some(Err(super::agent::AgentError::Timeout(_))) | None => continue,
            Some(Err(super::agent::AgentError::Closed)) => {
                // QEMU resets the channel when the guest closes the port; reconnect.
                tokio::time::sleep(Duration::from_millis(200)).await;
                agent = Agent::connect(agent_path)
                    .await
                    .map_err(|e| agent_fail(e.to_string()))?;
            }
            Some(Err(e)) => return Err(agent_fail(e.to_string())),
        }
    }
    agent.ping().await.map_err(|e| agent_fail(e.to_string()))?;
    let agent_secs = started.elapsed().as_secs_f64();
    let agent_detail = format!("answered after {agent_secs:.1}s");
    *stage.lock().unwrap() = "the guest agent answered, systemd was still starting units";
    *agent_note.lock().unwrap() = Some(agent_detail.clone());
    let running_fail = |reason: String, detail: String| NotReady {
        reason,
        check: CHECK_RUNNING,
        detail,
        agent_detail: Some(agent_detail.clone()),
    };
    // `--wait` returns once the boot job queue is empty; the state it prints is final.
    let argv: Vec<String> = ["systemctl", "is-system-running", "--wait"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let state = loop {
        // Stop waiting a little before the boot deadline, so there is time left to ask
        // systemd which jobs it is stuck on.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(JOBS_GRACE)
            .max(Duration::from_secs(1));
        let out = match agent.exec(&argv, left).await {
            Ok(o) => o,
            Err(super::agent::AgentError::Timeout(_)) => {
                let jobs = pending_jobs(&mut agent).await;
                let reason =
                    format!(
                    "systemd did not finish booting within the boot timeout ({}s); jobs still queued: {}",
                    verify.boot_timeout_secs,
                    if jobs.is_empty() { "unknown".to_string() } else { jobs.clone() }
                );
                return Err(running_fail(reason.clone(), reason));
            }
            Err(e) => return Err(running_fail(e.to_string(), e.to_string())),
        };
        let s = out.stdout_str().trim().to_string();
        // Old systemd without --wait answers at once: poll until the state is final.
        if s == "starting" || s == "initializing" {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        break s;
    };
    let boot_secs = started.elapsed().as_secs_f64();
    match state.as_str() {
        "running" => Ok(Ready {
            agent,
            boot_secs,
            agent_detail,
            running_ok: true,
            running_detail: format!("running after {boot_secs:.1}s"),
        }),
        "degraded" => {
            let failed = failed_units(&mut agent).await;
            let list = if failed.is_empty() {
                "none listed".to_string()
            } else {
                failed.join(", ")
            };
            if verify.allow_degraded {
                Ok(Ready {
                    agent,
                    boot_secs,
                    agent_detail,
                    running_ok: true,
                    running_detail: format!(
                        "degraded (allowed by verify.allow_degraded); failed units: {list}"
                    ),
                })
            } else {
                let reason = format!("system is degraded; failed units: {list}");
                let hints = unit_journal(&mut agent, &failed).await;
                Err(running_fail(reason.clone(), format!("{reason}{hints}")))
            }
        }
        other => {
            let reason = format!("system state is '{other}', expected 'running'");
            Err(running_fail(reason.clone(), reason))
        }
    }
}

/// `systemctl --failed`: the names of the failed units.
async fn failed_units(agent: &mut Agent) -> Vec<String> {
    let argv: Vec<String> = [
        "systemctl",
        "--failed",
        "--plain",
        "--no-legend",
        "--no-pager",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match agent.exec(&argv, Duration::from_secs(20)).await {
        Ok(o) => parse_failed_units(&o.stdout_str()),
        Err(_) => Vec::new(),
    }
}

/// The unit names in `systemctl --failed --plain --no-legend` output.
pub fn parse_failed_units(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().find(|w| *w != "●" && *w != "*"))
        .map(str::to_string)
        .collect()
}

/// The last journal lines of failed units, to explain them.
async fn unit_journal(agent: &mut Agent, units: &[String]) -> String {
    let mut out = String::new();
    for u in units.iter().take(3) {
        let argv: Vec<String> = [
            "journalctl",
            "-b",
            "--no-pager",
            "-o",
            "cat",
            "-n",
            "5",
            "-u",
            u,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Ok(o) = agent.exec(&argv, Duration::from_secs(10)).await {
            let text = o.stdout_str();
            if !text.trim().is_empty() {
                out.push_str(&format!("\n{u}:\n{}", text.trim_end()));
            }
        }
    }
    out
}

/// `systemctl list-jobs`: what a boot that never finishes is waiting for.
async fn pending_jobs(agent: &mut Agent) -> String {
    let argv: Vec<String> = [
        "systemctl",
        "list-jobs",
        "--plain",
        "--no-legend",
        "--no-pager",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match agent.exec(&argv, Duration::from_secs(5)).await {
        Ok(o) => o
            .stdout_str()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // JOB UNIT TYPE STATE
                (f.len() >= 4).then(|| format!("{} ({} {})", f[1], f[2], f[3]))
            })
            .take(8)
            .collect::<Vec<_>>()
            .join(", "),
        Err(_) => String::new(),
    }
}

async fn run_declared(
    vm: &mut Vm,
    console: &ConsoleWatch,
    agent: &mut Agent,
    declared: &[SourcedCheck],
    rec: &mut BootRecord,
) {
    let http = reqwest::Client::builder()
        // Never route loopback checks through a proxy from the environment.
        .no_proxy()
        .build()
        .expect("http client");
    let forwards = vm.forwards.clone();
    let mut env = CheckEnv {
        agent,
        forwards: &forwards,
        http: &http,
    };
    for sc in declared {
        if let Some(st) = vm.exited() {
            rec.checks.push(checks::not_run(
                sc,
                &format!("not run: QEMU exited ({st})"),
                false,
            ));
            continue;
        }
        if let Some(f) = console.state().fatal {
            rec.checks
                .push(checks::not_run(sc, &format!("not run: {}", f.what), false));
            continue;
        }
        let r = checks::run(&mut env, sc).await;
        tracing::info!(target: "goldsmith::verify", check = %r.name, passed = r.passed, "{}", r.detail);
        rec.checks.push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_units_are_parsed() {
        let out = "broken.service loaded failed failed Broken on purpose\n\
                   ● other.mount    loaded failed failed /other\n";
        assert_eq!(
            parse_failed_units(out),
            vec!["broken.service", "other.mount"]
        );
        assert!(parse_failed_units("").is_empty());
    }
}
