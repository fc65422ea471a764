//! `tidemark completions SHELL` and `tidemark man [COMMAND]`: a shell completion script and the
//! manual page, generated from the clap definitions so they never drift from the options.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::failure::Usage;
use crate::output::out;

/// Print `shell`'s completion script for `tidemark`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tidemark", &mut script);
    out!("{}", String::from_utf8(script)?);
    Ok(())
}

/// Print the manual page tidemark(1), or with `command` tidemark-COMMAND(1), in roff.
pub fn man(command: Option<&str>) -> anyhow::Result<()> {
    let top = Cli::command();
    let page = match command {
        None => top,
        Some(name) => top
            .get_subcommands()
            .find(|s| s.get_name() == name && !s.is_hide_set())
            .ok_or(Usage(
                "no such command; HINT: `tidemark --help` lists the commands",
            ))?
            .clone()
            .name(format!("tidemark-{name}")),
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).render(&mut roff)?;
    out!("{}", String::from_utf8(roff)?);
    Ok(())
}
