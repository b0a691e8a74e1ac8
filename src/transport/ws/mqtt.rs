//! MQTT over WebSocket: `GET /mqtt` with the subprotocol `mqtt`, upgraded as any
//! WebSocket and handed to the MQTT front end (`crate::mqtt`).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use hyper::upgrade::OnUpgrade;
use warp::Filter;

use super::header;
use crate::auth::token_from_request;
use crate::gateway::Gateway;
use crate::mqtt::Front;
use crate::mqtt::wire::WsWire;
use crate::transport::access::check_origin;
use crate::transport::reply::error_reply as refuse;

/// The WebSocket subprotocol of MQTT (MQTT 3.1.1 §6, MQTT 5.0 §6).
pub const SUBPROTOCOL: &str = "mqtt";

/// `GET /mqtt`: MQTT over WebSocket.
pub fn route(
    gateway: Arc<Gateway>,
    front: Arc<Front>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("mqtt").and(super::upgrade_request()).map(
        move |headers: HeaderMap,
              query: String,
              upgrade: Option<OnUpgrade>,
              remote: Option<SocketAddr>| {
            handshake(&gateway, front.clone(), &headers, &query, upgrade, remote)
        },
    )
}

fn handshake(
    gateway: &Gateway,
    front: Arc<Front>,
    headers: &HeaderMap,
    query: &str,
    upgrade: Option<OnUpgrade>,
    remote: Option<SocketAddr>,
) -> warp::reply::Response {
    let key = header(headers, "sec-websocket-key");
    let Some(upgrade) = upgrade.filter(|_| {
        !key.is_empty() && header(headers, "upgrade").eq_ignore_ascii_case("websocket")
    }) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "this endpoint needs a WebSocket upgrade request (subprotocol mqtt)",
        );
    };
    let offered = header(headers, "sec-websocket-protocol");
    // `mqttv3.1` is what MQTT 3.1 clients offer; both carry the same bytes here.
    let Some(protocol) = offered
        .split(',')
        .map(str::trim)
        .find(|p| p.eq_ignore_ascii_case(SUBPROTOCOL) || p.eq_ignore_ascii_case("mqttv3.1"))
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_subprotocol",
            "MQTT over WebSocket needs the subprotocol \"mqtt\"",
        );
    };
    let protocol = match protocol.eq_ignore_ascii_case(SUBPROTOCOL) {
        true => SUBPROTOCOL,
        false => "mqttv3.1",
    };
    if let Err(response) = check_origin(gateway, headers) {
        return response;
    }
    let token = token_from_request(headers, query, gateway.services.auth.query_param());
    // MQTT packets differ per recipient (packet ids, batching), so they are not
    // compressed once per record; the endpoint does not negotiate deflate.
    super::accept(
        gateway,
        key,
        Some(protocol),
        false,
        upgrade,
        move |socket| front.serve(WsWire(socket), remote, token),
    )
}
