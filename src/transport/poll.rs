//! Long-polling: `GET /v1/poll?channel=A&cursor=C&wait_ms=N&max=M` answers
//! `{"frames": [...], "cursor": "..."}` as soon as records after the cursor exist,
//! or after `wait_ms` with none. The frames are protocol frames (`event`, and
//! `subscribed`, `gap`, `skipped`, `error`); the cursor is the same as SSE's event id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::Value;
use warp::Filter;

use super::access::request_parts;
use super::reply::error_reply;
use super::resume::Resume;
use super::sse::Request;
use crate::connection::link::{Gone, Inbound, Link, Outbound, event_frame};
use crate::connection::protocol::CloseCode;
use crate::connection::{Connection, ServerFrame};
use crate::gateway::Gateway;

/// A frame of a poll's answer.
enum Collected {
    Frame(String),
    Event(crate::codec::Frame),
    /// An event's full frame, as a JSON string (`delta=true`: a delta frame needs the
    /// exact text of its base, which a parsed object does not keep).
    Quoted(crate::codec::Frame),
}

/// Collects one poll's answer.
struct PollLink {
    commands: std::vec::IntoIter<String>,
    resume: Resume,
    /// Frames for the client, as JSON text: events (their shared encoding, not parsed
    /// again), and notices such as `gap`, `skipped` or `error`.
    frames: Vec<Collected>,
    events: usize,
    max_events: usize,
    deadline: tokio::time::Instant,
    /// Something worth answering with was collected.
    due: bool,
    /// The poll asked for deltas.
    delta: bool,
}

impl Link for PollLink {
    const TRANSPORT: &'static str = "poll";
    const ANSWERS_PINGS: bool = false;

    async fn recv(&mut self) -> Inbound {
        if let Some(command) = self.commands.next() {
            return Inbound::Command(command);
        }
        // The answer is due once anything was collected, or at the deadline.
        if !self.due {
            tokio::time::sleep_until(self.deadline).await;
        }
        Inbound::Gone
    }

    async fn send(&mut self, batch: &mut Vec<Outbound>) -> Result<(), Gone> {
        for item in batch.drain(..) {
            match item {
                Outbound::Frame(frame) => {
                    self.resume.on_frame(&frame);
                    // `subscribed` is kept: it tells a client where a `latest` start is.
                    if frame.is_routine() {
                        continue;
                    }
                    self.due |= !matches!(frame, ServerFrame::Subscribed { .. });
                    self.frames.push(Collected::Frame(frame.to_json()));
                }
                // Past the limit, records are left for the next poll (the cursor stops before them).
                Outbound::Event {
                    channel,
                    record,
                    delta,
                } if self.events < self.max_events => {
                    self.resume.on_event(&channel, &record);
                    let frame = event_frame(&record, delta).clone();
                    self.frames.push(match self.delta && !delta {
                        true => Collected::Quoted(frame),
                        false => Collected::Event(frame),
                    });
                    self.events += 1;
                    self.due = true;
                }
                Outbound::Event { .. } | Outbound::Ping => {}
            }
        }
        Ok(())
    }

    /// The answer ends with the `close` frame SSE sends, so a client learns why (1001 on a
    /// draining node: poll another node).
    async fn close(&mut self, code: CloseCode) {
        self.frames
            .push(Collected::Frame(ServerFrame::Close(code).to_json()));
    }
}

/// `GET /v1/poll`.
pub fn route(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "poll")
        .and(warp::get())
        .and(request_parts())
        .and(super::server::remote_addr())
        .then(
            move |headers: HeaderMap, query: String, remote: Option<SocketAddr>| {
                let gateway = gateway.clone();
                async move { poll(gateway, &headers, &query, remote).await }
            },
        )
}

async fn poll(
    gateway: Arc<Gateway>,
    headers: &HeaderMap,
    query: &str,
    remote: Option<SocketAddr>,
) -> warp::reply::Response {
    let request = match Request::parse(query, "cursor") {
        Ok(request) => request,
        Err(response) => return response,
    };
    // Before anything is subscribed: the client keeps its cursor and polls another node.
    if gateway.is_draining() {
        let mut response = error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is draining: poll another node with the same cursor",
        );
        response
            .headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("1"));
        return response;
    }
    let (resume, ticket, identity) = match request.admit(&gateway, headers, query, remote).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let number = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let limits = &gateway.services.config.poll;
    let wait = number("wait_ms")
        .unwrap_or(limits.max_wait_ms)
        .min(limits.max_wait_ms);
    let max_events = number("max")
        .map_or(limits.max_events, |m| m as usize)
        .clamp(1, limits.max_events);
    let link = PollLink {
        commands: resume.commands(request.delta).into_iter(),
        resume,
        frames: Vec::new(),
        events: 0,
        due: false,
        delta: request.delta,
        max_events,
        deadline: tokio::time::Instant::now() + Duration::from_millis(wait),
    };
    let mut link = Connection::new(gateway.services.clone(), remote, ticket, identity)
        .run(link)
        .await;
    let cursor = link.resume.cursor().await;
    answer(&link.frames, &cursor)
}

/// `{"frames": [...], "cursor": "..."}`, the frames written as they are (each is JSON).
fn answer(frames: &[Collected], cursor: &str) -> warp::reply::Response {
    let texts: Vec<std::borrow::Cow<'_, str>> = frames
        .iter()
        .map(|f| match f {
            Collected::Frame(text) => text.as_str().into(),
            Collected::Event(frame) => frame.as_str().into(),
            Collected::Quoted(frame) => Value::from(frame.as_str()).to_string().into(),
        })
        .collect();
    let cursor = Value::from(cursor);
    let body = format!(r#"{{"frames":[{}],"cursor":{cursor}}}"#, texts.join(","));
    let mut response = warp::reply::Response::new(body.into());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
