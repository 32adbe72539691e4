//! Watching the guest's serial console: QEMU writes it to a file, a task follows the file
//! and reports the moments that matter (a login prompt, a kernel panic, an emergency
//! shell) as soon as the bytes arrive, so a broken guest fails in seconds instead of at
//! the boot timeout.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::AbortOnDrop;

/// How often the console file is polled for new bytes. QEMU's file chardev writes
/// unbuffered; 50 ms is far below anything a boot measurement resolves.
const POLL: Duration = Duration::from_millis(50);

/// A console line that means the guest will never become ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Fatal {
    /// What happened, for the failure message (e.g. "kernel panic").
    pub what: &'static str,
    /// The console line that showed it.
    pub line: String,
}

/// What the console has shown so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsoleState {
    /// Time since the VM started when a `login:` prompt first appeared.
    pub login_prompt: Option<Duration>,
    pub fatal: Option<Fatal>,
    pub bytes: u64,
}

/// Markers that end a boot. Matched against ANSI-stripped console text.
const FATAL: &[(&str, &str)] = &[
    ("Kernel panic - not syncing", "kernel panic"),
    ("You are in emergency mode", "emergency shell"),
    ("Give root password for maintenance", "emergency shell"),
    (
        "Cannot open access to console, the root account is locked",
        "emergency shell",
    ),
    ("You are in rescue mode", "rescue shell"),
    (
        "Dropping to a shell!",
        "initramfs shell (root file system not found)",
    ),
    (
        "No bootable option or device was found",
        "firmware found nothing to boot",
    ),
    (
        "Failed to start Switch Root",
        "switch to the root file system failed",
    ),
];

fn login_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"(?m)^\S+ login: ?$").expect("regex"))
}

fn ansi_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    // CSI sequences, OSC sequences and lone escapes that terminals interpret.
    R.get_or_init(|| {
        Regex::new(r"\x1b\[[0-9;?=]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[=>()][0-9A-Za-z]?")
            .expect("regex")
    })
}

/// Remove terminal escape sequences and carriage returns.
pub fn clean(text: &str) -> String {
    ansi_re().replace_all(text, "").replace('\r', "")
}

/// Follows a console file until dropped.
pub struct ConsoleWatch {
    pub path: PathBuf,
    state: watch::Receiver<ConsoleState>,
    _task: AbortOnDrop,
}

impl ConsoleWatch {
    /// Start following `path` (it may not exist yet). `started` is the VM's start time.
    pub fn start(path: &Path, started: Instant) -> ConsoleWatch {
        let (tx, rx) = watch::channel(ConsoleState::default());
        let p = path.to_owned();
        let task = tokio::spawn(async move { follow(p, started, tx).await });
        ConsoleWatch {
            path: path.to_owned(),
            state: rx,
            _task: AbortOnDrop(task),
        }
    }

    /// The current state.
    pub fn state(&self) -> ConsoleState {
        self.state.borrow().clone()
    }

    /// Wait until the console shows something fatal. Pends forever otherwise.
    pub async fn fatal(&self) -> Fatal {
        let mut rx = self.state.clone();
        loop {
            if let Some(f) = rx.borrow_and_update().fatal.clone() {
                return f;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The last `n` non-empty lines, cleaned of escape sequences.
    pub fn tail(&self, n: usize) -> String {
        tail_of_file(&self.path, n)
    }
}

/// The last `n` non-empty lines of a console log, cleaned of escape sequences.
pub fn tail_of_file(path: &Path, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    // Only the end matters; do not clean megabytes of boot log for twenty lines.
    let start = bytes.len().saturating_sub(64 * 1024);
    let text = clean(&String::from_utf8_lossy(&bytes[start..]));
    let lines: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            // Menus and progress spinners redraw one "line" forever; keep its start.
            if l.chars().count() > 200 {
                format!("{}…", l.chars().take(200).collect::<String>())
            } else {
                l.to_string()
            }
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn follow(path: PathBuf, started: Instant, tx: watch::Sender<ConsoleState>) {
    let mut file = loop {
        match tokio::fs::File::open(&path).await {
            Ok(f) => break f,
            Err(_) => tokio::time::sleep(POLL).await,
        }
    };
    let mut scanner = Scanner::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => tokio::time::sleep(POLL).await,
            Ok(n) => {
                let found = scanner.feed(&buf[..n]);
                let at = started.elapsed();
                tx.send_modify(|s| {
                    s.bytes += n as u64;
                    if found.login && s.login_prompt.is_none() {
                        s.login_prompt = Some(at);
                    }
                    if s.fatal.is_none() {
                        s.fatal = found.fatal.clone();
                    }
                });
            }
        }
    }
}

/// What one chunk of console output revealed.
#[derive(Debug, Default)]
struct Found {
    login: bool,
    fatal: Option<Fatal>,
}

/// Splits console bytes into lines and matches markers. The unfinished last line is
/// matched too: a login prompt has no newline after it.
#[derive(Default)]
struct Scanner {
    partial: Vec<u8>,
}

impl Scanner {
    fn feed(&mut self, chunk: &[u8]) -> Found {
        self.partial.extend_from_slice(chunk);
        let mut found = Found::default();
        let mut complete = 0;
        for (i, b) in self.partial.iter().enumerate() {
            if *b == b'\n' {
                let line = clean(&String::from_utf8_lossy(&self.partial[complete..i]));
                check_line(&line, &mut found);
                complete = i + 1;
            }
        }
        self.partial.drain(..complete);
        if !self.partial.is_empty() {
            let line = clean(&String::from_utf8_lossy(&self.partial));
            check_line(&line, &mut found);
            // A line that never ends (a progress spinner) must not grow without bound.
            if self.partial.len() > 16 * 1024 {
                self.partial.clear();
            }
        }
        found
    }
}

fn check_line(line: &str, found: &mut Found) {
    if found.fatal.is_none() {
        if let Some((_, what)) = FATAL.iter().find(|(m, _)| line.contains(m)) {
            found.fatal = Some(Fatal {
                what,
                line: line.trim().to_string(),
            });
        }
    }
    if login_re().is_match(line.trim_start()) {
        found.login = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_prompt_without_newline_is_seen() {
        let mut s = Scanner::default();
        assert!(!s.feed(b"Debian GNU/Linux 12 poc ttyS0\r\n\r\npoc lo").login);
        assert!(s.feed(b"gin: ").login);
    }

    #[test]
    fn panic_and_emergency_are_fatal_even_with_escapes() {
        let mut s = Scanner::default();
        let f = s
            .feed(b"[    1.2] \x1b[0;1;31mKernel panic - not syncing: Attempted to kill init!\r\n")
            .fatal
            .unwrap();
        assert_eq!(f.what, "kernel panic");
        assert!(f.line.contains("Attempted to kill init"), "{}", f.line);
        let mut s = Scanner::default();
        let f = s.feed(b"You are in emergency mode. After logging in, type \"journalctl -xb\"\n");
        assert_eq!(f.fatal.unwrap().what, "emergency shell");
    }

    #[test]
    fn ordinary_boot_lines_are_not_fatal() {
        let mut s = Scanner::default();
        let f = s.feed(
            b"[  OK  ] Reached target \x1b[0;1;39mgetty.target\x1b[0m - Login Prompts.\n\
              [    0.1] panic=0 in cmdline\nlogin as root is disabled\n",
        );
        assert!(f.fatal.is_none());
        assert!(!f.login);
    }

    #[test]
    fn ansi_sequences_are_stripped() {
        assert_eq!(
            clean("[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mfoo\x1b[0m.\r"),
            "[  OK  ] Started foo."
        );
    }
}
