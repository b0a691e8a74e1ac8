//! The connection engine: one client's state and the loop that serves it, whatever
//! the transport. A transport (WebSocket, SSE, long-poll) is a [`Link`]; the engine
//! reads commands from it and writes frames to it, and depends on the shared
//! [`Services`], not on the whole gateway.
//!
//! - [`dispatch`]: the loop, and the write of every pending frame with one flush;
//! - [`command`]: command rate limit and dispatch;
//! - [`subscribe`]: channel checks, start resolution, (un)registering subscriptions;
//! - [`replay`]: catch-up reads feeding a subscription until it hands off to live;
//! - [`flow`]: live records from the ring or the outbox, slow-consumer policy, throttles;
//! - [`session`]: durable sessions (attach, ack, takeover);
//! - [`auth`]: token refresh and expiry;
//! - [`publish`]: records the client produces to Kafka.

mod auth;
mod command;
mod delta;
mod dispatch;
mod flow;
pub mod frame;
pub mod link;
pub mod protocol;
mod publish;
mod replay;
pub mod services;
mod session;
mod subscribe;
#[cfg(test)]
mod testing;
mod throttle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

pub use frame::ServerFrame;
pub use link::{Acked, Gone, Inbound, Link, Outbound};
pub use services::Services;

use crate::auth::Identity;
use crate::codec::EncodedRecord;
use crate::kafka::replay::Addressed;
use crate::limits::Ticket;
use crate::router::outbox::{Deliveries, Drained, Outbox, SubscriptionId};
use crate::telemetry;
use flow::Active;
use protocol::{CloseCode, ErrorCode};
use services::ConnectionGuard;

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
    services: Arc<Services>,
    guard: ConnectionGuard,
    _ticket: Ticket,
    remote: Option<SocketAddr>,
    /// Who the client is and what it may subscribe to; replaced by an `auth` command.
    identity: Identity,
    outbox: Arc<Outbox>,
    /// Boxed: a map allocates room for several entries, and `Active` is large. Looked up
    /// per delivered record, with a fast hash: the ids are kgate's own.
    subs: FxHashMap<SubscriptionId, Box<Active>>,
    /// Replayed records, from readers of the memory ring or Kafka; made at the first replay
    /// (a channel allocates its first block up front, which idle connections need not pay).
    replay_tx: Option<mpsc::Sender<Addressed>>,
    replay_rx: Option<mpsc::Receiver<Addressed>>,
    /// The durable session attached to this connection (taking it away wakes the outbox).
    session: Option<String>,
    /// Frames waiting to be written, in order.
    pending: Vec<Outbound>,
    scratch: Vec<Outbound>,
    /// Live deliveries taken from the outbox, routed [`flow::ROUTE_CHUNK`] per write.
    drained: Deliveries,
    /// What the outbox dropped, acted on once `drained` is routed.
    dropped: Drained,
    /// Records a subscription let through, before its throttle (reused).
    emitted: Vec<Arc<EncodedRecord>>,
    /// The last read of the ring stopped at its budget: read again before waiting.
    pull_more: bool,
    /// Turns whose budget ran out: where the next read of the ring starts.
    pull_turn: u32,
    /// The subscriptions that pull, in the order of this read (reused).
    pull_order: Vec<SubscriptionId>,
    commands: crate::limits::CommandLimiter,
    rate_limited_streak: u32,
    /// Last time anything arrived from the peer.
    last_heard: Instant,
    /// Since when the connection has had no subscription.
    idle_since: Option<Instant>,
    /// When the next throttled value is due.
    next_flush: Option<Instant>,
    /// Made at the first `publish`.
    publishing: Option<Box<publish::Publishing>>,
    /// What went last per key, made at the first delta subscription.
    sent: Option<Box<delta::Sent>>,
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
        services: Arc<Services>,
        remote: Option<SocketAddr>,
        ticket: Ticket,
        identity: Identity,
    ) -> Connection {
        let ws = &services.config.websocket;
        let outbox = Arc::new(Outbox::new(ws.outbox_max_messages, ws.outbox_max_bytes));
        let commands = services.admission.command_limiter();
        Connection {
            opened: None,
            guard: services.connections.opened(&outbox),
            services,
            _ticket: ticket,
            remote,
            identity,
            outbox,
            subs: FxHashMap::default(),
            replay_tx: None,
            replay_rx: None,
            session: None,
            pending: Vec::new(),
            scratch: Vec::new(),
            drained: Deliveries::default(),
            dropped: Drained::default(),
            emitted: Vec::new(),
            pull_more: false,
            pull_turn: 0,
            pull_order: Vec::new(),
            commands,
            rate_limited_streak: 0,
            last_heard: Instant::now(),
            idle_since: Some(Instant::now()),
            next_flush: None,
            publishing: None,
            sent: None,
        }
    }

    /// Serves the client over `link` until either side ends the connection.
    /// Returns the link, for transports that answer with what it collected (long-poll).
    // Not `async fn`, and `serve` borrows: a future stores the arguments of an `async fn`
    // a second time once its body moves them into locals (rust-lang/rust#62958), which
    // cost every idle connection's task about 1 KB.
    pub fn run<L: Link>(mut self, mut link: L) -> impl Future<Output = L> {
        // At debug, every line logged for this connection carries its id (and session, once
        // attached). Not at info: an enabled span lives in tracing's registry as long as the
        // connection, about 1.4 KB per idle connection; info lines name `conn` themselves.
        let span = tracing::debug_span!(
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

    /// Releases what the connection registered elsewhere; idempotent.
    fn release(&mut self) {
        self.unsubscribe_all();
        self.outbox.clear();
        if let Some(session) = self.session.take() {
            self.services.attachments.detach(&session, self.guard.id);
        }
    }

    fn push(&mut self, frame: ServerFrame) {
        self.pending.push(Outbound::Frame(frame));
    }

    fn error(&mut self, id: Option<&Value>, code: ErrorCode, message: impl Into<String>) {
        self.push(ServerFrame::Error {
            id: id.cloned(),
            code,
            message: message.into(),
        });
    }
}
