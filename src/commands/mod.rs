//! One function per command; `run_with_signals` maps outcomes to exit codes:
//! 0 ok, 1 a build/verify/publish failed, 2 bad configuration or usage,
//! 128+N when signal N (SIGINT, SIGTERM) cancelled the run.

mod build;
mod inspect;
mod nightly;
mod publish;
mod rollout;
mod verify;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::cli::{Cli, Command, Global};
use crate::config::Config;
use crate::exec;
use crate::recipe::{self, ConfigError, ConfigErrors, Recipes};

/// A usage error (bad arguments the parser could not catch): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What every command gets: global flags and the loaded configuration.
pub struct Ctx {
    pub global: Global,
    pub config: Config,
    pub vars: Vec<(String, String)>,
}

impl Ctx {
    fn new(global: Global) -> anyhow::Result<Ctx> {
        let explicit = global.config.as_path() != std::path::Path::new("goldsmith.toml");
        let config = Config::load(&global.config, explicit)?;
        let vars = global
            .vars
            .iter()
            .map(|v| recipe::parse_cli_var(v).map_err(UsageError))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Ctx {
            global,
            config,
            vars,
        })
    }

    /// Run the recipe stage.
    pub fn recipes(&self) -> Result<Recipes, ConfigErrors> {
        recipe::load(&self.config, &self.vars)
    }

    /// Print a value as JSON on stdout.
    pub fn print_json(&self, v: &impl serde::Serialize) -> anyhow::Result<()> {
        say(&format!("{}\n", serde_json::to_string_pretty(v)?));
        Ok(())
    }

    /// Runtime directory for pidfiles and locks.
    pub fn run_dir(&self) -> PathBuf {
        self.config.cache_dir().join("run")
    }
}

/// Write to stdout, through the secret redactor like every log line. A closed pipe
/// (`goldsmith plan | head`) is not an error worth a panic: the reader has seen what it
/// wanted.
pub fn say(text: &str) {
    let text = exec::redact(text);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Set up `tracing` on stderr; every line passes through the secret redactor.
pub fn init_logging(g: &Global) {
    use tracing_subscriber::EnvFilter;
    let level = match (g.quiet, g.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("GOLDSMITH_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("goldsmith={level},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingWriter(std::io::stderr()))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Writes through [`exec::redact`] so no registered secret reaches a log.
struct RedactingWriter<W: Write>(W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(exec::redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Run the command; SIGINT/SIGTERM drop the running pipeline (its guards kill child
/// process groups and remove temp space) and give exit code 130/143.
pub async fn run_with_signals(cli: Cli) -> u8 {
    let Ok((mut int, mut term)) = crate::exec::termination_signals() else {
        eprintln!("error: cannot install signal handlers");
        return 1;
    };
    // Building trees as an unprivileged user happens inside a user namespace; the
    // re-executed goldsmith handles its own signals, this one only forwards them.
    if matches!(cli.command, Command::Build(_) | Command::Nightly(_)) && crate::rootless::needed() {
        return crate::rootless::reexec().await;
    }
    let json = cli.global.json;
    tokio::select! {
        r = run(cli) => exit_code(r, json),
        _ = int.recv() => cancelled(libc::SIGINT),
        _ = term.recv() => cancelled(libc::SIGTERM),
    }
}

fn cancelled(sig: i32) -> u8 {
    // The pipeline future is already dropped here; make sure nothing it started survives.
    exec::kill_all();
    exec::CANCELLED_BY.store(sig, std::sync::atomic::Ordering::SeqCst);
    let name = if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    eprintln!("goldsmith: cancelled by {name}; child processes killed, temporary files removed");
    (128 + sig) as u8
}

fn exit_code(r: anyhow::Result<u8>, json: bool) -> u8 {
    match r {
        Ok(code) => code,
        Err(e) => {
            let code = classify(&e);
            let msg = exec::redact(&format!("{e:#}"));
            if json {
                let v = serde_json::json!({"error": msg, "exit_code": code});
                say(&format!("{v}\n"));
            }
            // Config errors already say file:line:col; others get an "error:" prefix.
            if code == 2 && is_config_error(&e) {
                eprintln!("{}", exec::redact(&render_config_error(&e)));
            } else {
                eprintln!("error: {msg}");
            }
            code
        }
    }
}

fn is_config_error(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.is::<ConfigErrors>() || c.is::<ConfigError>())
}

fn render_config_error(e: &anyhow::Error) -> String {
    let mut context = Vec::new();
    for c in e.chain() {
        if let Some(errs) = c.downcast_ref::<ConfigErrors>() {
            let mut s = errs.to_string();
            if errs.0.len() > 1 {
                s.push_str(&format!("\n{} errors", errs.0.len()));
            }
            return prefix(&context, s);
        }
        if let Some(err) = c.downcast_ref::<ConfigError>() {
            return prefix(&context, err.to_string());
        }
        context.push(c.to_string());
    }
    e.to_string()
}

fn prefix(context: &[String], s: String) -> String {
    if context.is_empty() {
        s
    } else {
        format!("{}:\n{s}", context.join(": "))
    }
}

/// Exit code for an error: 2 for configuration and usage, 1 for everything else.
pub fn classify(e: &anyhow::Error) -> u8 {
    if is_config_error(e) || e.chain().any(|c| c.is::<UsageError>()) {
        2
    } else {
        1
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let ctx = Ctx::new(cli.global)?;
    exec::init_reaper(&ctx.run_dir().join("pids"))
        .with_context(|| format!("cannot use {}", ctx.run_dir().display()))?;
    match cli.command {
        Command::Validate => inspect::validate(&ctx),
        Command::Plan(a) => inspect::plan(&ctx, a).await,
        Command::Doctor => inspect::doctor(&ctx).await,
        Command::Build(a) => build::build(&ctx, a).await,
        Command::Lock(a) => build::lock(&ctx, a).await,
        Command::Verify(a) => verify::verify(&ctx, a).await,
        Command::Boot(a) => verify::boot(&ctx, a).await,
        Command::Publish(a) => publish::publish(&ctx, a).await,
        Command::Promote(a) => publish::promote(&ctx, a).await,
        Command::Revoke(a) => publish::revoke(&ctx, a).await,
        Command::List(a) => publish::list(&ctx, a).await,
        Command::Show(a) => publish::show(&ctx, a).await,
        Command::Fetch(a) => publish::fetch(&ctx, a).await,
        Command::Gc(a) => publish::gc(&ctx, a).await,
        Command::Keygen(a) => publish::keygen(&ctx, a).await,
        Command::VerifySignature(a) => publish::verify_signature(&ctx, a).await,
        Command::Rollout(c) => rollout::rollout(&ctx, c).await,
        Command::Nightly(a) => nightly::nightly(&ctx, a).await,
    }
}
