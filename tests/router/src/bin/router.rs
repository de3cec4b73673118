//! The real `acb-router` command line, built inside this package so that its tests can run it
//! as a process of its own.

fn main() -> std::process::ExitCode {
    acb_router::cli::main()
}
