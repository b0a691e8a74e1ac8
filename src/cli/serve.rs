//! `kgate serve`: run the gateway.

use std::time::Duration;

use anyhow::Context;

use super::ConfigArgs;
use crate::demo::{self, DemoOptions};
use kgate::gateway::Gateway;
use kgate::kafka::producer::Producer;

/// Options of `kgate serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also produce demo ticker and telemetry data (to the `prices` and `telemetry` topics).
    #[arg(long)]
    demo: bool,
    /// Exit when standard input closes (used by test harnesses that own the process).
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = match args.demo {
        true => args
            .config
            .load_over(kgate::config::Config::demo_defaults())?,
        false => args.config.load()?,
    };
    kgate::logging::init(&config.log);
    crate::disable_transparent_huge_pages();
    for (name, fixed) in kgate::config::misspelled_env_vars() {
        tracing::warn!("{name} is not a config variable and is ignored; did you mean {fixed}?");
    }
    kgate::telemetry::install();
    let tls = kgate::transport::server::tls_acceptor(&config.tls)?;
    let scheme = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let listen = config.server.listen;
    let shutdown_timeout = Duration::from_secs(config.server.shutdown_timeout_secs);
    // Bind first: a port already in use is the most common startup error.
    let listener = bind(listen, config.server.listen_backlog)
        .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
    let mqtt_listener = match config.mqtt.listen {
        Some(addr) => Some(
            bind(addr, config.server.listen_backlog)
                .with_context(|| format!("cannot listen on {addr} (mqtt.listen)"))?,
        ),
        None => None,
    };
    let running = tokio::select! {
        r = Gateway::start(config) => r?,
        _ = super::termination() => return Ok(()),
    };
    let gateway = running.gateway.clone();
    let addr = listener.local_addr().unwrap_or(listen);
    tracing::info!(
        "kgate listening on {}://{addr} (WebSocket: {}://{addr}/v1/ws)",
        scheme.0,
        scheme.1
    );
    if let Some(listener) = mqtt_listener {
        let addr = listener.local_addr().unwrap_or(listen);
        tracing::info!(
            "MQTT listening on {}://{addr}",
            if tls.is_some() { "mqtts" } else { "mqtt" }
        );
        let front = kgate::mqtt::Front::new(gateway.services.clone());
        let pending = gateway.services.config.server.max_http_connections;
        tokio::spawn(kgate::mqtt::tcp::serve_tcp(
            listener,
            tls.clone(),
            front,
            pending,
            gateway.services.shutdown.clone(),
        ));
    }
    if args.demo {
        let producer =
            Producer::new(&gateway.services.config).context("cannot create the demo producer")?;
        // The devices publish over MQTT to this gateway (an unspecified address is this host).
        let mqtt = match (&tls, gateway.services.config.mqtt.listen) {
            (None, Some(mut addr)) => {
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                Some(addr)
            }
            _ => None,
        };
        let options = DemoOptions {
            mqtt,
            ..DemoOptions::default()
        };
        tokio::spawn(async move {
            if let Err(e) = demo::run(producer, options).await {
                tracing::error!(error = %e, "demo producer stopped");
            }
        });
        match mqtt {
            Some(addr) => tracing::info!(
                "producing demo data: prices to Kafka, telemetry from 8 devices over MQTT ({addr}); \
                 try: kgate tail prices:AAPL, or mosquitto_sub -h {} -p {} -t 'telemetry/#' -v",
                addr.ip(),
                addr.port()
            ),
            None => tracing::info!(
                "producing demo data to topics prices and telemetry; try: kgate tail prices:AAPL"
            ),
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kgate::transport::http::serve(
        listener,
        tls,
        gateway.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let exit_on_eof = args.exit_on_stdin_eof;
    tokio::select! {
        _ = super::termination() => {}
        _ = super::stdin_closed(), if exit_on_eof => {}
    }
    tracing::info!(
        connections = gateway.services.connections.count(),
        "shutting down: closing connections with 1001"
    );
    gateway.begin_shutdown();
    let _ = stop_tx.send(());
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    while gateway.services.connections.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.abort();
    match gateway.services.sessions.blocking().commit() {
        Ok(n) => tracing::info!(positions = n, "session positions flushed"),
        Err(e) => tracing::error!(error = %e, "session positions not flushed"),
    }
    drop(running);
    tracing::info!("stopped");
    Ok(())
}

/// Binds `addr` with a listen queue of `backlog` (tokio's `bind` fixes it at 1024).
fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
