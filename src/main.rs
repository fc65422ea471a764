//! The `tidemark` binary: parses the command line, resolves it, and calls the library
//! crates. Errors become one line on stderr and a documented exit code (`failure.rs`).

mod cli;
mod commands;
mod env_file;
mod expire;
mod failure;
mod fetch;
mod objects;
mod paths;
mod restore;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before parsing (its TIDEMARK_* values act as environment) and before any thread.
    if let Err(e) = env_file::load_from_args() {
        eprintln!("error: {e}");
        return failure::usage_status();
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return failure::usage_exit(e),
    };
    init_logging(&cli.log);
    if matches!(cli.command, cli::Command::WalFetch(_)) {
        fetch::exit_on_panic();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes where stderr is not a terminal (a server log, a file).
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
