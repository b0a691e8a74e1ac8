//! `kgate broker`: run only the embedded development broker.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::ConfigArgs;
use kgate::kafka::embedded::EmbeddedBroker;

/// Options of `kgate broker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Listen address (default: embedded_broker.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (default: server.data_dir); the sqlite file goes to <dir>/broker/tansu.db.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Exit when standard input closes (used by test harnesses that own the process).
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.load_clientless()?;
    kgate::logging::init(&config.log);
    let listen = args.listen.unwrap_or(config.embedded_broker.listen);
    let data_dir = args.data_dir.unwrap_or(config.server.data_dir);
    let retention_check =
        std::time::Duration::from_secs(config.embedded_broker.retention_check_secs);
    let broker = EmbeddedBroker::start(listen, &data_dir, retention_check).await?;
    tracing::warn!(
        address = %broker.addr(),
        storage = %super::display(broker.db_path()),
        "development broker running (tansu, sqlite); not for production"
    );
    let exit_on_eof = args.exit_on_stdin_eof;
    tokio::select! {
        _ = super::termination() => {}
        _ = super::stdin_closed(), if exit_on_eof => {}
    }
    drop(broker);
    Ok(())
}
