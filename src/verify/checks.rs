//! The declared checks (command, file, service, port, http), run after the guest is ready.
//!
//! Each check has its own deadline. Readiness-type checks (service, port, http) are
//! retried until then, because a service may still be starting; command and file checks
//! run once. Every verdict comes from a `judge_*` function that sees only what was
//! observed, so the failure paths are unit-tested without booting anything.

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::agent::{Agent, AgentError, GuestOutput};
use crate::artifact::CheckResult;
use crate::recipe::check::{CheckDef, CommandCheck, FileCheck, HttpCheck};
use crate::recipe::SourcedCheck;

/// Pause between attempts of a retried check.
const RETRY: Duration = Duration::from_millis(500);
/// The shortest HTTP attempt worth starting (a guest under TCG needs a moment).
const MIN_TRY: Duration = Duration::from_secs(1);
/// How much of a command's output goes into a check's detail.
const EXCERPT: usize = 300;

/// What the checks reach the guest through.
pub struct CheckEnv<'a> {
    pub agent: &'a mut Agent,
    /// Guest port -> host port on 127.0.0.1.
    pub forwards: &'a BTreeMap<u16, u16>,
    pub http: &'a reqwest::Client,
}

/// Run one declared check.
pub async fn run(env: &mut CheckEnv<'_>, sc: &SourcedCheck) -> CheckResult {
    let started = std::time::Instant::now();
    let c = &sc.check;
    let deadline = Instant::now() + Duration::from_secs(c.timeout_secs.max(1));
    let verdict = if let Some(cmd) = &c.command {
        command(env, cmd, deadline).await
    } else if let Some(f) = &c.file {
        file(env, f, deadline).await
    } else if let Some(s) = &c.service {
        service(env, &s.unit, deadline).await
    } else if let Some(p) = &c.port {
        port(env, p.port, deadline).await
    } else if let Some(h) = &c.http {
        http(env, h, deadline).await
    } else {
        Err("the check declares nothing to check".into())
    };
    result(sc, verdict, started.elapsed())
}

/// A check result from a verdict.
pub fn result(sc: &SourcedCheck, verdict: Result<String, String>, took: Duration) -> CheckResult {
    let (passed, detail) = match verdict {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    CheckResult {
        name: sc.check.name.get_ref().clone(),
        origin: sc.origin.clone(),
        passed,
        skipped: false,
        duration_ms: took.as_millis() as u64,
        detail,
    }
}

/// A result for a check that was not run.
pub fn not_run(sc: &SourcedCheck, why: &str, passed: bool) -> CheckResult {
    CheckResult {
        name: sc.check.name.get_ref().clone(),
        origin: sc.origin.clone(),
        passed,
        skipped: true,
        duration_ms: 0,
        detail: why.to_string(),
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn regex(re: &str) -> Result<Regex, String> {
    Regex::new(re).map_err(|e| format!("invalid regex /{re}/: {e}"))
}

/// Shorten text for a detail line.
pub fn excerpt(s: &str) -> String {
    // One line: a detail is read in a summary, the full output is a rerun away.
    let joined = s
        .split('\n')
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ⏎ ");
    let t = joined.trim();
    if t.chars().count() <= EXCERPT {
        t.to_string()
    } else {
        let cut: String = t.chars().take(EXCERPT).collect();
        format!("{cut}…")
    }
}

async fn command(
    env: &mut CheckEnv<'_>,
    c: &CommandCheck,
    deadline: Instant,
) -> Result<String, String> {
    let out = env
        .agent
        .exec(&c.argv, remaining(deadline))
        .await
        .map_err(|e| agent_failure(&c.argv, e))?;
    judge_command(c, &out)
}

fn agent_failure(argv: &[String], e: AgentError) -> String {
    match e {
        AgentError::Command { desc, .. } => {
            format!("cannot run `{}` in the guest: {desc}", argv.join(" "))
        }
        AgentError::Timeout(_) => format!(
            "`{}` did not finish before the check's timeout",
            argv.join(" ")
        ),
        e => format!("`{}`: {e}", argv.join(" ")),
    }
}

/// Exit code and stdout of a command check.
pub fn judge_command(c: &CommandCheck, out: &GuestOutput) -> Result<String, String> {
    let stdout = out.stdout_str();
    match out.exit_code {
        Some(code) if code == c.exit_code => {}
        Some(code) => {
            return Err(format!(
                "exit code {code}, expected {}; stdout: {}; stderr: {}",
                c.exit_code,
                excerpt(&stdout),
                excerpt(&out.stderr_str())
            ))
        }
        None => {
            return Err(format!(
                "killed by signal {}, expected exit code {}",
                out.signal.unwrap_or(0),
                c.exit_code
            ))
        }
    }
    if let Some(re) = &c.stdout_regex {
        // Commands end their output with a newline; `^active$` should match "active\n"
        // as it would in grep or Python, so one trailing newline is not part of the text.
        let text = stdout.strip_suffix('\n').unwrap_or(&stdout);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if !regex(re.get_ref())?.is_match(text) {
            return Err(format!(
                "stdout does not match /{}/: {}",
                re.get_ref(),
                excerpt(&stdout)
            ));
        }
    }
    Ok(match &c.stdout_regex {
        Some(re) => format!(
            "exit code {}; stdout matches /{}/",
            c.exit_code,
            re.get_ref()
        ),
        None => format!("exit code {}; stdout: {}", c.exit_code, excerpt(&stdout)),
    })
}

async fn file(env: &mut CheckEnv<'_>, f: &FileCheck, deadline: Instant) -> Result<String, String> {
    let argv: Vec<String> = ["stat", "-L", "-c", "%a %F", "--", &f.path]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let st = env
        .agent
        .exec(&argv, remaining(deadline))
        .await
        .map_err(|e| agent_failure(&argv, e))?;
    if st.exit_code != Some(0) {
        return Err(format!(
            "{} does not exist: {}",
            f.path,
            excerpt(&st.stderr_str())
        ));
    }
    let stat = st.stdout_str();
    let (mode, kind) = stat.trim().split_once(' ').unwrap_or((stat.trim(), ""));
    let mode =
        u32::from_str_radix(mode, 8).map_err(|_| format!("unexpected stat output {stat:?}"))?;
    let content = match &f.content_regex {
        Some(_) if kind == "directory" => {
            return Err(format!("{} is a directory, not a file", f.path))
        }
        Some(_) => {
            let read =
                tokio::time::timeout(remaining(deadline), env.agent.read_file(&f.path)).await;
            match read {
                Ok(Ok(b)) => Some(b),
                Ok(Err(e)) => return Err(format!("cannot read {}: {e}", f.path)),
                Err(_) => return Err(format!("reading {} timed out", f.path)),
            }
        }
        None => None,
    };
    judge_file(f, mode, kind, content.as_deref())
}

/// Mode and content of a file check. `mode` holds the permission bits (with setuid etc).
pub fn judge_file(
    f: &FileCheck,
    mode: u32,
    kind: &str,
    content: Option<&[u8]>,
) -> Result<String, String> {
    if let Some(want) = &f.mode {
        let w = want.get_ref().trim();
        let want_bits = u32::from_str_radix(w.trim_start_matches("0o"), 8)
            .map_err(|_| format!("mode '{w}' is not octal"))?;
        if want_bits != mode {
            return Err(format!(
                "{} has mode {mode:04o}, expected {want_bits:04o}",
                f.path
            ));
        }
    }
    if let Some(re) = &f.content_regex {
        let text = String::from_utf8_lossy(content.unwrap_or_default());
        if !regex(re.get_ref())?.is_match(&text) {
            return Err(format!(
                "{} does not match /{}/: {}",
                f.path,
                re.get_ref(),
                excerpt(&text)
            ));
        }
    }
    let kind = if kind.is_empty() { "file" } else { kind };
    Ok(format!("{} exists ({kind}, mode {mode:04o})", f.path))
}

async fn service(env: &mut CheckEnv<'_>, unit: &str, deadline: Instant) -> Result<String, String> {
    let argv: Vec<String> = vec!["systemctl".into(), "is-active".into(), unit.into()];
    // The last state systemd reported; an agent error of a later attempt (cut short by
    // the deadline) must not hide it.
    let mut state_seen: Option<String> = None;
    let mut last_error = String::from("no answer");
    loop {
        match env
            .agent
            .exec(&argv, remaining(deadline).max(MIN_TRY))
            .await
        {
            Ok(out) => {
                let state = out.stdout_str().trim().to_string();
                if state == "active" {
                    return Ok(format!("{unit} is active"));
                }
                // A failed unit stays failed; waiting for the timeout would only delay
                // the verdict. (A unit that restarts reports "activating" in between.)
                if state == "failed" {
                    return Err(format!("{unit} failed{}", unit_hint(env.agent, unit).await));
                }
                state_seen = Some(if state.is_empty() {
                    out.stderr_str().trim().to_string()
                } else {
                    state
                });
            }
            Err(e) => last_error = e.to_string(),
        }
        if remaining(deadline) <= RETRY {
            return Err(match state_seen {
                Some(st) => format!("{unit} is not active (last state: {st})"),
                None => format!("{unit}: {last_error}"),
            });
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The unit's result and the last lines of its status, to say why it failed.
async fn unit_hint(agent: &mut Agent, unit: &str) -> String {
    let argv: Vec<String> = ["systemctl", "status", "--no-pager", "--lines=5", "--", unit]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match agent.exec(&argv, Duration::from_secs(5)).await {
        Ok(o) => {
            let s = o.stdout_str();
            let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {}", excerpt(&tail))
            }
        }
        Err(_) => String::new(),
    }
}

async fn port(env: &mut CheckEnv<'_>, guest: u16, deadline: Instant) -> Result<String, String> {
    let host = *env
        .forwards
        .get(&guest)
        .ok_or_else(|| format!("guest port {guest} is not forwarded"))?;
    let mut last;
    loop {
        match probe_port(env, host, guest).await {
            Ok(d) => return Ok(d),
            Err(e) => last = e,
        }
        if remaining(deadline) <= RETRY {
            return Err(format!(
                "guest port {guest} (host 127.0.0.1:{host}): {last}"
            ));
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One attempt at a port check.
///
/// With user-mode networking, QEMU accepts the host-side connection itself and only then
/// connects to the guest, so a successful `connect` proves nothing. The guest answered
/// only when it sends data (a banner), or when the guest itself shows an established
/// connection on the port while we hold ours open. A guest that refuses makes QEMU close
/// our connection, which reads as EOF.
async fn probe_port(env: &mut CheckEnv<'_>, host: u16, guest: u16) -> Result<String, String> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", host)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect failed: {e}"))?;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {
            return Err("connection closed: nothing accepted it in the guest".into())
        }
        Ok(Ok(n)) => {
            return Ok(format!(
                "port {guest} answered: {}",
                excerpt(&String::from_utf8_lossy(&buf[..n]))
            ))
        }
        Err(_) => {}
    }
    // Silent so far (a server that waits for the client): look from inside the guest.
    let mut tables = String::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(b) = env.agent.read_file(f).await {
            tables.push_str(&String::from_utf8_lossy(&b));
        }
    }
    if established_on(&tables, guest) {
        Ok(format!("port {guest} accepted the connection"))
    } else {
        Err("no connection reached the guest".into())
    }
}

/// Does a /proc/net/tcp table show an established connection on local port `port`?
pub fn established_on(table: &str, port: u16) -> bool {
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl local_address rem_address st ...; addresses are HEXIP:HEXPORT, st 01 = ESTABLISHED.
        f.len() > 3
            && f[3] == "01"
            && f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

async fn http(env: &mut CheckEnv<'_>, h: &HttpCheck, deadline: Instant) -> Result<String, String> {
    let host = *env
        .forwards
        .get(&h.port)
        .ok_or_else(|| format!("guest port {} is not forwarded", h.port))?;
    let path = if h.path.starts_with('/') {
        h.path.clone()
    } else {
        format!("/{}", h.path)
    };
    let url = format!("http://127.0.0.1:{host}{path}");
    // What the server answered beats how a later attempt failed: an attempt cut short by
    // the deadline must not hide the 404 that came before it.
    let mut answered: Option<String> = None;
    let mut transport = String::new();
    loop {
        let per_try = remaining(deadline).clamp(MIN_TRY, Duration::from_secs(10));
        let attempt = async {
            let r = env.http.get(&url).timeout(per_try).send().await?;
            let status = r.status().as_u16();
            let body = r.text().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        match attempt.await {
            Ok((status, body)) => match judge_http(h, status, &body) {
                Ok(d) => return Ok(d),
                Err(e) => answered = Some(e),
            },
            Err(e) => {
                transport = format!(
                    "GET {path} through 127.0.0.1:{host}: {}",
                    crate::exec::error_chain(&e)
                )
            }
        }
        if remaining(deadline) <= RETRY + MIN_TRY {
            return Err(answered.unwrap_or(transport));
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Status and body of an HTTP check.
pub fn judge_http(h: &HttpCheck, status: u16, body: &str) -> Result<String, String> {
    if status != h.status {
        return Err(format!(
            "GET {} returned {status}, expected {}: {}",
            h.path,
            h.status,
            excerpt(body)
        ));
    }
    if let Some(re) = &h.body_regex {
        if !regex(re.get_ref())?.is_match(body) {
            return Err(format!(
                "GET {} body does not match /{}/: {}",
                h.path,
                re.get_ref(),
                excerpt(body)
            ));
        }
    }
    Ok(format!("GET {} returned {status}", h.path))
}

/// The guest ports a set of checks needs forwarded.
pub fn guest_ports(checks: &[SourcedCheck]) -> Vec<u16> {
    let mut v: Vec<u16> = checks.iter().filter_map(|c| c.check.guest_port()).collect();
    v.sort();
    v.dedup();
    v
}

/// Does this check need a booted guest (everything but `file`)?
pub fn needs_boot(c: &CheckDef) -> bool {
    c.file.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Spanned;

    fn sp(s: &str) -> Spanned<String> {
        Spanned::new(0..0, s.to_string())
    }

    fn out(code: i32, stdout: &str) -> GuestOutput {
        GuestOutput {
            exit_code: Some(code),
            signal: None,
            stdout: stdout.as_bytes().to_vec(),
            stderr: b"oops".to_vec(),
        }
    }

    #[test]
    fn command_passes_and_fails() {
        let c = CommandCheck {
            argv: vec!["x".into()],
            exit_code: 0,
            stdout_regex: Some(sp("^2$")),
        };
        assert!(judge_command(&c, &out(0, "2\n")).is_ok());
        let e = judge_command(&c, &out(1, "2\n")).unwrap_err();
        assert!(
            e.contains("exit code 1, expected 0") && e.contains("oops"),
            "{e}"
        );
        let e = judge_command(&c, &out(0, "1\n")).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let killed = GuestOutput {
            exit_code: None,
            signal: Some(9),
            ..Default::default()
        };
        assert!(judge_command(&c, &killed).unwrap_err().contains("signal 9"));
        let want3 = CommandCheck {
            argv: vec!["x".into()],
            exit_code: 3,
            stdout_regex: None,
        };
        assert!(judge_command(&want3, &out(3, "")).is_ok());
        assert!(judge_command(&want3, &out(0, "")).is_err());
    }

    #[test]
    fn file_mode_and_content() {
        let f = FileCheck {
            path: "/etc/x".into(),
            mode: Some(sp("0644")),
            content_regex: Some(sp("(?m)^key = yes$")),
        };
        assert!(judge_file(&f, 0o644, "regular file", Some(b"a\nkey = yes\n")).is_ok());
        let e = judge_file(&f, 0o600, "regular file", Some(b"key = yes\n")).unwrap_err();
        assert!(e.contains("mode 0600, expected 0644"), "{e}");
        let e = judge_file(&f, 0o644, "regular file", Some(b"key = no\n")).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let setuid = FileCheck {
            path: "/usr/bin/sudo".into(),
            mode: Some(sp("4755")),
            content_regex: None,
        };
        assert!(judge_file(&setuid, 0o4755, "regular file", None).is_ok());
        assert!(judge_file(&setuid, 0o755, "regular file", None).is_err());
    }

    #[test]
    fn http_status_and_body() {
        let h = HttpCheck {
            port: 80,
            path: "/".into(),
            status: 200,
            body_regex: Some(sp("Served by goldsmith")),
        };
        assert!(judge_http(&h, 200, "<p>Served by goldsmith</p>").is_ok());
        assert!(judge_http(&h, 404, "Served by goldsmith")
            .unwrap_err()
            .contains("returned 404"));
        assert!(judge_http(&h, 200, "It works")
            .unwrap_err()
            .contains("does not match"));
    }

    #[test]
    fn established_connections_are_found_by_port() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                 0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n\
                 1: 0F02000A:0050 0202000A:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 2\n";
        assert!(established_on(t, 80));
        // Port 22 only listens (0A): a listener alone is not an accepted connection.
        assert!(!established_on(t, 22));
        assert!(!established_on(t, 8080));
    }
}
