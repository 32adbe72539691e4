//! `summary.md`: the run in one screen, sized for a CI job summary (GitHub's
//! `$GITHUB_STEP_SUMMARY`, GitLab's Markdown artifacts): headline, one table row per
//! image, each failure with its stage and the end of its error, then what changed.

use std::fmt::Write;

use crate::artifact::PackageChange;
use crate::report::model::{ImageReport, ImageStatus, NightlyReport};
use crate::report::text::{self, Counts, Move};

/// Lines of an error shown in the summary; the full error is in `report.json`.
const ERROR_LINES: usize = 40;
const ERROR_CHARS: usize = 4000;
/// Package changes listed per image before "… and N more".
const MAX_PACKAGES: usize = 50;
/// Upstream package moves named per rebuilt layer.
const MAX_LAYER_PACKAGES: usize = 10;

/// Render the Markdown summary.
pub fn render(r: &NightlyReport) -> String {
    let mut out = String::new();
    let counts = Counts::of(r);
    let verdict = if r.cancelled.is_some() {
        "cancelled"
    } else if counts.failed + counts.skipped > 0 {
        "FAILED"
    } else {
        "ok"
    };
    let _ = writeln!(
        out,
        "## goldsmith nightly {}: {verdict}\n",
        md_text(&r.run_id)
    );
    let _ = writeln!(
        out,
        "**{}** in {} (exit code {})\n",
        counts.line(),
        text::secs(r.duration_secs),
        r.exit_code
    );
    if let Some(sig) = &r.cancelled {
        let _ = writeln!(out, "The run was cancelled by {}.\n", md_text(sig));
    }
    let _ = writeln!(
        out,
        "Started {}, finished {} on {} with goldsmith {}.\n",
        md_text(&r.started),
        md_text(&r.finished),
        md_text(&r.host),
        md_text(&r.goldsmith_version)
    );

    if r.images.is_empty() {
        out.push_str("No images were part of this run.\n");
        return out;
    }
    table(&mut out, r);

    for i in r.images.iter().filter(|i| !i.status.is_success()) {
        failure(&mut out, i);
    }

    let changed: Vec<&ImageReport> = r
        .images
        .iter()
        .filter(|i| !i.changes.is_empty() || !i.package_changes.is_empty())
        .collect();
    if !changed.is_empty() {
        out.push_str("\n### What changed\n");
        for i in changed {
            what_changed(&mut out, i);
        }
    }
    out
}

fn table(out: &mut String, r: &NightlyReport) {
    out.push_str(
        "| Image | Status | Version | Time | Layers rebuilt | Package changes | Boot | Artifacts |\n\
         |---|---|---|--:|---|--:|--:|---|\n",
    );
    for i in &r.images {
        let layers = if i.layers_rebuilt.is_empty() {
            "none".to_string()
        } else {
            format!(
                "{} ({})",
                i.layers_rebuilt.len(),
                md_text(&i.layers_rebuilt.join(", "))
            )
        };
        let artifacts = i
            .artifacts
            .iter()
            .map(|a| format!("{} {}", a.format, text::bytes(a.size)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            md_text(&i.image),
            md_text(&text::status_words(i)),
            i.version
                .as_deref()
                .map(md_text)
                .unwrap_or_else(|| "-".into()),
            text::secs(text::image_secs(i)),
            layers,
            i.package_changes.len(),
            i.boot_secs.map(text::secs).unwrap_or_else(|| "-".into()),
            if artifacts.is_empty() {
                "-".into()
            } else {
                artifacts
            },
        );
    }
}

fn failure(out: &mut String, i: &ImageReport) {
    let stage = i.failed_stage.as_deref().unwrap_or("nightly");
    let what = if i.status == ImageStatus::Skipped {
        "Skipped"
    } else {
        "Failed"
    };
    let _ = writeln!(
        out,
        "\n### {what}: {} at {}\n",
        md_text(&i.image),
        md_text(stage)
    );
    if let Some(st) = i.stages.iter().find(|s| s.stage == stage) {
        if !st.detail.is_empty() {
            let _ = writeln!(out, "{}\n", md_text(&st.detail));
        }
        if st.attempts > 1 {
            let _ = writeln!(out, "Attempts: {}\n", st.attempts);
        }
    }
    if let Some(err) = &i.error {
        let (tail, cut) = text::tail(&text::clean(err), ERROR_LINES, ERROR_CHARS);
        if cut > 0 {
            let _ = writeln!(
                out,
                "The last lines of the error ({cut} earlier lines in `report.json`):\n"
            );
        }
        out.push_str(&fenced(&tail));
    }
    if let Some(log) = &i.console_log {
        let _ = writeln!(out, "\nConsole log: {} (in the report folder)", code(log));
    }
}

fn what_changed(out: &mut String, i: &ImageReport) {
    let version = i
        .version
        .as_deref()
        .map(|v| format!(" {}", code(v)))
        .unwrap_or_default();
    let _ = writeln!(out, "\n#### {}{version}\n", md_text(&i.image));
    for c in &i.changes {
        let mut why = Vec::new();
        if !c.inputs.is_empty() {
            let inputs: Vec<String> = c.inputs.iter().map(|s| code(s)).collect();
            why.push(format!("inputs changed: {}", inputs.join(", ")));
        }
        if !c.packages.is_empty() {
            let mut moved: Vec<String> = c
                .packages
                .iter()
                .take(MAX_LAYER_PACKAGES)
                .map(package_md)
                .collect();
            if c.packages.len() > MAX_LAYER_PACKAGES {
                moved.push(format!(
                    "and {} more",
                    c.packages.len() - MAX_LAYER_PACKAGES
                ));
            }
            why.push(format!("packages moved upstream: {}", moved.join(", ")));
        }
        if why.is_empty() {
            why.push("rebuilt".into());
        }
        let _ = writeln!(out, "- layer {}: {}", code(&c.layer), why.join("; "));
    }
    if !i.package_changes.is_empty() {
        if !i.changes.is_empty() {
            out.push('\n');
        }
        out.push_str("Packages changed since the previous version:\n\n");
        for p in i.package_changes.iter().take(MAX_PACKAGES) {
            let _ = writeln!(out, "- {}", package_md(p));
        }
        if i.package_changes.len() > MAX_PACKAGES {
            let _ = writeln!(
                out,
                "- … and {} more (see `report.json`)",
                i.package_changes.len() - MAX_PACKAGES
            );
        }
    }
}

/// `openssl` `3.0.15-1~deb12u1` → `3.0.17-1~deb12u2` (code spans: versions hold `~`).
fn package_md(p: &PackageChange) -> String {
    match text::package_move(p) {
        Move::Changed(o, n) => format!("{} {} → {}", code(&p.name), code(o), code(n)),
        Move::Added(n) => format!("{} (added) {}", code(&p.name), code(n)),
        Move::Removed(o) => format!("{} (removed) {}", code(&p.name), code(o)),
        Move::Unknown => code(&p.name),
    }
}

/// Text in running Markdown or a table cell: one line, Markdown punctuation escaped so a
/// name cannot open a link, a code span or a table cell, and `<`/`>` as entities so it
/// cannot become HTML. `~` is escaped because GitHub strikes through `~text~`.
pub fn md_text(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in text::clean(s).chars() {
        match c {
            '\n' | '\t' => o.push(' '),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '~' | '#' | '!' => {
                o.push('\\');
                o.push(c);
            }
            c => o.push(c),
        }
    }
    o
}

/// An inline code span whose delimiter is longer than any backtick run inside it.
/// Not for table cells (a `|` would still split the cell there).
pub fn code(s: &str) -> String {
    let s = text::clean(s).replace(['\n', '\t'], " ");
    let ticks = "`".repeat(longest_backtick_run(&s) + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{ticks}{pad}{s}{pad}{ticks}")
}

/// A fenced code block that the content cannot close early.
fn fenced(s: &str) -> String {
    let fence = "`".repeat((longest_backtick_run(s) + 1).max(3));
    format!("{fence}text\n{s}\n{fence}\n")
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(md_text("a|b <i>"), "a\\|b &lt;i&gt;");
        assert_eq!(md_text("1.0-1~deb12u1"), "1.0-1\\~deb12u1");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
        assert_eq!(fenced("x\n````\ny"), "`````text\nx\n````\ny\n`````\n");
    }
}
