//! The real `acb-assigner` command line, built inside this package so that its tests can run
//! the daemon as a process of its own (Cargo gives a test the binaries of its own package only).

fn main() -> std::process::ExitCode {
    acb_assigner::cli::main()
}
