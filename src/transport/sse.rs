//! Server-Sent Events: `GET /v1/sse?channel=A&channel=B[&from=..]`. Every frame is
//! one SSE message whose data is the protocol frame; `event` and `subscribed`
//! frames carry an `id` that is the client's cursor, so a reconnect with
//! `Last-Event-ID` (or `?last_event_id=`) resumes exactly there.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::mpsc;
use warp::Filter;
use warp::reply::Reply;

use super::access::{admit, request_parts};
use super::reply::error_reply;
use super::resume::Resume;
use super::server::ConnectionAbort;
use crate::auth::Identity;
use crate::connection::link::{Gone, Inbound, Link, Outbound, event_frame};
use crate::connection::protocol::CloseCode;
use crate::connection::{Connection, ServerFrame};
use crate::gateway::Gateway;
use crate::limits::Ticket;

/// Frames buffered between the connection and the HTTP body; a full buffer holds the
/// connection back (its outbox and slow-consumer policy then apply).
const BUFFER_EVENTS: usize = 256;

/// How long a closed stream may take to deliver its last frames before its HTTP
/// connection is ended anyway (the client is not reading).
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// One SSE message as the pieces of its wire form. An event's frame is the buffer every
/// recipient shares, not a copy.
type Message = [Bytes; 3];

/// The SSE link: protocol frames out, no commands in (the channels come from the URL).
struct SseLink {
    tx: mpsc::Sender<Message>,
    commands: std::vec::IntoIter<String>,
    resume: Resume,
    /// Ends the HTTP connection when the stream cannot finish (a stalled reader).
    abort: Option<ConnectionAbort>,
    /// Set by the body once it has sent everything, the close included.
    finished: Arc<AtomicBool>,
}

/// `id:<cursor>`, `data:<frame>` and a blank line; no id line without a cursor.
fn message(id: Option<String>, data: Bytes) -> Message {
    let head = match id {
        Some(id) => Bytes::from(format!("id:{id}\ndata:")),
        None => Bytes::from_static(b"data:"),
    };
    [head, data_lines(data), Bytes::from_static(b"\n\n")]
}

/// A frame with line breaks (verbatim JSON may have them between its tokens) as one
/// `data:` line per line, which the client joins again with line feeds. Each continued
/// line starts with a space the client strips (it would strip one of the line's own).
fn data_lines(data: Bytes) -> Bytes {
    if !data.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        return data;
    }
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text
        .split("\r\n")
        .flat_map(|l| l.split(['\r', '\n']))
        .collect();
    Bytes::from(lines.join("\ndata: "))
}

impl Link for SseLink {
    const TRANSPORT: &'static str = "sse";
    const ANSWERS_PINGS: bool = false;

    async fn recv(&mut self) -> Inbound {
        match self.commands.next() {
            Some(command) => Inbound::Command(command),
            None => {
                self.tx.closed().await;
                Inbound::Gone
            }
        }
    }

    async fn send(&mut self, batch: &mut Vec<Outbound>) -> Result<(), Gone> {
        for item in batch.drain(..) {
            let message = match item {
                Outbound::Frame(frame) => {
                    self.resume.on_frame(&frame);
                    // A subscribe reply carries the cursor too: a client that disconnects
                    // before its first event still resumes from its start positions.
                    let id = match frame {
                        ServerFrame::Subscribed { .. } => Some(self.resume.cursor().await),
                        _ => None,
                    };
                    message(id, Bytes::from(frame.to_json()))
                }
                Outbound::Event {
                    channel,
                    record,
                    delta,
                } => {
                    self.resume.on_event(&channel, &record);
                    let frame = Bytes::from(event_frame(&record, delta).clone());
                    message(Some(self.resume.cursor().await), frame)
                }
                Outbound::Ping => [
                    Bytes::from_static(b": ping\n\n"),
                    Bytes::new(),
                    Bytes::new(),
                ],
            };
            self.tx.send(message).await.map_err(|_| Gone)?;
        }
        Ok(())
    }

    /// Queues the `close` frame. A client that has not read the stream to its end within
    /// [`CLOSE_LINGER`] (or whose buffer is full already) loses its HTTP connection, so
    /// its socket and buffered frames do not outlive the kgate connection.
    async fn close(&mut self, code: CloseCode) {
        let frame = ServerFrame::Close(code).to_json();
        let queued = self.tx.try_send(message(None, Bytes::from(frame))).is_ok();
        let Some(abort) = self.abort.clone() else {
            return;
        };
        if !queued {
            abort.abort();
            return;
        }
        let finished = self.finished.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CLOSE_LINGER).await;
            if !finished.load(Ordering::Acquire) {
                abort.abort();
            }
        });
    }
}

/// The channels, start and cursor an SSE or long-poll request names.
pub(super) struct Request {
    pub channels: Vec<String>,
    pub from: serde_json::Value,
    pub cursor: Option<String>,
    /// `delta=true`: every channel gets deltas (docs/protocol.md, "Deltas").
    pub delta: bool,
}

impl Request {
    /// Reads `channel` (repeated, or comma-separated), `from` and the cursor parameter.
    pub fn parse(query: &str, cursor_param: &str) -> Result<Request, warp::reply::Response> {
        let mut channels = Vec::new();
        let mut from = serde_json::Value::from("latest");
        let mut cursor = None;
        let mut delta = false;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "channel" => {
                    channels.extend(v.split(',').filter(|c| !c.is_empty()).map(str::to_string))
                }
                "from" => {
                    from = match &*v {
                        "latest" | "earliest" => serde_json::Value::from(&*v),
                        other => match other
                            .strip_prefix("ts:")
                            .and_then(|t| t.parse::<i64>().ok())
                        {
                            Some(ts) => serde_json::json!({"timestamp": ts}),
                            None => {
                                return Err(error_reply(
                                    StatusCode::BAD_REQUEST,
                                    "invalid_position",
                                    "`from` must be latest, earliest or ts:<epoch ms>",
                                ));
                            }
                        },
                    }
                }
                "delta" => {
                    delta = match &*v {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(error_reply(
                                StatusCode::BAD_REQUEST,
                                "invalid_frame",
                                "`delta` must be true or false",
                            ));
                        }
                    }
                }
                k if k == cursor_param => cursor = Some(v.into_owned()),
                _ => {}
            }
        }
        if channels.is_empty() {
            return Err(error_reply(
                StatusCode::BAD_REQUEST,
                "invalid_channel",
                "name at least one channel: ?channel=prices:AAPL&channel=telemetry",
            ));
        }
        Ok(Request {
            channels,
            from,
            cursor,
            delta,
        })
    }

    /// Admits the client (token, origin, limits), then builds its resume state.
    pub async fn admit(
        &self,
        gateway: &Gateway,
        headers: &HeaderMap,
        query: &str,
        remote: Option<SocketAddr>,
    ) -> Result<(Resume, Ticket, Identity), warp::reply::Response> {
        let (ticket, identity) = admit(gateway, headers, query, remote)?;
        let owner = match identity.subject.is_empty() {
            true => remote.map(|r| r.ip().to_string()).unwrap_or_default(),
            false => identity.subject.clone(),
        };
        Ok((
            self.resume(gateway).await?.owned_by(owner),
            ticket,
            identity,
        ))
    }

    /// The resume state, or the 400 answer for a bad cursor.
    async fn resume(&self, gateway: &Gateway) -> Result<Resume, warp::reply::Response> {
        let store = gateway.services.sessions.clone();
        Resume::new(
            &self.channels,
            self.from.clone(),
            self.cursor.as_deref(),
            store,
        )
        .await
        .map_err(|e| error_reply(StatusCode::BAD_REQUEST, "invalid_cursor", &e.to_string()))
    }
}

/// `GET /v1/sse`.
pub fn route(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "sse")
        .and(warp::get())
        .and(request_parts())
        .and(super::server::remote_addr())
        .and(super::server::connection_abort())
        .then(
            move |headers: HeaderMap,
                  query: String,
                  remote: Option<SocketAddr>,
                  abort: Option<ConnectionAbort>| {
                let gateway = gateway.clone();
                async move { open(gateway, &headers, &query, remote, abort).await }
            },
        )
}

async fn open(
    gateway: Arc<Gateway>,
    headers: &HeaderMap,
    query: &str,
    remote: Option<SocketAddr>,
    abort: Option<ConnectionAbort>,
) -> warp::reply::Response {
    let mut request = match Request::parse(query, "last_event_id") {
        Ok(request) => request,
        Err(response) => return response,
    };
    // EventSource sends the last id it saw as a header when it reconnects by itself.
    if let Some(id) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        request.cursor = Some(id.to_string());
    }
    let (resume, ticket, identity) = match request.admit(&gateway, headers, query, remote).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let (tx, rx) = mpsc::channel(BUFFER_EVENTS);
    let finished = Arc::new(AtomicBool::new(false));
    let link = SseLink {
        tx,
        commands: resume.commands(request.delta).into_iter(),
        resume,
        abort,
        finished: finished.clone(),
    };
    tokio::spawn(async move {
        Connection::new(gateway.services.clone(), remote, ticket, identity)
            .run(link)
            .await;
    });
    let mut response = warp::reply::stream(body(rx, finished)).into_response();
    let h = response.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    // Proxies must pass events through as they come.
    h.insert(
        "cache-control",
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The receiving end of the link as the HTTP body, each message's pieces in order;
/// `finished` is set once the link is gone and all it sent went to the body.
fn body(
    rx: mpsc::Receiver<Message>,
    finished: Arc<AtomicBool>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + Sync + 'static {
    let messages =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let pieces = messages
        .flat_map(|m| futures_util::stream::iter(m.into_iter().filter(|b| !b.is_empty()).map(Ok)));
    let end = futures_util::stream::once(async move {
        finished.store(true, Ordering::Release);
        Ok(Bytes::new())
    });
    pieces.chain(end)
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Query strings made of the pieces the SSE and long-poll parsers look for.
    fn query() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            prop::sample::select(vec![
                "channel",
                "from",
                "cursor",
                "last_event_id",
                "wait_ms",
                "max"
            ])
            .prop_map(str::to_string),
            "[a-z%]{0,6}",
        ];
        let value = prop_oneof![
            Just("p1.".to_string()),
            Just("c1.x.AAAA".to_string()),
            "p1\\.[A-Za-z0-9_-]{0,40}",
            "c1\\.[a-z0-9]{0,8}\\.[A-Za-z0-9_-]{0,20}",
            "ts:-?[0-9]{0,22}",
            "[A-Za-z0-9:,%._-]{0,30}",
            ".{0,20}",
        ];
        proptest::collection::vec((key, value), 0..8).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]

        /// The HTTP request path of SSE and long-poll, from the query to the subscribe
        /// commands, against a real session store: an answer or a 400, never a panic.
        #[test]
        fn arbitrary_queries_never_panic(query in query()) {
            thread_local! {
                static STORE: (tempfile::TempDir, crate::store::StoreHandle, tokio::runtime::Runtime) = {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = crate::store::SessionStore::open(dir.path(), false)
                        .expect("store");
                    let handle = crate::store::StoreHandle::start(Arc::new(store)).expect("store threads");
                    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
                    (dir, handle, runtime)
                };
            }
            for param in ["cursor", "last_event_id"] {
                if let Ok(request) = Request::parse(&query, param) {
                    STORE.with(|(_, store, runtime)| runtime.block_on(async {
                        if let Ok(mut resume) = Resume::new(
                            &request.channels,
                            request.from.clone(),
                            request.cursor.as_deref(),
                            store.clone(),
                        ).await {
                            for command in resume.commands(request.delta) {
                                let _ = crate::connection::protocol::parse_command(
                                    &command,
                                    crate::connection::protocol::Limits::all(1 << 20),
                                );
                            }
                            let _ = resume.cursor().await;
                        }
                    }));
                }
            }
        }
    }
}
