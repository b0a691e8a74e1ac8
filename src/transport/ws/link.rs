//! The WebSocket [`Link`]: text messages both ways (and binary events under
//! `kgate.v1.avro`), pings, close frames.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode as WsCloseCode, Data, OpCode,
};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};

use super::Socket;
use super::inflate::InflateFailure;
use crate::codec::EncodedRecord;
use crate::codec::deflate::InflateError;
use crate::connection::link::{Gone, Inbound, Link, Outbound, event_frame};
use crate::connection::protocol::{BINARY_SUBPROTOCOL, CloseCode, SUBPROTOCOL};

/// An upgraded WebSocket.
pub(super) struct WsLink {
    pub(super) socket: Socket,
    /// `kgate.v1.avro`: events that have a binary envelope go out as binary messages.
    pub(super) binary: bool,
    /// With permessage-deflate negotiated: event frames this long or longer go compressed.
    pub(super) deflate_min_bytes: Option<usize>,
}

impl WsLink {
    /// The event's frame (or delta frame) compressed (once per record, shared), where
    /// deflate applies.
    fn deflated<'r>(&self, record: &'r EncodedRecord, delta: bool) -> Option<&'r Bytes> {
        let min = self.deflate_min_bytes?;
        match (&record.delta, delta) {
            (Some(d), true) => d.deflated(min),
            _ => record.deflated(min),
        }
    }

    /// An event's JSON frame (or delta frame), compressed where deflate applies.
    fn text_event(&self, record: &EncodedRecord, delta: bool) -> Message {
        match self.deflated(record, delta) {
            Some(compressed) => Message::Frame(compressed_text(compressed.clone())),
            None => Message::Text(event_frame(record, delta).clone()),
        }
    }
}

/// A text frame whose payload is a permessage-deflate message (RSV1 set).
fn compressed_text(payload: Bytes) -> Frame {
    let header = FrameHeader {
        rsv1: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    Frame::from_payload(header, payload)
}

impl Link for WsLink {
    const TRANSPORT: &'static str = "websocket";
    const ANSWERS_PINGS: bool = true;

    async fn recv(&mut self) -> Inbound {
        match self.socket.next().await {
            None => Inbound::Gone,
            Some(Ok(Message::Text(text))) => Inbound::Command(text.to_string()),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            // Pings, pongs and close frames are answered by tungstenite.
            Some(Ok(_)) => Inbound::Alive,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                Inbound::TooBig {
                    size,
                    max: max_size,
                }
            }
            Some(Err(WsError::Io(e))) => match e.get_ref().and_then(|e| e.downcast_ref()) {
                Some(InflateFailure::Inflate(InflateError::TooLarge { max })) => Inbound::TooBig {
                    size: max + 1,
                    max: *max,
                },
                Some(why) => Inbound::ProtocolError(why.to_string()),
                None => {
                    tracing::debug!(error = %e, "socket error");
                    Inbound::Gone
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "socket error");
                Inbound::Gone
            }
        }
    }

    async fn send(&mut self, batch: &mut Vec<Outbound>) -> Result<(), Gone> {
        for item in batch.drain(..) {
            let message = match item {
                Outbound::Frame(frame) => Message::Text(frame.to_json().into()),
                Outbound::Event { record, delta, .. } => match (&record.binary, self.binary) {
                    (Some(envelope), true) => Message::Binary(envelope.clone()),
                    _ => self.text_event(&record, delta),
                },
                Outbound::Ping => Message::Ping(Default::default()),
            };
            self.socket.feed(message).await.map_err(|_| Gone)?;
        }
        self.socket.flush().await.map_err(|_| Gone)
    }

    fn protocol(&self) -> &'static str {
        match self.binary {
            true => BINARY_SUBPROTOCOL,
            false => SUBPROTOCOL,
        }
    }

    fn event_bytes(&self, record: &EncodedRecord, delta: bool) -> usize {
        match (&record.binary, self.binary) {
            (Some(envelope), true) => envelope.len(),
            _ => self
                .deflated(record, delta)
                .map_or(event_frame(record, delta).len(), Bytes::len),
        }
    }

    /// Sends the close frame, then reads and discards until the peer's close: a socket
    /// closed with unread input is reset, and a reset destroys what the peer has not read
    /// yet (the close frame among it). The caller bounds how long this may take.
    async fn close(&mut self, code: CloseCode) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code.code()),
            reason: code.reason().into(),
        };
        if self.socket.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = self.socket.next().await {
            if message.is_close() {
                break;
            }
        }
    }
}
