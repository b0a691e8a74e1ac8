//! The HTTP server loop: plain TCP or TLS (rustls), HTTP/1.1 with upgrades,
//! graceful shutdown. warp 0.4 serves no TLS, so kgate accepts connections itself
//! and hands each to hyper with warp's routes as the service.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tower_service::Service;
use warp::Filter;

use crate::config::TlsConfig;

/// The client's address, attached to every request by [`serve`].
#[derive(Debug, Clone, Copy)]
struct RemoteAddr(SocketAddr);

/// The client address of the request being routed.
pub fn remote_addr() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<RemoteAddr>().map(|r: Option<RemoteAddr>| r.map(|r| r.0))
}

/// Why TLS could not be set up; each names the file and the key in `[tls]`.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls.cert_file {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("tls.key_file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("tls: the certificate and key do not form a usable pair: {0}")]
    Pair(rustls::Error),
}

/// The TLS acceptor for `[tls]`, or `None` when no certificate is configured.
pub fn tls_acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, TlsSetupError> {
    let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
        return Ok(None);
    };
    let cert_error = |reason: String| TlsSetupError::Cert {
        path: cert.clone(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let key = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Pair)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsSetupError::Pair)?;
    // WebSocket upgrades need HTTP/1.1.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsSetupError::Key {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Serves `routes` on `listener` (over TLS when `tls` is set) until `shutdown` completes,
/// then lets open HTTP exchanges finish (upgraded WebSockets are drained by the gateway).
pub async fn serve<F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routes: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Each connection task holds a sender; when all are dropped, every exchange is done.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = warp::service(routes.clone());
        let service =
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(RemoteAddr(addr));
                let mut service = service.clone();
                service.call(request)
            });
        let tls = tls.clone();
        let stop = stop_rx.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => serve_connection(TokioIo::new(stream), service, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(TokioIo::new(stream), service, stop).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "HTTP connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_tx);
    let _ = open_rx.recv().await;
}

/// One HTTP/1.1 connection (with upgrades) until it ends; on `stop`, it finishes the
/// exchange in progress and closes.
async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}
