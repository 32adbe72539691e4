//! Line charts as inline SVG, drawn here so the report page renders offline and without
//! JavaScript: one polyline per series over the last nightlies, point markers with
//! native tooltips (`<title>`), a y axis in seconds and run dates on the x axis.

use std::fmt::Write;

use handlebars::html_escape as esc;

use crate::report::text;

// The size the chart is drawn at on a laptop screen (two charts side by side), so that
// 11px text stays 11px.
const W: f64 = 600.0;
const H: f64 = 240.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 32.0;
/// At most this many run labels on the x axis; the rest are in the point tooltips.
const X_LABELS: usize = 8;

/// Colours that stay apart for colour-blind readers (Okabe–Ito, without the yellow that
/// vanishes on white); past them, series repeat a colour with a dash pattern.
const COLOURS: [&str; 7] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000",
];
const DASHES: [&str; 3] = ["", "6 3", "2 3"];

/// How series number `n` is drawn: its colour and dash pattern.
pub fn style(n: usize) -> (&'static str, &'static str) {
    (
        COLOURS[n % COLOURS.len()],
        DASHES[(n / COLOURS.len()) % DASHES.len()],
    )
}

/// One line: a name and a value per run (None where the run has no value).
pub struct Series {
    /// `data-series` hook, e.g. `build-web`.
    pub key: String,
    /// Shown in tooltips.
    pub label: String,
    /// Index into the palette (stable per image across charts).
    pub style: usize,
    /// One entry per run, oldest first.
    pub values: Vec<Option<f64>>,
}

/// Render one chart. `kind` becomes `data-chart`; `runs` are run ids, oldest first.
pub fn render(kind: &str, title: &str, runs: &[String], series: &[Series]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" data-chart="{}" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{}">"#,
        esc(kind),
        esc(title)
    );
    let _ = write!(out, "<title>{}</title>", esc(title));
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let has_points = series
        .iter()
        .any(|s| s.values.iter().flatten().any(|v| v.is_finite()));
    if runs.is_empty() || !has_points {
        let _ = write!(
            out,
            r#"<text class="empty" x="{}" y="{}" text-anchor="middle">no data yet</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return out;
    }

    let (step, top) = y_scale(max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h - (v / top) * plot_h;
    let x = |i: usize| {
        if runs.len() == 1 {
            LEFT + plot_w / 2.0
        } else {
            LEFT + plot_w * i as f64 / (runs.len() - 1) as f64
        }
    };

    // Grid and y labels.
    out.push_str(r#"<g class="axis y">"#);
    let ticks = (top / step).round() as usize;
    for t in 0..=ticks {
        let v = step * t as f64;
        let yy = y(v);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            axis_label(v)
        );
    }
    out.push_str("</g>");

    // X labels: at most X_LABELS, always including the newest run.
    out.push_str(r#"<g class="axis x">"#);
    let labels = run_labels(runs);
    let max_labels = if labels.iter().any(|l| l.len() > 5) {
        X_LABELS / 2
    } else {
        X_LABELS
    };
    let stride = runs.len().div_ceil(max_labels).max(1);
    for (i, label) in labels.iter().enumerate() {
        let newest = i + 1 == runs.len();
        if !newest && (i % stride != 0 || runs.len() - 1 - i < stride) {
            continue;
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(i),
            H - BOTTOM + 18.0,
            esc(label)
        );
    }
    out.push_str("</g>");

    for s in series {
        let (colour, dash) = style(s.style);
        let pts: Vec<(usize, f64)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|v| v.is_finite()).map(|v| (i, v)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        // Runs without a value (the image failed before this stage, or did not exist
        // yet) are bridged: the markers show which runs have values.
        let points: Vec<String> = pts
            .iter()
            .map(|&(i, v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        let dash_attr = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        let _ = write!(
            out,
            r#"<polyline data-series="{}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr} points="{}"/>"#,
            esc(&s.key),
            points.join(" ")
        );
        let _ = write!(out, r#"<g data-points="{}">"#, esc(&s.key));
        for &(i, v) in &pts {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{} {}: {}</title></circle>"#,
                x(i),
                y(v),
                esc(&s.label),
                esc(&runs[i]),
                text::secs(v)
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}

/// A tick step of 1-2-5 (or whole minutes and hours for long times) and the axis top, so
/// that the axis has at most five intervals and the largest value fits.
fn y_scale(max: f64) -> (f64, f64) {
    const STEPS: [f64; 20] = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
        3600.0, 7200.0, 10800.0, 21600.0, 43200.0,
    ];
    let max = if max > 0.0 { max } else { 1.0 };
    let step = STEPS
        .iter()
        .copied()
        .find(|s| s * 5.0 >= max)
        .unwrap_or_else(|| (max / 5.0 / 3600.0).ceil() * 3600.0);
    (step, (max / step).ceil().max(1.0) * step)
}

fn axis_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 3600.0 && v % 3600.0 == 0.0 {
        format!("{}h", v / 3600.0)
    } else if v >= 3600.0 {
        format!(
            "{}h {:02}m",
            (v / 3600.0).floor(),
            ((v % 3600.0) / 60.0).round()
        )
    } else if v >= 60.0 && v % 60.0 == 0.0 {
        format!("{}m", v / 60.0)
    } else if v >= 60.0 {
        format!("{}m {:02}s", (v / 60.0).floor(), (v % 60.0).round())
    } else if v.fract() == 0.0 {
        format!("{v}s")
    } else {
        format!("{v:.1}s")
    }
}

/// Axis labels of run ids: `20250105T020000Z` → `01-05`, with the time as well
/// (`01-05 02:00`) when some day had more than one run; other ids are shown as they are.
fn run_labels(runs: &[String]) -> Vec<String> {
    let times: Vec<Option<chrono::NaiveDateTime>> = runs
        .iter()
        .map(|r| chrono::NaiveDateTime::parse_from_str(r, "%Y%m%dT%H%M%SZ").ok())
        .collect();
    let days: Vec<_> = times.iter().flatten().map(|t| t.date()).collect();
    let mut unique = days.clone();
    unique.dedup();
    let fmt = if unique.len() == days.len() {
        "%m-%d"
    } else {
        "%m-%d %H:%M"
    };
    runs.iter()
        .zip(times)
        .map(|(r, t)| {
            t.map(|t| t.format(fmt).to_string())
                .unwrap_or_else(|| r.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales() {
        assert_eq!(y_scale(0.0), (0.2, 1.0));
        assert_eq!(y_scale(9.0), (2.0, 10.0));
        assert_eq!(y_scale(61.0), (15.0, 75.0));
        assert_eq!(y_scale(700.0), (300.0, 900.0));
        assert_eq!(axis_label(120.0), "2m");
        assert_eq!(axis_label(90.0), "1m 30s");
        assert_eq!(axis_label(5400.0), "1h 30m");
        assert_eq!(axis_label(7.5), "7.5s");
        let runs = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            run_labels(&runs(&["20250105T020000Z", "20250106T020000Z", "x"])),
            ["01-05", "01-06", "x"]
        );
        assert_eq!(
            run_labels(&runs(&["20250105T020000Z", "20250105T140000Z"])),
            ["01-05 02:00", "01-05 14:00"]
        );
    }

    #[test]
    fn empty_chart_says_so() {
        let svg = render("build", "t", &[], &[]);
        assert!(svg.contains("no data yet") && !svg.contains("polyline"));
    }

    #[test]
    fn one_polyline_per_series_with_markers() {
        let runs = vec!["20250101T000000Z".to_string(), "20250102T000000Z".into()];
        let s = |k: &str, v: Vec<Option<f64>>| Series {
            key: k.into(),
            label: k.into(),
            style: 0,
            values: v,
        };
        let svg = render(
            "build",
            "Build <times>",
            &runs,
            &[
                s("build-a", vec![Some(10.0), Some(20.0)]),
                s("build-b", vec![None, Some(5.0)]),
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("Build &lt;times&gt;"));
    }
}
