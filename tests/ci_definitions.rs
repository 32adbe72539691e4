//! The CI definitions in ci/ are real: their YAML parses, and every goldsmith command
//! line they run is accepted by goldsmith's own argument parser.

mod support;

use clap::Parser;
use goldsmith::cli::Cli;

/// YAML -> JSON with PyYAML (a parser nobody here wrote).
fn yaml(path: &str) -> serde_json::Value {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            &support::repo().join(path).display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every `goldsmith …` invocation in a text, up to the next shell operator, with CI
/// template expressions replaced by a plausible value.
fn invocations(text: &str) -> Vec<Vec<String>> {
    let text = text
        .replace("${{ matrix.unit }}", "image:web")
        .replace("${{ matrix.image }}", "web")
        .replace("{u['unit']}", "image:web")
        .replace("{u['image']}", "web");
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("goldsmith ") {
            // Only the program itself: not "goldsmith" inside a path or a word.
            let before = rest[..i].chars().last();
            let after = &rest[i + "goldsmith ".len()..];
            if matches!(
                before,
                None | Some(' ') | Some('/') | Some('(') | Some('"') | Some('\'') | Some('-')
            ) && !rest[..i].ends_with("name: ")
            {
                let mut argv = vec!["goldsmith".to_string()];
                for tok in after.split_whitespace() {
                    if ["&&", "||", "|", ";", ">", ">>", "2>&1", ")"].contains(&tok)
                        || tok.starts_with('>')
                    {
                        break;
                    }
                    // `$(goldsmith plan --matrix)`: the closing parenthesis ends the command.
                    let tok = tok.trim_matches(|c| c == '"' || c == '\'');
                    let (tok, closes) = match tok.strip_suffix(')') {
                        Some(t) => (t, true),
                        None => (tok, false),
                    };
                    argv.push(tok.trim_matches(|c| c == '"' || c == '\'').to_string());
                    if closes {
                        break;
                    }
                }
                if argv.len() > 1 && !argv[1].starts_with("nightly golden") {
                    out.push(argv);
                }
            }
            rest = after;
        }
    }
    out
}

/// The shell the pipeline runs: every string under a `run`, `script` or `before_script`.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    fn all(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| all(x, out)),
            serde_json::Value::Object(m) => m.values().for_each(|x| all(x, out)),
            _ => {}
        }
    }
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if ["run", "script", "before_script"].contains(&k.as_str()) {
                    all(x, out);
                } else {
                    strings(x, out);
                }
            }
        }
        _ => {}
    }
}

fn check_commands(name: &str, text: &str, want_at_least: &[&str]) {
    let calls = invocations(text);
    assert!(!calls.is_empty(), "{name}: no goldsmith commands found");
    for argv in &calls {
        if let Err(e) = Cli::try_parse_from(argv) {
            panic!(
                "{name}: `{}` is not a valid goldsmith command line:\n{e}",
                argv.join(" ")
            );
        }
    }
    for w in want_at_least {
        assert!(
            calls
                .iter()
                .any(|a| a.get(1).map(String::as_str) == Some(*w)),
            "{name}: never runs `goldsmith {w}` ({calls:?})"
        );
    }
}

#[test]
fn github_actions_workflow() {
    let v = yaml("ci/github/nightly.yml");
    // YAML 1.1 reads the key `on` as the boolean true; GitHub reads it as "on".
    let on = if v["on"].is_null() {
        &v["true"]
    } else {
        &v["on"]
    };
    assert!(on["schedule"][0]["cron"].is_string(), "scheduled: {v}");
    let jobs = v["jobs"].as_object().unwrap();
    assert!(
        jobs.contains_key("plan") && jobs.contains_key("nightly") && jobs.contains_key("report")
    );
    assert_eq!(v["jobs"]["nightly"]["needs"], "plan");
    assert!(v["jobs"]["nightly"]["strategy"]["matrix"]
        .as_str()
        .unwrap()
        .contains("needs.plan.outputs.matrix"));
    let mut all = Vec::new();
    strings(&v, &mut all);
    check_commands(
        "github",
        &all.join("\n"),
        &["plan", "nightly", "validate", "rollout"],
    );
}

#[test]
fn gitlab_pipeline() {
    let v = yaml("ci/gitlab/gitlab-ci.yml");
    assert_eq!(
        v["stages"],
        serde_json::json!(["plan", "nightly", "report"])
    );
    assert_eq!(
        v["nightly"]["trigger"]["include"][0]["artifact"],
        "child.yml"
    );
    let mut all = Vec::new();
    strings(&v, &mut all);
    check_commands(
        "gitlab",
        &all.join("\n"),
        &["plan", "nightly", "validate", "rollout"],
    );
}

#[test]
fn systemd_units_and_cron_line() {
    let service =
        std::fs::read_to_string(support::repo().join("ci/systemd/goldsmith-nightly.service"))
            .unwrap();
    assert!(service.contains("Type=oneshot"));
    check_commands("systemd service", &service, &["nightly", "rollout"]);
    let timer = std::fs::read_to_string(support::repo().join("ci/systemd/goldsmith-nightly.timer"))
        .unwrap();
    assert!(timer.contains("OnCalendar=") && timer.contains("WantedBy=timers.target"));
    let cron = std::fs::read_to_string(support::repo().join("ci/cron")).unwrap();
    let line = cron
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap();
    assert!(
        line.split_whitespace().count() >= 7,
        "5 time fields, user, command: {line}"
    );
    check_commands("cron", line, &["nightly"]);
    // systemd-analyze is not needed to see the unit's structure is sane.
    assert!(service.lines().any(|l| l == "[Service]") && service.lines().any(|l| l == "[Unit]"));
}

#[test]
fn the_plan_matrix_is_what_the_workflows_expect() {
    let p = support::Project::example();
    let v = p.run(&["plan", "--matrix"]).expect(0).json();
    let units: Vec<&str> = v["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap())
        .collect();
    assert_eq!(units, ["image:base", "image:web"]);
    for u in v["include"].as_array().unwrap() {
        assert!(u["image"].is_string());
    }
}
