//! `acb-router`: see the crate's documentation.

fn main() -> std::process::ExitCode {
    acb_router::cli::main()
}
