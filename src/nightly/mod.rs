//! `goldsmith nightly`: every image through build -> verify -> publish -> rollout, as
//! one run. Images run concurrently within limits (CPU jobs; VMs sized by memory); layers
//! shared between images are built once (a per-layer lock, and a failed layer is not tried
//! again by the images above it: they are skipped, naming it); one image's failure never
//! stops the others; a failed boot is retried once. The run ends with a report.

pub mod progress;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Semaphore;

use crate::artifact::{BootRecord, VerifyRecord};
use crate::build::{self, BuildCtx, BuildOutcome};
use crate::config::Config;
use crate::plan::{self, Resolutions};
use crate::publish::flow::{self, PublishOutcome, PublishRequest};
use crate::publish::model::ChannelMove;
use crate::publish::{sign::Signer, target, ChannelObserver};
use crate::recipe::{Format, Recipes};
use crate::report::model::{
    ArtifactSize, ImageReport, ImageStatus, NightlyReport, StageReport, StageStatus, REPORT_SCHEMA,
    STAGES,
};
use crate::rollout;
use crate::rootfs::{cache::LayerCache, FailedLayers};
use crate::store::Store;
use crate::verify;
use progress::Progress;

/// How the nightly runs.
#[derive(Debug, Clone, Default)]
pub struct NightlyOptions {
    /// Images (all when empty).
    pub images: Vec<String>,
    /// Concurrent image builds (0: number of cores).
    pub jobs: usize,
    pub report_dir: Option<PathBuf>,
    pub resolve: plan::ResolveOptions,
}

/// Everything the per-image pipelines share.
struct Shared<'a> {
    recipes: &'a Recipes,
    cache: LayerCache,
    resolutions: Resolutions,
    store: Arc<dyn Store>,
    signer: Signer,
    host: verify::HostSettings,
    progress: &'a dyn Progress,
    observer: RolloutCollector,
    build_slots: Semaphore,
    vm_slots: Semaphore,
    failed_layers: FailedLayers,
    stage_timeout: Duration,
    remote: Option<crate::rootfs::remote::RemoteCache>,
    resolve_errors: Mutex<std::collections::BTreeMap<String, anyhow::Error>>,
    /// The publish lock every publishing command holds shared (gc takes it exclusively).
    publish_lock: PathBuf,
}

/// Tells rollout about channel moves and remembers how many events each image got.
struct RolloutCollector {
    config: Config,
    store: Arc<dyn Store>,
    enabled: bool,
    events: Mutex<HashMap<String, usize>>,
}

#[async_trait::async_trait]
impl ChannelObserver for RolloutCollector {
    async fn channel_moved(&self, moves: &[ChannelMove]) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let out = rollout::on_channel_moves(&self.config, self.store.as_ref(), moves).await?;
        let mut ev = self.events.lock().unwrap();
        for e in &out.events {
            *ev.entry(e.image.clone()).or_default() += 1;
        }
        Ok(())
    }
}

/// The image a CI unit (`goldsmith plan --matrix`) stands for.
pub fn unit_image(unit: &str) -> anyhow::Result<String> {
    unit.strip_prefix("image:")
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            crate::commands::UsageError(format!(
                "--unit '{unit}': expected image:NAME (as printed by `goldsmith plan --matrix`)"
            ))
            .into()
        })
}

/// Run the nightly. Configuration problems are errors (exit 2); image failures are in
/// the report (exit 1).
pub async fn run(
    config: &Config,
    recipes: &Recipes,
    opts: &NightlyOptions,
    progress: &dyn Progress,
) -> anyhow::Result<NightlyReport> {
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let names: Vec<String> = if opts.images.is_empty() {
        recipes.images.keys().cloned().collect()
    } else {
        for n in &opts.images {
            recipes.image(n)?;
        }
        opts.images.clone()
    };
    // Everything that can be wrong with the configuration fails here, before any work.
    let inventory = rollout::inventory::load(config)?;
    let store = crate::store::open(config)?;
    let signer = Signer::from_config(config)?;
    for n in &names {
        target::for_image(config, recipes.image(n)?)?;
    }
    if inventory.is_some() {
        // Triggers an interrupted earlier run owes are made before anything new moves.
        rollout::heads::reconcile_store(config, store.as_ref()).await?;
    }
    // An image whose packages cannot be resolved fails alone, at its build stage.
    let (resolutions, resolve_errors) =
        plan::resolve::resolve_each(recipes, &names, &opts.resolve).await?;
    let jobs = if opts.jobs > 0 {
        opts.jobs
    } else {
        config.jobs()
    };
    let shared = Shared {
        recipes,
        cache: LayerCache::open(&config.cache_dir()).keeping_trees(config.def.cache.keep_trees),
        resolutions,
        store: store.clone(),
        signer,
        host: verify::HostSettings::from_config(config),
        progress,
        observer: RolloutCollector {
            config: config.clone(),
            store,
            enabled: inventory.is_some(),
            events: Mutex::new(HashMap::new()),
        },
        build_slots: Semaphore::new(jobs.max(1)),
        vm_slots: Semaphore::new(vm_slots(config, recipes, &names)),
        failed_layers: FailedLayers::default(),
        stage_timeout: Duration::from_secs(config.def.build.stage_timeout_secs),
        remote: crate::rootfs::remote::RemoteCache::from_config(config)?,
        resolve_errors: Mutex::new(resolve_errors),
        publish_lock: crate::publish::lock_path(&config.cache_dir().join("run")),
    };
    let run_id = started.format("%Y%m%dT%H%M%SZ").to_string();
    let report_dir = report_dir(config, opts, &run_id);
    std::fs::create_dir_all(&report_dir)
        .with_context(|| format!("cannot create the report folder {}", report_dir.display()))?;
    let pipelines = names
        .iter()
        .map(|n| image_pipeline(&shared, n, &report_dir));
    let images = futures::future::join_all(pipelines).await;
    crate::rootfs::evict::after_run(recipes, &names, &shared.cache, &shared.resolutions);
    let failed = images.iter().any(|i| !i.status.is_success());
    let finished = chrono::Utc::now();
    let report = NightlyReport {
        schema: REPORT_SCHEMA,
        run_id,
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished: finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_secs: round(t0.elapsed().as_secs_f64()),
        goldsmith_version: crate::VERSION.to_string(),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        exit_code: if failed { 1 } else { 0 },
        cancelled: None,
        images,
    };
    crate::report::write_all(
        &report,
        &crate::report::load_history(report_root(&report_dir), 30),
        &report_dir,
    )?;
    progress.finish();
    Ok(report)
}

/// The report folder: `--report-dir`, else `reports/<run>` in a local store, else in the
/// build directory.
fn report_dir(config: &Config, opts: &NightlyOptions, run_id: &str) -> PathBuf {
    if let Some(d) = &opts.report_dir {
        return d.clone();
    }
    let root = if config.def.store.s3.is_none() {
        config.store_dir().join("reports")
    } else {
        config.build_dir().join("reports")
    };
    root.join(run_id)
}

fn report_root(dir: &Path) -> &Path {
    dir.parent().unwrap_or(dir)
}

/// Concurrent VMs: goldsmith.toml's `build.max_vms`, else what memory allows, at most one
/// per two cores (TCG guests each want a core, and checks must not time out).
fn vm_slots(config: &Config, recipes: &Recipes, names: &[String]) -> usize {
    if config.def.build.max_vms > 0 {
        return config.def.build.max_vms;
    }
    let per_vm = names
        .iter()
        .filter_map(|n| recipes.images.get(n))
        .map(|i| i.def.vm.memory_mib as u64 + 512)
        .max()
        .unwrap_or(1536);
    let avail_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(2048);
    let by_mem = (avail_mib / per_vm).max(1) as usize;
    let by_cpu = (config.jobs() / 2).max(1);
    by_mem.min(by_cpu)
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The stage reports of an image, filled as it goes.
struct Stages {
    stages: Vec<StageReport>,
}

impl Stages {
    fn new() -> Stages {
        Stages {
            stages: STAGES
                .iter()
                .map(|s| StageReport {
                    stage: s.to_string(),
                    status: StageStatus::Skipped,
                    secs: 0.0,
                    detail: "not reached".into(),
                    attempts: 0,
                })
                .collect(),
        }
    }

    fn set(&mut self, stage: &str, status: StageStatus, t: Instant, detail: String, attempts: u32) {
        if let Some(s) = self.stages.iter_mut().find(|s| s.stage == stage) {
            s.status = status;
            s.secs = round(t.elapsed().as_secs_f64());
            s.detail = crate::exec::redact(&detail);
            s.attempts = attempts;
        }
    }

    /// Mark the stages after `stage` as skipped because of it.
    fn skip_after(&mut self, stage: &str, why: &str) {
        let mut after = false;
        for s in &mut self.stages {
            if after {
                s.detail = why.to_string();
            }
            if s.stage == stage {
                after = true;
            }
        }
    }
}

/// Why a stage did not succeed.
struct StageFailure {
    stage: &'static str,
    started: Instant,
    /// Skipped because something it depends on failed (not a failure of its own).
    skipped: bool,
    message: String,
    attempts: u32,
}

impl StageFailure {
    fn failed(stage: &'static str, started: Instant, message: String, attempts: u32) -> Self {
        StageFailure {
            stage,
            started,
            skipped: false,
            message,
            attempts,
        }
    }
}

/// One image through all stages. Never fails: failures are in the returned report.
async fn image_pipeline(sh: &Shared<'_>, name: &str, report_dir: &Path) -> ImageReport {
    let image = sh.recipes.image(name).expect("checked before");
    let mut st = Stages::new();
    let mut rep = ImageReport {
        image: name.to_string(),
        status: ImageStatus::Failed,
        failed_stage: None,
        error: None,
        version: None,
        channel: image.def.publish.channel.clone(),
        content_digest: None,
        stages: Vec::new(),
        layers_rebuilt: Vec::new(),
        changes: Vec::new(),
        package_changes: Vec::new(),
        artifacts: Vec::new(),
        boot_secs: None,
        console_log: None,
        rollout_events: 0,
    };
    match run_stages(sh, image, report_dir, &mut rep, &mut st).await {
        Ok(()) => sh.progress.event(
            name,
            "done",
            rep.status.as_str(),
            rep.version.as_deref().unwrap_or(""),
        ),
        Err(f) => {
            let (stage_status, image_status, word) = if f.skipped {
                (StageStatus::Skipped, ImageStatus::Skipped, "skipped")
            } else {
                (StageStatus::Failed, ImageStatus::Failed, "failed")
            };
            st.set(
                f.stage,
                stage_status,
                f.started,
                first_line(&f.message).to_string(),
                f.attempts,
            );
            st.skip_after(f.stage, &format!("skipped: {} did not succeed", f.stage));
            sh.progress
                .event(name, f.stage, word, first_line(&f.message));
            rep.status = image_status;
            rep.failed_stage = Some(f.stage.to_string());
            rep.error = Some(crate::exec::redact(&f.message));
        }
    }
    finish(rep, st)
}

/// build -> verify -> publish (-> rollout through the observer), filling `rep` and `st`.
async fn run_stages(
    sh: &Shared<'_>,
    image: &crate::recipe::Image,
    report_dir: &Path,
    rep: &mut ImageReport,
    st: &mut Stages,
) -> Result<(), StageFailure> {
    let name = image.name.as_str();

    // build
    let t = Instant::now();
    sh.progress.event(name, "build", "started", "");
    if let Some(e) = sh.resolve_errors.lock().unwrap().remove(name) {
        return Err(StageFailure::failed("build", t, format!("{e:#}"), 1));
    }
    let built = {
        let _slot = sh.build_slots.acquire().await.expect("semaphore open");
        let bctx = BuildCtx {
            recipes: sh.recipes,
            cache: &sh.cache,
            resolutions: &sh.resolutions,
            failed_layers: Some(&sh.failed_layers),
            remote: sh.remote.as_ref(),
        };
        tokio::time::timeout(
            sh.stage_timeout,
            build::build_image(&bctx, name, &[], false),
        )
        .await
    };
    let built: BuildOutcome = match built {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let mut f = StageFailure::failed("build", t, format!("{e:#}"), 1);
            f.skipped = e.chain().any(|c| c.is::<crate::rootfs::DependencyFailed>());
            return Err(f);
        }
        Err(_) => {
            let msg = format!(
                "the build stage took longer than {}s and was stopped",
                sh.stage_timeout.as_secs()
            );
            return Err(StageFailure::failed("build", t, msg, 1));
        }
    };
    let rec = &built.record;
    rep.content_digest = Some(rec.content_digest.clone());
    rep.layers_rebuilt = built
        .layers
        .iter()
        .filter(|l| l.rebuilt)
        .map(|l| l.name.clone())
        .collect();
    rep.changes = if built.up_to_date {
        Vec::new()
    } else {
        rec.changes.clone()
    };
    rep.artifacts = rec
        .artifacts
        .iter()
        .map(|a| ArtifactSize {
            format: a.format,
            size: a.size,
        })
        .collect();
    let detail = if built.up_to_date {
        format!("up to date (content {})", plan::short(&rec.content_digest))
    } else if rep.layers_rebuilt.is_empty() {
        "assembled from cached layers".to_string()
    } else {
        format!("rebuilt {}", rep.layers_rebuilt.join(", "))
    };
    st.set("build", StageStatus::Passed, t, detail.clone(), 1);
    sh.progress.event(name, "build", "passed", &detail);

    // verify
    let t = Instant::now();
    sh.progress.event(name, "verify", "started", "");
    let (v, attempts) = verify_stage(sh, image, &built)
        .await
        .map_err(|e| StageFailure::failed("verify", t, format!("{e:#}"), 2))?;
    rep.boot_secs = v.boots.iter().filter_map(|b| b.boot_secs).reduce(f64::max);
    if !v.passed {
        rep.console_log = copy_console(&built.dir, &v, report_dir, name);
        return Err(StageFailure::failed(
            "verify",
            t,
            boot_failure(&v),
            attempts,
        ));
    }
    let d = if attempts == 0 {
        "verified earlier (same build)".to_string()
    } else if attempts > 1 {
        format!("passed on retry ({} checks)", checks_count(&v))
    } else {
        format!("passed ({} checks)", checks_count(&v))
    };
    st.set("verify", StageStatus::Passed, t, d.clone(), attempts);
    sh.progress.event(name, "verify", "passed", &d);

    // publish (and, through the observer, rollout)
    let t = Instant::now();
    sh.progress.event(name, "publish", "started", "");
    let published = publish_stage(sh, image, &built)
        .await
        .map_err(|e| StageFailure::failed("publish", t, format!("{e:#}"), 1))?;
    match published {
        PublishOutcome::Unchanged { version, .. } => {
            rep.status = ImageStatus::Unchanged;
            let d = format!("unchanged: {}/{} is already {version}", name, rep.channel);
            rep.version = Some(version);
            st.set("publish", StageStatus::Passed, t, d.clone(), 1);
            st.set(
                "rollout",
                StageStatus::Passed,
                Instant::now(),
                "nothing changed, no trigger".into(),
                1,
            );
            sh.progress.event(name, "publish", "unchanged", &d);
        }
        PublishOutcome::Published { manifest, moves } => {
            rep.status = ImageStatus::Published;
            rep.version = Some(manifest.version.clone());
            rep.package_changes = moves
                .first()
                .and_then(|m| m.old.as_ref())
                .map(|old| plan::changes::package_changes(&old.packages, &manifest.packages))
                .unwrap_or_default();
            let d = format!("published {} to {}", manifest.version, rep.channel);
            st.set("publish", StageStatus::Passed, t, d.clone(), 1);
            sh.progress.event(name, "publish", "passed", &d);
            let events = sh
                .observer
                .events
                .lock()
                .unwrap()
                .get(name)
                .copied()
                .unwrap_or(0);
            rep.rollout_events = events;
            let d = if sh.observer.enabled {
                format!("{events} rollout event(s)")
            } else {
                "no inventory configured".to_string()
            };
            st.set("rollout", StageStatus::Passed, Instant::now(), d.clone(), 1);
            sh.progress.event(name, "rollout", "passed", &d);
        }
    }
    Ok(())
}

fn finish(mut rep: ImageReport, st: Stages) -> ImageReport {
    rep.stages = st.stages;
    rep
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn checks_count(v: &VerifyRecord) -> usize {
    v.boots.iter().map(|b| b.checks.len()).sum()
}

fn boot_failure(v: &VerifyRecord) -> String {
    let mut out = Vec::new();
    for b in v.boots.iter().filter(|b| !b.passed) {
        let failed: Vec<String> = b
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        out.push(format!(
            "{} boot failed: {}{}",
            b.format,
            b.failure.clone().unwrap_or_else(|| "checks failed".into()),
            if failed.is_empty() {
                String::new()
            } else {
                format!("\n{}", failed.join("\n"))
            }
        ));
    }
    out.join("\n")
}

/// The disk format the nightly boots: qcow2, else the first disk format, else OCI.
fn boot_format(formats: &[Format]) -> Format {
    if formats.contains(&Format::Qcow2) {
        return Format::Qcow2;
    }
    formats
        .iter()
        .copied()
        .find(|f| f.is_disk() && *f != Format::Ova)
        .unwrap_or(Format::Oci)
}

/// Verify the build (once more if it fails). A build that was up to date and already
/// passed verification is not booted again. Returns the record and the attempts made.
async fn verify_stage(
    sh: &Shared<'_>,
    image: &crate::recipe::Image,
    built: &BuildOutcome,
) -> anyhow::Result<(VerifyRecord, u32)> {
    if built.up_to_date {
        if let Ok(v) = VerifyRecord::load(&built.dir) {
            if v.passed && v.content_digest == built.record.content_digest {
                return Ok((v, 0));
            }
        }
    }
    let format = boot_format(
        &built
            .record
            .artifacts
            .iter()
            .map(|a| a.format)
            .collect::<Vec<_>>(),
    );
    let mut last: Option<anyhow::Result<VerifyRecord>> = None;
    for attempt in 1..=2u32 {
        if attempt == 2 {
            sh.progress.event(
                &image.name,
                "verify",
                "retrying",
                "first boot failed; booting once more",
            );
        }
        let r = {
            let _vm = sh.vm_slots.acquire().await.expect("semaphore open");
            verify::run(
                &built.dir,
                &built.record,
                verify::ImageChecks::from(image),
                &[format],
                &sh.host,
            )
            .await
            .map_err(anyhow::Error::from)
        };
        match r {
            Ok(mut v) if v.passed => {
                if attempt > 1 {
                    mark_attempts(&built.dir, &mut v, attempt)?;
                }
                return Ok((v, attempt));
            }
            other => last = Some(other),
        }
    }
    match last.expect("ran at least once") {
        Ok(mut v) => {
            mark_attempts(&built.dir, &mut v, 2)?;
            Ok((v, 2))
        }
        Err(e) => Err(e),
    }
}

fn mark_attempts(dir: &Path, v: &mut VerifyRecord, attempts: u32) -> anyhow::Result<()> {
    for b in &mut v.boots {
        b.attempts = attempts;
    }
    crate::fsutil::atomic_write_json(&dir.join("verify.json"), v)?;
    Ok(())
}

fn copy_console(
    build_dir: &Path,
    v: &VerifyRecord,
    report_dir: &Path,
    image: &str,
) -> Option<String> {
    let b: &BootRecord = v.boots.iter().find(|b| !b.passed)?;
    let src = build_dir.join(&b.console_log);
    let name = format!("{image}-{}-console.log", b.format);
    std::fs::copy(&src, report_dir.join(&name)).ok()?;
    Some(name)
}

async fn publish_stage(
    sh: &Shared<'_>,
    image: &crate::recipe::Image,
    built: &BuildOutcome,
) -> anyhow::Result<PublishOutcome> {
    let targets = target::for_image(&sh.recipes.config, image)?;
    let req = PublishRequest {
        image: image.name.clone(),
        build_dir: built.dir.clone(),
        channel: image.def.publish.channel.clone(),
        version: None,
        force: false,
    };
    let lock_path = sh.publish_lock.clone();
    let _lock =
        tokio::task::spawn_blocking(move || crate::fsutil::FileLock::acquire_shared(&lock_path))
            .await?
            .context("cannot take the publish lock")?;
    Ok(flow::publish(sh.store.as_ref(), &sh.signer, &targets, &req, &sh.observer).await?)
}
