//! Commands that look without building: validate, plan, doctor.

use super::{say, Ctx};
use crate::cli::PlanArgs;
use crate::recipe::ConfigErrors;
use crate::{doctor, plan, rollout};

/// `goldsmith validate`: recipes, images and, when configured, the inventory; every
/// error of all of them at once.
pub fn validate(ctx: &Ctx) -> anyhow::Result<u8> {
    let recipes = ctx.recipes();
    let inventory = rollout::inventory::load(&ctx.config);
    let (recipes, inventory) = match (recipes, inventory) {
        (Ok(r), Ok(i)) => (r, i),
        (r, i) => {
            let mut errs = ConfigErrors::default();
            if let Err(e) = r {
                errs.extend(e);
            }
            if let Err(e) = i {
                errs.extend(e);
            }
            return Err(errs.into());
        }
    };
    let groups: Vec<&String> = inventory.iter().flat_map(|i| i.groups.keys()).collect();
    if ctx.global.json {
        ctx.print_json(&serde_json::json!({
            "ok": true,
            "layers": recipes.layers.keys().collect::<Vec<_>>(),
            "images": recipes.images.keys().collect::<Vec<_>>(),
            "host_groups": groups,
        }))?;
    } else {
        let inv = match &inventory {
            Some(_) => format!(", {} host group(s)", groups.len()),
            None => String::new(),
        };
        say(&format!(
            "ok: {} layer(s), {} image(s){inv} valid\n",
            recipes.layers.len(),
            recipes.images.len()
        ));
    }
    Ok(0)
}

/// `goldsmith plan`.
pub async fn plan(ctx: &Ctx, args: PlanArgs) -> anyhow::Result<u8> {
    let recipes = ctx.recipes()?;
    let cache = crate::rootfs::cache::LayerCache::open(&ctx.config.cache_dir());
    let resolutions = if args.no_resolve || args.matrix {
        plan::Resolutions::none()
    } else {
        plan::resolve::resolve(
            &recipes,
            &args.images,
            &plan::ResolveOptions {
                offline: args.offline,
                locked: args.locked,
            },
        )
        .await?
    };
    let p = plan::make(&recipes, &args.images, &cache, &resolutions)?;
    if args.matrix {
        // One unit per image: `goldsmith nightly --unit image:NAME` runs it on a worker;
        // layers shared between units come from the shared layer cache.
        let include: Vec<serde_json::Value> = p
            .images
            .iter()
            .map(|i| serde_json::json!({"unit": format!("image:{}", i.name), "image": i.name}))
            .collect();
        say(&format!("{}\n", serde_json::json!({ "include": include })));
        return Ok(0);
    }
    if ctx.global.json {
        ctx.print_json(&plan::to_json(&p, &recipes))?;
    } else {
        say(&plan::to_text(&p));
    }
    Ok(0)
}

/// `goldsmith doctor`.
pub async fn doctor(ctx: &Ctx) -> anyhow::Result<u8> {
    let report = doctor::run(&ctx.config).await;
    if ctx.global.json {
        ctx.print_json(&report)?;
    } else {
        say(&doctor::to_text(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}
