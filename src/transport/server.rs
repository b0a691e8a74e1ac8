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

/// The accepted TCP socket a request came on, attached to every request by [`serve`]:
/// the kernel can tell how far the peer has read. Its descriptor stays open as long as
/// the connection does, or the upgrade taken from it.
#[derive(Debug, Clone, Copy)]
pub struct PeerSocket(std::os::fd::RawFd);

/// How far a peer's TCP has taken what was sent to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpProgress {
    /// Bytes the peer has acknowledged since the connection began.
    pub acked: u64,
    /// The receive window the peer last advertised: it opens as the peer reads.
    pub window: u32,
}

impl PeerSocket {
    /// The kernel's account of the socket (`TCP_INFO`), or `None` where it gives none.
    pub fn progress(&self) -> Option<TcpProgress> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: `tcp_info` is plain data, for which all zeroes is a valid value.
            let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            // SAFETY: the descriptor is the connection's open socket (see the type's
            // doc), and `info` has room for the `len` bytes the kernel may write.
            let r = unsafe {
                libc::getsockopt(
                    self.0,
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&raw mut info).cast(),
                    &mut len,
                )
            };
            (r == 0).then_some(TcpProgress {
                acked: info.tcpi_bytes_acked,
                window: info.tcpi_snd_wnd,
            })
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

/// The TCP socket of the request's connection (absent outside [`serve`]).
pub fn peer_socket() -> impl Filter<Extract = (Option<PeerSocket>,), Error = Infallible> + Clone {
    warp::ext::optional::<PeerSocket>()
}

/// Ends the HTTP connection a request came on (its socket and buffers), from a
/// handler whose response can no longer finish: a stalled SSE reader, say.
#[derive(Debug, Clone, Default)]
pub struct ConnectionAbort(Arc<tokio::sync::Notify>);

impl ConnectionAbort {
    /// Closes the connection now, whatever it is writing.
    pub fn abort(&self) {
        self.0.notify_one();
    }
}

/// The abort handle of the request's HTTP connection (absent outside [`serve`]).
pub fn connection_abort()
-> impl Filter<Extract = (Option<ConnectionAbort>,), Error = Infallible> + Clone {
    warp::ext::optional::<ConnectionAbort>()
}

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

/// Bounds on HTTP connections before they become a WebSocket or a stream.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Headers must arrive within this (also the keep-alive idle limit).
    pub header_read_timeout: Duration,
    /// Open connections not yet upgraded.
    pub max_connections: usize,
}

impl From<&crate::config::ServerConfig> for HttpLimits {
    fn from(server: &crate::config::ServerConfig) -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            max_connections: server.max_http_connections,
        }
    }
}

/// Logs at most once per `every`: refusals under attack must not flood the log.
struct Throttled {
    every: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new(every: Duration) -> Self {
        Throttled {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// How many were suppressed since the last line, when a line is due now.
    fn due(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Serves `routes` on `listener` (over TLS when `tls` is set) until `shutdown` completes,
/// then lets open HTTP exchanges finish (upgraded WebSockets are drained by the gateway).
pub async fn serve<F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
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
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (mut accept_log, mut refusal_log) = (
        Throttled::new(Duration::from_secs(5)),
        Throttled::new(Duration::from_secs(5)),
    );
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off (up to 1 s) instead of
                    // spinning, and keep accepting once descriptors are free again.
                    if let Some(suppressed) = accept_log.due() {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, suppressed, "accept failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        backoff = Duration::from_millis(10);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::stats::stats().refused_http_connections.add(1);
            if let Some(suppressed) = refusal_log.due() {
                tracing::warn!(%addr, max = limits.max_connections, suppressed, "HTTP connection refused: server.max_http_connections are open");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let socket = PeerSocket(std::os::fd::AsRawFd::as_raw_fd(&stream));
        let service = warp::service(routes.clone());
        let abort = ConnectionAbort::default();
        let aborted = abort.clone();
        let service =
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(RemoteAddr(addr));
                request.extensions_mut().insert(socket);
                request.extensions_mut().insert(abort.clone());
                let mut service = service.clone();
                service.call(request)
            });
        let tls = tls.clone();
        let stop = stop_rx.clone();
        let open = open_tx.clone();
        let timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            // Held until the connection ends or becomes a WebSocket (hyper hands it over).
            let _slot = slot;
            let result = match tls {
                None => {
                    serve_connection(TokioIo::new(stream), service, stop, timeout, aborted).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(TokioIo::new(stream), service, stop, timeout, aborted)
                                .await
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
                if e.is_timeout() {
                    crate::stats::stats().header_timeouts.add(1);
                }
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
    header_read_timeout: Duration,
    abort: ConnectionAbort,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        // Starts when the connection opens and each time it goes idle between requests.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        _ = stop.wait_for(|stopped| *stopped) => {}
        // Dropping the connection closes the socket and frees what it buffered.
        _ = abort.0.notified() => return Ok(()),
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}
