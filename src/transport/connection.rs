//! One WebSocket connection: reads commands, drains the outbox and replay
//! events through its subscriptions, applies slow-consumer policies, throttles,
//! heartbeats and limits, and writes every pending frame with one flush.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::DefaultDirectRateLimiter;
use rustc_hash::FxHashMap;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use super::link::{Inbound, Link, Outbound};
use super::throttle::Throttle;
use crate::auth::Identity;
use crate::codec::EncodedRecord;
use crate::config::SlowConsumerPolicy;
use crate::gateway::Gateway;
use crate::kafka::replay::{Addressed, ReplayHandle, ReplayRequest};
use crate::limits::Ticket;
use crate::router::{Channel, Registered, TopicRoute};
use crate::session::outbox::{Deliveries, Drained, Outbox, SubscriptionId};
use crate::session::subscription::{Options, ReplayEvent, ReplayStep, Start, Subscription};
use crate::stats::stats;
use crate::telemetry;
use crate::transport::protocol::{self, CloseCode, Command, ErrorCode, From};
use tracing::Instrument;

/// How long a closing connection waits for the peer to read its close frame and answer.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Live records routed per write: bounds the frames held at once (one drain may bring an
/// outbox's 10,000) and lets commands and pings through between chunks.
const ROUTE_CHUNK: usize = 256;

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

/// Waits (up to 30 s) for the topic's last-value cache to finish loading.
async fn wait_for_snapshot(route: &TopicRoute) -> Result<(), (ErrorCode, String)> {
    let Some(latest) = route.latest() else {
        return Err((
            ErrorCode::SnapshotUnavailable,
            format!(
                "topic {:?} keeps no snapshot: set `snapshot = true` in its [[topics]] entry",
                &**route.name()
            ),
        ));
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !latest.lock().is_loaded() {
        if Instant::now() > deadline {
            return Err((
                ErrorCode::SnapshotUnavailable,
                format!(
                    "the snapshot of {:?} is still loading; retry shortly",
                    &**route.name()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Refuses a subscription to a topic deleted from the cluster.
fn not_deleted(route: &TopicRoute) -> Result<(), (ErrorCode, String)> {
    match route.is_deleted() {
        true => Err((
            ErrorCode::TopicDeleted,
            format!("topic {:?} was deleted from the cluster", &**route.name()),
        )),
        false => Ok(()),
    }
}

/// Refuses an offset past its partition's end: the subscription would wait, silent, for
/// records that may never come. Ingest may lag Kafka (or the node the client came from),
/// so Kafka's own end is asked before refusing.
async fn offsets_within_end(
    gateway: &Gateway,
    route: &TopicRoute,
    offsets: &std::collections::BTreeMap<i32, i64>,
) -> Result<(), (ErrorCode, String)> {
    for (&partition, &offset) in offsets {
        if partition >= route.partitions() {
            continue; // refused with its own message by the caller
        }
        let known = route
            .live_offset(partition)
            .into_iter()
            .chain(route.high_watermark(partition))
            .max()
            .unwrap_or(0);
        if offset <= known {
            continue;
        }
        let (_, end) = gateway
            .cluster
            .watermarks(route.name(), partition)
            .await
            .map_err(|e| (ErrorCode::KafkaUnavailable, e.to_string()))?;
        if offset > end {
            return Err((
                ErrorCode::InvalidPosition,
                format!(
                    "offset {offset} of {:?} partition {partition} is past its end: the next record there will be offset {end}",
                    &**route.name()
                ),
            ));
        }
    }
    Ok(())
}

/// When a token that expires at `exp` (Unix seconds) runs out, `leeway` seconds later,
/// as an instant (`now` being `now_secs`); `None` when that is too far ahead to represent.
/// Both numbers come from a client's token: no arithmetic here may overflow.
fn expiry_deadline(
    now: tokio::time::Instant,
    now_secs: u64,
    exp: u64,
    leeway: u64,
) -> Option<tokio::time::Instant> {
    let left = exp.saturating_add(leeway).saturating_sub(now_secs);
    now.checked_add(Duration::from_secs(left))
}

/// The next replayed record, or never while no replay has started.
async fn next_replay(rx: Option<&mut mpsc::Receiver<Addressed>>) -> Option<Addressed> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the connection must close as a slow consumer: a `disconnect`-policy
/// subscription has been behind (records refused by the outbox, not yet drained, or
/// caught up from `behind_since` on) for `grace`.
async fn slow_consumer(outbox: &Outbox, behind_since: Option<Instant>, grace: Duration) {
    loop {
        // `notify_one` leaves a permit, so a refusal between this read and the wait is not missed.
        let refused = outbox.refused();
        let since = behind_since.into_iter().chain(outbox.refused_since()).min();
        match since {
            Some(since) => tokio::select! {
                _ = tokio::time::sleep_until((since + grace).into()) => return,
                _ = refused => {}
            },
            None => refused.await,
        }
    }
}

/// A subscription plus the replays feeding it.
struct Active {
    sub: Subscription,
    /// The topic's slow-consumer policy is `disconnect`.
    disconnect_when_behind: bool,
    /// Since when the subscription has been off the live path because the outbox dropped
    /// its records; cleared when it is live again.
    behind_since: Option<Instant>,
    /// The channel name as the client wrote it (the session store's key).
    name: Arc<str>,
    replays: Vec<ReplayHandle>,
    throttle: Option<Throttle>,
    /// Records the throttle released, before they are tagged with the channel (reused).
    released: Vec<Arc<EncodedRecord>>,
}

impl Active {
    /// Passes records the subscription let through its throttle, if it has one.
    fn emit(
        &mut self,
        records: &mut Vec<Arc<EncodedRecord>>,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        match &mut self.throttle {
            None => self.released.append(records),
            Some(t) => records
                .drain(..)
                .for_each(|r| t.offer(r, now, &mut self.released)),
        }
        self.tag_released(out);
    }

    /// Moves released records to `out` as events of this subscription's channel.
    fn tag_released(&mut self, out: &mut Vec<Outbound>) {
        out.extend(self.released.drain(..).map(|record| Outbound::Event {
            channel: self.name.clone(),
            record,
        }));
    }
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

/// A connection being served: its transport, since when, and (once known) why it ended.
struct Opened {
    transport: &'static str,
    at: Instant,
    reason: Option<&'static str>,
}

/// One connection's state, owned by its task; the transport is a [`Link`].
///
/// Everything it registers elsewhere (router subscriptions, its outbox, the session
/// attachment, the active-connections gauge, its admission ticket) is released by
/// [`Connection::release`] and `Drop`, so a panicking task leaks nothing.
pub struct Connection {
    opened: Option<Opened>,
    gateway: Arc<Gateway>,
    guard: crate::gateway::ConnectionGuard,
    _ticket: Ticket,
    remote: Option<SocketAddr>,
    /// Who the client is and what it may subscribe to; replaced by an `auth` command.
    identity: Identity,
    outbox: Arc<Outbox>,
    /// Boxed: a map allocates room for several entries, and `Active` is large. Looked up
    /// per delivered record, with a fast hash: the ids are kgate's own.
    subs: FxHashMap<SubscriptionId, Box<Active>>,
    by_channel: HashMap<String, SubscriptionId>,
    /// Replayed records, from readers of the memory ring or Kafka; made at the first replay
    /// (a channel allocates its first block up front, which idle connections need not pay).
    replay_tx: Option<mpsc::Sender<Addressed>>,
    replay_rx: Option<mpsc::Receiver<Addressed>>,
    /// The durable session attached to this connection, and the signal that takes it away.
    session: Option<(String, Arc<Notify>)>,
    /// Frames waiting to be written, in order.
    pending: Vec<Outbound>,
    scratch: Vec<Outbound>,
    /// Live deliveries taken from the outbox, routed [`ROUTE_CHUNK`] per write.
    drained: Deliveries,
    /// What the outbox dropped, acted on once `drained` is routed.
    dropped: Drained,
    /// Records a subscription let through, before its throttle (reused).
    emitted: Vec<Arc<EncodedRecord>>,
    commands: DefaultDirectRateLimiter,
    rate_limited_streak: u32,
    /// Last time anything arrived from the peer.
    last_heard: Instant,
    /// Since when the connection has had no subscription.
    idle_since: Option<Instant>,
    /// When the next throttled value is due.
    next_flush: Option<Instant>,
    /// How long a `disconnect`-policy subscription may stay behind.
    grace: Duration,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.release();
        if let Some(opened) = self.opened.take() {
            // No reason means the loop never finished: its task is unwinding from a panic,
            // or its future was dropped (an HTTP request whose client went away).
            let reason = match (opened.reason, std::thread::panicking()) {
                (Some(reason), _) => reason,
                (None, true) => {
                    tracing::warn!(
                        conn = self.guard.id,
                        "connection task panicked; its subscriptions, session and slots were released"
                    );
                    "aborted"
                }
                (None, false) => {
                    tracing::debug!(
                        conn = self.guard.id,
                        "connection dropped before it finished"
                    );
                    "cancelled"
                }
            };
            telemetry::connection_closed(opened.transport, reason, opened.at.elapsed());
        }
    }
}

impl Connection {
    /// The state of a newly admitted client.
    pub fn new(
        gateway: Arc<Gateway>,
        remote: Option<SocketAddr>,
        ticket: Ticket,
        identity: Identity,
    ) -> Connection {
        let ws = &gateway.config.websocket;
        let limits = &gateway.config.limits;
        let grace = Duration::from_millis(limits.slow_consumer_grace_ms);
        let outbox = Arc::new(Outbox::new(ws.outbox_max_messages, ws.outbox_max_bytes));
        let commands = gateway.admission.command_limiter();
        Connection {
            opened: None,
            guard: gateway.connection_opened(),
            gateway,
            _ticket: ticket,
            remote,
            identity,
            outbox,
            subs: FxHashMap::default(),
            by_channel: HashMap::new(),
            replay_tx: None,
            replay_rx: None,
            session: None,
            pending: Vec::new(),
            scratch: Vec::new(),
            drained: Deliveries::default(),
            dropped: Drained::default(),
            emitted: Vec::new(),
            commands,
            rate_limited_streak: 0,
            last_heard: Instant::now(),
            idle_since: Some(Instant::now()),
            next_flush: None,
            grace,
        }
    }

    /// Serves the client over `link` until either side ends the connection.
    /// Returns the link, for transports that answer with what it collected (long-poll).
    // Not `async fn`, and `serve` borrows: a future stores the arguments of an `async fn`
    // a second time once its body moves them into locals (rust-lang/rust#62958), which
    // cost every idle connection's task about 1 KB.
    pub fn run<L: Link>(mut self, mut link: L) -> impl Future<Output = L> {
        // Every line logged for this connection carries its id (and session, once attached).
        let span = tracing::info_span!(
            "conn",
            id = self.guard.id,
            transport = L::TRANSPORT,
            session = tracing::field::Empty
        );
        async move {
            self.serve(&mut link).await;
            link
        }
        .instrument(span)
    }

    async fn serve<L: Link>(&mut self, link: &mut L) {
        let conn = self.guard.id;
        let opened = Instant::now();
        telemetry::connection_opened(L::TRANSPORT);
        self.opened = Some(Opened {
            transport: L::TRANSPORT,
            at: opened,
            reason: None,
        });
        tracing::debug!(conn, remote = ?self.remote, transport = L::TRANSPORT, "connection opened");
        let mut shutdown = self.gateway.shutdown_signal();
        let hb = self.gateway.config.heartbeat.clone();
        let mut heartbeat = tokio::time::interval(Duration::from_secs(hb.ping_interval_secs));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        self.push_text(protocol::welcome_frame(
            conn,
            &self.gateway.node,
            link.protocol(),
        ));
        let end = loop {
            if let Err(end) = self.flush(link).await {
                break end;
            }
            if *shutdown.borrow() {
                break End::Close(CloseCode::GoingAway);
            }
            if !self.drained.is_empty() {
                self.route_drained();
                continue;
            }
            let flush_at = self.next_flush.map(tokio::time::Instant::from_std);
            let behind_since = self.behind_since();
            let outbox = self.outbox.clone();
            let token_deadline = self.token_deadline();
            // One timer for both deadlines: every timer is stored in each connection's task.
            let wake_at = flush_at.into_iter().chain(token_deadline).min();
            tokio::select! {
                inbound = link.recv() => {
                    self.last_heard = Instant::now();
                    match inbound {
                        Inbound::Gone => break End::Gone,
                        Inbound::Command(text) => {
                            if let Err(end) = self.on_command(&text).await {
                                break end;
                            }
                        }
                        Inbound::Binary => self.error(None, ErrorCode::BinaryNotSupported,
                            "binary frames carry no commands in protocol v1; send JSON text"),
                        Inbound::Alive => {}
                        Inbound::TooBig { size, max } => {
                            tracing::info!(conn, size, max, "closing: inbound message too big");
                            stats().oversize_messages_closed.add(1);
                            break End::Close(CloseCode::MessageTooBig);
                        }
                    }
                }
                _ = self.outbox.ready() => self.on_outbox(),
                Some(event) = next_replay(self.replay_rx.as_mut()) => {
                    self.on_replay(event);
                    // Take what else is ready, so one write carries many records.
                    for _ in 0..1024 {
                        match self.replay_rx.as_mut().map(mpsc::Receiver::try_recv) {
                            Some(Ok(event)) => self.on_replay(event),
                            _ => break,
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let now = Instant::now();
                    if L::ANSWERS_PINGS && now.duration_since(self.last_heard) > Duration::from_secs(hb.timeout_secs) {
                        tracing::info!(conn, "closing: heartbeat timeout");
                        stats().heartbeat_timeouts.add(1);
                        break End::Close(CloseCode::HeartbeatTimeout);
                    }
                    if self.idle_since.is_some_and(|t| now.duration_since(t) > Duration::from_secs(hb.idle_timeout_secs)) {
                        tracing::info!(conn, "closing: idle without subscriptions");
                        stats().idle_timeouts.add(1);
                        break End::Close(CloseCode::IdleTimeout);
                    }
                    self.shrink_buffers();
                    self.pending.push(Outbound::Ping);
                    self.end_deleted_topics();
                }
                _ = async { tokio::time::sleep_until(wake_at.unwrap_or_else(tokio::time::Instant::now)).await }, if wake_at.is_some() => {
                    let now = tokio::time::Instant::now();
                    if token_deadline.is_some_and(|d| d <= now) {
                        tracing::info!(conn, "closing: token expired");
                        stats().token_expired_closes.add(1);
                        break End::Close(CloseCode::TokenExpired);
                    }
                    self.flush_throttles();
                }
                _ = slow_consumer(&outbox, behind_since, self.grace) => {
                    break self.slow_consumer_close();
                }
                _ = shutdown.changed() => {}
                _ = taken_over(&self.session) => {
                    tracing::info!(conn, "closing: session attached elsewhere");
                    break End::Close(CloseCode::SessionTakenOver);
                }
            }
        };
        let session = self.session.as_ref().map(|(id, _)| id.clone());
        self.release();
        if let Some(session) = session {
            if let Err(e) = self.gateway.sessions.mark_seen(&session) {
                tracing::warn!(conn, %session, error = %e, "cannot record session last-seen time");
            }
        }
        let reason = match end {
            End::Gone => "peer_gone",
            End::Close(code) => code.name(),
        };
        if let Some(opened) = &mut self.opened {
            opened.reason = Some(reason);
        }
        if let End::Close(code) = end {
            let linger = match code.peer_may_answer() {
                true => CLOSE_LINGER,
                false => Duration::from_millis(200),
            };
            let _ = tokio::time::timeout(linger, link.close(code)).await;
        }
        tracing::info!(
            conn,
            reason,
            lifetime_ms = opened.elapsed().as_millis() as u64,
            "connection closed"
        );
    }

    /// Releases what the connection registered elsewhere; idempotent.
    fn release(&mut self) {
        self.unsubscribe_all(false);
        self.outbox.clear();
        if let Some((session, _)) = self.session.take() {
            self.gateway.detach(&session, self.guard.id);
        }
    }

    /// The sender replay readers deliver to, made on first use.
    fn replay_sender(&mut self) -> mpsc::Sender<Addressed> {
        if let Some(tx) = &self.replay_tx {
            return tx.clone();
        }
        // Events carry batches of up to 64 records: at most about 1,000 records in flight.
        let (tx, rx) = mpsc::channel(16);
        self.replay_rx = Some(rx);
        self.replay_tx = Some(tx.clone());
        tx
    }

    fn push_text(&mut self, text: String) {
        self.pending.push(Outbound::Control(text));
    }

    /// Writes every pending frame, then flushes once.
    async fn flush<L: Link>(&mut self, link: &mut L) -> Result<(), End> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_secs(self.gateway.config.websocket.write_timeout_secs);
        let mut frames = std::mem::take(&mut self.pending);
        let (mut records, mut bytes, mut newest) = (0, 0, None);
        for frame in &frames {
            if let Outbound::Event { record, .. } = frame {
                records += 1;
                bytes += link.event_bytes(record) as u64;
                newest = newest.max(record.timestamp);
            }
        }
        let write = link.send(&mut frames);
        // A blocked write still gives way to a slow-consumer disconnect.
        let outbox = self.outbox.clone();
        let behind_since = self.behind_since();
        let written = tokio::select! {
            r = tokio::time::timeout(timeout, write) => match r {
                Ok(Ok(())) => {
                    if records > 0 {
                        telemetry::delivered(L::TRANSPORT, records, bytes, newest);
                    }
                    Ok(())
                }
                Ok(Err(_)) => Err(End::Gone),
                Err(_) => Err(End::Close(CloseCode::WriteTimeout)),
            },
            _ = slow_consumer(&outbox, behind_since, self.grace) => Err(self.slow_consumer_close()),
        };
        // A large buffer is kept for the next batch (growing one afresh costs page faults at
        // high rates; `shrink_buffers` returns it once the connection is quiet); a small one
        // is cheap to make again, and an idle connection holds none.
        if frames.capacity() > 64 {
            self.pending = frames;
        }
        written
    }

    /// Since when the longest-behind `disconnect`-policy subscription has been behind.
    fn behind_since(&self) -> Option<Instant> {
        // Refusals drained but not yet acted on count from the first of them.
        self.subs
            .values()
            .filter_map(|a| a.behind_since)
            .chain(self.dropped.refused_since)
            .min()
    }

    /// When the token (plus the configured clock leeway) runs out; `None` without a token,
    /// or for an `exp` too far ahead to be a time this process will see.
    fn token_deadline(&self) -> Option<tokio::time::Instant> {
        expiry_deadline(
            tokio::time::Instant::now(),
            crate::auth::now_secs(),
            self.identity.expires_at?,
            self.gateway.config.auth.leeway_secs,
        )
    }

    fn slow_consumer_close(&self) -> End {
        tracing::info!(
            conn = self.guard.id,
            "closing: slow consumer past its grace period"
        );
        stats().slow_consumer_disconnected.add(1);
        End::Close(CloseCode::SlowConsumer)
    }

    fn error(&mut self, id: Option<&Value>, code: ErrorCode, message: &str) {
        self.push_text(protocol::error_frame(id, code, message));
    }

    /// Takes what the outbox queued and dropped, and routes the first chunk of it.
    fn on_outbox(&mut self) {
        self.dropped = self.outbox.drain_into(&mut self.drained);
        self.route_drained();
    }

    /// Routes up to [`ROUTE_CHUNK`] drained live records through their subscriptions; once
    /// all are routed, applies the slow-consumer policy to what the outbox dropped after them.
    fn route_drained(&mut self) {
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.scratch);
        for delivery in self.drained.take(ROUTE_CHUNK) {
            if let Some(active) = self.subs.get_mut(&delivery.subscription) {
                active.sub.on_live(delivery.record, &mut self.emitted);
                active.emit(&mut self.emitted, now, &mut out);
            }
        }
        self.scratch = out;
        self.emit_scratch();
        self.flush_throttles();
        if !self.drained.is_empty() {
            return;
        }
        let report = std::mem::take(&mut self.dropped);
        for ((id, partition), range) in report.dropped {
            let Some(active) = self.subs.get_mut(&id) else {
                continue;
            };
            if active.disconnect_when_behind && active.behind_since.is_none() {
                // The grace clock started at the first refusal, not at this drain.
                active.behind_since = Some(report.refused_since.unwrap_or(now).min(now));
            }
            // Off the live path: re-read from the ring or Kafka at the client's pace.
            if let Some(start) = active.sub.fall_behind(partition, range.last) {
                stats().slow_consumer_catch_up.add(1);
                let until = range.last + 1;
                let handle = self.start_replay(id, partition, start, until);
                if let Some(active) = self.subs.get_mut(&id) {
                    if let Some(slot) = active.replays.get_mut(partition as usize) {
                        slot.cancel();
                        *slot = handle;
                    }
                }
            }
        }
    }

    /// Gives back the buffer memory a burst left behind. Called at each heartbeat: a busy
    /// connection keeps its buffers (growing them afresh costs page faults at high rates),
    /// a quiet one returns them.
    fn shrink_buffers(&mut self) {
        self.pending.shrink_to_fit();
        self.scratch.shrink_to_fit();
        self.emitted.shrink_to_fit();
        self.drained.shrink();
        self.outbox.shrink();
        self.subs
            .values_mut()
            .for_each(|a| a.released.shrink_to_fit());
    }

    /// Starts a replay of one partition of subscription `id`.
    fn start_replay(
        &mut self,
        id: SubscriptionId,
        partition: i32,
        start: Start,
        until: i64,
    ) -> ReplayHandle {
        let Some(active) = self.subs.get(&id) else {
            return ReplayHandle::default();
        };
        let request = ReplayRequest {
            subscription: id,
            topic: active.sub.channel.topic.clone(),
            partition,
            start,
            until,
        };
        let tx = self.replay_sender();
        self.gateway.replay.start(request, tx)
    }

    /// Sends throttled values that are due and notes when the next one will be.
    fn flush_throttles(&mut self) {
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.scratch);
        let mut next: Option<Instant> = None;
        for active in self.subs.values_mut() {
            if let Some(due) = active
                .throttle
                .as_mut()
                .and_then(|t| t.flush_due(now, &mut active.released))
            {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
            active.tag_released(&mut out);
        }
        self.scratch = out;
        self.emit_scratch();
        self.next_flush = next;
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
            .extend(notices.into_iter().map(Outbound::Control));
        let step = active.sub.on_replay(partition, event, &mut self.emitted);
        let mut out = std::mem::take(&mut self.scratch);
        active.emit(&mut self.emitted, Instant::now(), &mut out);
        self.scratch = out;
        match step {
            ReplayStep::Continue => {}
            ReplayStep::Live => {
                // Events after the hand-off report Live again: count the hand-off once.
                if let Some(handle) = active
                    .replays
                    .get(partition as usize)
                    .filter(|h| !h.is_cancelled())
                {
                    telemetry::replay_completed(handle.tier().as_str());
                    handle.cancel();
                }
                if active.sub.is_live() {
                    active.behind_since = None;
                }
            }
            ReplayStep::Restart(from) => {
                let until = active.sub.catch_up_target(partition).unwrap_or(from);
                let handle = self.start_replay(id, partition, Start::Offset(from), until);
                if let Some(slot) = self
                    .subs
                    .get_mut(&id)
                    .and_then(|a| a.replays.get_mut(partition as usize))
                {
                    slot.cancel();
                    *slot = handle;
                }
            }
        }
        self.emit_scratch();
        if let Some(active) = self.subs.get_mut(&id) {
            if active.sub.take_live_marker() {
                let channel = active.sub.channel.to_string();
                let frame = protocol::live_frame(active.sub.request_id.as_ref(), &channel);
                self.push_text(frame);
            }
        }
    }

    fn emit_scratch(&mut self) {
        self.pending.append(&mut self.scratch);
    }

    async fn on_command(&mut self, text: &str) -> Result<(), End> {
        // Every command counts, acks too: a client acks cumulatively, per partition, not per event.
        if self.commands.check().is_err() {
            self.rate_limited_streak += 1;
            stats().rate_limited_commands.add(1);
            if self.rate_limited_streak > self.gateway.config.limits.max_rate_limited_commands {
                tracing::info!(conn = self.guard.id, "closing: command flood");
                stats().rate_limit_disconnects.add(1);
                return Err(End::Close(CloseCode::RateLimited));
            }
            let limit = self.gateway.config.limits.commands_per_sec;
            self.error(
                None,
                ErrorCode::RateLimited,
                &format!("more than {limit} commands per second; this one was not executed"),
            );
            return Ok(());
        }
        self.rate_limited_streak = 0;
        let parsed = protocol::parse_command(text, self.gateway.config.websocket.max_command_bytes);
        match parsed {
            Err(e) => self.error(e.id.as_ref(), e.code, &e.message),
            Ok(Command::Ping { id }) => self.push_text(protocol::pong_frame(id.as_ref())),
            Ok(Command::Attach { id, session }) => self.attach(id, session).await,
            Ok(Command::Auth { id, token }) => self.refresh_token(id.as_ref(), &token),
            Ok(Command::Ack {
                id,
                topic,
                partition,
                offset,
            }) => self.ack(id.as_ref(), &topic, partition, offset),
            Ok(Command::Unsubscribe { id, channel }) => {
                if self.remove_subscription(&channel, true) {
                    self.push_text(protocol::unsubscribed_frame(id.as_ref(), &channel));
                } else {
                    self.error(
                        id.as_ref(),
                        ErrorCode::NotSubscribed,
                        &format!("not subscribed to {channel:?}"),
                    );
                }
            }
            Ok(Command::Subscribe {
                id,
                channel,
                from,
                options,
                snapshot,
            }) => {
                if let Err((code, message)) = self
                    .subscribe(id.clone(), &channel, from, options, snapshot)
                    .await
                {
                    self.error(id.as_ref(), code, &message);
                }
            }
        }
        self.idle_since = if self.subs.is_empty() {
            self.idle_since.or(Some(Instant::now()))
        } else {
            None
        };
        Ok(())
    }

    /// Replaces the connection's token with a fresh one for the same subject; subscriptions
    /// the new token no longer permits are removed.
    fn refresh_token(&mut self, id: Option<&Value>, token: &str) {
        let identity = self
            .gateway
            .auth
            .authenticate(Some(token))
            .and_then(|identity| match identity.subject == self.identity.subject {
                true => Ok(identity),
                false => Err(crate::auth::AuthError::SubjectChanged),
            });
        let identity = match identity {
            Ok(identity) => identity,
            Err(e) => {
                stats().auth_failures.add(1);
                let message = format!(
                    "{}: {e}; the current token stays in force until it expires",
                    e.code()
                );
                return self.error(id, ErrorCode::InvalidToken, &message);
            }
        };
        self.identity = identity;
        let revoked: Vec<(Arc<str>, Option<Value>)> = self
            .subs
            .values()
            .filter(|a| !self.identity.permissions.can_subscribe(&a.sub.channel))
            .map(|a| (a.name.clone(), a.sub.request_id.clone()))
            .collect();
        for (name, request_id) in revoked {
            self.remove_subscription(&name, false);
            stats().auth_forbidden.add(1);
            self.error(
                request_id.as_ref(),
                ErrorCode::Forbidden,
                &format!("the new token does not permit {name:?}; unsubscribed"),
            );
        }
        self.push_text(protocol::authenticated_frame(id, self.identity.expires_at));
    }

    /// Refuses a channel the token does not permit.
    fn permit(&self, channel: &Channel, name: &str) -> Result<(), (ErrorCode, String)> {
        if self.identity.permissions.can_subscribe(channel) {
            return Ok(());
        }
        stats().auth_forbidden.add(1);
        Err((
            ErrorCode::Forbidden,
            format!("the token does not permit channel {name:?}"),
        ))
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
        // Ids are per token subject: two users' sessions never meet.
        let scoped = self.identity.scoped_session(&session);
        // In place rather than on the blocking pool: when thousands of clients resume at once,
        // their Kafka replays queue there, and an attach waiting behind them timed out.
        let store = &self.gateway.sessions;
        let record = match tokio::task::block_in_place(|| store.touch(&scoped)) {
            Ok(record) => record,
            Err(e) => return self.error(id.as_ref(), ErrorCode::StoreFailed, &e.to_string()),
        };
        let kick = self.gateway.attach(&scoped, self.guard.id);
        tracing::debug!(conn = self.guard.id, session = %scoped, "session attached");
        tracing::Span::current().record("session", scoped.as_str());
        self.session = Some((scoped, kick));
        let channels: Vec<String> = record
            .subscriptions
            .iter()
            .map(|s| s.channel.clone())
            .collect();
        let resumed = record.created_ms != record.last_seen_ms;
        self.push_text(protocol::attached_frame(
            id.as_ref(),
            &session,
            resumed,
            &channels,
        ));
        for stored in record.subscriptions {
            let starts: Vec<Start> = stored
                .positions
                .iter()
                .map(|p| p.map_or(Start::Earliest, Start::Offset))
                .collect();
            let max = self.gateway.config.websocket.max_channel_bytes;
            let registered = Channel::parse(&stored.channel, max)
                .map_err(|e| (ErrorCode::InvalidChannel, e.to_string()))
                .and_then(|channel| self.permit(&channel, &stored.channel).map(|()| channel))
                .and_then(|channel| {
                    self.register(
                        None,
                        &stored.channel,
                        channel,
                        Resolved::Stored(starts),
                        stored.options.clone(),
                        false,
                    )
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
        options: Options,
        snapshot: bool,
    ) -> Result<(), (ErrorCode, String)> {
        let limits = &self.gateway.config.websocket;
        let channel = Channel::parse(name, limits.max_channel_bytes)
            .map_err(|e| (ErrorCode::InvalidChannel, e.to_string()))?;
        self.permit(&channel, name)?;
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
        not_deleted(route)?;
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
        if snapshot {
            wait_for_snapshot(route).await?;
        }
        let partitions = route.partitions();
        if let From::Offsets(offsets) | From::OffsetsElseEarliest(offsets) = &from {
            offsets_within_end(&gateway, route, offsets).await?;
        }
        let starts: Vec<Start> = match from {
            From::Latest => vec![Start::Latest; partitions as usize],
            From::Earliest => vec![Start::Earliest; partitions as usize],
            From::Offsets(offsets) | From::OffsetsElseEarliest(offsets)
                if offsets.keys().any(|p| *p >= partitions) =>
            {
                let p = offsets.keys().max().copied().unwrap_or(0);
                return Err((
                    ErrorCode::InvalidPosition,
                    format!(
                        "topic {:?} has {partitions} partitions; there is no partition {p}",
                        &*channel.topic
                    ),
                ));
            }
            From::OffsetsElseEarliest(offsets) => (0..partitions)
                .map(|p| {
                    offsets
                        .get(&p)
                        .map_or(Start::Earliest, |o| Start::Offset(*o))
                })
                .collect(),
            From::Offsets(offsets) => (0..partitions)
                .map(|p| offsets.get(&p).map_or(Start::Latest, |o| Start::Offset(*o)))
                .collect(),
            From::Timestamp(ts) => gateway
                .cluster
                .offsets_for_time(&channel.topic, partitions, ts)
                .await
                .map_err(|e| (ErrorCode::KafkaUnavailable, e.to_string()))?
                .into_iter()
                .map(|o| o.map_or(Start::Latest, Start::Offset))
                .collect(),
        };
        self.register(
            id,
            name,
            channel,
            Resolved::Requested(starts),
            options,
            snapshot,
        )
    }

    /// Registers a subscription with the router and starts the replays it needs.
    fn register(
        &mut self,
        id: Option<Value>,
        name: &str,
        channel: Channel,
        starts: Resolved,
        options: Options,
        snapshot: bool,
    ) -> Result<(), (ErrorCode, String)> {
        let gateway = self.gateway.clone();
        let route = gateway.router.topic(&channel.topic).ok_or_else(|| {
            (
                ErrorCode::UnknownTopic,
                format!("topic {:?} is no longer served", &*channel.topic),
            )
        })?;
        not_deleted(route)?;
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
        let Registered {
            id: sub_id,
            live,
            snapshot: snapshot_records,
        } = gateway.router.subscribe(
            route,
            &channel,
            options.filter.clone(),
            self.outbox.clone(),
            snapshot,
        );
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
            if let Err(e) = gateway
                .sessions
                .add_subscription(session, name, &options, &positions)
            {
                gateway.router.unsubscribe(route, &channel, sub_id);
                return Err((ErrorCode::StoreFailed, e.to_string()));
            }
        }
        let buffer = gateway.config.replay.handoff_buffer_records;
        let (sub, replays) = Subscription::new(
            sub_id,
            channel,
            options.filter,
            id.clone(),
            &starts,
            &live,
            buffer,
        );
        let mut handles = vec![ReplayHandle::default(); partitions as usize];
        for (partition, start) in replays {
            let request = ReplayRequest {
                subscription: sub_id,
                topic: route.name().clone(),
                partition,
                start,
                until: live[partition as usize],
            };
            handles[partition as usize] = gateway.replay.start(request, self.replay_sender());
        }
        self.push_text(protocol::subscribed_frame(id.as_ref(), name, &live));
        let name: Arc<str> = Arc::from(name);
        if snapshot {
            let count = snapshot_records.len();
            self.pending
                .extend(snapshot_records.into_iter().map(|record| Outbound::Event {
                    channel: name.clone(),
                    record,
                }));
            self.push_text(protocol::snapshot_end_frame(id.as_ref(), &name, count));
        }
        let mut active = Active {
            sub,
            disconnect_when_behind: route.slow_consumer() == SlowConsumerPolicy::Disconnect,
            behind_since: None,
            name: name.clone(),
            released: Vec::new(),
            replays: handles,
            throttle: options
                .max_rate
                .or(route.default_max_rate())
                .map(Throttle::new),
        };
        if active.sub.take_live_marker() {
            self.push_text(protocol::live_frame(id.as_ref(), &name));
        }
        self.by_channel.insert(name.to_string(), sub_id);
        self.subs.insert(sub_id, Box::new(active));
        Ok(())
    }

    /// Drops a subscription; `forget` also removes it from the attached session.
    /// Ends the subscriptions to topics deleted from the cluster, each with an error
    /// naming its channel: no record will come, and waiting silently would look like a
    /// quiet topic. A durable session forgets them too.
    fn end_deleted_topics(&mut self) {
        let router = &self.gateway.router;
        let gone: Vec<(Arc<str>, Option<Value>)> = self
            .subs
            .values()
            .filter(|a| {
                router
                    .topic(&a.sub.channel.topic)
                    .is_none_or(|r| r.is_deleted())
            })
            .map(|a| (a.name.clone(), a.sub.request_id.clone()))
            .collect();
        for (name, request_id) in gone {
            self.remove_subscription(&name, true);
            let message = format!("the topic of channel {name:?} was deleted from the cluster");
            self.error(request_id.as_ref(), ErrorCode::TopicDeleted, &message);
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
        ))]

        /// Token claims arithmetic (issue 17.1): any `exp` and leeway, never a panic, and a
        /// deadline that is never before now.
        #[test]
        fn expiry_deadlines_never_overflow(exp in any::<u64>(), leeway in any::<u64>(), now_secs in any::<u64>()) {
            let now = tokio::time::Instant::now();
            if let Some(deadline) = expiry_deadline(now, now_secs, exp, leeway) {
                prop_assert!(deadline >= now);
            }
        }
    }

    #[test]
    fn far_expiries_have_no_deadline_and_past_ones_are_due_now() {
        let now = tokio::time::Instant::now();
        assert_eq!(expiry_deadline(now, 1_000, u64::MAX, 60), None);
        assert_eq!(
            expiry_deadline(now, 1_000, 10_000_000_000_000_000_000, 60),
            None
        );
        assert_eq!(expiry_deadline(now, 1_000, 900, 60), Some(now));
        assert_eq!(
            expiry_deadline(now, 1_000, 1_000, 60),
            Some(now + Duration::from_secs(60))
        );
    }
}
