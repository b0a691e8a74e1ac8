//! HTTP routes (health, readiness, topic info, the WebSocket endpoint) and the server.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::StatusCode;
use serde_json::json;
use warp::Filter;
use warp::reply::Reply;

use crate::gateway::Gateway;

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
            if gw.router.is_ready() {
                warp::reply::json(&json!({"ready": true})).into_response()
            } else {
                let body =
                    warp::reply::json(&json!({"ready": false, "reason": "ingest is not running"}));
                warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response()
            }
        })
    };
    let topics = {
        let gw = gateway.clone();
        warp::path!("v1" / "topics").and(warp::get()).map(move || {
            let topics: Vec<_> = gw
                .router
                .topics()
                .map(|t| {
                    let live: Vec<i64> = (0..t.partitions())
                        .filter_map(|p| t.live_offset(p))
                        .collect();
                    json!({"name": &**t.name(), "format": t.format(), "partitions": t.partitions(),
                           "live_offsets": live, "subscriptions": t.subscription_count()})
                })
                .collect();
            warp::reply::json(&json!({"topics": topics})).into_response()
        })
    };
    let index = warp::path::end().and(warp::get()).map(|| {
        warp::reply::json(&json!({
            "service": "kgate",
            "version": env!("CARGO_PKG_VERSION"),
            "websocket": "/v1/ws",
            "subprotocol": crate::transport::protocol::SUBPROTOCOL,
            "topics": "/v1/topics",
        }))
        .into_response()
    });
    health
        .or(ready)
        .unify()
        .or(topics)
        .unify()
        .or(index)
        .unify()
        .or(crate::transport::ws::route(gateway))
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            Ok::<_, Infallible>(rejection_reply(rejection))
        })
        .unify()
}

fn rejection_reply(rejection: warp::Rejection) -> warp::reply::Response {
    let (status, code) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not_found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    } else {
        (StatusCode::BAD_REQUEST, "bad_request")
    };
    let body = warp::reply::json(&json!({"code": code, "message": format!("{rejection:?}")}));
    warp::reply::with_status(body, status).into_response()
}

/// Serves HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(gateway))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}
