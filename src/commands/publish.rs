//! `goldsmith publish`, `promote`, `revoke`, `list`, `show`, `fetch`, `gc`, `keygen`,
//! `verify-signature`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::{say, Ctx, UsageError};
use crate::artifact;
use crate::cli::{
    FetchArgs, GcArgs, KeygenArgs, ListArgs, PromoteArgs, PublishArgs, RevokeArgs, ShowArgs,
    VerifySignatureArgs,
};
use crate::fsutil::FileLock;
use crate::publish::lifecycle::{self, LifecycleError};
use crate::publish::model::ChannelMove;
use crate::publish::{
    self, channel, fetch as pfetch, flow, gc as pgc, layout, sign, target, ChannelObserver,
    NoObserver, PublishError, PublishOutcome, PublishRequest,
};
use crate::rollout;
use crate::rootfs::cache::LayerCache;
use crate::rootfs::evict::{self, EvictReport};
use crate::store::{self, Store};

/// Uncommitted folders younger than this are left alone by gc (a publish on another
/// host may still be uploading them).
const GC_GRACE: Duration = Duration::from_secs(3600);

/// Tells rollout about every channel move: events go to the outbox, then to the sinks.
struct RolloutObserver {
    config: crate::config::Config,
    store: Arc<dyn Store>,
}

#[async_trait::async_trait]
impl ChannelObserver for RolloutObserver {
    async fn channel_moved(&self, moves: &[ChannelMove]) -> anyhow::Result<()> {
        let out = rollout::on_channel_moves(&self.config, self.store.as_ref(), moves).await?;
        report_rollout(&out);
        Ok(())
    }
}

/// Log what rollout did (stdout stays the command's own report).
pub(crate) fn report_rollout(out: &rollout::RolloutOutcome) {
    for e in &out.events {
        tracing::info!(
            "rollout event {} for host group {}",
            crate::plan::short(&e.id),
            e.group
        );
    }
    for d in &out.deliveries {
        tracing::info!(
            "rollout {} -> {} ({}): {}{}",
            crate::plan::short(&d.event_id),
            d.sink,
            d.group,
            d.status.as_str(),
            d.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}

/// The observer told about channel moves: rollout when an inventory is configured.
/// Before anything moves, rollout catches up on moves an earlier run could not report
/// (and a broken inventory fails the command here, before a pointer moved).
async fn observer(ctx: &Ctx, store: &Arc<dyn Store>) -> anyhow::Result<Arc<dyn ChannelObserver>> {
    if rollout::inventory::load(&ctx.config)?.is_none() {
        return Ok(Arc::new(NoObserver));
    }
    let caught_up = rollout::heads::reconcile_store(&ctx.config, store.as_ref()).await?;
    report_rollout(&caught_up);
    Ok(Arc::new(RolloutObserver {
        config: ctx.config.clone(),
        store: store.clone(),
    }))
}

fn open_store(ctx: &Ctx) -> anyhow::Result<Arc<dyn Store>> {
    Ok(store::open(&ctx.config)?)
}

/// Held (shared) by every command that publishes or moves channels on this host.
async fn publish_lock(ctx: &Ctx) -> anyhow::Result<FileLock> {
    let p = publish::lock_path(&ctx.run_dir());
    let p2 = p.clone();
    tokio::task::spawn_blocking(move || FileLock::acquire_shared(&p2))
        .await?
        .with_context(|| format!("cannot take the publish lock {}", p.display()))
}

fn describe_move(m: &ChannelMove) -> String {
    let old = m
        .old
        .as_ref()
        .map(|o| o.version.as_str())
        .unwrap_or("(new channel)");
    format!("{}/{}: {} -> {}", m.image, m.channel, old, m.new.version)
}

fn moves_json(moves: &[ChannelMove]) -> Vec<serde_json::Value> {
    moves
        .iter()
        .map(|m| {
            json!({
                "image": m.image,
                "channel": m.channel,
                "reason": m.reason,
                "note": m.note,
                "old": m.old.as_ref().map(|o| &o.version),
                "new": m.new.version,
                "content_digest": m.new.content_digest,
            })
        })
        .collect()
}

pub async fn publish(ctx: &Ctx, args: PublishArgs) -> anyhow::Result<u8> {
    let recipes = ctx.recipes()?;
    let image = recipes.image(&args.image)?;
    let channel = args
        .channel
        .clone()
        .unwrap_or_else(|| image.def.publish.channel.clone());
    let build_root = ctx.config.build_dir();
    let build_dir = artifact::latest_build_dir(&build_root, &args.image).ok_or_else(|| {
        PublishError::NotBuilt {
            image: args.image.clone(),
            dir: artifact::image_build_root(&build_root, &args.image),
        }
    })?;
    let signer = sign::Signer::from_config(&ctx.config)?;
    let store = open_store(ctx)?;
    let targets = target::for_image(&ctx.config, image)?;
    let observer = observer(ctx, &store).await?;
    let _lock = publish_lock(ctx).await?;
    let req = PublishRequest {
        image: args.image.clone(),
        build_dir,
        channel,
        version: args.version.clone(),
        force: args.force,
    };
    let outcome = flow::publish(&*store, &signer, &targets, &req, &*observer)
        .await
        .map_err(|e| match e {
            PublishError::Usage(m) => UsageError(m).into(),
            e => anyhow::Error::from(e),
        })?;
    match outcome {
        PublishOutcome::Unchanged {
            image,
            channel,
            version,
            content_digest,
        } => {
            if ctx.global.json {
                ctx.print_json(&json!({
                    "status": "unchanged", "image": image, "channel": channel,
                    "version": version, "content_digest": content_digest,
                }))?;
            } else {
                say(&format!(
                    "unchanged: {image}/{channel} is already {version} with content {content_digest}; nothing published (--force publishes anyway)\n"
                ));
            }
        }
        PublishOutcome::Published { manifest, moves } => {
            if ctx.global.json {
                ctx.print_json(&json!({
                    "status": "published",
                    "image": manifest.image,
                    "version": manifest.version,
                    "content_digest": manifest.content_digest,
                    "store": store.describe(),
                    "manifest": store.url(&layout::key(&manifest.image, &manifest.version, layout::MANIFEST)),
                    "moves": moves_json(&moves),
                }))?;
            } else {
                say(&format!(
                    "published {} {} (content {}, {} files) to {}\n",
                    manifest.image,
                    manifest.version,
                    manifest.content_digest,
                    manifest.files.len(),
                    store.describe()
                ));
                for m in &moves {
                    say(&format!("  channel {}\n", describe_move(m)));
                }
            }
        }
    }
    Ok(0)
}

fn lifecycle_err(e: LifecycleError) -> anyhow::Error {
    match e {
        LifecycleError::Usage(m) => UsageError(m).into(),
        e => e.into(),
    }
}

pub async fn promote(ctx: &Ctx, args: PromoteArgs) -> anyhow::Result<u8> {
    let store = open_store(ctx)?;
    // Check the signature when a public key is configured: promotion is a trust decision.
    let pk = match sign::public_key_from_config(&ctx.config) {
        Ok(pk) => Some(pk),
        Err(sign::SignError::NoPublicKey) => None,
        Err(e) => return Err(e.into()),
    };
    let observer = observer(ctx, &store).await?;
    let _lock = publish_lock(ctx).await?;
    let mv = lifecycle::promote(
        &*store,
        pk.as_ref(),
        &args.image,
        &args.version,
        &args.to,
        &*observer,
    )
    .await
    .map_err(lifecycle_err)?;
    if ctx.global.json {
        ctx.print_json(&json!({
            "status": if mv.is_some() { "moved" } else { "unchanged" },
            "moves": moves_json(mv.as_slice()),
        }))?;
    } else {
        match mv {
            Some(m) => say(&format!("promoted: {}\n", describe_move(&m))),
            None => say(&format!(
                "unchanged: {}/{} already points at {}\n",
                args.image, args.to, args.version
            )),
        }
    }
    Ok(0)
}

pub async fn revoke(ctx: &Ctx, args: RevokeArgs) -> anyhow::Result<u8> {
    let store = open_store(ctx)?;
    let observer = observer(ctx, &store).await?;
    let _lock = publish_lock(ctx).await?;
    let out = lifecycle::revoke(
        &*store,
        &args.image,
        &args.version,
        &args.reason,
        &*observer,
    )
    .await
    .map_err(lifecycle_err)?;
    if ctx.global.json {
        ctx.print_json(&json!({
            "image": args.image,
            "version": args.version,
            "reason": out.revocation.reason,
            "revoked": out.revocation.revoked,
            "already_revoked": out.already_revoked,
            "moves": moves_json(&out.moves),
            "emptied_channels": out.emptied,
        }))?;
    } else {
        say(&format!(
            "{} {} {} ({})\n",
            args.image,
            args.version,
            if out.already_revoked {
                "was already revoked"
            } else {
                "revoked"
            },
            out.revocation.reason
        ));
        for m in &out.moves {
            say(&format!("  channel {}\n", describe_move(m)));
        }
        for c in &out.emptied {
            say(&format!(
                "  channel {}/{c}: no earlier good version; it now points at nothing\n",
                args.image
            ));
        }
    }
    Ok(0)
}

/// One image's committed versions and channels.
async fn image_listing(store: &dyn Store, image: &str) -> anyhow::Result<serde_json::Value> {
    let states = layout::scan(store, image).await?;
    let mut channels = serde_json::Map::new();
    let mut by_version: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for ch in channel::channels(store, image).await? {
        if let Some((p, _)) = channel::read(store, image, &ch).await? {
            let head = p.head.as_ref().map(|h| h.version.clone());
            if let Some(v) = &head {
                by_version.entry(v.clone()).or_default().push(ch.clone());
            }
            channels.insert(ch, json!(head));
        }
    }
    let versions: Vec<serde_json::Value> = states
        .iter()
        .filter(|s| s.committed)
        .map(|s| {
            json!({
                "version": s.version,
                "revoked": s.revoked,
                "channels": by_version.get(&s.version).cloned().unwrap_or_default(),
            })
        })
        .collect();
    Ok(json!({"image": image, "versions": versions, "channels": channels}))
}

pub async fn list(ctx: &Ctx, args: ListArgs) -> anyhow::Result<u8> {
    let store = open_store(ctx)?;
    let images = match &args.image {
        Some(i) => vec![i.clone()],
        None => layout::images(&*store).await?,
    };
    let mut out = Vec::new();
    for i in &images {
        out.push(image_listing(&*store, i).await?);
    }
    if ctx.global.json {
        ctx.print_json(&out)?;
        return Ok(0);
    }
    if out.is_empty() {
        say(&format!("no published images in {}\n", store.describe()));
    }
    for img in &out {
        say(&format!("{}\n", img["image"].as_str().unwrap_or_default()));
        let versions = img["versions"].as_array().cloned().unwrap_or_default();
        if versions.is_empty() {
            say("  (no versions)\n");
        }
        for v in versions {
            let chans: Vec<String> = v["channels"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            say(&format!(
                "  {:<20} {}{}\n",
                v["version"].as_str().unwrap_or_default(),
                if v["revoked"].as_bool() == Some(true) {
                    "REVOKED "
                } else {
                    ""
                },
                chans.join(" ")
            ));
        }
    }
    Ok(0)
}

pub async fn show(ctx: &Ctx, args: ShowArgs) -> anyhow::Result<u8> {
    let store = open_store(ctx)?;
    let which = match &args.version {
        Some(v) => v.clone(),
        None => ctx
            .recipes()
            .ok()
            .and_then(|r| {
                r.images
                    .get(&args.image)
                    .map(|i| i.def.publish.channel.clone())
            })
            .unwrap_or_else(|| "nightly".into()),
    };
    let ver = pfetch::resolve(&*store, &args.image, &which).await?;
    let manifest = layout::manifest(&*store, &args.image, &ver).await?;
    let revoked = layout::revocation(&*store, &args.image, &ver).await?;
    let signature = match sign::public_key_from_config(&ctx.config) {
        Ok(pk) => match pfetch::signed_manifest(&*store, &pk, &args.image, &ver).await {
            Ok(_) => "verified".to_string(),
            Err(e) => format!("BAD: {e}"),
        },
        Err(_) => "not checked (no public key configured)".to_string(),
    };
    let mut on = Vec::new();
    for ch in channel::channels(&*store, &args.image).await? {
        if let Some((p, _)) = channel::read(&*store, &args.image, &ch).await? {
            if p.head.map(|h| h.version).as_deref() == Some(ver.as_str()) {
                on.push(ch);
            }
        }
    }
    if ctx.global.json {
        ctx.print_json(&json!({
            "manifest": manifest,
            "revoked": revoked,
            "channels": on,
            "signature": signature,
        }))?;
        return Ok(0);
    }
    let m = &manifest;
    let mut s = format!(
        "{} {}\n  content:   {}\n  published: {}\n  channels:  {}\n  signature: {signature}\n",
        m.image,
        m.version,
        m.content_digest,
        m.published,
        if on.is_empty() {
            "-".into()
        } else {
            on.join(", ")
        },
    );
    if let Some(r) = &revoked {
        s.push_str(&format!("  REVOKED:   {} ({})\n", r.reason, r.revoked));
    }
    s.push_str(&format!(
        "  source:    {}{}\n  build:     {} finished {}\n  verify:    {} ({}/{} checks, {})\n  packages:  {}\n  artifacts:\n",
        m.source.git_commit.as_deref().unwrap_or("(not a git checkout)"),
        if m.source.dirty { " (dirty)" } else { "" },
        m.build.build_id,
        m.build.finished,
        if m.verify.passed { "passed" } else { "FAILED" },
        m.verify.checks_passed,
        m.verify.checks_total,
        m.verify.accelerator,
        m.packages.len(),
    ));
    for a in &m.artifacts {
        s.push_str(&format!(
            "    {:<6} {:>12} bytes  sha256:{}  {}\n",
            a.format.as_str(),
            a.size,
            a.sha256,
            a.url
        ));
    }
    say(&s);
    Ok(0)
}

pub async fn fetch(ctx: &Ctx, args: FetchArgs) -> anyhow::Result<u8> {
    let store = open_store(ctx)?;
    let pk = sign::public_key_from_config(&ctx.config)?;
    let got = pfetch::fetch(
        &*store,
        &pk,
        &args.image,
        &args.version,
        &args.dest,
        args.allow_revoked,
    )
    .await?;
    if ctx.global.json {
        ctx.print_json(&json!({
            "image": got.manifest.image,
            "version": got.manifest.version,
            "content_digest": got.manifest.content_digest,
            "dir": got.dir,
            "files": got.manifest.files.len(),
            "signature": "verified",
            "trusted_comment": got.trusted_comment,
        }))?;
    } else {
        say(&format!(
            "fetched {} {} to {}: signature verified, {} files checked\n",
            got.manifest.image,
            got.manifest.version,
            got.dir.display(),
            got.manifest.files.len()
        ));
    }
    Ok(0)
}

pub async fn gc(ctx: &Ctx, args: GcArgs) -> anyhow::Result<u8> {
    let store = open_store(ctx)?;
    let p = publish::lock_path(&ctx.run_dir());
    let p2 = p.clone();
    // Exclusive while it runs: no publish on this host can start, so this host's own
    // unfinished publishes are surely dead.
    let lock = tokio::task::spawn_blocking(move || FileLock::try_acquire(&p2))
        .await?
        .with_context(|| format!("cannot use the publish lock {}", p.display()))?;
    let opts = pgc::GcOptions {
        keep_versions: ctx.config.def.store.keep_versions,
        apply: args.yes,
        grace: GC_GRACE,
        local_publishers_idle: lock.is_some(),
        host: flow::this_host(),
        pinned: BTreeSet::new(),
    };
    let report = pgc::gc(&*store, &opts).await?;
    drop(lock);
    let cache = gc_cache(ctx, args.yes).await?;
    if ctx.global.json {
        let mut v = serde_json::to_value(&report)?;
        v["cache"] = serde_json::to_value(&cache)?;
        ctx.print_json(&v)?;
        return Ok(0);
    }
    let verb = if args.yes { "removed" } else { "would remove" };
    if let Some(c) = &cache {
        for e in &c.removed {
            say(&format!(
                "{verb} cached layer {} {} ({} MiB, unused for {} h)\n",
                e.layer,
                crate::plan::short(&e.digest),
                e.bytes >> 20,
                e.idle_secs / 3600
            ));
        }
        say(&format!(
            "layer cache: {} MiB of cache.max_size {} MiB{}\n",
            c.bytes_after >> 20,
            c.max_bytes >> 20,
            if c.bytes_after > c.max_bytes {
                " (the rest is in use)"
            } else {
                ""
            }
        ));
    }
    for it in &report.removed {
        say(&format!(
            "{verb} {} {} ({}: {}, {} objects)\n",
            it.image, it.version, it.kind, it.reason, it.objects
        ));
    }
    for it in &report.skipped {
        say(&format!(
            "kept {} {}: {}\n",
            it.image, it.version, it.reason
        ));
    }
    say(&format!(
        "{} version(s) kept, {} folder(s) {verb}{}\n",
        report.kept,
        report.removed.len(),
        if args.yes || report.removed.is_empty() {
            ""
        } else {
            " (dry run: add --yes to delete)"
        }
    ));
    Ok(0)
}

/// `[cache] max_size` applied to the layer cache, sparing the layers today's images are
/// made of as far as the package indexes already here tell (gc downloads nothing).
async fn gc_cache(ctx: &Ctx, apply: bool) -> anyhow::Result<Option<EvictReport>> {
    let Some(max) = ctx.config.cache_max_bytes() else {
        return Ok(None);
    };
    let recipes = ctx.recipes()?;
    let names: Vec<String> = recipes.images.keys().cloned().collect();
    let offline = crate::plan::ResolveOptions {
        offline: true,
        locked: false,
    };
    let (resolutions, _) = crate::plan::resolve::resolve_each(&recipes, &names, &offline).await?;
    let cache = LayerCache::open(&ctx.config.cache_dir());
    let pinned = evict::pinned(&recipes, &names, &cache, &resolutions);
    Ok(Some(cache.evict(max, &pinned, apply)?))
}

pub async fn keygen(ctx: &Ctx, args: KeygenArgs) -> anyhow::Result<u8> {
    let pub_path = sign::keygen(&args.out, args.passphrase_env.as_deref())?;
    if ctx.global.json {
        ctx.print_json(&json!({"secret_key": args.out, "public_key": pub_path}))?;
    } else {
        say(&format!(
            "wrote {} (secret, keep it safe) and {} (public)\nadd to goldsmith.toml:\n\n[signing]\nkey = \"{}\"\npublic_key = \"{}\"\n{}",
            args.out.display(),
            pub_path.display(),
            args.out.display(),
            pub_path.display(),
            match &args.passphrase_env {
                Some(v) => format!("passphrase_env = \"{v}\"\n"),
                None => String::new(),
            }
        ));
    }
    Ok(0)
}

pub async fn verify_signature(ctx: &Ctx, args: VerifySignatureArgs) -> anyhow::Result<u8> {
    let pk = match &args.public_key {
        Some(p) => sign::load_public_key(p)?,
        None => sign::public_key_from_config(&ctx.config)?,
    };
    let sig_path = args.signature.clone().unwrap_or_else(|| {
        let mut s = args.file.as_os_str().to_owned();
        s.push(".minisig");
        PathBuf::from(s)
    });
    let data = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let sig = std::fs::read_to_string(&sig_path)
        .with_context(|| format!("cannot read {}", sig_path.display()))?;
    let trusted = sign::verify(&pk, &data, &sig, &args.file.display().to_string())?;
    if ctx.global.json {
        ctx.print_json(&json!({"file": args.file, "valid": true, "trusted_comment": trusted}))?;
    } else {
        say(&format!(
            "signature of {} is valid\ntrusted comment: {trusted}\n",
            args.file.display()
        ));
    }
    Ok(0)
}
