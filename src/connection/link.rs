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
    /// A record for the subscription the client named `channel`.
    Event {
        channel: Arc<str>,
        record: Arc<EncodedRecord>,
    },
    /// A liveness probe (a WebSocket ping, an SSE comment).
    Ping,
}

/// What arrived from the client.
#[derive(Debug)]
pub enum Inbound {
    /// A command (JSON text).
    Command(String),
    /// A binary message, which carries no command in protocol v1.
    Binary,
    /// A message over the inbound size limit.
    TooBig { size: usize, max: usize },
    /// Something that only shows the peer is alive (a pong).
    Alive,
    /// The client went away.
    Gone,
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
    /// The next thing from the client. Transports without commands resolve only with `Gone`.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;
    /// Writes `batch` in order (taking it, leaving the buffer empty) and flushes it.
    fn send(&mut self, batch: &mut Vec<Outbound>) -> impl Future<Output = Result<(), Gone>> + Send;
    /// The protocol the client speaks, named in the `welcome` frame.
    fn protocol(&self) -> &'static str {
        crate::connection::protocol::SUBPROTOCOL
    }
    /// Bytes an event takes on this transport (for the delivered-bytes metric).
    fn event_bytes(&self, record: &EncodedRecord) -> usize {
        record.frame.len()
    }
    /// Ends the transport, telling the client why.
    fn close(&mut self, code: CloseCode) -> impl Future<Output = ()> + Send;
}
