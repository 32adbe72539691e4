//! `goldsmith.prom`: the run as Prometheus text exposition format (version 0.0.4), for
//! node_exporter's textfile collector. Copy or link it into the collector's directory.
//!
//! Hand-written on purpose: the format is a few lines of text with three escaping rules,
//! and the `prometheus-client` crate writes OpenMetrics from a registry of live metrics,
//! which a one-shot file of gauges does not need.

use std::fmt::Write;

use crate::report::model::{NightlyReport, StageStatus};

/// One metric family: all its samples are written together under one HELP and TYPE, as
/// the format requires.
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        // NaN and infinities are legal in the format but meaningless here (a stage that
        // did not run has no duration); leave the series out instead.
        if value.is_finite() {
            self.samples.push((labels, value));
        }
    }
}

/// Render the metrics. Per image: success, stage durations (for stages that ran),
/// artifact sizes, boot time; per run: end time and duration.
pub fn render(r: &NightlyReport) -> String {
    let mut success = Family::new(
        "goldsmith_nightly_success",
        "1 if the image was published or unchanged in the last nightly, 0 if it failed or was skipped.",
    );
    let mut stage = Family::new(
        "goldsmith_stage_duration_seconds",
        "Seconds a stage of an image took in the last nightly (stages that ran).",
    );
    let mut size = Family::new(
        "goldsmith_artifact_size_bytes",
        "Size of an artifact of an image built in the last nightly.",
    );
    let mut boot = Family::new(
        "goldsmith_boot_seconds",
        "Seconds from VM start to ready in the verify boot of the last nightly.",
    );
    let mut last = Family::new(
        "goldsmith_nightly_last_run_timestamp_seconds",
        "Unix time the last nightly finished.",
    );
    let mut duration = Family::new(
        "goldsmith_nightly_duration_seconds",
        "Seconds the last nightly took.",
    );

    for i in &r.images {
        let img = || vec![("image", i.image.clone())];
        success.add(img(), if i.status.is_success() { 1.0 } else { 0.0 });
        for s in i.stages.iter().filter(|s| s.status != StageStatus::Skipped) {
            stage.add(
                vec![("image", i.image.clone()), ("stage", s.stage.clone())],
                s.secs,
            );
        }
        for a in &i.artifacts {
            size.add(
                vec![("image", i.image.clone()), ("format", a.format.to_string())],
                a.size as f64,
            );
        }
        if let Some(b) = i.boot_secs {
            boot.add(img(), b);
        }
    }
    if let Some(t) = finished_unix(r) {
        last.add(vec![], t);
    }
    duration.add(vec![], r.duration_secs);

    let mut out = String::new();
    for f in [success, stage, size, boot, last, duration] {
        if f.samples.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        for (labels, value) in &f.samples {
            out.push_str(f.name);
            if !labels.is_empty() {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", l.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out
}

/// When the run finished: `finished` (RFC 3339), else the run id plus the duration.
fn finished_unix(r: &NightlyReport) -> Option<f64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&r.finished) {
        return Some(t.timestamp_millis() as f64 / 1000.0);
    }
    let start = chrono::NaiveDateTime::parse_from_str(&r.run_id, "%Y%m%dT%H%M%SZ").ok()?;
    Some(start.and_utc().timestamp() as f64 + r.duration_secs.max(0.0))
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// HELP text escapes backslash and line feed.
fn escape_help(s: &str) -> String {
    s.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
        assert_eq!(escape_help("a\\b\nc"), r"a\\b\nc");
    }
}
