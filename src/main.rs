//! The `mtanet` command: a thin entry point over `mtanet_runner::cli`.

fn main() -> std::process::ExitCode {
    mtanet_runner::cli::main()
}
