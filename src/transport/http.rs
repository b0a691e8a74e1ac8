//! HTTP routes (health, readiness, topic info, the WebSocket endpoint) and the server.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::StatusCode;
use serde_json::json;
use warp::Filter;
use warp::reply::Reply;

use super::reply::error_reply;
use crate::gateway::Gateway;

/// The browser SDK, served at `/sdk/kgate.js` (built into the binary; no build step).
const SDK: &str = include_str!("../../clients/js/kgate.js");
/// The live demo page served at `/`.
const DEMO_PAGE: &str = include_str!("../../clients/demo/index.html");
/// The operator's status page: plots the gateway's own /metrics.
const STATUS_PAGE: &str = include_str!("../../clients/status/index.html");

fn static_file(body: &'static str, content_type: &'static str) -> warp::reply::Response {
    let mut response = warp::reply::Response::new(body.into());
    response
        .headers_mut()
        .insert("content-type", http::HeaderValue::from_static(content_type));
    response
}

/// Every route the gateway serves.
pub fn routes(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| "ok".into_response());
    let ready = {
        let gw = gateway.clone();
        warp::path!("readyz").and(warp::get()).map(move || {
            let checks = json!({
                "ingest": gw.services.router.is_ready(),
                "kafka": gw.services.router.is_kafka_reachable(),
                "session_store": gw.services.sessions.blocking().size().is_some(),
                "not_draining": !gw.is_draining(),
            });
            let ready = checks
                .as_object()
                .is_some_and(|c| c.values().all(|v| v == true));
            let body = warp::reply::json(
                &json!({"ready": ready, "node": gw.services.node, "checks": checks}),
            );
            let status = match ready {
                true => StatusCode::OK,
                false => StatusCode::SERVICE_UNAVAILABLE,
            };
            warp::reply::with_status(body, status).into_response()
        })
    };
    let topics = {
        let gw = gateway.clone();
        warp::path!("v1" / "topics").and(warp::get()).map(move || {
            let topics: Vec<_> = gw
                .services
                .router
                .topics()
                .map(|t| {
                    let live: Vec<i64> = (0..t.partitions())
                        .filter_map(|p| t.live_offset(p))
                        .collect();
                    let high: Vec<i64> = (0..t.partitions())
                        .filter_map(|p| t.high_watermark(p))
                        .collect();
                    let lag: Vec<i64> = high
                        .iter()
                        .zip(&live)
                        .map(|(h, l)| (h - l).max(0))
                        .collect();
                    json!({"name": &**t.name(), "format": t.format(), "partitions": t.partitions(),
                           "live_offsets": live, "high_watermarks": high, "lag": lag,
                           "subscriptions": t.subscription_count(),
                           "decode_failures": t.codec().failures()})
                })
                .collect();
            warp::reply::json(&json!({"topics": topics})).into_response()
        })
    };
    let stats = {
        let gw = gateway.clone();
        warp::path!("v1" / "stats").and(warp::get()).map(move || {
            let mut body = crate::stats::stats().to_json();
            body["connections"] = gw.services.connections.count().into();
            warp::reply::json(&body).into_response()
        })
    };
    let metrics = {
        let gw = gateway.clone();
        warp::path!("metrics").and(warp::get()).map(move || {
            let mut response = warp::reply::Response::new(super::metrics::render(&gw).into());
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        })
    };
    let admin = sessions_admin(gateway.clone())
        .or(drain(gateway.clone()))
        .unify();
    let describe = warp::path!("v1").and(warp::get()).map(|| {
        warp::reply::json(&json!({
            "service": "kgate",
            "version": env!("CARGO_PKG_VERSION"),
            "websocket": "/v1/ws",
            "subprotocol": crate::connection::protocol::SUBPROTOCOL,
            "sse": "/v1/sse",
            "poll": "/v1/poll",
            "publish": "/v1/publish/{topic}",
            "topics": "/v1/topics",
            "metrics": "/metrics",
            "status": "/status",
            "sdk": "/sdk/kgate.js",
        }))
        .into_response()
    });
    // MQTT over WebSocket; with `mqtt.enabled = false` the path is not served (404).
    let mqtt = {
        let enabled = gateway.services.config.mqtt.enabled;
        let front = crate::mqtt::Front::new(gateway.services.clone());
        warp::any()
            .and_then(move || async move {
                match enabled {
                    true => Ok::<_, warp::Rejection>(()),
                    false => Err(warp::reject::not_found()),
                }
            })
            .untuple_one()
            .and(crate::transport::ws::mqtt::route(gateway.clone(), front))
    };
    let index = warp::path::end()
        .and(warp::get())
        .map(|| static_file(DEMO_PAGE, "text/html; charset=utf-8"))
        .or(describe)
        .unify()
        .or(warp::path!("status")
            .and(warp::get())
            .map(|| static_file(STATUS_PAGE, "text/html; charset=utf-8")))
        .unify()
        .or(warp::path!("sdk" / "kgate.js")
            .and(warp::get())
            .map(|| static_file(SDK, "text/javascript; charset=utf-8")))
        .unify();
    health
        .or(ready)
        .unify()
        .or(topics)
        .unify()
        .or(index)
        .unify()
        .or(admin)
        .unify()
        .or(stats)
        .unify()
        .or(metrics)
        .unify()
        .or(crate::transport::publish::route(gateway.clone()))
        .unify()
        .or(crate::transport::sse::route(gateway.clone()))
        .unify()
        .or(crate::transport::poll::route(gateway.clone()))
        .unify()
        .or(mqtt)
        .unify()
        .or(crate::transport::ws::route(gateway))
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            Ok::<_, Infallible>(rejection_reply(rejection))
        })
        .unify()
}

/// The session id after `/v1/admin/sessions/`, percent-decoded. It may hold a `/`:
/// with authentication, ids are `subject/id`, and both `alice/phone` and
/// `alice%2Fphone` name that session.
fn session_id() -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "admin" / "sessions" / ..)
        .and(warp::path::tail())
        .and_then(|tail: warp::path::Tail| async move {
            let id = percent_encoding::percent_decode_str(tail.as_str())
                .decode_utf8_lossy()
                .into_owned();
            match id.is_empty() {
                true => Err(warp::reject::not_found()),
                false => Ok(id),
            }
        })
}

/// `None` when the request may use the admin routes; otherwise the refusal to send.
fn admin_access(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (Option<warp::reply::Response>,), Error = Infallible> + Clone {
    super::access::request_parts().map(move |headers: http::HeaderMap, query: String| {
        match super::access::identify(&gateway, &headers, &query) {
            Ok(identity) if identity.permissions.admin => None,
            Ok(_) => Some(super::access::forbidden("the token lacks the admin claim")),
            Err(refusal) => Some(refusal),
        }
    })
}

/// `POST /v1/admin/drain`: every client is told to reconnect (close 1001) and `/readyz`
/// turns 503, so a load balancer sends them, and new ones, to the other nodes.
fn drain(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "admin" / "drain")
        .and(warp::post())
        .and(admin_access(gateway.clone()))
        .map(move |denied: Option<warp::reply::Response>| {
            if let Some(refusal) = denied {
                return refusal;
            }
            let connections = gateway.services.connections.count();
            tracing::info!(node = %gateway.services.node, connections, "draining: clients are told to reconnect elsewhere");
            gateway.begin_shutdown();
            warp::reply::json(&json!({"node": gateway.services.node, "draining": true, "connections": connections}))
                .into_response()
        })
}

/// `/v1/admin/sessions`: list, show and delete durable sessions.
fn sessions_admin(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let store_error = |e: crate::store::StoreError| {
        error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_failed",
            &e.to_string(),
        )
    };
    let list = {
        let gw = gateway.clone();
        warp::path!("v1" / "admin" / "sessions")
            .and(warp::get())
            .and(admin_access(gw.clone()))
            .then(move |denied: Option<warp::reply::Response>| {
                let gw = gw.clone();
                async move {
                    if let Some(refusal) = denied {
                        return refusal;
                    }
                    match gw.services.sessions.call(|s| s.list()).await {
                        Ok(list) => {
                            let attachments = &gw.services.attachments;
                            let sessions: Vec<_> = list
                                .into_iter()
                                .map(|(id, last_seen_ms)| json!({"id": id, "last_seen_ms": last_seen_ms, "attached": attachments.is_attached(&id)}))
                                .collect();
                            warp::reply::json(&json!({"sessions": sessions})).into_response()
                        }
                        Err(e) => store_error(e),
                    }
                }
            })
    };
    let show = {
        let gw = gateway.clone();
        session_id()
            .and(warp::get())
            .and(admin_access(gw.clone()))
            .then(move |id: String, denied: Option<warp::reply::Response>| {
                let gw = gw.clone();
                async move {
                    if let Some(refusal) = denied {
                        return refusal;
                    }
                    let key = id.clone();
                    match gw.services.sessions.call(move |s| s.load(&key)).await {
                        Ok(Some(record)) => {
                            let mut value = serde_json::to_value(&record).unwrap_or_default();
                            value["attached"] = gw.services.attachments.is_attached(&id).into();
                            warp::reply::json(&value).into_response()
                        }
                        Ok(None) => error_reply(
                            StatusCode::NOT_FOUND,
                            "session_not_found",
                            &format!("no session {id:?}"),
                        ),
                        Err(e) => store_error(e),
                    }
                }
            })
    };
    let delete = session_id()
        .and(warp::delete())
        .and(admin_access(gateway.clone()))
        .then(move |id: String, denied: Option<warp::reply::Response>| {
            let gateway = gateway.clone();
            async move {
                if let Some(refusal) = denied {
                    return refusal;
                }
                gateway.services.attachments.kick(&id);
                let key = id.clone();
                match gateway
                    .services
                    .sessions
                    .call(move |s| s.delete(&key))
                    .await
                {
                    Ok(true) => warp::reply::json(&json!({"deleted": id})).into_response(),
                    Ok(false) => error_reply(
                        StatusCode::NOT_FOUND,
                        "session_not_found",
                        &format!("no session {id:?}"),
                    ),
                    Err(e) => store_error(e),
                }
            }
        });
    list.or(show).unify().or(delete).unify()
}

fn rejection_reply(rejection: warp::Rejection) -> warp::reply::Response {
    let (status, code) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not_found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    } else {
        (StatusCode::BAD_REQUEST, "bad_request")
    };
    error_reply(status, code, &format!("{rejection:?}"))
}

/// Serves HTTP (or HTTPS with `tls`) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limits = super::server::HttpLimits::from(&gateway.services.config.server);
    super::server::serve(listener, tls, limits, routes(gateway), shutdown).await;
}
