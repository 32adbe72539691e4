//! The nightly report: JSON, Markdown summary, JUnit XML, a static HTML page with
//! charts, and a Prometheus textfile, all rendered from one [`model::NightlyReport`].
//!
//! The nightly fills the model and calls [`write_all`] with earlier runs from
//! [`load_history`]; the renderers are pure functions of the model, one file each.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::fsutil;

pub mod chart;
pub mod history;
pub mod html;
pub mod junit;
pub mod markdown;
pub mod model;
pub mod prom;
pub mod text;

pub use history::{is_run_id, load_history};
use model::NightlyReport;

pub const REPORT_JSON: &str = "report.json";
pub const SUMMARY_MD: &str = "summary.md";
pub const JUNIT_XML: &str = "junit.xml";
pub const INDEX_HTML: &str = "index.html";
pub const METRICS_PROM: &str = "goldsmith.prom";

/// Write every report form into `dir` (created if missing), each file atomically, and
/// return their paths. `report.json` is written last, so a folder with a `report.json`
/// holds a complete report (that is what [`load_history`] reads). `history` are earlier
/// runs for the charts (see [`html::render`]).
pub fn write_all(
    report: &NightlyReport,
    history: &[NightlyReport],
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let forms: [(&str, String); 4] = [
        (SUMMARY_MD, markdown::render(report)),
        (JUNIT_XML, junit::render(report)),
        (INDEX_HTML, html::render(report, history)),
        (METRICS_PROM, prom::render(report)),
    ];
    let mut written = Vec::new();
    for (name, body) in forms {
        let path = dir.join(name);
        fsutil::atomic_write(&path, body.as_bytes())
            .with_context(|| format!("cannot write the report {}", path.display()))?;
        written.push(path);
    }
    let path = dir.join(REPORT_JSON);
    fsutil::atomic_write_json(&path, report)
        .with_context(|| format!("cannot write the report {}", path.display()))?;
    written.push(path);
    Ok(written)
}
