//! The `kgate` command: a thin shell over the library.

use std::process::ExitCode;

use clap::Parser;

// Records are allocated on Kafka reader threads and freed on the connection workers;
// glibc's per-arena locks made those cross-thread frees a quarter of a replay's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = kgate::cli::Cli::parse();
    match kgate::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
