//! The bytes under MQTT: a TCP (or TLS) stream, or the binary messages of a WebSocket
//! (which may each hold several packets, or part of one).

use std::future::Future;
use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// How many bytes one read may add.
const READ_CHUNK: usize = 4096;

/// A byte transport for MQTT packets.
pub trait Wire: Send {
    /// The transport's name in metrics and logs.
    const TRANSPORT: &'static str;
    /// Appends what arrives to `buf`; `Ok(0)` when the peer closed. Cancel-safe.
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes `bytes` and flushes them.
    fn write(&mut self, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the transport.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

impl Wire for TcpStream {
    const TRANSPORT: &'static str = "mqtt";

    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        // Room is made only once bytes are waiting: an idle connection holds no buffer.
        loop {
            self.readable().await?;
            buf.reserve(READ_CHUNK);
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await
    }

    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

/// A TLS stream (or any other byte stream).
pub struct Stream<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Wire for Stream<S> {
    const TRANSPORT: &'static str = "mqtt";

    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(READ_CHUNK);
        self.0.read_buf(buf).await
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes).await?;
        self.0.flush().await
    }

    async fn shutdown(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// MQTT over WebSocket (subprotocol `mqtt`): binary messages only.
pub struct WsWire<S>(pub WebSocketStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Wire for WsWire<S> {
    const TRANSPORT: &'static str = "mqtt-ws";

    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.0.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(0),
                Some(Ok(Message::Binary(bytes))) => {
                    buf.extend_from_slice(&bytes);
                    if !bytes.is_empty() {
                        return Ok(bytes.len());
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket is carried in binary messages, not text",
                    ));
                }
                // Pings are answered by tungstenite.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .map_err(io::Error::other)
    }

    async fn shutdown(&mut self) {
        let _ = self.0.close(None).await;
    }
}
