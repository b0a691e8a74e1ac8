//! The MQTT TCP listener (`mqtt.listen`, TLS when `[tls]` is set). MQTT over
//! WebSocket arrives through the WebSocket transport (`transport::ws::mqtt`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::Front;
use super::wire::Stream;

/// Accepts MQTT clients on `listener` until `shutdown` turns true. At most `pending`
/// TLS handshakes run at once.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    front: Arc<Front>,
    pending: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(pending));
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // The guard `wait_for` returns is not `Send`: dropped inside.
            _ = async { drop(shutdown.wait_for(|stopped| *stopped).await) } => break,
        };
        let _ = stream.set_nodelay(true);
        let front = front.clone();
        // Separate tasks: a task holds room for its largest state, and a TLS connection's
        // (rustls inline) would otherwise be paid by every plain one.
        let Some(acceptor) = &tls else {
            tokio::spawn(front.serve(stream, Some(addr), None));
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::stats::stats().refused_http_connections.add(1);
            continue;
        };
        let handshake = acceptor.accept(stream);
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                Ok(Ok(stream)) => {
                    drop(slot);
                    tokio::spawn(front.serve(Stream(stream), Some(addr), None));
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "MQTT TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "MQTT TLS handshake timed out"),
            }
        });
    }
}
