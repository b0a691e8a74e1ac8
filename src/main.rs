//! The `kgate` command: a thin shell over the library. The commands, the load
//! tool and the demo producer live here, not in the gateway's library.

mod bench;
mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser;

// Records are allocated on Kafka reader threads and freed on the connection workers;
// glibc's per-arena locks made those cross-thread frees a quarter of a replay's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
