//! `acb-assigner`: see [`acb_assigner::cli`].

fn main() -> std::process::ExitCode {
    acb_assigner::cli::main()
}
