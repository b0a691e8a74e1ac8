//! The WebSocket [`Link`]: text messages both ways (and binary events under
//! `kgate.v1.avro`), pings, close frames.

use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};

use super::Socket;
use super::inflate::InflateFailure;
use crate::codec::EncodedRecord;
use crate::codec::deflate::InflateError;
use crate::connection::link::{Gone, Inbound, Link, Outbound, event_frame};
use crate::connection::protocol::{BINARY_SUBPROTOCOL, CloseCode, SUBPROTOCOL};
use crate::transport::server::{PeerSocket, TcpProgress};

/// An upgraded WebSocket.
pub(super) struct WsLink {
    pub(super) socket: Socket,
    /// `kgate.v1.avro`: events that have a binary envelope go out as binary messages.
    pub(super) binary: bool,
    /// With permessage-deflate negotiated: event frames this long or longer go compressed.
    pub(super) deflate_min_bytes: Option<usize>,
    /// Bytes of event frames gathered per socket write (`websocket.write_buffer_bytes`).
    pub(super) write_chunk: usize,
    /// The client's close frame arrived: tungstenite answered it, and nothing more is sent.
    pub(super) closed: bool,
    /// Event frames being written. Held here, not in the write's future, so that a write
    /// cancelled half-way (a slow consumer's close) leaves the rest of its frame to go out
    /// before any other frame, the close frame included.
    pub(super) unsent: Option<Box<Unsent>>,
    /// The TCP socket beneath, asked whether the peer is still reading.
    pub(super) peer: Option<PeerSocket>,
    /// The peer's TCP progress at the last heartbeat.
    pub(super) progress: TcpProgress,
}

/// An empty ping frame's bytes: what even a peer that reads nothing acknowledges
/// between two heartbeats.
const PING_FRAME_BYTES: u64 = 2;

/// Whole frames, and how much of them the socket has taken.
pub(super) struct Unsent {
    bytes: Vec<u8>,
    written: usize,
}

/// Appends the header of a final, unmasked (server-to-client) frame of `len` bytes
/// (RFC 6455, 5.2); `compressed` sets RSV1, which marks a permessage-deflate message.
fn frame_header(out: &mut Vec<u8>, opcode: u8, compressed: bool, len: usize) {
    out.push(0x80 | if compressed { 0x40 } else { 0 } | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Opcodes of the data frames events go out as.
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;

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

    /// Appends an event as a whole WebSocket frame: its binary envelope under
    /// `kgate.v1.avro`, else its JSON frame (or delta frame), compressed where deflate applies.
    fn frame_event(&self, out: &mut Vec<u8>, record: &EncodedRecord, delta: bool) {
        let (opcode, compressed, payload): (u8, bool, &[u8]) =
            match (&record.binary, self.binary, self.deflated(record, delta)) {
                (Some(envelope), true, _) => (BINARY, false, &envelope[..]),
                (_, _, Some(deflated)) => (TEXT, true, &deflated[..]),
                _ => (TEXT, false, event_frame(record, delta).as_bytes()),
            };
        frame_header(out, opcode, compressed, payload.len());
        out.extend_from_slice(payload);
    }

    /// Writes `frames` (whole frames) to the socket after what tungstenite holds: its
    /// frames (pongs, close, `welcome` and other replies) go out first, in order. Returns
    /// the buffer, emptied, for the next frames.
    async fn write_frames(&mut self, frames: Vec<u8>) -> Result<Vec<u8>, Gone> {
        if self.closed {
            return Err(Gone);
        }
        self.socket.flush().await.map_err(|_| Gone)?;
        // The usual case: the socket takes everything at once, and nothing is kept.
        let mut written = 0;
        let socket = self.socket.get_mut();
        std::future::poll_fn(|cx| {
            while written < frames.len() {
                match Pin::new(&mut *socket).poll_write(cx, &frames[written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(Gone)),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Pending => break,
                }
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        let mut frames = match written < frames.len() {
            true => {
                self.unsent = Some(Box::new(Unsent {
                    bytes: frames,
                    written,
                }));
                self.finish_unsent().await?
            }
            false => frames,
        };
        frames.clear();
        Ok(frames)
    }

    /// Writes what is left of the last event frames; returns their buffer.
    async fn finish_unsent(&mut self) -> Result<Vec<u8>, Gone> {
        let Some(unsent) = self.unsent.as_mut() else {
            return Ok(Vec::new());
        };
        while unsent.written < unsent.bytes.len() {
            let rest = &unsent.bytes[unsent.written..];
            match self.socket.get_mut().write(rest).await {
                Ok(0) | Err(_) => return Err(Gone),
                Ok(n) => unsent.written += n,
            }
        }
        Ok(self.unsent.take().map(|u| u.bytes).unwrap_or_default())
    }
}

impl Link for WsLink {
    const TRANSPORT: &'static str = "websocket";
    const ANSWERS_PINGS: bool = true;

    async fn recv(&mut self) -> Inbound {
        match self.socket.next().await {
            None => Inbound::Gone,
            Some(Ok(Message::Text(text))) => Inbound::Command(text.to_string()),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(Message::Close(_))) => {
                self.closed = true;
                Inbound::Alive
            }
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

    // Events skip tungstenite's `Message`: their frames are built here from the record's
    // shared bytes, straight into one buffer per socket write (no message, no reference
    // count, no framing pass per event; a fifth of the gateway's CPU in fan-out).
    async fn send(&mut self, batch: &mut Vec<Outbound>) -> Result<(), Gone> {
        let mut frames = self.finish_unsent().await?;
        let count = batch.len();
        for item in batch.drain(..) {
            let message = match item {
                Outbound::Event { record, delta, .. } => {
                    if frames.capacity() == 0 {
                        // Sized for the batch's events, if they are alike.
                        frames.reserve(self.write_chunk.min(count * (record.frame.len() + 14)));
                    }
                    self.frame_event(&mut frames, &record, delta);
                    if frames.len() >= self.write_chunk {
                        frames = self.write_frames(frames).await?;
                    }
                    continue;
                }
                Outbound::Frame(frame) => Message::Text(frame.to_json().into()),
                Outbound::Ping => Message::Ping(Default::default()),
            };
            if !frames.is_empty() {
                frames = self.write_frames(frames).await?;
            }
            self.socket.feed(message).await.map_err(|_| Gone)?;
        }
        if !frames.is_empty() {
            return self.write_frames(frames).await.map(drop);
        }
        self.socket.flush().await.map_err(|_| Gone)
    }

    fn protocol(&self) -> &'static str {
        match self.binary {
            true => BINARY_SUBPROTOCOL,
            false => SUBPROTOCOL,
        }
    }

    fn peer_reads(&mut self) -> bool {
        let Some(now) = self.peer.and_then(|p| p.progress()) else {
            return false;
        };
        let before = std::mem::replace(&mut self.progress, now);
        // A peer that stopped reading acknowledges only until its receive buffer is full,
        // and its window never opens.
        now.acked > before.acked + PING_FRAME_BYTES || now.window > before.window
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
        // The close frame must not land inside a half-written event frame.
        if self.finish_unsent().await.is_err() {
            return;
        }
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

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    use super::{BINARY, TEXT, frame_header};

    /// The frame tungstenite itself would write for the same payload.
    fn tungstenite_frame(opcode: Data, compressed: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            rsv1: compressed,
            opcode: OpCode::Data(opcode),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, payload.to_vec().into())
            .format(&mut out)
            .expect("format");
        out
    }

    #[test]
    fn event_frames_match_tungstenites_at_every_length_encoding() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for (opcode, data, compressed) in [
                (TEXT, Data::Text, false),
                (TEXT, Data::Text, true),
                (BINARY, Data::Binary, false),
            ] {
                let mut ours = Vec::new();
                frame_header(&mut ours, opcode, compressed, payload.len());
                ours.extend_from_slice(&payload);
                assert_eq!(
                    ours,
                    tungstenite_frame(data, compressed, &payload),
                    "{len} bytes, opcode {opcode}, compressed {compressed}"
                );
            }
        }
    }
}
