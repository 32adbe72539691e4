//! CLI entry: parse arguments, set up logging and signal handling, run one command.

use std::process::ExitCode;

use clap::Parser;
use goldsmith::cli::Cli;
use goldsmith::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::init_logging(&cli.global);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(commands::run_with_signals(cli));
    // Background tasks (stderr readers of killed children) must not delay the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    ExitCode::from(code)
}
