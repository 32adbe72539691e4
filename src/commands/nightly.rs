//! `goldsmith nightly`.

use std::io::IsTerminal;

use super::{say, Ctx};
use crate::cli::NightlyArgs;
use crate::nightly::{self, progress, NightlyOptions};
use crate::plan::changes::describe_package;

pub async fn nightly(ctx: &Ctx, args: NightlyArgs) -> anyhow::Result<u8> {
    let recipes = ctx.recipes()?;
    let images = match &args.unit {
        Some(u) => vec![nightly::unit_image(u)?],
        None => args.images.clone(),
    };
    let shown: Vec<String> = if images.is_empty() {
        recipes.images.keys().cloned().collect()
    } else {
        images.clone()
    };
    let progress: Box<dyn progress::Progress> = if ctx.global.json {
        Box::new(progress::JsonLines)
    } else if std::io::stderr().is_terminal() && !ctx.global.quiet {
        Box::new(progress::Live::new(&shown))
    } else {
        Box::new(progress::Plain)
    };
    let opts = NightlyOptions {
        images,
        jobs: args.jobs.unwrap_or(0),
        report_dir: args.report_dir.clone(),
        resolve: crate::plan::ResolveOptions {
            offline: args.offline,
            locked: args.locked,
        },
    };
    let report = nightly::run(&ctx.config, &recipes, &opts, progress.as_ref()).await?;
    if ctx.global.json {
        let line = serde_json::json!({
            "event": "report",
            "run_id": report.run_id,
            "exit_code": report.exit_code,
            "images": report.images.iter().map(|i| serde_json::json!({
                "image": i.image, "status": i.status, "version": i.version,
                "failed_stage": i.failed_stage,
            })).collect::<Vec<_>>(),
        });
        say(&format!("{line}\n"));
    } else {
        let mut s = String::new();
        for i in &report.images {
            s.push_str(&format!(
                "{:<16} {:<10} {}\n",
                i.image,
                i.status.as_str(),
                match (&i.failed_stage, &i.version) {
                    (Some(stage), _) => format!(
                        "at {stage}: {}",
                        i.error
                            .as_deref()
                            .unwrap_or("")
                            .lines()
                            .next()
                            .unwrap_or("")
                    ),
                    (None, Some(v)) => format!("{} {v}", i.channel),
                    (None, None) => String::new(),
                }
            ));
            for c in &i.package_changes {
                s.push_str(&format!("    {}\n", describe_package(c)));
            }
        }
        s.push_str(&format!(
            "nightly {}: {} image(s) in {:.0}s, exit {}\n",
            report.run_id,
            report.images.len(),
            report.duration_secs,
            report.exit_code
        ));
        say(&s);
    }
    Ok(report.exit_code as u8)
}
