//! `goldsmith build` and `goldsmith lock`.

use super::{not_yet, say, Ctx};
use crate::build::{self, BuildCtx};
use crate::cli::{BuildArgs, LockArgs};
use crate::plan;
use crate::rootfs::cache::LayerCache;

/// `goldsmith build [IMAGES]`.
pub async fn build(ctx: &Ctx, args: BuildArgs) -> anyhow::Result<u8> {
    let recipes = ctx.recipes()?;
    let names: Vec<String> = if args.images.is_empty() {
        recipes.images.keys().cloned().collect()
    } else {
        for n in &args.images {
            recipes.image(n)?;
        }
        args.images.clone()
    };
    let cache = LayerCache::open(&ctx.config.cache_dir());
    let bctx = BuildCtx {
        recipes: &recipes,
        cache: &cache,
        resolver: &plan::NoResolve,
    };
    let mut outcomes = Vec::new();
    for n in &names {
        let o = build::build_image(&bctx, n, &args.formats, args.force).await?;
        if !ctx.global.json {
            say(&summary(&o));
        }
        outcomes.push(o);
    }
    if ctx.global.json {
        ctx.print_json(&outcomes)?;
    }
    Ok(0)
}

fn summary(o: &build::BuildOutcome) -> String {
    let r = &o.record;
    let mut s = format!(
        "image {}: {} (content {})\n",
        r.image,
        if o.up_to_date { "up to date" } else { "built" },
        plan::short(&r.content_digest)
    );
    for l in &r.layers {
        s.push_str(&format!(
            "  layer {:<16} {}  {}\n",
            l.name,
            plan::short(&l.digest),
            if l.rebuilt { "built" } else { "cached" }
        ));
    }
    for a in &r.artifacts {
        s.push_str(&format!(
            "  {:<6} {:>10}  {}\n",
            a.format.as_str(),
            human(a.size),
            o.dir.join(&a.path).display()
        ));
    }
    if !o.up_to_date {
        let stages: Vec<String> = r
            .stages
            .iter()
            .map(|t| format!("{} {:.1}s", t.stage, t.secs))
            .collect();
        s.push_str(&format!("  stages: {}\n", stages.join(", ")));
    }
    s
}

/// Bytes for people.
pub fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub async fn lock(_ctx: &Ctx, _args: LockArgs) -> anyhow::Result<u8> {
    not_yet("lock")
}
