//! A small client for the QEMU guest agent (qemu-ga), reached through a virtio-serial
//! channel that QEMU exposes as a unix socket on the host.
//!
//! Hand-rolled for the same reason as the QMP client (no qemu crate). The agent speaks
//! line-delimited JSON but has no session: requests written before the agent started, or
//! answers to requests we gave up on, can still arrive later. So every request carries a
//! unique id and the reader drops every answer that is not the one it waits for, and the
//! session starts with `guest-sync-delimited`, whose answer is prefixed with a 0xFF byte
//! that marks where the stale bytes end.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// Largest file `read_file` returns; checks look at configuration files, not data.
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// Bytes asked for per `guest-file-read` (the agent caps reads at 48 MiB).
const READ_CHUNK: u64 = 1 << 20;
/// Timeout of one agent request that is not a guest command.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the guest agent socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("guest agent connection closed")]
    Closed,
    #[error("guest agent i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("guest agent did not answer `{0}` in time")]
    Timeout(String),
    #[error("guest agent command `{command}` failed: {desc}")]
    Command { command: String, desc: String },
    #[error("guest agent protocol error: {0}")]
    Protocol(String),
}

/// What a command run in the guest produced.
#[derive(Debug, Clone, Default)]
pub struct GuestOutput {
    /// None when the process was killed by a signal.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl GuestOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A connection to the guest agent.
pub struct Agent {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Agent {
    /// Connect to the host end of the agent channel. This succeeds as soon as QEMU runs;
    /// whether the agent inside the guest listens is what [`Agent::sync`] finds out.
    pub async fn connect(path: &Path) -> Result<Agent, AgentError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(AgentError::Connect)?;
        let (r, w) = s.into_split();
        Ok(Agent {
            reader: BufReader::new(r),
            writer: w,
            // Random start, so ids of an earlier session on the same channel never match.
            next_id: rand::random::<u32>() as u64 + 1,
        })
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// `guest-sync-delimited`: flush stale bytes and prove the agent answers. Fails with
    /// `Timeout` when no answer came within `wait` (the agent is not up yet).
    pub async fn sync(&mut self, wait: Duration) -> Result<(), AgentError> {
        let id = self.id();
        // A lone 0xFF resets the agent's JSON parser in case a request was half-written.
        let mut msg = vec![0xFF];
        msg.extend(
            serde_json::to_vec(
                &json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}),
            )
            .expect("json"),
        );
        msg.push(b'\n');
        self.writer.write_all(&msg).await?;
        let deadline = Instant::now() + wait;
        loop {
            let line = self.read_line(deadline, "guest-sync-delimited").await?;
            // Only what follows the last 0xFF belongs to the sync answer.
            let Some(pos) = line.iter().rposition(|b| *b == 0xFF) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&line[pos + 1..]) else {
                continue;
            };
            if v.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
        }
    }

    async fn read_line(&mut self, deadline: Instant, what: &str) -> Result<Vec<u8>, AgentError> {
        let mut buf = Vec::new();
        match tokio::time::timeout_at(deadline, self.reader.read_until(b'\n', &mut buf)).await {
            Err(_) => Err(AgentError::Timeout(what.into())),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(0)) => Err(AgentError::Closed),
            Ok(Ok(_)) => Ok(buf),
        }
    }

    /// Run one agent command and return its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, AgentError> {
        self.execute_until(command, args, Instant::now() + REQUEST_TIMEOUT)
            .await
    }

    async fn execute_until(
        &mut self,
        command: &str,
        args: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, AgentError> {
        let id = self.id();
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).expect("json");
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        loop {
            let raw = self.read_line(deadline, command).await?;
            let start = raw.iter().rposition(|b| *b == 0xFF).map_or(0, |p| p + 1);
            let Ok(v) = serde_json::from_slice::<Value>(&raw[start..]) else {
                continue;
            };
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // an answer to a request we gave up on
            }
            if let Some(err) = v.get("error") {
                return Err(AgentError::Command {
                    command: command.into(),
                    desc: err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .into(),
                });
            }
            return Ok(v.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// `guest-ping`.
    pub async fn ping(&mut self) -> Result<(), AgentError> {
        self.execute("guest-ping", None).await.map(|_| ())
    }

    /// Run `argv` in the guest (no shell) and wait for it, at most `timeout`.
    pub async fn exec(
        &mut self,
        argv: &[String],
        timeout: Duration,
    ) -> Result<GuestOutput, AgentError> {
        let deadline = Instant::now() + timeout;
        let (path, args) = argv
            .split_first()
            .ok_or_else(|| AgentError::Protocol("empty argv".into()))?;
        let r = self
            .execute_until(
                "guest-exec",
                Some(json!({"path": path, "arg": args, "capture-output": true})),
                deadline.min(Instant::now() + REQUEST_TIMEOUT),
            )
            .await?;
        let pid = r
            .get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| AgentError::Protocol(format!("guest-exec returned {r}")))?;
        // The agent has no completion event: poll, starting fast so short commands return
        // in milliseconds, backing off for long ones.
        let mut delay = Duration::from_millis(10);
        loop {
            let st = self
                .execute_until("guest-exec-status", Some(json!({"pid": pid})), deadline)
                .await?;
            if st.get("exited").and_then(Value::as_bool) == Some(true) {
                return Ok(GuestOutput {
                    exit_code: st.get("exitcode").and_then(Value::as_i64).map(|c| c as i32),
                    signal: st.get("signal").and_then(Value::as_i64).map(|c| c as i32),
                    stdout: decode_b64(st.get("out-data"))?,
                    stderr: decode_b64(st.get("err-data"))?,
                });
            }
            if Instant::now() + delay >= deadline {
                return Err(AgentError::Timeout(format!(
                    "{} (still running)",
                    argv.join(" ")
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    /// Read a guest file (at most [`MAX_FILE_BYTES`]) with `guest-file-open/read/close`.
    pub async fn read_file(&mut self, path: &str) -> Result<Vec<u8>, AgentError> {
        let h = self
            .execute("guest-file-open", Some(json!({"path": path, "mode": "r"})))
            .await?;
        let handle = h
            .as_i64()
            .ok_or_else(|| AgentError::Protocol(format!("guest-file-open returned {h}")))?;
        let result = self.read_handle(handle).await;
        // Close even after a failed read, so the agent does not leak the handle.
        let closed = self
            .execute("guest-file-close", Some(json!({"handle": handle})))
            .await;
        let data = result?;
        closed?;
        Ok(data)
    }

    async fn read_handle(&mut self, handle: i64) -> Result<Vec<u8>, AgentError> {
        let mut data = Vec::new();
        loop {
            let r = self
                .execute(
                    "guest-file-read",
                    Some(json!({"handle": handle, "count": READ_CHUNK})),
                )
                .await?;
            data.extend(decode_b64(r.get("buf-b64"))?);
            if data.len() > MAX_FILE_BYTES {
                data.truncate(MAX_FILE_BYTES);
                return Ok(data);
            }
            let eof = r.get("eof").and_then(Value::as_bool).unwrap_or(true);
            let count = r.get("count").and_then(Value::as_u64).unwrap_or(0);
            if eof || count == 0 {
                return Ok(data);
            }
        }
    }
}

fn decode_b64(v: Option<&Value>) -> Result<Vec<u8>, AgentError> {
    match v.and_then(Value::as_str) {
        None => Ok(Vec::new()),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| AgentError::Protocol(format!("bad base64 from the agent: {e}"))),
    }
}
