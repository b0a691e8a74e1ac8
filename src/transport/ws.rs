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
use tokio::sync::{Notify, mpsc};
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

/// Where the starts of a subscription come from.
enum Resolved {
    /// A client's subscribe: stored in the session, if one is attached.
    Requested(Vec<Start>),
    /// A session's stored positions, being resumed.
    Stored(Vec<Start>),
}

/// Resolves when the attached session was taken by another connection (never without a session).
async fn taken_over(session: &Option<(String, Arc<Notify>)>) {
    match session {
        Some((_, kick)) => kick.notified().await,
        None => std::future::pending().await,
    }
}

/// A subscription plus the replays feeding it.
struct Active {
    sub: Subscription,
    /// The channel name as the client wrote it (the session store's key).
    name: String,
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
    /// The durable session attached to this connection, and the signal that takes it away.
    session: Option<(String, Arc<Notify>)>,
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
            session: None,
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
                _ = taken_over(&self.session) => {
                    tracing::info!(conn, "closing: session attached elsewhere");
                    break End::Close(CloseCode::SessionTakenOver);
                }
            }
        };
        self.unsubscribe_all(false);
        if let Some((session, _)) = self.session.take() {
            self.gateway.detach(&session, conn);
            if let Err(e) = self.gateway.sessions.touch(&session) {
                tracing::warn!(conn, %session, error = %e, "cannot record session last-seen time");
            }
        }
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
                let name = active.name.clone();
                self.remove_subscription(&name, false);
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
            Ok(Command::Attach { id, session }) => self.attach(id, session).await,
            Ok(Command::Ack {
                id,
                topic,
                partition,
                offset,
            }) => self.ack(id.as_ref(), &topic, partition, offset),
            Ok(Command::Unsubscribe { id, channel }) => {
                if self.remove_subscription(&channel, true) {
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

    /// Attaches a durable session and resumes its stored subscriptions from their positions.
    async fn attach(&mut self, id: Option<Value>, session: String) {
        if self.session.is_some() || !self.subs.is_empty() {
            return self.error(
                id.as_ref(),
                ErrorCode::InvalidState,
                "attach must be the first command of a connection, and only once",
            );
        }
        let store = self.gateway.sessions.clone();
        let name = session.clone();
        let record = match tokio::task::spawn_blocking(move || store.touch(&name)).await {
            Ok(Ok(record)) => record,
            Ok(Err(e)) => return self.error(id.as_ref(), ErrorCode::StoreFailed, &e.to_string()),
            Err(e) => return self.error(id.as_ref(), ErrorCode::StoreFailed, &e.to_string()),
        };
        let kick = self.gateway.attach(&session, self.guard.id);
        tracing::debug!(conn = self.guard.id, %session, "session attached");
        self.session = Some((session.clone(), kick));
        let channels: Vec<String> = record
            .subscriptions
            .iter()
            .map(|s| s.channel.clone())
            .collect();
        let resumed = record.created_ms != record.last_seen_ms;
        self.pending
            .push(protocol::attached_frame(id.as_ref(), &session, resumed, &channels).into());
        for stored in record.subscriptions {
            let starts: Vec<Start> = stored
                .positions
                .iter()
                .map(|p| p.map_or(Start::Earliest, Start::Offset))
                .collect();
            let max = self.gateway.config.websocket.max_channel_bytes;
            let registered = Channel::parse(&stored.channel, max)
                .map_err(|e| (ErrorCode::InvalidChannel, e.to_string()))
                .and_then(|channel| {
                    self.register(None, &stored.channel, channel, Resolved::Stored(starts))
                });
            if let Err((code, message)) = registered {
                self.error(
                    None,
                    code,
                    &format!("cannot resume {:?}: {message}", stored.channel),
                );
            }
        }
    }

    /// A cumulative ack: every record of `topic`/`partition` up to `offset` was processed.
    fn ack(&mut self, id: Option<&Value>, topic: &str, partition: i32, offset: i64) {
        let Some((session, _)) = &self.session else {
            return self.error(
                id,
                ErrorCode::NoSession,
                "ack needs a session: send attach first",
            );
        };
        for active in self.subs.values() {
            if &*active.sub.channel.topic != topic {
                continue;
            }
            // Never past what this subscription was sent: an ack cannot skip undelivered records.
            if let Some(sent) = active.sub.delivered_next(partition) {
                let next = offset.saturating_add(1).min(sent);
                self.gateway
                    .sessions
                    .ack(session, &active.name, partition, next);
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
        self.register(id, name, channel, Resolved::Requested(starts))
    }

    /// Registers a subscription with the router and starts the replays it needs.
    fn register(
        &mut self,
        id: Option<Value>,
        name: &str,
        channel: Channel,
        starts: Resolved,
    ) -> Result<(), (ErrorCode, String)> {
        let gateway = self.gateway.clone();
        let route = gateway.router.topic(&channel.topic).ok_or_else(|| {
            (
                ErrorCode::UnknownTopic,
                format!("topic {:?} is no longer served", &*channel.topic),
            )
        })?;
        let partitions = route.partitions();
        let (persist, mut starts) = match starts {
            Resolved::Requested(s) => (true, s),
            Resolved::Stored(s) => (false, s),
        };
        // Partitions added since the session stored its positions start at the beginning.
        starts.resize(
            partitions as usize,
            if persist {
                Start::Latest
            } else {
                Start::Earliest
            },
        );
        let (sub_id, live) = gateway
            .router
            .subscribe(route, &channel, self.outbox.clone());
        if let (true, Some((session, _))) = (persist, &self.session) {
            let positions: Vec<Option<i64>> = starts
                .iter()
                .zip(&live)
                .map(|(start, live)| match start {
                    Start::Latest => Some(*live),
                    Start::Offset(o) => Some(*o),
                    Start::Earliest => None,
                })
                .collect();
            if let Err(e) = gateway.sessions.add_subscription(session, name, &positions) {
                gateway.router.unsubscribe(route, &channel, sub_id);
                return Err((ErrorCode::StoreFailed, e.to_string()));
            }
        }
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
                until: live[partition as usize],
            };
            handles[partition as usize] = gateway.replay.start(request, self.replay_tx.clone());
        }
        self.pending
            .push(protocol::subscribed_frame(id.as_ref(), name, &live).into());
        let mut active = Active {
            sub,
            name: name.to_string(),
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

    /// Drops a subscription; `forget` also removes it from the attached session.
    fn remove_subscription(&mut self, name: &str, forget: bool) -> bool {
        let Some(id) = self.by_channel.remove(name) else {
            return false;
        };
        if let (true, Some((session, _))) = (forget, &self.session) {
            if let Err(e) = self.gateway.sessions.remove_subscription(session, name) {
                tracing::warn!(conn = self.guard.id, %session, error = %e, "cannot remove subscription from session");
            }
        }
        if let Some(active) = self.subs.remove(&id) {
            if let Some(route) = self.gateway.router.topic(&active.sub.channel.topic) {
                self.gateway
                    .router
                    .unsubscribe(route, &active.sub.channel, id);
            }
        }
        true
    }

    fn unsubscribe_all(&mut self, forget: bool) {
        let names: Vec<String> = self.by_channel.keys().cloned().collect();
        for name in names {
            self.remove_subscription(&name, forget);
        }
    }
}
