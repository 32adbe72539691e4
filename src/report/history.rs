//! Earlier nightlies, for the charts: each run's `report.json` in its own folder under
//! the reports root, the folder named for the run id.

use std::path::Path;

use crate::fsutil;
use crate::report::model::NightlyReport;

/// Whether a folder name is a run id, `YYYYmmddTHHMMSSZ`.
pub fn is_run_id(name: &str) -> bool {
    name.len() == 16 && chrono::NaiveDateTime::parse_from_str(name, "%Y%m%dT%H%M%SZ").is_ok()
}

/// The newest `limit` readable reports under `reports_root`, oldest first. Folders that
/// are not named like a run id are ignored; a missing, unreadable or unparsable
/// `report.json` is skipped with a warning (a run killed before it wrote its report
/// leaves such a folder).
pub fn load_history(reports_root: &Path, limit: usize) -> Vec<NightlyReport> {
    let mut ids: Vec<String> = match std::fs::read_dir(reports_root) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_run_id(n))
            .collect(),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot list reports in {}: {e}", reports_root.display());
            }
            return Vec::new();
        }
    };
    // Run ids sort by time as text.
    ids.sort();
    let mut out = Vec::new();
    for id in ids.iter().rev() {
        if out.len() >= limit {
            break;
        }
        let path = reports_root.join(id).join(crate::report::REPORT_JSON);
        if !path.exists() {
            tracing::debug!("{} has no report, skipped", reports_root.join(id).display());
            continue;
        }
        match fsutil::read_json::<NightlyReport>(&path) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("earlier report skipped: {e:#}"),
        }
    }
    out.reverse();
    out
}
