//! `goldsmith build` and `goldsmith lock`.

use super::{say, Ctx};
use crate::build::{self, BuildCtx};
use crate::cli::{BuildArgs, LockArgs};
use crate::plan;
use crate::rootfs::cache::LayerCache;

/// `goldsmith build [IMAGES]`.
pub async fn build(ctx: &Ctx, args: BuildArgs) -> anyhow::Result<u8> {
    let recipes = ctx.recipes()?;
    let names: Vec<String> = if let Some(u) = &args.unit {
        vec![crate::nightly::unit_image(u)?]
    } else if args.images.is_empty() {
        recipes.images.keys().cloned().collect()
    } else {
        for n in &args.images {
            recipes.image(n)?;
        }
        args.images.clone()
    };
    let cache =
        LayerCache::open(&ctx.config.cache_dir()).keeping_trees(ctx.config.def.cache.keep_trees);
    let resolutions = plan::resolve::resolve(
        &recipes,
        &names,
        &plan::ResolveOptions {
            offline: args.offline,
            locked: args.locked,
        },
    )
    .await?;
    let remote = crate::rootfs::remote::RemoteCache::from_config(&ctx.config)?;
    let bctx = BuildCtx {
        recipes: &recipes,
        cache: &cache,
        resolutions: &resolutions,
        failed_layers: None,
        remote: remote.as_ref(),
    };
    let mut outcomes = Vec::new();
    for n in &names {
        let o = build::build_image(&bctx, n, &args.formats, args.force).await?;
        if !ctx.global.json {
            say(&summary(&o));
        }
        outcomes.push(o);
    }
    crate::rootfs::evict::after_run(&recipes, &names, &cache, &resolutions);
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
    for l in &o.layers {
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

/// `goldsmith lock [IMAGES]`: write each image's resolved package sets to
/// `images/<image>.lock`.
pub async fn lock(ctx: &Ctx, args: LockArgs) -> anyhow::Result<u8> {
    let recipes = ctx.recipes()?;
    let names: Vec<String> = if args.images.is_empty() {
        recipes.images.keys().cloned().collect()
    } else {
        args.images.clone()
    };
    let res = plan::resolve::resolve(&recipes, &names, &plan::ResolveOptions::default()).await?;
    for name in &names {
        let image = recipes.image(name)?;
        let stack: Vec<&crate::recipe::Layer> = image
            .layers
            .iter()
            .map(|r| &recipes.layers[&r.name])
            .collect();
        let b = stack[0]
            .def
            .bootstrap
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("image {name}: no base layer"))?;
        let mirrors = plan::mirror::resolve(b.get_ref(), &recipes.config)
            .map_err(|m| anyhow::anyhow!("layer {}: {m}", stack[0].name))?;
        let mut layers = Vec::new();
        for i in 0..stack.len() {
            let set = res
                .get(&plan::resolve::stack_key(&stack[..=i], &mirrors))
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            layers.push((stack[i].name.clone(), set));
        }
        let lock = plan::lockfile::LockFile::new(name, layers);
        let path = plan::lockfile::lock_path(&recipes, name);
        crate::fsutil::atomic_write(&path, lock.to_toml().as_bytes())?;
        say(&format!("wrote {}\n", path.display()));
    }
    Ok(0)
}
