//! `index.html`: one static page per run that works from the file system (no CDN, no
//! fonts or scripts from elsewhere, no JavaScript at all): per image status, version,
//! what changed, stage times, artifact sizes, boot time and a link to the console log of
//! failures; then charts of build and boot times over the last nightlies.
//!
//! Every piece of text that came from outside (image names, errors, versions) goes
//! through `esc`. Hooks for tests and scrapers: `tr.image-row[data-image][data-status]`,
//! `svg.chart[data-chart] polyline[data-series]`.

use std::collections::BTreeSet;
use std::fmt::Write;

use handlebars::html_escape as esc;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::report::chart::{self, Series};
use crate::report::model::{ImageReport, ImageStatus, NightlyReport, StageStatus, STAGES};
use crate::report::text::{self, Counts, Move};

/// Nightlies shown in the charts, the current one included.
pub const CHART_RUNS: usize = 30;
/// Error lines shown on the page; the full error is in `report.json`.
const ERROR_LINES: usize = 200;
const ERROR_CHARS: usize = 32 * 1024;

const CSS: &str = r#"
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1a1a1a; background: #fff; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 6px; }
.headline { font-size: 16px; margin: 4px 0; }
.meta { color: #555; margin: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e4e4e4; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
.status { font-weight: 600; white-space: nowrap; }
.status-published { color: #0b6b2e; }
.status-unchanged { color: #555; }
.status-failed { color: #b00020; }
.status-skipped { color: #8a5a00; }
td.stage-failed { color: #b00020; font-weight: 600; }
td.stage-skipped { color: #888; }
.verdict-failed { color: #b00020; }
details.image-detail { border: 1px solid #e4e4e4; border-radius: 4px; padding: 8px 12px; margin: 8px 0; }
details.image-detail > summary { cursor: pointer; font-weight: 600; }
details.image-detail h3 { margin-top: 12px; }
pre.error { background: #fbf3f3; border-left: 3px solid #b00020; padding: 8px; overflow-x: auto; white-space: pre-wrap; word-break: break-word; max-height: 420px; }
ul.changes { margin: 4px 0 8px 18px; padding: 0; }
table.packages { width: auto; margin: 4px 0 8px; }
code { font: 12.5px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 8px 24px; }
figure { margin: 0; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.chart { width: 100%; height: auto; max-width: 720px; display: block; }
svg.chart text { font: 11px system-ui, sans-serif; fill: #444; }
ul.legend { list-style: none; padding: 0; margin: 4px 0 16px; display: flex; flex-wrap: wrap; gap: 4px 16px; }
.swatch { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin-right: 6px; }
.muted { color: #777; }
"#;

/// Render the page. `history` are earlier runs in any order (the current run is
/// ignored if it is among them); the charts show the newest [`CHART_RUNS`].
pub fn render(r: &NightlyReport, history: &[NightlyReport]) -> String {
    let counts = Counts::of(r);
    let failed = counts.failed + counts.skipped > 0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>goldsmith nightly {run} - {verdict}</title>\n\
         <link rel=\"icon\" href=\"data:,\">\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n",
        run = esc(&r.run_id),
        verdict = if failed { "failed" } else { "ok" },
    );

    // Headline.
    let _ = write!(
        out,
        "<header>\n<h1>goldsmith nightly <code>{}</code></h1>\n\
         <p class=\"headline{}\" data-exit-code=\"{}\"><strong>{}</strong> in {}</p>\n",
        esc(&r.run_id),
        if failed { " verdict-failed" } else { "" },
        r.exit_code,
        esc(&counts.line()),
        esc(&text::secs(r.duration_secs)),
    );
    if let Some(sig) = &r.cancelled {
        let _ = writeln!(
            out,
            "<p class=\"headline verdict-failed\">Cancelled by {}.</p>",
            esc(sig)
        );
    }
    let _ = write!(
        out,
        "<p class=\"meta\">Started {} &middot; finished {} &middot; host {} &middot; goldsmith {} &middot; exit code {}</p>\n</header>\n",
        esc(&r.started),
        esc(&r.finished),
        esc(&r.host),
        esc(&r.goldsmith_version),
        r.exit_code
    );

    images_table(&mut out, r);
    charts(&mut out, r, history);
    details(&mut out, r);

    out.push_str(
        "<p class=\"muted\">The full report is in <a href=\"report.json\">report.json</a>; \
         also <a href=\"summary.md\">summary.md</a>, <a href=\"junit.xml\">junit.xml</a>, \
         <a href=\"goldsmith.prom\">goldsmith.prom</a>.</p>\n</main>\n</body>\n</html>\n",
    );
    out
}

fn images_table(out: &mut String, r: &NightlyReport) {
    out.push_str("<h2>Images</h2>\n");
    if r.images.is_empty() {
        out.push_str("<p>No images were part of this run.</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"images\">\n<thead><tr><th>Image</th><th>Status</th><th>Version</th>\
         <th>What changed</th>",
    );
    for st in STAGES {
        let _ = write!(out, "<th class=\"num\">{}</th>", esc(st));
    }
    out.push_str("<th class=\"num\">Boot</th><th>Artifacts</th></tr></thead>\n<tbody>\n");
    for (n, i) in r.images.iter().enumerate() {
        let _ = write!(
            out,
            "<tr class=\"image-row\" data-image=\"{}\" data-status=\"{}\">\
             <td><a href=\"#image-{n}\">{}</a></td>\
             <td><span class=\"status status-{}\">{}</span></td><td>{}</td><td>{}</td>",
            esc(&i.image),
            i.status.as_str(),
            esc(&i.image),
            i.status.as_str(),
            esc(&text::status_words(i)),
            i.version.as_deref().map(esc).unwrap_or_else(|| "-".into()),
            esc(&changed_summary(i)),
        );
        for st in STAGES {
            stage_cell(out, i, st);
        }
        let artifacts: Vec<String> = i
            .artifacts
            .iter()
            .map(|a| {
                format!(
                    "{}&nbsp;{}",
                    esc(a.format.as_str()),
                    esc(&text::bytes(a.size))
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "<td class=\"num\">{}</td><td>{}</td></tr>",
            i.boot_secs
                .map(|b| esc(&text::secs(b)))
                .unwrap_or_else(|| "-".into()),
            if artifacts.is_empty() {
                "-".into()
            } else {
                artifacts.join("<br>")
            }
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

fn stage_cell(out: &mut String, i: &ImageReport, stage: &str) {
    let Some(s) = i.stages.iter().find(|s| s.stage == stage) else {
        let _ = write!(
            out,
            "<td class=\"num stage-skipped\" data-stage=\"{}\">-</td>",
            esc(stage)
        );
        return;
    };
    let (class, words) = match s.status {
        StageStatus::Passed => ("passed", text::secs(s.secs)),
        StageStatus::Failed => ("failed", format!("failed {}", text::secs(s.secs))),
        StageStatus::Skipped => ("skipped", "skipped".to_string()),
    };
    let retries = if s.attempts > 1 {
        format!(" ({} attempts)", s.attempts)
    } else {
        String::new()
    };
    let _ = write!(
        out,
        "<td class=\"num stage-{class}\" data-stage=\"{}\" title=\"{}\">{}{}</td>",
        esc(stage),
        esc(&text::first_line(&text::clean(&s.detail), 300)),
        esc(&words),
        esc(&retries)
    );
}

/// "2 layers rebuilt, 3 packages" for the table; the lists are in the details.
fn changed_summary(i: &ImageReport) -> String {
    let mut parts = Vec::new();
    match i.layers_rebuilt.len() {
        0 => {}
        1 => parts.push("1 layer rebuilt".to_string()),
        n => parts.push(format!("{n} layers rebuilt")),
    }
    match i.package_changes.len() {
        0 => {}
        1 => parts.push("1 package".to_string()),
        n => parts.push(format!("{n} packages")),
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

fn details(out: &mut String, r: &NightlyReport) {
    if r.images.is_empty() {
        return;
    }
    out.push_str("<h2>Details</h2>\n");
    for (n, i) in r.images.iter().enumerate() {
        // Open what needs reading: failures and new versions; an unchanged image has
        // nothing to say.
        let open = if i.status == ImageStatus::Unchanged {
            ""
        } else {
            " open"
        };
        let _ = write!(
            out,
            "<details class=\"image-detail\" id=\"image-{n}\" data-image=\"{}\"{open}>\n\
             <summary>{} <span class=\"status status-{}\">{}</span>{}</summary>\n",
            esc(&i.image),
            esc(&i.image),
            i.status.as_str(),
            esc(&text::status_words(i)),
            i.version
                .as_deref()
                .map(|v| format!(" <code>{}</code>", esc(v)))
                .unwrap_or_default(),
        );
        if !i.status.is_success() {
            failure(out, i);
        }
        if !i.layers_rebuilt.is_empty() || !i.changes.is_empty() {
            out.push_str("<h3>Layers rebuilt</h3>\n<ul class=\"changes\">\n");
            let named: BTreeSet<&str> = i.changes.iter().map(|c| c.layer.as_str()).collect();
            for c in &i.changes {
                let mut why = Vec::new();
                if !c.inputs.is_empty() {
                    let inputs: Vec<String> = c
                        .inputs
                        .iter()
                        .map(|s| format!("<code>{}</code>", esc(s)))
                        .collect();
                    why.push(format!("inputs changed: {}", inputs.join(", ")));
                }
                if !c.packages.is_empty() {
                    let pk: Vec<String> = c.packages.iter().map(package_html).collect();
                    why.push(format!("packages moved upstream: {}", pk.join(", ")));
                }
                let _ = writeln!(
                    out,
                    "<li><code>{}</code>{}{}</li>",
                    esc(&c.layer),
                    if why.is_empty() { "" } else { ": " },
                    why.join("; ")
                );
            }
            for l in i
                .layers_rebuilt
                .iter()
                .filter(|l| !named.contains(l.as_str()))
            {
                let _ = writeln!(out, "<li><code>{}</code></li>", esc(l));
            }
            out.push_str("</ul>\n");
        }
        if !i.package_changes.is_empty() {
            out.push_str(
                "<h3>Packages changed since the previous version</h3>\n\
                 <table class=\"packages\"><thead><tr><th>Package</th><th>Before</th><th>Now</th></tr></thead><tbody>\n",
            );
            for p in &i.package_changes {
                let cell = |v: &Option<String>| {
                    v.as_deref()
                        .map(|v| format!("<code>{}</code>", esc(v)))
                        .unwrap_or_else(|| "<span class=\"muted\">none</span>".into())
                };
                let _ = writeln!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    esc(&p.name),
                    cell(&p.old),
                    cell(&p.new)
                );
            }
            out.push_str("</tbody></table>\n");
        }
        if i.status.is_success() && i.changes.is_empty() && i.package_changes.is_empty() {
            out.push_str("<p class=\"muted\">Nothing changed.</p>\n");
        }
        if i.rollout_events > 0 {
            let _ = writeln!(out, "<p>Rollout events: {}</p>", i.rollout_events);
        }
        out.push_str("</details>\n");
    }
}

fn failure(out: &mut String, i: &ImageReport) {
    let stage = i.failed_stage.as_deref().unwrap_or("nightly");
    let detail = i
        .stages
        .iter()
        .find(|s| s.stage == stage)
        .map(|s| text::clean(&s.detail))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "<p class=\"failure\" data-stage=\"{}\">{} at <strong>{}</strong>{}{}</p>",
        esc(stage),
        if i.status == ImageStatus::Skipped {
            "Skipped"
        } else {
            "Failed"
        },
        esc(stage),
        if detail.is_empty() { "" } else { ": " },
        esc(&detail)
    );
    if let Some(err) = &i.error {
        let (tail, cut) = text::tail(&text::clean(err), ERROR_LINES, ERROR_CHARS);
        if cut > 0 {
            let _ = writeln!(
                out,
                "<p class=\"muted\">The last lines of the error; {cut} earlier lines are in report.json.</p>"
            );
        }
        let _ = writeln!(out, "<pre class=\"error\">{}</pre>", esc(&tail));
    }
    if let Some(log) = &i.console_log {
        match relative_href(log) {
            Some(href) => {
                let _ = writeln!(
                    out,
                    "<p><a class=\"console-log\" href=\"{}\">Console log</a> <span class=\"muted\">({})</span></p>",
                    esc(&href),
                    esc(log)
                );
            }
            None => {
                let _ = writeln!(out, "<p>Console log: <code>{}</code></p>", esc(log));
            }
        }
    }
}

fn package_html(p: &crate::artifact::PackageChange) -> String {
    match text::package_move(p) {
        Move::Changed(o, n) => {
            format!("<code>{}</code> {} &rarr; {}", esc(&p.name), esc(o), esc(n))
        }
        Move::Added(n) => format!("<code>{}</code> (added) {}", esc(&p.name), esc(n)),
        Move::Removed(o) => format!("<code>{}</code> (removed) {}", esc(&p.name), esc(o)),
        Move::Unknown => format!("<code>{}</code>", esc(&p.name)),
    }
}

/// Bytes of a path segment left as they are in a link: RFC 3986 unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A link to a file inside the report folder, or None for anything that could leave it
/// (absolute paths, `..`, a scheme such as `javascript:`).
fn relative_href(path: &str) -> Option<String> {
    if path.is_empty() || path.starts_with('/') || path.contains('\\') {
        return None;
    }
    let segs: Vec<&str> = path.split('/').collect();
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return None;
    }
    // Percent-encoding every ':' also keeps "javascript:x" from reading as a scheme.
    Some(
        segs.iter()
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// The runs the charts cover: the newest earlier runs plus this one, oldest first.
fn chart_runs<'a>(r: &'a NightlyReport, history: &'a [NightlyReport]) -> Vec<&'a NightlyReport> {
    let mut runs: Vec<&NightlyReport> = history.iter().filter(|h| h.run_id != r.run_id).collect();
    runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    runs.dedup_by(|a, b| a.run_id == b.run_id);
    let keep = CHART_RUNS.saturating_sub(1);
    let runs_len = runs.len();
    let mut runs: Vec<&NightlyReport> = runs
        .into_iter()
        .skip(runs_len.saturating_sub(keep))
        .collect();
    runs.push(r);
    runs
}

fn charts(out: &mut String, r: &NightlyReport, history: &[NightlyReport]) {
    let runs = chart_runs(r, history);
    // Images of this run first, in its order, then images only earlier runs had; the
    // colour of an image is the same in both charts.
    let mut images: Vec<&str> = r.images.iter().map(|i| i.image.as_str()).collect();
    for run in &runs {
        for i in &run.images {
            if !images.contains(&i.image.as_str()) {
                images.push(&i.image);
            }
        }
    }
    let ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let build_secs = |i: &ImageReport| {
        i.stages
            .iter()
            .find(|s| s.stage == "build" && s.status == StageStatus::Passed)
            .map(|s| s.secs)
    };
    let series = |kind: &str, value: &dyn Fn(&ImageReport) -> Option<f64>| -> Vec<Series> {
        images
            .iter()
            .enumerate()
            .map(|(n, image)| Series {
                key: format!("{kind}-{image}"),
                label: (*image).to_string(),
                style: n,
                values: runs
                    .iter()
                    .map(|run| {
                        run.images
                            .iter()
                            .find(|i| i.image == *image)
                            .and_then(value)
                    })
                    .collect(),
            })
            .collect()
    };
    let build = series("build", &build_secs);
    let boot = series("boot", &|i: &ImageReport| i.boot_secs);

    let _ = writeln!(out, "<h2>Over the last {} nightlies</h2>", runs.len());
    out.push_str("<div class=\"charts\">\n");
    for (kind, title, series) in [
        ("build", "Build time per image (successful builds)", &build),
        ("boot", "Boot time per image (VM start to ready)", &boot),
    ] {
        let _ = writeln!(out, "<figure>\n<figcaption>{}</figcaption>", esc(title));
        out.push_str(&chart::render(kind, title, &ids, series));
        out.push('\n');
        legend(out, series);
        out.push_str("</figure>\n");
    }
    out.push_str("</div>\n");
}

fn legend(out: &mut String, series: &[Series]) {
    out.push_str("<ul class=\"legend\">");
    for s in series
        .iter()
        .filter(|s| s.values.iter().flatten().any(|v| v.is_finite()))
    {
        let (colour, _) = chart::style(s.style);
        let _ = write!(
            out,
            "<li><span class=\"swatch\" style=\"background:{colour}\"></span>{}</li>",
            esc(&s.label)
        );
    }
    out.push_str("</ul>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_stay_inside_the_report() {
        assert_eq!(
            relative_href("logs/web console.log").as_deref(),
            Some("logs/web%20console.log")
        );
        assert_eq!(
            relative_href("javascript:alert(1)").as_deref(),
            Some("javascript%3Aalert%281%29")
        );
        assert_eq!(relative_href("/etc/passwd"), None);
        assert_eq!(relative_href("../x"), None);
        assert_eq!(relative_href("a//b"), None);
    }
}
