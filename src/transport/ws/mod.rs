//! The WebSocket transport: the upgrade (admission limits, kgate's own buffer
//! sizes) here; the [`Link`](crate::connection::Link) in [`link`]; the
//! connection logic shared by every transport in [`crate::connection`].

mod deflate;
pub mod inflate;
mod link;
pub mod mqtt;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;

use crate::connection::Connection;
use crate::connection::protocol::{BINARY_SUBPROTOCOL, SUBPROTOCOL};
use crate::gateway::Gateway;
use crate::transport::access::{admit, request_parts};
use crate::transport::reply::error_reply as refuse;
use crate::transport::server::{PeerSocket, TcpProgress, peer_socket};
use inflate::Inflating;
use link::WsLink;

/// The server side of one upgraded WebSocket (compressed messages from the client
/// inflated beneath tungstenite when permessage-deflate was negotiated).
pub type Socket = WebSocketStream<Inflating<TokioIo<hyper::upgrade::Upgraded>>>;

/// `GET /v1/ws`: the WebSocket endpoint.
pub fn route(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "ws")
        .and(upgrade_request())
        .and(peer_socket())
        .map(
            move |headers: HeaderMap,
                  query: String,
                  upgrade: Option<OnUpgrade>,
                  remote: Option<SocketAddr>,
                  peer: Option<PeerSocket>| {
                handshake(gateway.clone(), &headers, &query, upgrade, (remote, peer))
            },
        )
}

/// What a WebSocket endpoint takes from a GET request: its headers, raw query, the
/// upgrade (absent on a plain request) and the peer's address.
pub fn upgrade_request() -> impl Filter<
    Extract = (HeaderMap, String, Option<OnUpgrade>, Option<SocketAddr>),
    Error = warp::Rejection,
> + Clone {
    warp::get()
        .and(request_parts())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(crate::transport::server::remote_addr())
}

/// A header's value as text, empty when absent or not text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn handshake(
    gateway: Arc<Gateway>,
    headers: &HeaderMap,
    query: &str,
    upgrade: Option<OnUpgrade>,
    (remote, peer): (Option<SocketAddr>, Option<PeerSocket>),
) -> warp::reply::Response {
    let has_token = |value: &str, token: &str| {
        value
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let key = header(headers, "sec-websocket-key");
    let Some(upgrade) = upgrade.filter(|_| {
        has_token(header(headers, "connection"), "upgrade")
            && has_token(header(headers, "upgrade"), "websocket")
            && !key.is_empty()
    }) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "this endpoint needs a WebSocket upgrade request",
        );
    };
    if header(headers, "sec-websocket-version") != "13" {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_websocket_version",
            "Sec-WebSocket-Version must be 13",
        );
    }
    let offered = header(headers, "sec-websocket-protocol");
    // The binary subprotocol wins when a client offers both.
    let binary = has_token(offered, BINARY_SUBPROTOCOL);
    let protocol_ok = offered.is_empty() || binary || has_token(offered, SUBPROTOCOL);
    if !protocol_ok {
        // Never echo a bearer entry: it holds a token.
        let shown: Vec<&str> = offered
            .split(',')
            .map(str::trim)
            .filter(|p| !p.starts_with(crate::auth::BEARER_SUBPROTOCOL_PREFIX))
            .collect();
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_subprotocol",
            &format!(
                "offered subprotocols {shown:?} include neither {SUBPROTOCOL} nor {BINARY_SUBPROTOCOL}"
            ),
        );
    }
    let (ticket, identity) = match admit(&gateway, headers, query, remote) {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let chosen = match (offered.is_empty(), binary) {
        (true, _) => None,
        (false, true) => Some(BINARY_SUBPROTOCOL),
        (false, false) => Some(SUBPROTOCOL),
    };
    let services = gateway.services.clone();
    let deflate = negotiate_deflate(&gateway, headers);
    let deflate_min_bytes = deflate.then_some(services.config.websocket.deflate_min_bytes);
    let write_chunk = services.config.websocket.write_buffer_bytes;
    accept(&gateway, key, chosen, deflate, upgrade, move |socket| {
        Connection::new(services, remote, ticket, identity).run(WsLink {
            socket,
            binary,
            deflate_min_bytes,
            write_chunk,
            closed: false,
            unsent: None,
            peer,
            progress: TcpProgress::default(),
        })
    })
}

/// True when deflate is on and the client offered permessage-deflate on terms kgate accepts.
fn negotiate_deflate(gateway: &Gateway, headers: &HeaderMap) -> bool {
    gateway.services.config.websocket.deflate
        && deflate::accepts(
            headers
                .get_all("sec-websocket-extensions")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
}

/// Answers a checked upgrade request with 101 and, once hyper hands over the socket,
/// spawns `serve` on it (also for MQTT over WebSocket). With `deflate`, the answer
/// accepts permessage-deflate and compressed messages from the client are inflated.
pub fn accept<F, Fut>(
    gateway: &Gateway,
    key: &str,
    protocol: Option<&'static str>,
    deflate: bool,
    upgrade: OnUpgrade,
    serve: F,
) -> warp::reply::Response
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output: Send> + Send + 'static,
{
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = warp::reply::Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", accept);
    }
    if let Some(protocol) = protocol {
        h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    }
    let ws = &gateway.services.config.websocket;
    if deflate {
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static(deflate::RESPONSE),
        );
    }
    let inflate_limit = deflate.then_some(ws.max_message_bytes);
    // tungstenite's defaults hold 128 KiB per connection; these keep idle connections small.
    let config = WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        // Writes block (and so bound this buffer) once it passes write_buffer_size; this is only a cap.
        .max_write_buffer_size(
            ws.write_buffer_bytes
                + gateway.services.config.limits.max_outbound_record_bytes
                + 65_536,
        )
        .max_message_size(Some(ws.max_message_bytes))
        .max_frame_size(Some(ws.max_frame_bytes));
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                if deflate {
                    crate::telemetry::deflate_negotiated();
                }
                let socket = WebSocketStream::from_raw_socket(
                    Inflating::new(TokioIo::new(upgraded), inflate_limit),
                    Role::Server,
                    Some(config),
                )
                .await;
                // A task of its own: this one (and the upgrade's state it holds) ends here.
                tokio::spawn(serve(socket));
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    response
}
