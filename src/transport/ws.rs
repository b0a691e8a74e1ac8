//! The WebSocket transport: the upgrade (with kgate's own buffer sizes) and the
//! per-connection loop that reads commands and writes frames.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};
use warp::Filter;
use warp::reply::Reply;

use crate::codec::EncodedRecord;
use crate::gateway::Gateway;
use crate::kafka::replay::{Addressed, ReplayHandle, ReplayRequest};
use crate::router::Channel;
use crate::session::outbox::{Delivery, Outbox, SubscriptionId};
use crate::session::subscription::{ReplayEvent, Start, Subscription};
use crate::transport::protocol::{self, CloseCode, Command, ErrorCode, From, SUBPROTOCOL};

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// `GET /v1/ws`: the WebSocket endpoint.
pub fn route(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "ws")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::addr::remote())
        .map(
            move |headers: HeaderMap, upgrade: Option<OnUpgrade>, remote: Option<SocketAddr>| {
                handshake(gateway.clone(), &headers, upgrade, remote)
            },
        )
}

fn refuse(status: StatusCode, code: &str, message: &str) -> warp::reply::Response {
    let body = warp::reply::json(&serde_json::json!({"code": code, "message": message}));
    warp::reply::with_status(body, status).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn handshake(
    gateway: Arc<Gateway>,
    headers: &HeaderMap,
    upgrade: Option<OnUpgrade>,
    remote: Option<SocketAddr>,
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
    let protocol_ok = offered.is_empty() || has_token(offered, SUBPROTOCOL);
    if !protocol_ok {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_subprotocol",
            &format!("offered subprotocols {offered:?} do not include {SUBPROTOCOL}"),
        );
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = warp::reply::Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", accept);
    }
    if !offered.is_empty() {
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    let ws = &gateway.config.websocket;
    // tungstenite's defaults hold 128 KiB per connection; these keep idle connections small.
    let config = WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        .max_write_buffer_size(ws.write_buffer_bytes.max(ws.outbox_max_bytes) * 2)
        .max_message_size(Some(ws.max_message_bytes))
        .max_frame_size(Some(ws.max_frame_bytes));
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                Connection::new(gateway, remote).run(socket).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    response
}

/// A subscription plus the replays feeding it.
struct Active {
    sub: Subscription,
    replays: Vec<ReplayHandle>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.replays.iter().for_each(ReplayHandle::cancel);
    }
}

/// Why the connection loop ended.
enum End {
    /// The peer closed or the socket failed; nothing more to send.
    Gone,
    /// kgate closes with this code.
    Close(CloseCode),
}

struct Connection {
    gateway: Arc<Gateway>,
    guard: crate::gateway::ConnectionGuard,
    remote: Option<SocketAddr>,
    outbox: Arc<Outbox>,
    subs: HashMap<SubscriptionId, Active>,
    by_channel: HashMap<String, SubscriptionId>,
    replay_tx: mpsc::Sender<Addressed>,
    replay_rx: mpsc::Receiver<Addressed>,
    /// Frames waiting to be written, in order.
    pending: Vec<Utf8Bytes>,
    scratch: Vec<Arc<EncodedRecord>>,
    drained: VecDeque<Delivery>,
}

impl Connection {
    fn new(gateway: Arc<Gateway>, remote: Option<SocketAddr>) -> Connection {
        let ws = &gateway.config.websocket;
        let outbox = Arc::new(Outbox::new(ws.outbox_max_messages, ws.outbox_max_bytes));
        let (replay_tx, replay_rx) = mpsc::channel(256);
        Connection {
            guard: gateway.connection_opened(),
            gateway,
            remote,
            outbox,
            subs: HashMap::new(),
            by_channel: HashMap::new(),
            replay_tx,
            replay_rx,
            pending: Vec::new(),
            scratch: Vec::new(),
            drained: VecDeque::new(),
        }
    }

    async fn run(mut self, mut socket: Socket) {
        let conn = self.guard.id;
        tracing::debug!(conn, remote = ?self.remote, "connection opened");
        let mut shutdown = self.gateway.shutdown_signal();
        self.pending.push(protocol::welcome_frame(conn).into());
        let end = loop {
            if let Err(end) = self.flush(&mut socket).await {
                break end;
            }
            if *shutdown.borrow() {
                break End::Close(CloseCode::GoingAway);
            }
            tokio::select! {
                message = socket.next() => match message {
                    None => break End::Gone,
                    Some(Ok(Message::Text(text))) => self.on_command(&text).await,
                    Some(Ok(Message::Binary(_))) => self.error(None, ErrorCode::BinaryNotSupported,
                        "binary frames carry no commands in protocol v1; send JSON text"),
                    Some(Ok(_)) => {} // ping/pong/close are answered by tungstenite
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        tracing::info!(conn, size, max_size, "closing: inbound message too big");
                        break End::Close(CloseCode::MessageTooBig);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(conn, error = %e, "socket error");
                        break End::Gone;
                    }
                },
                _ = self.outbox.ready() => {
                    if self.on_outbox() {
                        tracing::info!(conn, "closing: slow consumer, outbox full");
                        break End::Close(CloseCode::SlowConsumer);
                    }
                }
                Some(event) = self.replay_rx.recv() => {
                    self.on_replay(event);
                    // Take what else is ready, so one write carries many records.
                    for _ in 0..1024 {
                        match self.replay_rx.try_recv() {
                            Ok(event) => self.on_replay(event),
                            Err(_) => break,
                        }
                    }
                }
                _ = shutdown.changed() => {}
            }
        };
        self.unsubscribe_all();
        if let End::Close(code) = end {
            let frame = CloseFrame {
                code: WsCloseCode::from(code.code()),
                reason: code.reason().into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(Some(frame))).await;
        }
        tracing::debug!(conn, "connection closed");
    }

    /// Writes every pending frame, then flushes once.
    async fn flush(&mut self, socket: &mut Socket) -> Result<(), End> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_secs(self.gateway.config.websocket.write_timeout_secs);
        let frames = std::mem::take(&mut self.pending);
        let write = async {
            for frame in frames {
                socket.feed(Message::Text(frame)).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Close(CloseCode::WriteTimeout)),
        }
    }

    fn error(&mut self, id: Option<&Value>, code: ErrorCode, message: &str) {
        self.pending
            .push(protocol::error_frame(id, code, message).into());
    }

    /// Routes queued live records through their subscriptions; true if the outbox overflowed.
    fn on_outbox(&mut self) -> bool {
        let mut drained = std::mem::take(&mut self.drained);
        let overflowed = self.outbox.drain_into(&mut drained);
        for delivery in drained.drain(..) {
            if let Some(active) = self.subs.get_mut(&delivery.subscription) {
                active.sub.on_live(delivery.record, &mut self.scratch);
            }
        }
        self.drained = drained;
        self.emit_scratch();
        overflowed
    }

    fn on_replay(&mut self, (id, partition, event): Addressed) {
        let Some(active) = self.subs.get_mut(&id) else {
            return;
        };
        let mut notices = Vec::new();
        match &event {
            ReplayEvent::Gap {
                requested,
                earliest,
            } => notices.push(protocol::gap_frame(
                &active.sub.channel.to_string(),
                &active.sub.channel.topic,
                partition,
                *requested,
                *earliest,
            )),
            ReplayEvent::Failed(reason) => {
                let channel = active.sub.channel.to_string();
                let message = format!(
                    "catch-up read of {channel} partition {partition} failed ({reason}); subscription removed"
                );
                let request_id = active.sub.request_id.clone();
                self.remove_subscription(&channel);
                self.error(request_id.as_ref(), ErrorCode::ReplayFailed, &message);
                return;
            }
            _ => {}
        }
        self.pending
            .extend(notices.into_iter().map(Utf8Bytes::from));
        if active.sub.on_replay(partition, event, &mut self.scratch) {
            if let Some(handle) = active.replays.get(partition as usize) {
                handle.cancel();
            }
        }
        self.emit_scratch();
        if let Some(active) = self.subs.get_mut(&id) {
            if active.sub.take_live_marker() {
                let channel = active.sub.channel.to_string();
                let frame = protocol::live_frame(active.sub.request_id.as_ref(), &channel);
                self.pending.push(frame.into());
            }
        }
    }

    fn emit_scratch(&mut self) {
        self.pending
            .extend(self.scratch.drain(..).map(|r| r.frame.clone()));
    }

    async fn on_command(&mut self, text: &str) {
        match protocol::parse_command(text, self.gateway.config.websocket.max_command_bytes) {
            Err(e) => self.error(e.id.as_ref(), e.code, &e.message),
            Ok(Command::Ping { id }) => self.pending.push(protocol::pong_frame(id.as_ref()).into()),
            Ok(Command::Unsubscribe { id, channel }) => {
                if self.remove_subscription(&channel) {
                    self.pending
                        .push(protocol::unsubscribed_frame(id.as_ref(), &channel).into());
                } else {
                    self.error(
                        id.as_ref(),
                        ErrorCode::NotSubscribed,
                        &format!("not subscribed to {channel:?}"),
                    );
                }
            }
            Ok(Command::Subscribe { id, channel, from }) => {
                if let Err((code, message)) = self.subscribe(id.clone(), &channel, from).await {
                    self.error(id.as_ref(), code, &message);
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        id: Option<Value>,
        name: &str,
        from: From,
    ) -> Result<(), (ErrorCode, String)> {
        let limits = &self.gateway.config.websocket;
        let channel = Channel::parse(name, limits.max_channel_bytes)
            .map_err(|e| (ErrorCode::InvalidChannel, e.to_string()))?;
        let gateway = self.gateway.clone();
        let Some(route) = gateway.router.topic(&channel.topic) else {
            let served: Vec<&str> = gateway.router.topics().map(|t| &**t.name()).collect();
            return Err((
                ErrorCode::UnknownTopic,
                format!(
                    "topic {:?} is not served here; served topics: {}",
                    &*channel.topic,
                    served.join(", ")
                ),
            ));
        };
        if self.by_channel.contains_key(name) {
            return Err((
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {name:?}"),
            ));
        }
        if self.subs.len() >= limits.max_subscriptions {
            return Err((
                ErrorCode::TooManySubscriptions,
                format!(
                    "a connection may hold {} subscriptions",
                    limits.max_subscriptions
                ),
            ));
        }
        let partitions = route.partitions();
        let starts: Vec<Start> = match from {
            From::Latest => vec![Start::Latest; partitions as usize],
            From::Earliest => vec![Start::Earliest; partitions as usize],
            From::Offsets(offsets) => {
                if let Some((p, _)) = offsets.iter().find(|(p, _)| **p >= partitions) {
                    return Err((
                        ErrorCode::InvalidPosition,
                        format!(
                            "topic {:?} has {partitions} partitions; there is no partition {p}",
                            &*channel.topic
                        ),
                    ));
                }
                (0..partitions)
                    .map(|p| offsets.get(&p).map_or(Start::Latest, |o| Start::Offset(*o)))
                    .collect()
            }
            From::Timestamp(ts) => gateway
                .cluster
                .offsets_for_time(&channel.topic, partitions, ts)
                .await
                .map_err(|e| (ErrorCode::KafkaUnavailable, e.to_string()))?
                .into_iter()
                .map(|o| o.map_or(Start::Latest, Start::Offset))
                .collect(),
        };
        let (sub_id, live) = gateway
            .router
            .subscribe(route, &channel, self.outbox.clone());
        let buffer = gateway.config.replay.handoff_buffer_records;
        let (sub, replays) = Subscription::new(sub_id, channel, id.clone(), &starts, &live, buffer);
        let mut handles = vec![ReplayHandle::default(); partitions as usize];
        for (partition, start) in replays {
            let request = ReplayRequest {
                subscription: sub_id,
                topic: route.name().clone(),
                format: route.format(),
                partition,
                start,
            };
            handles[partition as usize] = gateway.replay.start(request, self.replay_tx.clone());
        }
        self.pending
            .push(protocol::subscribed_frame(id.as_ref(), name, &live).into());
        let mut active = Active {
            sub,
            replays: handles,
        };
        if active.sub.take_live_marker() {
            self.pending
                .push(protocol::live_frame(id.as_ref(), name).into());
        }
        self.by_channel.insert(name.to_string(), sub_id);
        self.subs.insert(sub_id, active);
        Ok(())
    }

    fn remove_subscription(&mut self, name: &str) -> bool {
        let Some(id) = self.by_channel.remove(name) else {
            return false;
        };
        if let Some(active) = self.subs.remove(&id) {
            if let Some(route) = self.gateway.router.topic(&active.sub.channel.topic) {
                self.gateway
                    .router
                    .unsubscribe(route, &active.sub.channel, id);
            }
        }
        true
    }

    fn unsubscribe_all(&mut self) {
        let names: Vec<String> = self.by_channel.keys().cloned().collect();
        for name in names {
            self.remove_subscription(&name);
        }
    }
}
