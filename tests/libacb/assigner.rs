//! The real `acb-assigner` command line, built inside this package so that its tests can run
//! the daemon as a process of its own (SIGTERM, a restart on the same socket): Cargo gives an
//! integration test the binaries of its own package only (`CARGO_BIN_EXE_*`).

fn main() -> std::process::ExitCode {
    acb_assigner::cli::main()
}
