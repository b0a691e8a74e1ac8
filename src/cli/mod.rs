//! Command-line interface: `serve`, `broker`, `demo`, `tail`.

mod bench;
mod broker;
mod demo;
mod serve;
mod sessions;
mod tail;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use kgate::config::Config;

/// kgate: stream Kafka topics to WebSocket clients, with replay on reconnect.
#[derive(Debug, Parser)]
#[command(name = "kgate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by the commands that read the gateway configuration.
#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// Configuration file (TOML). Without it, built-in defaults apply; KGATE_* variables override either.
    #[arg(long, short, env = "KGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        self.load_over(Config::default())
    }

    /// For commands that serve no clients (`broker`, `demo`): `[auth]` does not apply to them.
    fn load_clientless(&self) -> anyhow::Result<Config> {
        self.load_over(Config::demo_defaults())
    }

    fn load_over(&self, defaults: Config) -> anyhow::Result<Config> {
        Config::load_over(defaults, self.config.as_deref()).context("configuration rejected")
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (starts an embedded development broker when kafka.bootstrap_servers is empty).
    Serve(serve::Args),
    /// Run only the embedded development broker (tansu with sqlite storage).
    Broker(broker::Args),
    /// Produce demo ticker and telemetry records.
    Demo(demo::Args),
    /// Connect through the gateway and print the events of a channel.
    Tail(tail::Args),
    /// List, show or delete durable sessions.
    Sessions(sessions::Args),
    /// Run a benchmark scenario (starts its own broker and gateways).
    Bench(bench::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(crate::release_idle_memory)
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Broker(args) => broker::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Tail(args) => tail::run(args).await,
            Command::Sessions(args) => sessions::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    // A blocking read of stdin (or a Kafka poll) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// Resolves when the process gets SIGINT or SIGTERM.
async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Resolves when standard input reaches end of file (the parent process went away).
async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
