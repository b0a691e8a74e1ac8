//! What the connection logic ([`super::Connection`]) needs from a transport:
//! commands in, frames out, a close. WebSocket, SSE and long-poll each implement it.

use std::future::Future;
use std::sync::Arc;

use crate::codec::EncodedRecord;
use crate::connection::frame::ServerFrame;
use crate::connection::protocol::CloseCode;

/// One item a connection sends, in order.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A protocol frame other than an event (`welcome`, `subscribed`, `live`, `gap`, `error`, ...).
    Frame(ServerFrame),
    /// A record for the subscription the client named `channel`; with `delta`, its delta
    /// frame (set where the subscription wants deltas, kept only where the client holds
    /// the base: see [`crate::connection`]'s `delta`).
    Event {
        channel: Arc<str>,
        record: Arc<EncodedRecord>,
        delta: bool,
    },
    /// A liveness probe (a WebSocket ping, an SSE comment).
    Ping,
}

/// The frame an event goes as: its delta frame or its full frame.
pub fn event_frame(record: &EncodedRecord, delta: bool) -> &crate::codec::Frame {
    match (&record.delta, delta) {
        (Some(d), true) => &d.frame,
        _ => &record.frame,
    }
}

/// What arrived from the client.
#[derive(Debug)]
pub enum Inbound {
    /// A command (JSON text).
    Command(String),
    /// A command a front end already parsed from its own wire format (MQTT); boxed, as
    /// every connection's task holds room for the largest `Inbound`.
    Parsed(Box<crate::connection::protocol::Command>),
    /// Records the client acknowledged as a front end's own protocol flow (MQTT PUBACK),
    /// not a command of the client's: exempt from the command rate limit.
    Acked(Vec<Acked>),
    /// A binary message, which carries no command in protocol v1.
    Binary,
    /// A message over the inbound size limit.
    TooBig { size: usize, max: usize },
    /// The client broke its protocol's rules; the link knows what to tell it at close.
    ProtocolError(String),
    /// Something that only shows the peer is alive (a pong).
    Alive,
    /// The client went away.
    Gone,
}

/// The highest offset acknowledged on one partition (cumulative, as `ack` is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// Why a send failed.
#[derive(Debug)]
pub struct Gone;

/// A transport as the connection sees it.
pub trait Link: Send {
    /// The transport's name in metrics and logs: `websocket`, `sse` or `poll`.
    const TRANSPORT: &'static str;
    /// True when the peer answers pings, so silence means it is gone (WebSocket);
    /// otherwise a vanished peer shows as a failed send.
    const ANSWERS_PINGS: bool;
    /// True when a connection without subscriptions is closed after
    /// `heartbeat.idle_timeout_secs`; false for protocols whose clients may only publish.
    const CLOSES_IDLE: bool = true;
    /// The next thing from the client. Transports without commands resolve only with `Gone`.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;
    /// Writes `batch` in order (taking it, leaving the buffer empty) and flushes it.
    fn send(&mut self, batch: &mut Vec<Outbound>) -> impl Future<Output = Result<(), Gone>> + Send;
    /// The protocol the client speaks, named in the `welcome` frame.
    fn protocol(&self) -> &'static str {
        crate::connection::protocol::SUBPROTOCOL
    }
    /// True when the link has output of its own (replies to its protocol's control
    /// packets) that the next `send` writes, even with nothing else to send.
    fn has_output(&self) -> bool {
        false
    }
    /// Asked at each heartbeat: true when the peer has read since the last one, as its
    /// TCP shows. A peer reading a backlog in its socket buffers answers a ping only
    /// once it reaches it, and is not silent meanwhile. False where the transport cannot tell.
    fn peer_reads(&mut self) -> bool {
        false
    }
    /// Bytes an event takes on this transport (for the delivered-bytes metric).
    fn event_bytes(&self, record: &EncodedRecord, delta: bool) -> usize {
        event_frame(record, delta).len()
    }
    /// Ends the transport, telling the client why.
    fn close(&mut self, code: CloseCode) -> impl Future<Output = ()> + Send;
}
