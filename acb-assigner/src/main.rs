//! `acb-assigner`: not built yet; says so, clearly, with exit status 2.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version" | "-V") => {
            println!("acb-assigner {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(cmd) if acb_assigner::SUBCOMMANDS.contains(&cmd) => {
            eprintln!("acb-assigner: `{cmd}` is not built yet (this release has the scheduler core only)");
            ExitCode::from(2)
        }
        _ => {
            eprintln!(
                "usage: acb-assigner <{}> ...\n(not built yet: this release has the scheduler core only; \
                 try `cargo run -p alphafold2-sim`)",
                acb_assigner::SUBCOMMANDS.join("|")
            );
            ExitCode::from(2)
        }
    }
}
