//! Inbound permessage-deflate beneath tungstenite, which fails every frame with RSV1
//! set: a compressed message is gathered, inflated within the message size limit and
//! handed up as one plain frame; every other frame passes through untouched. Serves
//! both ends: the gateway (masked client frames) and the bench's load clients.

use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::codec::deflate::{InflateError, inflate};

/// A socket whose inbound compressed messages arrive inflated.
pub struct Inflating<S> {
    inner: S,
    /// `None` when the connection did not negotiate deflate: reads pass straight through.
    state: Option<Box<Inflater>>,
}

impl<S> Inflating<S> {
    /// Inflates compressed messages when `max_message_bytes` is given (deflate was
    /// negotiated), refusing those that inflate past it.
    pub fn new(inner: S, max_message_bytes: Option<usize>) -> Self {
        Self::starting(inner, max_message_bytes, Step::Header)
    }

    /// [`Inflating::new`] for a client: the server's HTTP response to the upgrade comes
    /// first and passes through as it is.
    pub fn after_response(inner: S, max_message_bytes: Option<usize>) -> Self {
        Self::starting(inner, max_message_bytes, Step::Response { matched: 0 })
    }

    fn starting(inner: S, max_message_bytes: Option<usize>, step: Step) -> Self {
        Inflating {
            inner,
            state: max_message_bytes.map(|max| {
                Box::new(Inflater {
                    max,
                    head: [0; 14],
                    head_len: 0,
                    step,
                    message: None,
                    pending: BytesMut::new(),
                })
            }),
        }
    }
}

/// Why reading stopped, carried inside the `io::Error` tungstenite hands up.
#[derive(Debug, thiserror::Error)]
pub enum InflateFailure {
    #[error(transparent)]
    Inflate(#[from] InflateError),
    /// A frame that breaks permessage-deflate's framing rules.
    #[error("{0}")]
    Framing(&'static str),
}

struct Inflater {
    max: usize,
    /// The frame header being read.
    head: [u8; 14],
    head_len: usize,
    step: Step,
    /// A compressed message being gathered: its opcode and its (unmasked) bytes so far.
    message: Option<(Data, Vec<u8>)>,
    /// Bytes read ahead of the frame being parsed (and frames that came with the end
    /// of the HTTP response), read before the socket.
    pending: BytesMut,
}

/// Bytes read from the socket ahead of the frame being parsed.
const READ_AHEAD: usize = 8192;

/// Reads into `dst`: from `pending` first; then straight from `inner` when `dst` is
/// large (a payload, bounded by its frame); else through `pending`, so parsing a run of
/// small frames costs one socket read per chunk, not two per frame.
fn read_from<S: AsyncRead + Unpin>(
    pending: &mut BytesMut,
    inner: &mut S,
    cx: &mut Context<'_>,
    dst: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if pending.is_empty() {
        if dst.remaining() >= READ_AHEAD / 2 {
            return Pin::new(inner).poll_read(cx, dst);
        }
        // On the stack: a connection waiting for its next frame holds no buffer.
        let mut chunk = [0u8; READ_AHEAD];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(inner).poll_read(cx, &mut read))?;
        pending.extend_from_slice(read.filled());
    }
    let n = pending.len().min(dst.remaining());
    dst.put_slice(&pending[..n]);
    pending.advance(n);
    if pending.is_empty() {
        // An idle connection holds no read-ahead.
        *pending = BytesMut::new();
    }
    Poll::Ready(Ok(()))
}

enum Step {
    /// Passing an HTTP response through; `matched` bytes of its closing `\r\n\r\n` seen.
    Response {
        matched: usize,
    },
    /// Reading a frame header into `head`.
    Header,
    /// Handing up a plain frame's header from `head[at..]`, then its `left` payload bytes.
    PassHeader {
        at: usize,
        left: u64,
    },
    Pass {
        left: u64,
    },
    /// Reading a compressed frame's payload, unmasking it from position `pos`.
    Gather {
        left: u64,
        mask: Option<[u8; 4]>,
        pos: usize,
        fin: bool,
    },
    /// Handing up an inflated message as one frame.
    Emit {
        frame: Vec<u8>,
        at: usize,
    },
    /// Reading failed; what follows reads as the end of the stream.
    Failed,
}

/// How an HTTP head ends.
const END_OF_HEAD: &[u8] = b"\r\n\r\n";

/// A header's length from its second byte (length code and mask bit).
fn header_len(second: u8) -> usize {
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + if second & 0x80 != 0 { 4 } else { 0 }
}

impl Inflater {
    fn fail(&mut self, why: InflateFailure) -> Poll<io::Result<()>> {
        self.step = Step::Failed;
        self.message = None;
        Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)))
    }

    fn poll_read<S: AsyncRead + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match &mut self.step {
                Step::Failed => return Poll::Ready(Ok(())),
                Step::Response { matched } => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut *inner).poll_read(cx, buf))?;
                    let got = &buf.filled()[before..];
                    let mut end = None;
                    for (i, &byte) in got.iter().enumerate() {
                        *matched = match byte {
                            _ if byte == END_OF_HEAD[*matched] => *matched + 1,
                            b'\r' => 1,
                            _ => 0,
                        };
                        if *matched == END_OF_HEAD.len() {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    if let Some(end) = end {
                        // Frames that came with the response's end are read as frames.
                        self.pending = BytesMut::from(&got[end..]);
                        buf.set_filled(before + end);
                        self.step = Step::Header;
                    }
                    return Poll::Ready(Ok(()));
                }
                Step::Header => {
                    let need = match self.head_len {
                        0 | 1 => 2,
                        _ => header_len(self.head[1]),
                    };
                    if self.head_len < need {
                        let mut read = ReadBuf::new(&mut self.head[self.head_len..need]);
                        ready!(read_from(&mut self.pending, inner, cx, &mut read))?;
                        let n = read.filled().len();
                        if n == 0 {
                            if self.head_len == 0 {
                                return Poll::Ready(Ok(()));
                            }
                            // Cut off mid-header: hand up what came for tungstenite to report.
                            self.step = Step::PassHeader { at: 0, left: 0 };
                        }
                        self.head_len += n;
                        continue;
                    }
                    self.step = match FrameHeader::parse(&mut Cursor::new(&self.head[..need])) {
                        Ok(Some((header, len))) => match self.on_header(header, len) {
                            Ok(step) => step,
                            Err(why) => return self.fail(why),
                        },
                        // Not a header this reads: tungstenite refuses it.
                        _ => Step::PassHeader { at: 0, left: 0 },
                    };
                }
                Step::PassHeader { at, left } => {
                    let n = (self.head_len - *at).min(buf.remaining());
                    buf.put_slice(&self.head[*at..*at + n]);
                    *at += n;
                    if *at == self.head_len {
                        let left = *left;
                        self.head_len = 0;
                        self.step = match left {
                            0 => Step::Header,
                            left => Step::Pass { left },
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                Step::Pass { left } => {
                    let limit = (*left).min(buf.remaining() as u64) as usize;
                    let mut read = ReadBuf::new(buf.initialize_unfilled_to(limit));
                    ready!(read_from(&mut self.pending, inner, cx, &mut read))?;
                    let n = read.filled().len();
                    buf.advance(n);
                    *left -= n as u64;
                    if *left == 0 {
                        self.step = Step::Header;
                    }
                    // n == 0 is the end of the stream mid-frame, which tungstenite reports.
                    return Poll::Ready(Ok(()));
                }
                Step::Gather {
                    left,
                    mask,
                    pos,
                    fin,
                } => {
                    let Some((_, message)) = self.message.as_mut() else {
                        return self.fail(InflateFailure::Framing("no compressed message"));
                    };
                    if *left > 0 {
                        let start = message.len();
                        message.resize(start + (*left).min(16 * 1024) as usize, 0);
                        let mut read = ReadBuf::new(&mut message[start..]);
                        let polled = read_from(&mut self.pending, inner, cx, &mut read);
                        let n = read.filled().len();
                        message.truncate(start + n);
                        ready!(polled)?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                        }
                        if let Some(mask) = mask {
                            for (i, byte) in message[start..].iter_mut().enumerate() {
                                *byte ^= mask[(*pos + i) % 4];
                            }
                        }
                        *pos += n;
                        *left -= n as u64;
                        continue;
                    }
                    if !*fin {
                        self.step = Step::Header;
                        continue;
                    }
                    let masked = mask.is_some();
                    let Some((opcode, message)) = self.message.take() else {
                        return self.fail(InflateFailure::Framing("no compressed message"));
                    };
                    let payload = match inflate(&message, self.max) {
                        Ok(payload) => payload,
                        Err(why) => return self.fail(why.into()),
                    };
                    // Masked as it came (a client's frames must be), with a zero key: a no-op.
                    let header = FrameHeader {
                        opcode: OpCode::Data(opcode),
                        mask: masked.then_some([0; 4]),
                        ..FrameHeader::default()
                    };
                    let mut frame = Vec::with_capacity(14 + payload.len());
                    if header.format(payload.len() as u64, &mut frame).is_err() {
                        return self.fail(InflateFailure::Framing("unformattable frame"));
                    }
                    frame.extend_from_slice(&payload);
                    self.step = Step::Emit { frame, at: 0 };
                }
                Step::Emit { frame, at } => {
                    let n = (frame.len() - *at).min(buf.remaining());
                    buf.put_slice(&frame[*at..*at + n]);
                    *at += n;
                    if *at == frame.len() {
                        self.step = Step::Header;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// What to do with a frame whose header was just read.
    fn on_header(&mut self, header: FrameHeader, len: u64) -> Result<Step, InflateFailure> {
        let gathering = self.message.is_some();
        let (starts, continues) = match header.opcode {
            OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                if gathering {
                    return Err(InflateFailure::Framing(
                        "a new message began inside a fragmented one",
                    ));
                }
                (header.rsv1.then_some(data), false)
            }
            OpCode::Data(Data::Continue) => (None, gathering && !header.rsv1),
            _ => (None, false),
        };
        if starts.is_none() && !continues {
            return Ok(Step::PassHeader { at: 0, left: len });
        }
        self.head_len = 0;
        let gathered = self.message.as_ref().map_or(0, |(_, m)| m.len());
        // The compressed size is bounded too, before reading any of it.
        if (gathered as u64).saturating_add(len) > self.max as u64 {
            return Err(InflateError::TooLarge { max: self.max }.into());
        }
        if let Some(data) = starts {
            self.message = Some((data, Vec::new()));
        }
        Ok(Step::Gather {
            left: len,
            mask: header.mask,
            pos: 0,
            fin: header.is_final,
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.state {
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
            Some(state) => state.poll_read(&mut this.inner, cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::deflate::deflate;
    use tokio::io::AsyncReadExt;

    /// A client frame: FIN, RSV1 as given, masked with `mask`.
    fn frame(opcode: u8, fin: bool, rsv1: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![opcode | if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 }];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn read_all(input: Vec<u8>, max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Inflating::new(&input[..], Some(max))
            .read_to_end(&mut out)
            .await
            .map(|_| out)
    }

    /// The payload of each (unmasked, possibly zero-key masked) frame in `bytes`.
    fn payloads(mut bytes: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (header, len) = FrameHeader::parse(&mut Cursor::new(bytes))
                .unwrap()
                .unwrap();
            let head = header.len(len);
            let mask = header.mask.unwrap_or([0; 4]);
            let body = bytes[head..head + len as usize]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4]);
            out.push((u8::from(header.opcode), header.rsv1, body.collect()));
            bytes = &bytes[head + len as usize..];
        }
        out
    }

    #[tokio::test]
    async fn compressed_messages_arrive_inflated_and_plain_ones_untouched() {
        let command = br#"{"type":"subscribe","id":"1","channel":"prices","from":"earliest"}"#;
        let z = deflate(command).unwrap();
        let (first, rest) = z.split_at(z.len() / 2);
        let mut input = frame(0x1, true, true, &z, [1, 2, 3, 4]);
        input.extend(frame(0x9, true, false, b"ping", [5, 6, 7, 8]));
        // A fragmented compressed message with a ping between its fragments.
        input.extend(frame(0x1, false, true, first, [9, 9, 9, 9]));
        input.extend(frame(0x9, true, false, b"", [1, 1, 1, 1]));
        input.extend(frame(0x0, true, false, rest, [7, 0, 7, 0]));
        input.extend(frame(0x1, true, false, b"plain", [3, 3, 3, 3]));
        let out = read_all(input, 1024).await.unwrap();
        assert_eq!(
            payloads(&out),
            vec![
                (0x1, false, command.to_vec()),
                (0x9, false, b"ping".to_vec()),
                (0x9, false, vec![]),
                (0x1, false, command.to_vec()),
                (0x1, false, b"plain".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn a_bomb_fails_the_read_with_too_large() {
        let bomb = deflate(&vec![b' '; 1 << 20]).unwrap();
        let err = read_all(frame(0x1, true, true, &bomb, [1, 2, 3, 4]), 65_536)
            .await
            .unwrap_err();
        let why = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<InflateFailure>());
        assert!(
            matches!(
                why,
                Some(InflateFailure::Inflate(InflateError::TooLarge {
                    max: 65_536
                }))
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unmasked_frames_from_a_server_arrive_inflated_and_unmasked() {
        let event = br#"{"type":"event","channel":"prices","topic":"prices","partition":0,"offset":7,"data":{"price":101.5}}"#;
        let z = deflate(event).unwrap();
        let mut input = vec![0x81 | 0x40, z.len() as u8];
        input.extend_from_slice(&z);
        let out = read_all(input, 1024).await.unwrap();
        assert_eq!(out[1] & 0x80, 0, "no mask bit");
        assert_eq!(payloads(&out), vec![(0x1, false, event.to_vec())]);
    }

    #[tokio::test]
    async fn a_client_passes_the_upgrade_response_through_then_inflates() {
        let event =
            br#"{"type":"event","offset":7,"data":{"price":101.5,"bid":101.4,"ask":101.6}}"#;
        let z = deflate(event).unwrap();
        let response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        let mut input = response.to_vec();
        input.extend([0x81 | 0x40, z.len() as u8]);
        input.extend_from_slice(&z);
        let mut out = Vec::new();
        Inflating::after_response(&input[..], Some(1024))
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(&out[..response.len()], response);
        assert_eq!(
            payloads(&out[response.len()..]),
            vec![(0x1, false, event.to_vec())]
        );
    }

    #[tokio::test]
    async fn without_deflate_frames_pass_through_as_they_are() {
        let input = frame(0x1, true, true, b"not inflated", [1, 2, 3, 4]);
        let mut out = Vec::new();
        Inflating::new(&input[..], None)
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, input);
    }
}
