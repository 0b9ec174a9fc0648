//! The `mtanet` command: a thin entry point over `mtanet_runner::cli`.

fn main() -> anyhow::Result<()> {
    mtanet_runner::cli::main()
}
