//! Secrets known to goldsmith, and the redaction every log line, command line, stderr
//! tail and error message passes through.

use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Register a secret value: from now on it is replaced by `***` in every command line,
/// stderr tail and log line that passes through [`redact`].
pub fn register_secret(value: &str) {
    // Very short values would redact ordinary words; they are still kept out of argv.
    if value.len() >= 4 {
        let mut s = SECRETS.write().unwrap();
        if !s.iter().any(|v| v == value) {
            s.push(value.to_string());
            // Longest first, so a secret containing another is replaced whole.
            s.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }
}

/// Replace every registered secret in `text`.
pub fn redact(text: &str) -> String {
    let secrets = SECRETS.read().unwrap();
    let mut out = text.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// The registered secrets (the post-build scan searches outputs for them).
pub fn secrets() -> Vec<String> {
    SECRETS.read().unwrap().clone()
}

/// An error with all its sources, each cause added once (libraries often repeat the
/// inner message in the outer one), secrets redacted: the text for logs and errors of
/// errors whose useful part (connection refused, an HTTP status) is in a source.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    redact(&s)
}
