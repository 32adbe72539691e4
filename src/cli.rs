//! Command-line types (clap). Nothing here does any work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::recipe::Format;

/// goldsmith: layered recipes in, verified and published golden images out.
#[derive(Debug, Parser)]
#[command(name = "goldsmith", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Project configuration.
    #[arg(
        long,
        global = true,
        default_value = "goldsmith.toml",
        env = "GOLDSMITH_CONFIG"
    )]
    pub config: PathBuf,
    /// Machine-readable output (JSON; JSON lines for streams).
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Override a recipe variable: KEY=VALUE (repeatable; wins over layers and images).
    #[arg(long = "var", global = true, value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every recipe, image and the configuration; exit 2 with file:line errors.
    Validate,
    /// Show the build units, layer digests, sharing and cache state.
    Plan(PlanArgs),
    /// Check this host for the programs and features the pipeline needs.
    Doctor,
    /// Build images: root file system from layers, disk, every output format.
    Build(BuildArgs),
    /// Boot the latest build (or an artifact) under QEMU and run its smoke checks.
    Verify(VerifyArgs),
    /// Boot an image with its serial console on this terminal (Ctrl-A X quits).
    Boot(BootArgs),
    /// Publish the latest verified build as a new immutable version.
    Publish(PublishArgs),
    /// Point a channel at an already published version.
    Promote(PromoteArgs),
    /// Revoke a version: channels fall back to the previous good version.
    Revoke(RevokeArgs),
    /// List images, versions and channels in the store.
    List(ListArgs),
    /// Show one version's manifest.
    Show(ShowArgs),
    /// Download a version and check its signature and every file's sha256.
    Fetch(FetchArgs),
    /// Remove versions past retention and unreferenced cache entries.
    Gc(GcArgs),
    /// Create a minisign key pair for signing manifests.
    Keygen(KeygenArgs),
    /// Check a minisign signature.
    VerifySignature(VerifySignatureArgs),
    /// Rollout triggers: pending, history, retry.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// The nightly job: build, verify, publish what changed, trigger rollouts, report.
    Nightly(NightlyArgs),
    /// Write lock files pinning each image's resolved package versions.
    Lock(LockArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Images to plan (default: all).
    pub images: Vec<String>,
    /// Print the build units as a JSON matrix for CI systems.
    #[arg(long)]
    pub matrix: bool,
    /// Use the cached package indexes as they are (no network).
    #[arg(long)]
    pub offline: bool,
    /// Use the images' lock files.
    #[arg(long)]
    pub locked: bool,
    /// Digest declared inputs only, without resolving packages against the archive.
    #[arg(long)]
    pub no_resolve: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Images to build (default: all).
    pub images: Vec<String>,
    /// Only these formats (default: the image's list).
    #[arg(long = "format", value_name = "FORMAT")]
    pub formats: Vec<Format>,
    /// Run one build unit of a plan (`goldsmith plan --matrix`).
    #[arg(long)]
    pub unit: Option<String>,
    #[arg(long)]
    pub offline: bool,
    #[arg(long)]
    pub locked: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Image whose latest build is verified.
    pub image: String,
    /// Verify this artifact file instead of the latest build.
    #[arg(long)]
    pub artifact: Option<PathBuf>,
    /// Which disk format to boot (default qcow2).
    #[arg(long)]
    pub format: Option<Format>,
    /// Boot raw, qcow2, VMDK and VHD.
    #[arg(long)]
    pub all_formats: bool,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    pub image: String,
    #[arg(long)]
    pub artifact: Option<PathBuf>,
    #[arg(long)]
    pub format: Option<Format>,
    /// Forward this host port (on 127.0.0.1) to the guest's port 22.
    #[arg(long, value_name = "HOST_PORT")]
    pub ssh: Option<u16>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    pub image: String,
    /// Explicit version (default: YYYY.MM.DD.N).
    #[arg(long)]
    pub version: Option<String>,
    /// Publish even if the content digest equals the channel head's.
    #[arg(long)]
    pub force: bool,
    /// Channel to move (default: the image's publish.channel).
    #[arg(long)]
    pub channel: Option<String>,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    pub image: String,
    pub version: String,
    #[arg(long)]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    pub image: String,
    pub version: String,
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    pub image: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub image: String,
    /// Version or channel name (default: the image's publish channel).
    pub version: Option<String>,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    pub image: String,
    /// Version or channel name.
    pub version: String,
    /// Where to put the files.
    #[arg(long, default_value = ".")]
    pub dest: PathBuf,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Really delete (default: only show what would go).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Secret key path (public key gets `.pub`).
    #[arg(long, default_value = "goldsmith.key")]
    pub out: PathBuf,
    /// Read the passphrase from this environment variable (default: unencrypted key).
    #[arg(long)]
    pub passphrase_env: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifySignatureArgs {
    pub file: PathBuf,
    /// Signature file (default: FILE.minisig).
    #[arg(long)]
    pub signature: Option<PathBuf>,
    /// Public key file (default: signing.public_key from goldsmith.toml).
    #[arg(long)]
    pub public_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Events not yet delivered to every sink.
    Pending,
    /// Every event and its delivery state.
    History,
    /// Deliver pending events now.
    Retry,
}

#[derive(Debug, Args)]
pub struct NightlyArgs {
    /// Images (default: all).
    pub images: Vec<String>,
    /// Concurrent CPU jobs.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Run one unit of a plan on this worker.
    #[arg(long)]
    pub unit: Option<String>,
    /// Report directory (default: inside the store).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    #[arg(long)]
    pub offline: bool,
    #[arg(long)]
    pub locked: bool,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    pub images: Vec<String>,
}
