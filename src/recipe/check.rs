//! Smoke checks that layers and images declare; `verify` runs them in the booted guest.

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// One declared check. Exactly one of `command`, `file`, `service`, `port`, `http` is set.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckDef {
    pub name: Spanned<String>,
    pub command: Option<CommandCheck>,
    pub file: Option<FileCheck>,
    pub service: Option<ServiceCheck>,
    pub port: Option<PortCheck>,
    pub http: Option<HttpCheck>,
    /// Seconds this check may take (retried until then for readiness-type checks).
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
}

fn default_check_timeout() -> u64 {
    60
}

/// Run a command in the guest (through the guest agent).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    /// argv; run without a shell unless you write `["sh", "-c", "…"]`.
    pub argv: Vec<String>,
    #[serde(default)]
    pub exit_code: i32,
    pub stdout_regex: Option<Spanned<String>>,
}

/// A file that must exist in the guest (or in the OCI tree).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileCheck {
    pub path: String,
    /// Octal mode, e.g. "0644".
    pub mode: Option<Spanned<String>>,
    pub content_regex: Option<Spanned<String>>,
}

/// A systemd unit that must be active.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceCheck {
    pub unit: String,
}

/// A guest TCP port that must accept connections through a host port forward.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortCheck {
    pub port: u16,
}

/// An HTTP GET through a forwarded port.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub port: u16,
    #[serde(default = "default_http_path")]
    pub path: String,
    #[serde(default = "default_http_status")]
    pub status: u16,
    pub body_regex: Option<Spanned<String>>,
}

fn default_http_path() -> String {
    "/".into()
}
fn default_http_status() -> u16 {
    200
}

/// What kind a check is, for reports and the verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Command,
    File,
    Service,
    Port,
    Http,
}

impl CheckDef {
    /// The kinds that are set (valid checks have exactly one).
    pub fn kinds(&self) -> Vec<CheckKind> {
        let mut k = Vec::new();
        if self.command.is_some() {
            k.push(CheckKind::Command);
        }
        if self.file.is_some() {
            k.push(CheckKind::File);
        }
        if self.service.is_some() {
            k.push(CheckKind::Service);
        }
        if self.port.is_some() {
            k.push(CheckKind::Port);
        }
        if self.http.is_some() {
            k.push(CheckKind::Http);
        }
        k
    }

    /// Every regex in the check with its span, for validation.
    pub fn regexes(&self) -> Vec<&Spanned<String>> {
        let mut r = Vec::new();
        if let Some(c) = &self.command {
            r.extend(c.stdout_regex.iter());
        }
        if let Some(f) = &self.file {
            r.extend(f.content_regex.iter());
        }
        if let Some(h) = &self.http {
            r.extend(h.body_regex.iter());
        }
        r
    }

    /// Guest ports the check needs forwarded to the host.
    pub fn guest_port(&self) -> Option<u16> {
        self.port
            .as_ref()
            .map(|p| p.port)
            .or(self.http.as_ref().map(|h| h.port))
    }
}
