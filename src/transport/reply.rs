//! The JSON error body every HTTP refusal uses: `{"code": ..., "message": ...}`.

use http::StatusCode;
use warp::reply::Reply;

/// An HTTP error answer with a reason code and a message for people.
pub fn error_reply(status: StatusCode, code: &str, message: &str) -> warp::reply::Response {
    let body = warp::reply::json(&serde_json::json!({"code": code, "message": message}));
    warp::reply::with_status(body, status).into_response()
}
