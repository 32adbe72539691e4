//! The nightly report forms, checked with programs we did not write: JUnit XML with PyPI
//! junitparser, the Prometheus textfile with PyPI prometheus_client, summary.md with a
//! GitHub-flavoured Markdown parser, and index.html in a real headless Chromium (DOM,
//! screenshot, console).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use goldsmith::artifact::{LayerChange, PackageChange};
use goldsmith::recipe::Format;
use goldsmith::report::model::{
    ArtifactSize, ImageReport, ImageStatus, NightlyReport, StageReport, StageStatus, REPORT_SCHEMA,
    STAGES,
};
use goldsmith::report::{self, write_all};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Synthetic runs

const RUN: &str = "20250106T020000Z";
const ERROR: &str = "verify web: boot check failed after 2 attempts\n\
    check `http`: curl http://10.0.2.15/ returned 503\n\
    \x1b[31mweb-app.service: Failed with result 'exit-code'.\x1b[0m\n\
    last console line: [  OK  ] Reached target multi-user.target";

fn stage(name: &str, status: StageStatus, secs: f64, detail: &str) -> StageReport {
    StageReport {
        stage: name.into(),
        status,
        secs,
        detail: detail.into(),
        attempts: 1,
    }
}

fn pkg(name: &str, old: Option<&str>, new: Option<&str>) -> PackageChange {
    PackageChange {
        name: name.into(),
        old: old.map(Into::into),
        new: new.map(Into::into),
    }
}

/// An image that went through every stage.
fn published(name: &str, build: f64, boot: f64) -> ImageReport {
    ImageReport {
        image: name.into(),
        status: ImageStatus::Published,
        failed_stage: None,
        error: None,
        version: Some("2025.01.06-1".into()),
        channel: "stable".into(),
        content_digest: Some(format!("sha256:{}", "ab".repeat(32))),
        stages: vec![
            stage("build", StageStatus::Passed, build, "2 layers rebuilt"),
            stage("verify", StageStatus::Passed, 30.0, "4 checks passed"),
            stage("publish", StageStatus::Passed, 4.0, "version 2025.01.06-1"),
            stage("rollout", StageStatus::Passed, 0.5, "2 events"),
        ],
        layers_rebuilt: if name == "base" {
            vec!["base".into()]
        } else {
            vec!["base".into(), name.into()]
        },
        changes: vec![LayerChange {
            layer: "base".into(),
            inputs: vec!["files/etc/motd".into()],
            packages: vec![pkg(
                "openssl",
                Some("3.0.15-1~deb12u1"),
                Some("3.0.17-1~deb12u2"),
            )],
        }],
        package_changes: vec![
            pkg(
                "openssl",
                Some("3.0.15-1~deb12u1"),
                Some("3.0.17-1~deb12u2"),
            ),
            pkg("curl", None, Some("7.88.1-10+deb12u12")),
            pkg("telnet", Some("0.17+2.4-2"), None),
        ],
        artifacts: vec![
            ArtifactSize {
                format: Format::Qcow2,
                size: 512 << 20,
            },
            ArtifactSize {
                format: Format::Raw,
                size: 2 << 30,
            },
        ],
        boot_secs: Some(boot),
        console_log: None,
        rollout_events: 2,
    }
}

/// An image whose verify failed (after a retry); publish and rollout skipped.
fn failed_at_verify(name: &str) -> ImageReport {
    let mut i = published(name, 80.0, 0.0);
    i.status = ImageStatus::Failed;
    i.failed_stage = Some("verify".into());
    i.error = Some(ERROR.into());
    i.version = None;
    i.stages = vec![
        stage("build", StageStatus::Passed, 80.0, "1 layer rebuilt"),
        StageReport {
            attempts: 2,
            ..stage(
                "verify",
                StageStatus::Failed,
                45.0,
                "boot check http failed",
            )
        },
        stage("publish", StageStatus::Skipped, 0.0, "verify failed"),
        stage("rollout", StageStatus::Skipped, 0.0, "verify failed"),
    ];
    i.layers_rebuilt = vec![name.into()];
    i.changes = vec![];
    i.package_changes = vec![];
    i.boot_secs = None;
    i.console_log = Some(format!("logs/{name}-console.log"));
    i.rollout_events = 0;
    i
}

fn run(run_id: &str, images: Vec<ImageReport>) -> NightlyReport {
    let failed = images.iter().any(|i| !i.status.is_success());
    NightlyReport {
        schema: REPORT_SCHEMA,
        run_id: run_id.into(),
        started: format!(
            "{}-{}-{}T02:00:00Z",
            &run_id[..4],
            &run_id[4..6],
            &run_id[6..8]
        ),
        finished: format!(
            "{}-{}-{}T02:05:30Z",
            &run_id[..4],
            &run_id[4..6],
            &run_id[6..8]
        ),
        duration_secs: 330.0,
        goldsmith_version: "0.1.0".into(),
        host: "builder-1".into(),
        exit_code: i32::from(failed),
        cancelled: None,
        images,
    }
}

/// This run: `base` published, `web` failed at verify.
fn current() -> NightlyReport {
    run(
        RUN,
        vec![published("base", 75.0, 9.5), failed_at_verify("web")],
    )
}

/// Five earlier runs where both images were published.
fn history() -> Vec<NightlyReport> {
    (1..=5)
        .map(|d| {
            let f = d as f64;
            run(
                &format!("202501{d:02}T020000Z"),
                vec![
                    published("base", 60.0 + 5.0 * f, 8.0 + 0.5 * f),
                    published("web", 90.0 - 3.0 * f, 11.0 + f),
                ],
            )
        })
        .collect()
}

/// Write the report of `r` into a fresh folder, with the console logs it links to.
fn written(r: &NightlyReport, history: &[NightlyReport]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    for i in &r.images {
        if let Some(log) = &i.console_log {
            let p = dir.path().join(log);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "[    0.000000] Linux version 6.1.0\nlogin: \n").unwrap();
        }
    }
    let paths = write_all(r, history, dir.path()).unwrap();
    (dir, paths)
}

// ---------------------------------------------------------------------------------------
// Programs that check the outputs

/// Run a Python snippet that prints JSON.
fn python(script: &str, args: &[&Path]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const JUNITPARSER: &str = r#"
import sys, json
from junitparser import JUnitXml, TestSuite
x = JUnitXml.fromfile(sys.argv[1])
suites = [x] if isinstance(x, TestSuite) else list(x)
cases = []
for s in suites:
    for c in s:
        cases.append({"classname": c.classname, "name": c.name, "time": c.time,
                      "results": [[type(r).__name__, r.message, r.text] for r in c.result]})
print(json.dumps({"suites": len(suites), "tests": sum(s.tests for s in suites),
                  "failures": sum(s.failures for s in suites), "cases": cases}))
"#;

const PROM_PARSER: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
fams = text_string_to_metric_families(open(sys.argv[1], encoding="utf-8").read())
print(json.dumps([{"name": f.name, "type": f.type, "help": f.documentation,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]} for f in fams]))
"#;

/// What Chromium made of a page.
struct Chromium {
    stdout: String,
    /// Console messages and uncaught exceptions the page caused.
    console: Vec<String>,
}

/// Load `page` in headless Chromium with `extra` arguments (a fresh profile each time).
fn chromium(page: &Path, extra: &[&str]) -> Chromium {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .args(["-k", "10", "120", "/usr/bin/chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    // Chromium exits 0 even when the page is broken: the caller checks what it made.
    assert!(out.status.success(), "chromium: {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    Chromium {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        console: stderr
            .lines()
            .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
            .map(str::to_string)
            .collect(),
    }
}

fn dump_dom(page: &Path) -> (scraper::Html, Vec<String>) {
    let c = chromium(page, &["--dump-dom"]);
    assert!(
        c.stdout.contains("</html>"),
        "no DOM from chromium: {}",
        c.stdout
    );
    (scraper::Html::parse_document(&c.stdout), c.console)
}

/// Screenshot statistics: distinct colours, share of non-white pixels, and how many
/// pixels are close to each of `colours`.
struct Shot {
    distinct: usize,
    non_white: f64,
    near: Vec<usize>,
    console: Vec<String>,
}

fn screenshot(page: &Path, colours: &[[u8; 3]]) -> Shot {
    let dir = tempfile::tempdir().unwrap();
    let png_path = dir.path().join("shot.png");
    let c = chromium(
        page,
        &[
            &format!("--screenshot={}", png_path.display()),
            "--window-size=1200,900",
            "--hide-scrollbars",
        ],
    );
    let file = std::fs::File::open(&png_path).expect("chromium wrote the screenshot");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let step = info.color_type.samples();
    assert!(step >= 3, "unexpected colour type {:?}", info.color_type);
    assert_eq!((info.width, info.height), (1200, 900));
    let mut distinct = HashSet::new();
    let mut non_white = 0usize;
    let mut near = vec![0; colours.len()];
    let px = &buf[..info.buffer_size()];
    for p in px.chunks_exact(step) {
        let rgb = [p[0], p[1], p[2]];
        distinct.insert(rgb);
        if rgb.iter().any(|&v| v < 245) {
            non_white += 1;
        }
        for (n, c) in colours.iter().enumerate() {
            if rgb.iter().zip(c).all(|(a, b)| a.abs_diff(*b) <= 24) {
                near[n] += 1;
            }
        }
    }
    Shot {
        distinct: distinct.len(),
        non_white: non_white as f64 / (px.len() / step) as f64,
        near,
        console: c.console,
    }
}

fn sel(s: &str) -> scraper::Selector {
    scraper::Selector::parse(s).unwrap()
}

/// The `data-series` polylines of one chart and their number of points.
fn polylines(dom: &scraper::Html, chart: &str) -> BTreeMap<String, usize> {
    let svg = dom
        .select(&sel(&format!("svg.chart[data-chart=\"{chart}\"]")))
        .next()
        .unwrap_or_else(|| panic!("no {chart} chart"));
    svg.select(&sel("polyline[data-series]"))
        .map(|p| {
            let points = p.value().attr("points").unwrap_or("");
            for xy in points.split_whitespace() {
                let (x, y) = xy.split_once(',').expect("x,y");
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!(
                    (0.0..=600.0).contains(&x) && (0.0..=240.0).contains(&y),
                    "{xy}"
                );
            }
            (
                p.value().attr("data-series").unwrap().to_string(),
                points.split_whitespace().count(),
            )
        })
        .collect()
}

fn image_rows(dom: &scraper::Html) -> Vec<(String, String)> {
    dom.select(&sel("tr.image-row"))
        .map(|r| {
            (
                r.value().attr("data-image").unwrap().to_string(),
                r.value().attr("data-status").unwrap().to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn write_all_writes_every_form_atomically_and_report_json_round_trips() {
    let r = current();
    let (dir, paths) = written(&r, &history());
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "summary.md",
            "junit.xml",
            "index.html",
            "goldsmith.prom",
            "report.json"
        ]
    );
    for p in &paths {
        assert_eq!(p.parent().unwrap(), dir.path());
        assert!(std::fs::metadata(p).unwrap().len() > 100, "{}", p.display());
    }
    let back: NightlyReport =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(back, r);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn load_history_reads_the_newest_readable_runs_oldest_first() {
    let root = tempfile::tempdir().unwrap();
    for h in history() {
        write_all(&h, &[], &root.path().join(&h.run_id)).unwrap();
    }
    // A run killed before its report, a corrupt report, and folders that are no runs.
    std::fs::create_dir_all(root.path().join("20250107T020000Z")).unwrap();
    std::fs::create_dir_all(root.path().join("20250108T020000Z")).unwrap();
    std::fs::write(root.path().join("20250108T020000Z/report.json"), "{ nope").unwrap();
    std::fs::create_dir_all(root.path().join("latest")).unwrap();
    std::fs::write(
        root.path().join("latest/report.json"),
        serde_json::to_vec(&current()).unwrap(),
    )
    .unwrap();
    std::fs::write(root.path().join("20250109T020000Z"), "a file").unwrap();

    let all = report::load_history(root.path(), 30);
    let ids: Vec<&str> = all.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "20250101T020000Z",
            "20250102T020000Z",
            "20250103T020000Z",
            "20250104T020000Z",
            "20250105T020000Z"
        ]
    );
    assert_eq!(all, history());
    let last3: Vec<String> = report::load_history(root.path(), 3)
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(
        last3,
        ["20250103T020000Z", "20250104T020000Z", "20250105T020000Z"]
    );
    assert!(report::load_history(&root.path().join("missing"), 30).is_empty());
    assert!(report::load_history(root.path(), 0).is_empty());
}

#[test]
fn junit_parses_with_one_failure_per_failed_stage() {
    let (dir, _) = written(&current(), &history());
    let v = python(JUNITPARSER, &[&dir.path().join("junit.xml")]);
    assert_eq!(v["suites"], 1);
    assert_eq!(v["tests"], 8, "{v}");
    assert_eq!(v["failures"], 1, "{v}");
    let cases = v["cases"].as_array().unwrap();
    let mut seen = Vec::new();
    for c in cases {
        let key = format!(
            "{}/{}",
            c["classname"].as_str().unwrap(),
            c["name"].as_str().unwrap()
        );
        let results: Vec<&str> = c["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_str().unwrap())
            .collect();
        seen.push((key, results));
    }
    let expect = |image: &str, stage: &str, results: &[&str]| {
        let key = format!("goldsmith.{image}/{stage}");
        let got = seen
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no {key}"));
        assert_eq!(got.1, results, "{key}");
    };
    for st in STAGES {
        expect("base", st, &[]);
    }
    expect("web", "build", &[]);
    expect("web", "verify", &["Failure"]);
    expect("web", "publish", &["Skipped"]);
    expect("web", "rollout", &["Skipped"]);

    let verify = cases
        .iter()
        .find(|c| c["classname"] == "goldsmith.web" && c["name"] == "verify")
        .unwrap();
    assert_eq!(verify["time"].as_f64().unwrap(), 45.0);
    let failure = &verify["results"][0];
    assert_eq!(failure[1], "verify web: boot check failed after 2 attempts");
    let body = failure[2].as_str().unwrap();
    assert!(
        body.contains("curl http://10.0.2.15/ returned 503"),
        "{body}"
    );
    // Terminal colours from the console are gone; XML 1.0 has no place for ESC.
    assert!(body.contains("web-app.service: Failed with result 'exit-code'."));
    assert!(!body.contains('\x1b'));
}

#[test]
fn junit_keeps_a_failure_that_no_stage_carries() {
    // The image failed before any stage (say, planning): the XML must still say so.
    let mut i = failed_at_verify("db");
    i.failed_stage = Some("plan".into());
    i.error = Some("layer db: recipe error <bad> & \u{0}worse".into());
    for s in &mut i.stages {
        *s = stage(&s.stage, StageStatus::Skipped, 0.0, "plan failed");
    }
    let (dir, _) = written(&run(RUN, vec![i]), &[]);
    let v = python(JUNITPARSER, &[&dir.path().join("junit.xml")]);
    assert_eq!(v["tests"], 5, "{v}");
    assert_eq!(v["failures"], 1, "{v}");
    let plan = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "plan")
        .unwrap();
    assert_eq!(plan["results"][0][0], "Failure");
    assert_eq!(
        plan["results"][0][1],
        "layer db: recipe error <bad> & \u{fffd}worse"
    );
}

#[test]
fn summary_names_the_failure_and_its_stage_and_is_valid_gfm() {
    let (dir, _) = written(&current(), &history());
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(
        md.contains("**1 published, 0 unchanged, 1 failed** in 5m 30s"),
        "{md}"
    );
    assert!(md.contains("### Failed: web at verify"), "{md}");
    assert!(md.contains("Attempts: 2"), "{md}");
    assert!(md.contains("Console log: `logs/web-console.log`"), "{md}");
    assert!(
        md.contains("- `openssl` `3.0.15-1~deb12u1` → `3.0.17-1~deb12u2`"),
        "{md}"
    );
    assert!(md.contains("- `curl` (added) `7.88.1-10+deb12u12`"), "{md}");
    assert!(
        md.contains(
            "- layer `base`: inputs changed: `files/etc/motd`; packages moved upstream: \
             `openssl` `3.0.15-1~deb12u1` → `3.0.17-1~deb12u2`"
        ),
        "{md}"
    );

    let gfm = parse_gfm(&md);
    assert_eq!(
        gfm.rows.len(),
        3,
        "header + one row per image: {:?}",
        gfm.rows
    );
    assert!(gfm.rows.iter().all(|r| r.len() == 8), "{:?}", gfm.rows);
    assert_eq!(gfm.rows[1][0], "base");
    assert_eq!(gfm.rows[1][1], "published");
    assert_eq!(gfm.rows[1][2], "2025.01.06-1");
    assert_eq!(gfm.rows[1][5], "3");
    assert_eq!(gfm.rows[2][0], "web");
    assert_eq!(gfm.rows[2][1], "failed at verify");
    assert_eq!(gfm.code_blocks.len(), 1);
    assert!(gfm.code_blocks[0].contains("curl http://10.0.2.15/ returned 503"));
    assert!(
        gfm.html.is_empty(),
        "raw HTML in the summary: {:?}",
        gfm.html
    );
}

/// What a GitHub-flavoured Markdown parser sees: table rows (cell texts), code blocks,
/// and raw HTML.
struct Gfm {
    rows: Vec<Vec<String>>,
    code_blocks: Vec<String>,
    html: Vec<String>,
}

fn parse_gfm(md: &str) -> Gfm {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    let mut g = Gfm {
        rows: vec![],
        code_blocks: vec![],
        html: vec![],
    };
    let (mut in_cell, mut in_code) = (false, false);
    let opts = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    for ev in Parser::new_ext(md, opts) {
        match ev {
            Event::Start(Tag::TableHead) | Event::Start(Tag::TableRow) => g.rows.push(vec![]),
            Event::Start(Tag::TableCell) => {
                in_cell = true;
                g.rows.last_mut().unwrap().push(String::new());
            }
            Event::End(TagEnd::TableCell) => in_cell = false,
            Event::Start(Tag::CodeBlock(_)) => {
                in_code = true;
                g.code_blocks.push(String::new());
            }
            Event::End(TagEnd::CodeBlock) => in_code = false,
            Event::Start(Tag::Strikethrough) => g.html.push("strikethrough".into()),
            Event::Html(h) | Event::InlineHtml(h) => g.html.push(h.to_string()),
            Event::Text(t) | Event::Code(t) => {
                if in_cell {
                    g.rows.last_mut().unwrap().last_mut().unwrap().push_str(&t);
                }
                if in_code {
                    g.code_blocks.last_mut().unwrap().push_str(&t);
                }
            }
            _ => {}
        }
    }
    g
}

#[test]
fn prometheus_textfile_parses_with_the_values() {
    let r = current();
    let (dir, _) = written(&r, &history());
    let path = dir.path().join("goldsmith.prom");
    let v = python(PROM_PARSER, &[&path]);
    let mut samples: BTreeMap<String, f64> = BTreeMap::new();
    for fam in v.as_array().unwrap() {
        assert_eq!(fam["type"], "gauge", "{fam}");
        assert!(!fam["help"].as_str().unwrap().is_empty());
        for s in fam["samples"].as_array().unwrap() {
            let labels: BTreeMap<String, String> = serde_json::from_value(s[1].clone()).unwrap();
            let key = format!("{}{labels:?}", s[0].as_str().unwrap());
            assert!(samples.insert(key, s[2].as_f64().unwrap()).is_none());
        }
    }
    let get = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        samples.get(&format!("{name}{l:?}")).copied()
    };
    assert_eq!(
        get("goldsmith_nightly_success", &[("image", "base")]),
        Some(1.0)
    );
    assert_eq!(
        get("goldsmith_nightly_success", &[("image", "web")]),
        Some(0.0)
    );
    let dur = "goldsmith_stage_duration_seconds";
    assert_eq!(
        get(dur, &[("image", "base"), ("stage", "build")]),
        Some(75.0)
    );
    assert_eq!(
        get(dur, &[("image", "web"), ("stage", "verify")]),
        Some(45.0)
    );
    assert_eq!(get(dur, &[("image", "web"), ("stage", "publish")]), None);
    let size = "goldsmith_artifact_size_bytes";
    assert_eq!(
        get(size, &[("image", "base"), ("format", "raw")]),
        Some((2u64 << 30) as f64)
    );
    assert_eq!(
        get("goldsmith_boot_seconds", &[("image", "base")]),
        Some(9.5)
    );
    assert_eq!(get("goldsmith_boot_seconds", &[("image", "web")]), None);
    let finished = chrono::DateTime::parse_from_rfc3339(&r.finished)
        .unwrap()
        .timestamp() as f64;
    assert_eq!(
        get("goldsmith_nightly_last_run_timestamp_seconds", &[]),
        Some(finished)
    );
    assert_eq!(get("goldsmith_nightly_duration_seconds", &[]), Some(330.0));

    // The text format wants one HELP and TYPE per family and its samples together
    // (node_exporter rejects a file otherwise); the Python parser is lenient there.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut families: Vec<&str> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        if families.last() != Some(&name) {
            assert!(!families.contains(&name), "{name} is split:\n{text}");
            families.push(name);
        }
    }
    for f in &families {
        assert_eq!(text.matches(&format!("# TYPE {f} gauge\n")).count(), 1);
        assert_eq!(text.matches(&format!("# HELP {f} ")).count(), 1);
    }
}

#[test]
fn hostile_names_and_errors_are_escaped_in_every_form() {
    let evil = "<script>alert(1)</script>";
    let quoted = "a\"b\\c|d";
    let mut bad = failed_at_verify(evil);
    bad.error = Some(
        "</pre><script>alert(2)</script><img src=x onerror=alert(3)>\n```\nnot code\n```".into(),
    );
    bad.console_log = Some("javascript:alert(4)".into());
    let mut odd = published(quoted, 10.0, 1.0);
    odd.version = Some("1|2 <b>x</b>".into());
    let r = run(RUN, vec![bad, odd]);
    let (dir, _) = written(&r, &[]);

    // HTML: nothing executable came through, and the names read back exactly.
    let page = dir.path().join("index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.to_lowercase().contains("<script"), "{html}");
    assert!(!html.contains("<img"));
    let (dom, console) = dump_dom(&page);
    assert!(console.is_empty(), "console: {console:?}");
    assert_eq!(dom.select(&sel("script")).count(), 0);
    assert_eq!(dom.select(&sel("img, [onerror]")).count(), 0);
    assert_eq!(
        image_rows(&dom),
        [
            (evil.to_string(), "failed".to_string()),
            (quoted.to_string(), "published".to_string())
        ]
    );
    let pre: String = dom
        .select(&sel("pre.error"))
        .next()
        .unwrap()
        .text()
        .collect();
    assert!(pre.starts_with("</pre><script>alert(2)</script>"), "{pre}");
    for a in dom.select(&sel("a[href]")) {
        let href = a.value().attr("href").unwrap();
        assert!(!href.to_lowercase().starts_with("javascript:"), "{href}");
    }

    // Markdown: no raw HTML, the table keeps its shape, the fence is not closed early.
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    let gfm = parse_gfm(&md);
    assert!(gfm.html.is_empty(), "{:?}\n{md}", gfm.html);
    assert_eq!(gfm.rows.len(), 3, "{md}");
    assert!(gfm.rows.iter().all(|r| r.len() == 8), "{:?}", gfm.rows);
    assert_eq!(gfm.rows[1][0], evil);
    assert_eq!(gfm.rows[2][0], quoted);
    assert_eq!(gfm.rows[2][2], "1|2 <b>x</b>");
    assert_eq!(gfm.code_blocks.len(), 1, "{md}");
    assert!(gfm.code_blocks[0].ends_with("```\nnot code\n```\n"), "{md}");

    // JUnit and Prometheus: the names come back exactly from real parsers.
    let v = python(JUNITPARSER, &[&dir.path().join("junit.xml")]);
    assert_eq!(v["failures"], 1);
    assert_eq!(v["cases"][0]["classname"], format!("goldsmith.{evil}"));
    let fams = python(PROM_PARSER, &[&dir.path().join("goldsmith.prom")]);
    let images: HashSet<String> = fams[0]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[1]["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fams[0]["name"], "goldsmith_nightly_success");
    assert_eq!(
        images,
        HashSet::from([evil.to_string(), quoted.to_string()])
    );
}

#[test]
fn html_report_in_headless_chromium() {
    let r = current();
    // The current run may already be in the history (its folder is a sibling): it must
    // be counted once.
    let mut hist = history();
    hist.push(r.clone());
    let (dir, _) = written(&r, &hist);
    let page = dir.path().join("index.html");

    let (dom, console) = dump_dom(&page);
    assert!(console.is_empty(), "console messages: {console:?}");
    assert_eq!(
        image_rows(&dom),
        [
            ("base".to_string(), "published".to_string()),
            ("web".to_string(), "failed".to_string())
        ]
    );
    assert_eq!(dom.select(&sel("svg.chart")).count(), 2);
    assert_eq!(
        polylines(&dom, "build"),
        BTreeMap::from([("build-base".into(), 6), ("build-web".into(), 6)])
    );
    // web failed before its boot this time: five points from earlier runs.
    assert_eq!(
        polylines(&dom, "boot"),
        BTreeMap::from([("boot-base".into(), 6), ("boot-web".into(), 5)])
    );
    // The failed image shows its stage, error, and a working link to its console log.
    let failure = dom
        .select(&sel("details[data-image=\"web\"] p.failure"))
        .next()
        .expect("failure of web");
    assert_eq!(failure.value().attr("data-stage"), Some("verify"));
    let link = dom
        .select(&sel("details[data-image=\"web\"] a.console-log"))
        .next()
        .expect("console log link");
    assert_eq!(link.value().attr("href"), Some("logs/web-console.log"));
    // Offline: no scripts, nothing loaded from elsewhere, every link resolves.
    assert_eq!(dom.select(&sel("script, [src]")).count(), 0);
    for l in dom.select(&sel("link[href]")) {
        assert!(l.value().attr("href").unwrap().starts_with("data:"));
    }
    for a in dom.select(&sel("a[href]")) {
        let href = a.value().attr("href").unwrap();
        match href.strip_prefix('#') {
            Some(id) => assert_eq!(
                dom.select(&sel(&format!("[id=\"{id}\"]"))).count(),
                1,
                "{href}"
            ),
            None => assert!(dir.path().join(href).is_file(), "dead link {href}"),
        }
    }
    let packages: Vec<String> = dom
        .select(&sel("details[data-image=\"base\"] table.packages tbody tr"))
        .map(|tr| tr.text().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(packages.len(), 3);
    assert!(packages[0].contains("openssl 3.0.15-1~deb12u1 3.0.17-1~deb12u2"));

    // The screenshot shows a page, and the two chart lines in their colours.
    let shot = screenshot(&page, &[[0x00, 0x72, 0xb2], [0xd5, 0x5e, 0x00]]);
    assert!(shot.console.is_empty(), "console: {:?}", shot.console);
    assert!(shot.distinct > 50, "{} colours", shot.distinct);
    assert!(shot.non_white > 0.03, "{:.3} non-white", shot.non_white);
    assert!(
        shot.near[0] > 300 && shot.near[1] > 300,
        "series pixels {:?}",
        shot.near
    );
}

#[test]
fn html_report_without_history_renders() {
    let (dir, _) = written(&current(), &[]);
    let (dom, console) = dump_dom(&dir.path().join("index.html"));
    assert!(console.is_empty(), "console: {console:?}");
    assert_eq!(image_rows(&dom).len(), 2);
    assert_eq!(
        polylines(&dom, "build"),
        BTreeMap::from([("build-base".into(), 1), ("build-web".into(), 1)])
    );
    assert_eq!(
        polylines(&dom, "boot"),
        BTreeMap::from([("boot-base".into(), 1)])
    );
    // A run with no image at all still makes a page with empty charts.
    let (dir, _) = written(&run(RUN, vec![]), &[]);
    let (dom, console) = dump_dom(&dir.path().join("index.html"));
    assert!(console.is_empty(), "console: {console:?}");
    assert!(image_rows(&dom).is_empty());
    assert_eq!(dom.select(&sel("svg.chart text.empty")).count(), 2);
}

#[test]
fn chromium_checks_catch_a_broken_page() {
    // The checks above must be able to fail: a page that throws and shows nothing.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("broken.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>x</title></head>\
         <body><script>throw new Error('kaput')</script></body></html>",
    )
    .unwrap();
    let (dom, console) = dump_dom(&page);
    assert!(image_rows(&dom).is_empty());
    assert!(
        console.iter().any(|l| l.contains("Uncaught Error: kaput")),
        "{console:?}"
    );
    let shot = screenshot(&page, &[[0x00, 0x72, 0xb2]]);
    assert!(shot.distinct <= 2, "{} colours", shot.distinct);
    assert!(shot.non_white < 0.001);
    assert_eq!(shot.near[0], 0);
}

#[test]
fn cancelled_run_with_unchanged_and_skipped_images() {
    let mut base = published("base", 1.2, 9.0);
    base.status = ImageStatus::Unchanged;
    base.changes.clear();
    base.package_changes.clear();
    base.layers_rebuilt.clear();
    base.boot_secs = None;
    base.rollout_events = 0;
    for s in &mut base.stages[1..] {
        *s = stage(&s.stage, StageStatus::Skipped, 0.0, "nothing changed");
    }
    let mut web = published("web", 0.0, 0.0);
    web.status = ImageStatus::Skipped;
    web.failed_stage = Some("build".into());
    web.version = None;
    web.boot_secs = None;
    web.artifacts.clear();
    web.changes.clear();
    web.package_changes.clear();
    web.layers_rebuilt.clear();
    for s in &mut web.stages {
        *s = stage(&s.stage, StageStatus::Skipped, 0.0, "cancelled by SIGTERM");
    }
    let mut r = run(RUN, vec![base, web]);
    r.exit_code = 143;
    r.cancelled = Some("SIGTERM".into());
    let (dir, _) = written(&r, &history());

    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(
        md.starts_with("## goldsmith nightly 20250106T020000Z: cancelled\n"),
        "{md}"
    );
    assert!(
        md.contains("**0 published, 1 unchanged, 0 failed, 1 skipped**"),
        "{md}"
    );
    assert!(md.contains("The run was cancelled by SIGTERM."), "{md}");
    assert!(md.contains("### Skipped: web at build"), "{md}");
    assert!(!md.contains("### What changed"), "{md}");

    let v = python(JUNITPARSER, &[&dir.path().join("junit.xml")]);
    assert_eq!(
        (v["tests"].as_u64(), v["failures"].as_u64()),
        (Some(8), Some(0))
    );

    let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
    let dom = scraper::Html::parse_document(&html);
    assert_eq!(
        image_rows(&dom),
        [
            ("base".to_string(), "unchanged".to_string()),
            ("web".to_string(), "skipped".to_string())
        ]
    );
    assert!(html.contains("Cancelled by SIGTERM."));
    // The unchanged image's cached build counts in the chart; the skipped one's does not.
    assert_eq!(
        polylines(&dom, "build"),
        BTreeMap::from([("build-base".into(), 6), ("build-web".into(), 5)])
    );

    let prom = std::fs::read_to_string(dir.path().join("goldsmith.prom")).unwrap();
    assert!(prom.contains("goldsmith_nightly_success{image=\"base\"} 1\n"));
    assert!(prom.contains("goldsmith_nightly_success{image=\"web\"} 0\n"));
    assert!(!prom.contains("image=\"web\",stage="), "{prom}");
}
