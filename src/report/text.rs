//! Formatting shared by the report forms: durations, sizes, package changes, trimmed
//! error text, and cleaning of text that came from consoles.

use std::sync::LazyLock;

use regex::Regex;

use crate::artifact::PackageChange;
use crate::report::model::{ImageReport, ImageStatus, NightlyReport};

/// How many images ended in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub published: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Counts {
    pub fn of(report: &NightlyReport) -> Counts {
        let mut c = Counts::default();
        for i in &report.images {
            match i.status {
                ImageStatus::Published => c.published += 1,
                ImageStatus::Unchanged => c.unchanged += 1,
                ImageStatus::Failed => c.failed += 1,
                ImageStatus::Skipped => c.skipped += 1,
            }
        }
        c
    }

    /// "2 published, 1 unchanged, 1 failed" (+ ", 1 skipped" when any were).
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} published, {} unchanged, {} failed",
            self.published, self.unchanged, self.failed
        );
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped", self.skipped));
        }
        s
    }
}

/// A duration for people: "850ms", "12.3s", "4m 05s", "1h 02m".
pub fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    if s < 1.0 {
        return format!("{}ms", (s * 1000.0).round() as u64);
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let total = s.round() as u64;
    if total < 3600 {
        format!("{}m {:02}s", total / 60, total % 60)
    } else {
        format!("{}h {:02}m", total / 3600, (total % 3600) / 60)
    }
}

/// A size for people, in binary units: "812 B", "3.4 KiB", "1.2 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// How a package moved: its new version, its old one, both, or neither.
pub enum Move<'a> {
    Changed(&'a str, &'a str),
    Added(&'a str),
    Removed(&'a str),
    Unknown,
}

pub fn package_move(p: &PackageChange) -> Move<'_> {
    match (p.old.as_deref(), p.new.as_deref()) {
        (Some(o), Some(n)) => Move::Changed(o, n),
        (None, Some(n)) => Move::Added(n),
        (Some(o), None) => Move::Removed(o),
        (None, None) => Move::Unknown,
    }
}

/// One line per package change, plain text: `openssl 3.0.15-1~deb12u1 → 3.0.17-1~deb12u2`,
/// `curl (added) 7.88.1-10`, `telnet (removed) 0.17-44`.
pub fn package_change(p: &PackageChange) -> String {
    match package_move(p) {
        Move::Changed(o, n) => format!("{} {o} → {n}", p.name),
        Move::Added(n) => format!("{} (added) {n}", p.name),
        Move::Removed(o) => format!("{} (removed) {o}", p.name),
        Move::Unknown => p.name.clone(),
    }
}

/// The first line of a message, at most `max` characters.
pub fn first_line(s: &str, max: usize) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    truncate_chars(line, max)
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The end of a long text: its last `max_lines` lines, and of those at most the last
/// `max_chars` characters. The end of an error or a console log is where the cause is.
/// Returns the text and how many lines were cut.
pub fn tail(s: &str, max_lines: usize, max_chars: usize) -> (String, usize) {
    let s = s.trim_end();
    let lines: Vec<&str> = s.lines().collect();
    let keep_from = lines.len().saturating_sub(max_lines);
    let mut kept = lines[keep_from..].join("\n");
    let mut cut = keep_from;
    let chars = kept.chars().count();
    if chars > max_chars {
        let skip = chars - max_chars;
        let byte = kept.char_indices().nth(skip).map(|(i, _)| i).unwrap_or(0);
        // Cut at a line start so the first kept line is whole.
        let start = kept[byte..]
            .find('\n')
            .map(|n| byte + n + 1)
            .filter(|&b| b < kept.len())
            .unwrap_or(byte);
        cut += kept[..start].lines().count();
        kept = kept[start..].to_string();
    }
    (kept, cut)
}

static ANSI: LazyLock<Regex> = LazyLock::new(|| {
    // CSI sequences (colours, cursor moves) and OSC sequences (titles, links) that serial
    // consoles and build tools print; they are noise in every report form.
    Regex::new(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]").unwrap()
});

/// Text from consoles and errors made safe for every report form: terminal escape
/// sequences removed, CR LF made LF, other control characters (which XML 1.0 forbids
/// outright) replaced by U+FFFD.
pub fn clean(s: &str) -> String {
    let s = ANSI.replace_all(s, "");
    s.replace("\r\n", "\n")
        .chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            '\r' => '\n',
            c if (c as u32) < 0x20 || c == '\u{7f}' => '\u{fffd}',
            '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// The status of an image in words: "published", "failed at verify", "skipped (build)".
pub fn status_words(i: &ImageReport) -> String {
    match (i.status, i.failed_stage.as_deref()) {
        (ImageStatus::Failed, Some(st)) => format!("failed at {st}"),
        (ImageStatus::Skipped, Some(st)) => format!("skipped ({st})"),
        (s, _) => s.as_str().to_string(),
    }
}

/// The seconds a stage took, when it ran.
pub fn stage_secs(i: &ImageReport, stage: &str) -> Option<f64> {
    use crate::report::model::StageStatus;
    i.stages
        .iter()
        .find(|s| s.stage == stage && s.status != StageStatus::Skipped)
        .map(|s| s.secs)
}

/// The sum of the stage times of an image.
pub fn image_secs(i: &ImageReport) -> f64 {
    i.stages
        .iter()
        .map(|s| s.secs)
        .filter(|s| s.is_finite())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(secs(0.25), "250ms");
        assert_eq!(secs(12.34), "12.3s");
        assert_eq!(secs(245.0), "4m 05s");
        assert_eq!(secs(3720.0), "1h 02m");
        assert_eq!(secs(f64::NAN), "-");
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(bytes(2 * 1024 * 1024 * 1024), "2.0 GiB");
    }

    #[test]
    fn tail_keeps_the_end_and_counts_the_cut() {
        let s: String = (1..=10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail(&s, 3, 1000), ("line 8\nline 9\nline 10".into(), 7));
        assert_eq!(tail("short", 3, 1000), ("short".into(), 0));
        let (t, cut) = tail(&s, 100, 16);
        assert_eq!(t, "line 9\nline 10");
        assert_eq!(cut, 8);
    }

    #[test]
    fn clean_removes_escapes_and_controls() {
        assert_eq!(clean("\x1b[31mred\x1b[0m ok\r\n\x07"), "red ok\n\u{fffd}");
        assert_eq!(clean("\x1b]0;title\x07x"), "x");
    }

    #[test]
    fn package_lines() {
        let p = |o: Option<&str>, n: Option<&str>| PackageChange {
            name: "openssl".into(),
            old: o.map(Into::into),
            new: n.map(Into::into),
        };
        assert_eq!(
            package_change(&p(Some("3.0.15-1~deb12u1"), Some("3.0.17-1~deb12u2"))),
            "openssl 3.0.15-1~deb12u1 → 3.0.17-1~deb12u2"
        );
        assert_eq!(package_change(&p(None, Some("3"))), "openssl (added) 3");
        assert_eq!(package_change(&p(Some("3"), None)), "openssl (removed) 3");
    }
}
