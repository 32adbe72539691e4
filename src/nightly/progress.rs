//! How a nightly shows its progress: a live multi-line view on a terminal, plain
//! timestamped lines otherwise, or a JSON-lines event stream with `--json`.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// One step of one image.
#[derive(Debug, Clone, Serialize)]
pub struct Event<'a> {
    pub time: String,
    pub image: &'a str,
    pub stage: &'a str,
    /// `started`, `passed`, `failed`, `skipped`, `retrying`, or a free word.
    pub status: &'a str,
    pub detail: &'a str,
}

/// A progress sink. Implementations must be cheap: the pipeline calls them inline.
pub trait Progress: Send + Sync {
    fn event(&self, image: &str, stage: &str, status: &str, detail: &str);
    /// The run is over (finish bars, flush).
    fn finish(&self) {}
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// JSON lines on stdout: one object per event.
pub struct JsonLines;

impl Progress for JsonLines {
    fn event(&self, image: &str, stage: &str, status: &str, detail: &str) {
        let e = Event {
            time: now(),
            image,
            stage,
            status,
            detail,
        };
        if let Ok(line) = serde_json::to_string(&e) {
            crate::commands::say(&format!("{line}\n"));
        }
    }
}

/// Plain log lines (tracing adds the timestamp); for CI logs and pipes.
pub struct Plain;

impl Progress for Plain {
    fn event(&self, image: &str, stage: &str, status: &str, detail: &str) {
        if detail.is_empty() {
            tracing::info!(image, stage, "{image}: {stage} {status}");
        } else {
            tracing::info!(image, stage, "{image}: {stage} {status}: {detail}");
        }
    }
}

/// One live line per image (indicatif), for people at a terminal.
pub struct Live {
    multi: indicatif::MultiProgress,
    bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
}

impl Live {
    pub fn new(images: &[String]) -> Live {
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} {prefix:<16} {elapsed:>4} {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let mut bars = HashMap::new();
        for i in images {
            let b = multi.add(indicatif::ProgressBar::new_spinner());
            b.set_style(style.clone());
            b.set_prefix(i.clone());
            b.set_message("waiting");
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            bars.insert(i.clone(), b);
        }
        Live {
            multi,
            bars: Mutex::new(bars),
        }
    }
}

impl Progress for Live {
    fn event(&self, image: &str, stage: &str, status: &str, detail: &str) {
        let bars = self.bars.lock().unwrap();
        let Some(b) = bars.get(image) else {
            let _ = self
                .multi
                .println(format!("{image}: {stage} {status} {detail}"));
            return;
        };
        let msg = if detail.is_empty() {
            format!("{stage} {status}")
        } else {
            format!("{stage} {status}: {detail}")
        };
        if stage == "done" {
            b.finish_with_message(msg);
        } else {
            b.set_message(msg);
        }
    }

    fn finish(&self) {
        for b in self.bars.lock().unwrap().values() {
            if !b.is_finished() {
                b.finish();
            }
        }
    }
}
