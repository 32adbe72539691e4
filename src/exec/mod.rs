//! The one wrapper through which goldsmith runs every external program.
//!
//! Every child runs in its own process group, with a timeout, and is killed as a whole
//! group when the timeout expires, when the future running it is dropped (cancellation),
//! or when goldsmith receives SIGINT/SIGTERM. A pidfile per live group lets the next run
//! reap groups that a SIGKILL of goldsmith left behind. Command lines and stderr tails are
//! passed through the secret redactor before they reach a log or an error.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::AtomicI32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

mod groups;
mod redact;

pub use groups::{init_reaper, kill_all, live_group_count};
use groups::{run_id, GroupGuard};
pub use redact::{error_chain, redact, register_secret, secrets};

/// How many stderr lines an error message carries.
const STDERR_TAIL_LINES: usize = 25;
/// Default timeout when the caller sets none: nothing goldsmith runs should take longer.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Environment variable that marks every child of one goldsmith run, so the reaper can
/// tell our orphans from unrelated processes that happen to reuse a process-group id.
pub const RUN_ID_ENV: &str = "GOLDSMITH_RUN_ID";

/// Errors from running an external program. Messages carry the redacted command and the
/// tail of its stderr, so a failure is explained without digging through logs.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("could not start `{program}`: {source} (is it installed? try `goldsmith doctor`)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` timed out after {secs}s and was killed{tail}")]
    Timeout {
        command: String,
        secs: u64,
        tail: StderrTail,
    },
    #[error("`{command}` failed ({status}){tail}")]
    Failed {
        command: String,
        status: String,
        code: Option<i32>,
        tail: StderrTail,
    },
    #[error("i/o error talking to `{program}`: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl ExecError {
    /// The captured stderr tail, if the program ran at all.
    pub fn stderr_tail(&self) -> &str {
        match self {
            ExecError::Timeout { tail, .. } | ExecError::Failed { tail, .. } => &tail.0,
            _ => "",
        }
    }

    /// The outcome without the command line, for messages that already say what ran
    /// ("layer web: script setup.sh failed (exit code 3); stderr ends with: …").
    pub fn outcome(&self) -> String {
        match self {
            ExecError::Failed { status, tail, .. } => format!("({status}){tail}"),
            ExecError::Timeout { secs, tail, .. } => {
                format!("(timed out after {secs}s and was killed){tail}")
            }
            other => format!("({other})"),
        }
    }
}

/// The last lines a program wrote to stderr, formatted for an error message.
#[derive(Debug, Default, Clone)]
pub struct StderrTail(pub String);

impl fmt::Display for StderrTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.trim().is_empty() {
            Ok(())
        } else {
            write!(f, "; stderr ends with:\n{}", self.0.trim_end())
        }
    }
}

/// What a finished program produced.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr_tail: String,
    pub elapsed: Duration,
}

impl Output {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

enum StdinSpec {
    Null,
    Bytes(Vec<u8>),
    Inherit,
}

enum StdoutSpec {
    Capture,
    File(PathBuf),
    Inherit,
    Null,
}

/// A command to run: build it, then `run`, `run_unchecked` or `spawn` it.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    cwd: Option<PathBuf>,
    timeout: Duration,
    stdin: StdinSpec,
    stdout: StdoutSpec,
    inherit_stderr: bool,
    /// Run in a process group of its own (false only for interactive children).
    own_group: bool,
    label: Option<String>,
    /// Descriptors the child inherits under the same numbers (secrets for bwrap's
    /// `--ro-bind-data`): the bytes never touch a disk or an argument list.
    fds: Vec<std::os::fd::OwnedFd>,
    /// RLIMIT_AS (bytes) for the child and everything it starts.
    memory_limit: Option<u64>,
}

impl Cmd {
    /// A command for `program`, with stdin from /dev/null and stdout captured.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            cwd: None,
            timeout: DEFAULT_TIMEOUT,
            stdin: StdinSpec::Null,
            stdout: StdoutSpec::Capture,
            inherit_stderr: false,
            own_group: true,
            label: None,
            fds: Vec::new(),
            memory_limit: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.env_remove.push(k.as_ref().to_owned());
        self
    }

    pub fn current_dir(mut self, d: impl AsRef<Path>) -> Self {
        self.cwd = Some(d.as_ref().to_owned());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Feed these bytes to the program's stdin.
    pub fn stdin_bytes(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.stdin = StdinSpec::Bytes(b.into());
        self
    }

    /// Give the program goldsmith's own terminal (interactive `goldsmith boot`).
    pub fn interactive(mut self) -> Self {
        self.stdin = StdinSpec::Inherit;
        self.stdout = StdoutSpec::Inherit;
        self.inherit_stderr = true;
        self.own_group = false;
        self
    }

    /// Let the program write to goldsmith's stdout and stderr directly, in a process
    /// group of its own (stdin is /dev/null): for a goldsmith re-executed inside a user
    /// namespace, whose output is already redacted by itself.
    pub fn passthrough(mut self) -> Self {
        self.stdin = StdinSpec::Null;
        self.stdout = StdoutSpec::Inherit;
        self.inherit_stderr = true;
        self.own_group = true;
        self
    }

    /// Let the child inherit `fd` under the same number (see [`inheritable_fd`]); it is
    /// closed in goldsmith once the child has started.
    pub fn pass_fd(mut self, fd: std::os::fd::OwnedFd) -> Self {
        self.fds.push(fd);
        self
    }

    /// Cap the address space of the child and of everything it starts (RLIMIT_AS, soft
    /// and hard, so the child cannot raise it again). `None` leaves the limit alone.
    pub fn memory_limit(mut self, bytes: Option<u64>) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Send stdout to a file instead of capturing it.
    pub fn stdout_file(mut self, p: impl AsRef<Path>) -> Self {
        self.stdout = StdoutSpec::File(p.as_ref().to_owned());
        self
    }

    pub fn stdout_null(mut self) -> Self {
        self.stdout = StdoutSpec::Null;
        self
    }

    /// A short label for logs (e.g. the layer or image the command works for).
    pub fn label(mut self, l: impl Into<String>) -> Self {
        self.label = Some(l.into());
        self
    }

    /// The command line as logged: shell-quoted and redacted.
    pub fn display(&self) -> String {
        let mut parts = vec![shell_quote(&self.program)];
        parts.extend(self.args.iter().map(|a| shell_quote(a)));
        redact(&parts.join(" "))
    }

    fn program_name(&self) -> String {
        Path::new(&self.program)
            .file_name()
            .unwrap_or(self.program.as_os_str())
            .to_string_lossy()
            .into_owned()
    }

    /// Run to completion; a non-zero exit is an error carrying the stderr tail.
    pub async fn run(self) -> Result<Output, ExecError> {
        let command = self.display();
        let out = self.run_unchecked().await?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ExecError::Failed {
                command,
                status: describe_status(out.status),
                code: out.status.code(),
                tail: StderrTail(out.stderr_tail),
            })
        }
    }

    /// Run to completion and return the output whatever the exit status.
    pub async fn run_unchecked(self) -> Result<Output, ExecError> {
        let started = Instant::now();
        let command = self.display();
        let timeout = self.timeout;
        let program = self.program_name();
        let mut running = self.spawn()?;
        let fut = async {
            let stdout = running.collect_stdout().await?;
            let status = running.wait().await?;
            Ok::<_, ExecError>((status, stdout))
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok((status, stdout))) => {
                let stderr_tail = running.stderr_tail().await;
                let elapsed = started.elapsed();
                tracing::debug!(target: "goldsmith::exec", %program, status = %describe_status(status), elapsed_ms = elapsed.as_millis() as u64, "finished");
                Ok(Output {
                    status,
                    stdout,
                    stderr_tail,
                    elapsed,
                })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                running.kill();
                let _ = running.wait().await;
                let tail = running.stderr_tail().await;
                tracing::warn!(target: "goldsmith::exec", %program, secs = timeout.as_secs(), "timed out, process group killed");
                Err(ExecError::Timeout {
                    command,
                    secs: timeout.as_secs(),
                    tail: StderrTail(tail),
                })
            }
        }
    }

    /// Start a long-running program (a VM). The returned handle kills the whole process
    /// group when dropped; the caller enforces its own deadlines with [`Running::wait`].
    pub fn spawn(self) -> Result<Running, ExecError> {
        let program = self.program_name();
        let shown = self.display();
        match &self.label {
            Some(l) => tracing::debug!(target: "goldsmith::exec", label = %l, "run: {}", shown),
            None => tracing::debug!(target: "goldsmith::exec", "run: {}", shown),
        }
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env(RUN_ID_ENV, run_id());
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let mut stdin_bytes = None;
        match self.stdin {
            StdinSpec::Null => {
                cmd.stdin(Stdio::null());
            }
            StdinSpec::Inherit => {
                cmd.stdin(Stdio::inherit());
            }
            StdinSpec::Bytes(b) => {
                cmd.stdin(Stdio::piped());
                stdin_bytes = Some(b);
            }
        }
        match &self.stdout {
            StdoutSpec::Capture => {
                cmd.stdout(Stdio::piped());
            }
            StdoutSpec::Inherit => {
                cmd.stdout(Stdio::inherit());
            }
            StdoutSpec::Null => {
                cmd.stdout(Stdio::null());
            }
            StdoutSpec::File(p) => {
                let f = std::fs::File::create(p).map_err(|source| ExecError::Io {
                    program: program.clone(),
                    source,
                })?;
                cmd.stdout(Stdio::from(f));
            }
        }
        if self.inherit_stderr {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::piped());
        }
        let own_group = self.own_group;
        if own_group {
            // Own process group, so one signal reaches the program and everything it forks.
            // An interactive child stays in our group so the terminal's job control and
            // Ctrl-A X of the QEMU console keep working.
            cmd.process_group(0);
        }
        use std::os::fd::AsRawFd;
        let fds: Vec<i32> = self.fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let memory_limit = self.memory_limit;
        // SAFETY: only async-signal-safe calls (prctl, fcntl, setrlimit) between fork and
        // exec. PDEATHSIG asks the kernel to kill the child if goldsmith itself dies, so a
        // SIGKILLed goldsmith does not leave it running.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Passed descriptors are close-on-exec in goldsmith (so no other child
                // inherits them); only this child keeps them across exec.
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(bytes) = memory_limit {
                    let lim = libc::rlimit {
                        rlim_cur: bytes as libc::rlim_t,
                        rlim_max: bytes as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
        // The child has its copies; ours close now.
        drop(self.fds);
        let pid = child.id().unwrap_or(0) as i32;
        let guard = GroupGuard::register(pid, own_group, &shown);
        if let Some(bytes) = stdin_bytes {
            if let Some(mut sin) = child.stdin.take() {
                tokio::spawn(async move {
                    // A program that exits without reading stdin closes the pipe: not an error.
                    let _ = sin.write_all(&bytes).await;
                    let _ = sin.shutdown().await;
                });
            }
        }
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_task = child.stderr.take().map(|err| {
            let tail = tail.clone();
            let prog = program.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = redact(&line);
                    tracing::debug!(target: "goldsmith::exec", program = %prog, "{line}");
                    let mut t = tail.lock().unwrap();
                    if t.len() == STDERR_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
        });
        Ok(Running {
            child,
            program,
            guard,
            tail,
            stderr_task,
        })
    }
}

/// A running child process group. Dropping it kills the group.
pub struct Running {
    child: tokio::process::Child,
    program: String,
    guard: GroupGuard,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The child's pid (also its process-group id).
    pub fn pid(&self) -> i32 {
        self.guard.pgid
    }

    /// Read all of stdout (only when it was captured).
    async fn collect_stdout(&mut self) -> Result<Vec<u8>, ExecError> {
        let mut buf = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_end(&mut buf)
                .await
                .map_err(|source| ExecError::Io {
                    program: self.program.clone(),
                    source,
                })?;
        }
        Ok(buf)
    }

    /// Wait for the child to exit. The rest of its process group is killed then too, so
    /// a daemonising grandchild cannot outlive the command that started it.
    pub async fn wait(&mut self) -> Result<ExitStatus, ExecError> {
        let st = self.child.wait().await.map_err(|source| ExecError::Io {
            program: self.program.clone(),
            source,
        })?;
        self.guard.kill();
        Ok(st)
    }

    /// Has the child exited? Non-blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Send `sig` to the whole process group (e.g. forward a SIGTERM so the program can
    /// clean up); the group stays registered for the final kill.
    pub fn signal(&self, sig: Signal) {
        if self.guard.live && self.guard.own_group && self.guard.pgid > 0 {
            let _ = killpg(Pid::from_raw(self.guard.pgid), sig);
        }
    }

    /// Kill the whole process group now (SIGKILL).
    pub fn kill(&mut self) {
        self.guard.kill();
        let _ = self.child.start_kill();
    }

    /// The last stderr lines (waits briefly for the reader to drain the pipe).
    pub async fn stderr_tail(&mut self) -> String {
        if let Some(t) = self.stderr_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let t = self.tail.lock().unwrap();
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A close-on-exec descriptor numbered 3 or higher (never one of stdio's numbers, even
/// when goldsmith was started with a closed stdin), for [`Cmd::pass_fd`].
pub fn inheritable_fd(fd: std::os::fd::OwnedFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we own; the new one is owned by the returned value.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(n) })
}

fn shell_quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn describe_status(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!(
            "killed by signal {}",
            Signal::try_from(s)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| s.to_string())
        ),
        _ => "unknown status".into(),
    }
}

/// Which signal ended goldsmith's own run, if any (0 = none); the CLI turns it into the
/// conventional exit code 128 + signal.
pub static CANCELLED_BY: AtomicI32 = AtomicI32::new(0);

/// Look up a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Streams of SIGINT and SIGTERM, for the commands that clean up before they exit.
pub fn termination_signals(
) -> std::io::Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok((
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_stdout_and_fails_with_stderr_tail() {
        let out = Cmd::new("sh").args(["-c", "echo hi"]).run().await.unwrap();
        assert_eq!(out.stdout_str(), "hi\n");
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit code 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let pid = std::process::id();
        // A background child and the exec'd main program, both with arguments no other
        // process has.
        let err = Cmd::new("sh")
            .args(["-c", &format!("sleep 299.{pid} & exec sleep 301.{pid}")])
            .timeout(Duration::from_millis(300))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        // SIGKILL is sent; on a loaded machine the kernel may take a moment to finish the
        // processes off, so wait for that (a survivor would stay for 300 s).
        let pattern = format!("sleep (299|301)\\.{pid}");
        let mut left = String::new();
        for _ in 0..50 {
            let ps = std::process::Command::new("pgrep")
                .args(["-af", &pattern])
                .output()
                .unwrap();
            left = String::from_utf8_lossy(&ps.stdout).into_owned();
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(left.is_empty(), "left running: {left}");
    }

    #[tokio::test]
    async fn secrets_are_redacted_in_errors() {
        register_secret("hunter2-very-secret");
        let err = Cmd::new("sh")
            .args(["-c", "echo token=hunter2-very-secret >&2; exit 1"])
            .run()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("hunter2-very-secret"), "{msg}");
        assert!(msg.contains("token=***"), "{msg}");
    }

    #[tokio::test]
    async fn stdin_bytes_reach_the_program() {
        let out = Cmd::new("cat").stdin_bytes("abc").run().await.unwrap();
        assert_eq!(out.stdout, b"abc");
    }
}
