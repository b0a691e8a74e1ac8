//! The `kgate` command: a thin shell over the library.

use std::process::ExitCode;

use clap::Parser;

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
