//! `completions` and `man`: shell completions and manual pages, generated from the clap
//! definition itself, so they never drift from the flags.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::{Cli, CliError};

/// Writes the completion script for `shell` to stdout.
pub(super) fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "acb-assigner", &mut out);
    std::io::stdout().write_all(&out).map_err(|e| CliError::failed(format!("stdout: {e}")))
}

/// Writes `acb-assigner(1)` to stdout, or, with `out_dir`, it and one page per subcommand
/// (`acb-assigner-serve(1)`, ...) into that directory.
pub(super) fn man(out_dir: Option<&Path>) -> Result<(), CliError> {
    let cmd = Cli::command();
    let Some(dir) = out_dir else {
        let mut out = Vec::new();
        render(&cmd, &mut out)?;
        return std::io::stdout().write_all(&out).map_err(|e| CliError::failed(format!("stdout: {e}")));
    };
    std::fs::create_dir_all(dir).map_err(|e| CliError::failed(format!("{}: {e}", dir.display())))?;
    let mut pages = vec![("acb-assigner".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("acb-assigner-{}", sub.get_name());
        let bin = format!("acb-assigner {}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name).bin_name(bin)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        render(&page, &mut out)?;
        std::fs::write(&path, out).map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
        println!("{}", path.display());
    }
    Ok(())
}

fn render(cmd: &clap::Command, out: &mut Vec<u8>) -> Result<(), CliError> {
    clap_mangen::Man::new(cmd.clone())
        .section("1")
        .manual("acb manual")
        .source(format!("acb {}", env!("CARGO_PKG_VERSION")))
        .render(out)
        .map_err(|e| CliError::failed(format!("man page: {e}")))
}
