//! A small QMP (QEMU Machine Protocol) client over the VM's unix socket.
//!
//! Hand-rolled on purpose: the issue rules out a qemu crate, and the part of QMP we use
//! (greeting, `qmp_capabilities`, a few commands with ids, asynchronous events) is a
//! line-delimited JSON exchange of a few dozen lines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::AbortOnDrop;

/// How long a QMP command may take before we give up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    #[error("QMP command `{command}` failed: {desc}")]
    Command { command: String, desc: String },
    #[error("QMP command `{0}` timed out")]
    Timeout(String),
}

/// An asynchronous event QEMU sent (`SHUTDOWN`, `GUEST_PANICKED`, `VSERPORT_CHANGE`, …).
#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub event: String,
    pub data: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected QMP session. Responses are matched to commands by id; events arrive on
/// [`Qmp::events`]. Dropping the client stops its reader task.
pub struct Qmp {
    writer: OwnedWriteHalf,
    pending: Pending,
    next_id: AtomicU64,
    events: mpsc::UnboundedReceiver<QmpEvent>,
    _reader: AbortOnDrop,
}

impl Qmp {
    /// Connect, read the greeting and leave capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| QmpError::Timeout("greeting".into()))??
            .ok_or(QmpError::Closed)?;
        let g: Value = serde_json::from_str(&greeting)
            .map_err(|e| QmpError::Protocol(format!("bad greeting {greeting:?}: {e}")))?;
        if g.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting {greeting:?}"
            )));
        }
        let pending: Pending = Arc::default();
        let (tx, events) = mpsc::unbounded_channel();
        let p = pending.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    tracing::debug!(target: "goldsmith::verify", "ignoring QMP line {line:?}");
                    continue;
                };
                if let Some(ev) = v.get("event").and_then(Value::as_str) {
                    let _ = tx.send(QmpEvent {
                        event: ev.to_string(),
                        data: v.get("data").cloned().unwrap_or(Value::Null),
                    });
                } else if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    if let Some(s) = p.lock().unwrap().remove(&id) {
                        let _ = s.send(v);
                    }
                }
            }
            // Dropping the senders wakes every waiter with `Closed`.
            p.lock().unwrap().clear();
        });
        let mut qmp = Qmp {
            writer,
            pending,
            next_id: AtomicU64::new(1),
            events,
            _reader: AbortOnDrop(reader),
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Run a command and return its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut line = serde_json::to_vec(&msg).expect("json");
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let resp = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => return Err(QmpError::Closed),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(QmpError::Timeout(command.into()));
            }
        };
        if let Some(err) = resp.get("error") {
            return Err(QmpError::Command {
                command: command.into(),
                desc: err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .into(),
            });
        }
        Ok(resp.get("return").cloned().unwrap_or(Value::Null))
    }

    /// The next event; `None` once the connection is closed.
    pub async fn next_event(&mut self) -> Option<QmpEvent> {
        self.events.recv().await
    }

    /// `query-status`: `running`, `paused`, `internal-error`, `guest-panicked`, …
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}
