//! `junit.xml`: the run as JUnit XML, the one test-report format every CI system shows.
//! One `<testsuite>` for the run, one `<testcase>` per image × stage
//! (`classname="goldsmith.<image>"`, `name="<stage>"`), a `<failure>` for each failed stage
//! and `<skipped>` for each skipped one.

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use crate::report::model::{ImageReport, ImageStatus, NightlyReport, StageReport, StageStatus};
use crate::report::text;

/// The error text in a `<failure>` body: CI systems show it whole, so it is bounded.
const ERROR_LINES: usize = 400;
const ERROR_CHARS: usize = 64 * 1024;
/// Length of the one-line `message` attribute.
const MESSAGE_CHARS: usize = 300;

/// One test case before it is written.
struct Case<'a> {
    image: &'a ImageReport,
    name: &'a str,
    secs: f64,
    outcome: Outcome,
    /// Shown as `<system-out>`: what happened, attempts, the console log.
    out: String,
}

enum Outcome {
    Passed,
    /// (message, body)
    Failed(String, String),
    Skipped(String),
}

/// Render the JUnit XML document.
pub fn render(r: &NightlyReport) -> String {
    let cases: Vec<Case> = r.images.iter().flat_map(cases).collect();
    let failures = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Failed(..)))
        .count();
    let skipped = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Skipped(_)))
        .count();
    let tests = cases.len().to_string();
    let failures = failures.to_string();
    let skipped = skipped.to_string();
    let time = seconds(r.duration_secs);
    let suite_name = format!("goldsmith nightly {}", text::clean(&r.run_id));
    let host = text::clean(&r.host);
    let started = text::clean(&r.started);
    let version = text::clean(&r.goldsmith_version);

    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail; the `?`s are for the io::Result signatures.
    let res: std::io::Result<()> = (|| {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        w.create_element("testsuites")
            .with_attributes([
                ("name", "goldsmith nightly"),
                ("tests", tests.as_str()),
                ("failures", failures.as_str()),
                ("errors", "0"),
                ("skipped", skipped.as_str()),
                ("time", time.as_str()),
            ])
            .write_inner_content(|w| {
                w.create_element("testsuite")
                    .with_attributes([
                        ("name", suite_name.as_str()),
                        ("tests", tests.as_str()),
                        ("failures", failures.as_str()),
                        ("errors", "0"),
                        ("skipped", skipped.as_str()),
                        ("time", time.as_str()),
                        ("timestamp", started.as_str()),
                        ("hostname", host.as_str()),
                    ])
                    .write_inner_content(|w| {
                        w.create_element("properties").write_inner_content(|w| {
                            for (k, v) in [
                                ("run_id", r.run_id.as_str()),
                                ("goldsmith_version", version.as_str()),
                                ("exit_code", &r.exit_code.to_string()),
                            ] {
                                w.create_element("property")
                                    .with_attributes([("name", k), ("value", &text::clean(v))])
                                    .write_empty()?;
                            }
                            Ok(())
                        })?;
                        for c in &cases {
                            write_case(w, c)?;
                        }
                        Ok(())
                    })?;
                Ok(())
            })?;
        Ok(())
    })();
    res.expect("writing XML into memory");
    let mut s = String::from_utf8(w.into_inner()).expect("the XML writer writes UTF-8");
    s.push('\n');
    s
}

fn write_case(w: &mut Writer<Vec<u8>>, c: &Case) -> std::io::Result<()> {
    let classname = format!("goldsmith.{}", text::clean(&c.image.image));
    let time = seconds(c.secs);
    w.create_element("testcase")
        .with_attributes([
            ("classname", classname.as_str()),
            ("name", &text::clean(c.name)),
            ("time", time.as_str()),
        ])
        .write_inner_content(|w| {
            match &c.outcome {
                Outcome::Passed => {}
                Outcome::Failed(message, body) => {
                    w.create_element("failure")
                        .with_attributes([("message", message.as_str()), ("type", c.name)])
                        .write_text_content(BytesText::new(body))?;
                }
                Outcome::Skipped(message) => {
                    w.create_element("skipped")
                        .with_attribute(("message", message.as_str()))
                        .write_empty()?;
                }
            }
            if !c.out.is_empty() {
                w.create_element("system-out")
                    .write_text_content(BytesText::new(&c.out))?;
            }
            Ok(())
        })?;
    Ok(())
}

/// The test cases of one image: one per stage; plus one named for the failed stage (or
/// `nightly`) when the image failed without any stage marked failed, so that no failure
/// is ever missing from the XML.
fn cases(i: &ImageReport) -> Vec<Case<'_>> {
    let mut out: Vec<Case> = i.stages.iter().map(|s| stage_case(i, s)).collect();
    let any_failed = i.stages.iter().any(|s| s.status == StageStatus::Failed);
    if i.status == ImageStatus::Failed && !any_failed {
        let name = i.failed_stage.as_deref().unwrap_or("nightly");
        let err = i.error.as_deref().unwrap_or("failed");
        out.push(Case {
            image: i,
            name,
            secs: 0.0,
            outcome: failure(err),
            out: String::new(),
        });
    }
    out
}

fn stage_case<'a>(i: &'a ImageReport, s: &'a StageReport) -> Case<'a> {
    // A skipped stage's detail is its <skipped message>; no need to say it twice.
    let mut out = if s.status == StageStatus::Skipped {
        String::new()
    } else {
        text::clean(&s.detail)
    };
    if s.attempts > 1 {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("attempts: {}", s.attempts));
    }
    let outcome = match s.status {
        StageStatus::Passed => Outcome::Passed,
        StageStatus::Skipped => Outcome::Skipped(text::first_line(
            &text::clean(if s.detail.is_empty() {
                "skipped"
            } else {
                &s.detail
            }),
            MESSAGE_CHARS,
        )),
        StageStatus::Failed => {
            // The image's error belongs to the stage that failed it; another failed stage
            // (there should be none) keeps its own detail.
            let err = match (&i.error, i.failed_stage.as_deref()) {
                (Some(e), Some(st)) if st == s.stage => e.as_str(),
                (Some(e), None) => e.as_str(),
                _ if !s.detail.is_empty() => s.detail.as_str(),
                _ => "failed",
            };
            if let Some(log) = &i.console_log {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!("console log: {}", text::clean(log)));
            }
            failure(err)
        }
    };
    Case {
        image: i,
        name: &s.stage,
        secs: s.secs,
        outcome,
        out,
    }
}

fn failure(err: &str) -> Outcome {
    let err = text::clean(err);
    let (body, _) = text::tail(&err, ERROR_LINES, ERROR_CHARS);
    Outcome::Failed(text::first_line(&err, MESSAGE_CHARS), body)
}

/// Seconds with millisecond precision; JUnit readers reject NaN and negative times.
fn seconds(s: f64) -> String {
    let s = if s.is_finite() { s.max(0.0) } else { 0.0 };
    format!("{s:.3}")
}
