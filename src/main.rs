//! The `tidemark` binary: parses the command line, resolves it, and calls the library
//! crates. Errors become one line on stderr and a documented exit code (`failure.rs`).

mod check;
mod cli;
mod commands;
mod config;
mod env_file;
mod expire;
mod failure;
mod fetch;
mod generate;
mod group;
mod objects;
mod output;
mod paths;
mod restore;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Before parsing (its TIDEMARK_* values act as environment) and before any thread.
    if let Err(e) = env_file::load_from_args() {
        eprintln!("error: {e}");
        return failure::usage_status();
    }
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Err(e) = init_logging(&cli.log, cli.log_format) {
        eprintln!("error: {e}");
        return failure::usage_status();
    }
    if matches!(cli.command, cli::Command::WalFetch(_)) {
        fetch::exit_on_panic();
    }
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(failure::INTERNAL);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            let (code, line) = failure::describe(&err);
            eprintln!("error: {line}");
            ExitCode::from(code)
        }
    }
}

/// `stream` runs on one thread: its receive loop is one task, and on a multi-threaded
/// runtime every wake-up also woke idle workers to look for work (context switches were a
/// fifth of steady streaming's CPU). Compression and file I/O still go to the blocking
/// pool. Every other command gets a worker per core.
fn runtime_for(command: &cli::Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        cli::Command::Stream(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
}

/// The command line, with the config file's values as defaults (`config.rs`); the exit
/// code of a usage error otherwise. Call before any thread starts.
fn parse() -> Result<cli::Cli, ExitCode> {
    use clap::{CommandFactory, FromArgMatches};
    let path = cli::early_value("--config", Some("TIDEMARK_CONFIG")).map(PathBuf::from);
    let cluster = cli::early_value("--cluster", Some("TIDEMARK_CLUSTER"))
        .map(|name| name.to_string_lossy().into_owned());
    let (command, in_use) = config::apply(cli::Cli::command(), path, cluster).map_err(|e| {
        eprintln!("error: {e}");
        failure::usage_status()
    })?;
    let mut cli = command
        .try_get_matches()
        .and_then(|m| cli::Cli::from_arg_matches(&m))
        .map_err(failure::usage_exit)?;
    cli.config_in_use = in_use;
    Ok(cli)
}

/// Logs on stderr: text, with colour only on a terminal and without `NO_COLOR`, or JSON
/// lines. An invalid filter is a usage error.
fn init_logging(filter: &str, format: cli::LogFormat) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        format!("--log {filter:?} is not a log filter ({e}); HINT: use a level (error, warn, info, debug, trace) or target=level pairs, e.g. info,tidemark_archiver=debug")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        cli::LogFormat::Json => builder.json().init(),
        cli::LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init()
        }
    }
    Ok(())
}
