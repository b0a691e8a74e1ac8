//! A client of kgate's own WebSocket protocol, used by `kgate tail`, the tests
//! and the load tool. It depends on nothing of the gateway's: the protocol is
//! what it shares (docs/protocol.md).

pub mod delta;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The subprotocol of JSON frames (`kgate.v1.json`).
pub const SUBPROTOCOL: &str = "kgate.v1.json";
/// The subprotocol with binary events for `binary = true` topics (`kgate.v1.avro`).
pub const BINARY_SUBPROTOCOL: &str = "kgate.v1.avro";

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: WsError },
    #[error("WebSocket error: {0}")]
    Socket(#[from] WsError),
    #[error("the server sent a frame that is not JSON: {0}")]
    NotJson(String),
    #[error("the server's first frame was not `welcome`: {0}")]
    NoWelcome(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Delta(#[from] delta::DeltaError),
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A JSON frame (`event`, `subscribed`, `error`, ...).
    Frame(Value),
    /// The connection closed, with the server's close code and reason if it sent one.
    Closed(Option<(u16, String)>),
}

/// A data message, unparsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    /// A JSON text frame.
    Text(String),
    /// A binary event (`kgate.v1.avro`): one datum of schemas/envelope.avsc.
    Binary(bytes::Bytes),
}

/// One WebSocket connection speaking protocol v1.
pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// The connection id from the `welcome` frame.
    pub connection_id: u64,
    /// The id of the gateway node that answered (from `welcome`).
    pub node: String,
    /// The protocol the gateway says the connection speaks (from `welcome`).
    pub protocol: String,
    /// The frames delta frames apply to; [`Client::next`] and [`Client::next_text`] apply them.
    deltas: delta::Deltas,
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8080/v1/ws`), offering the v1 subprotocol.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with_token(url, None).await
    }

    /// Connects with `token` (if any) in the Authorization header.
    pub async fn connect_with_token(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        Self::connect_as(url, token, SUBPROTOCOL).await
    }

    /// Connects offering `kgate.v1.avro`: events of `binary = true` topics arrive as binary messages.
    pub async fn connect_binary(url: &str) -> Result<Client, ClientError> {
        Self::connect_as(url, None, BINARY_SUBPROTOCOL).await
    }

    async fn connect_as(
        url: &str,
        token: Option<&str>,
        protocol: &'static str,
    ) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            url: url.to_string(),
            source,
        };
        let mut request = url.into_client_request().map_err(connect_err)?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| connect_err(WsError::HttpFormat(e.into())))?;
            request.headers_mut().insert("authorization", value);
        }
        // tungstenite zero-fills its whole read buffer before each read: 16 KiB rather than
        // its 128 KiB default keeps thousands of test clients cheap.
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let (socket, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), false)
                .await
                .map_err(connect_err)?;
        let mut client = Client {
            socket,
            next_id: 1,
            connection_id: 0,
            node: String::new(),
            protocol: String::new(),
            deltas: delta::Deltas::default(),
        };
        match client.next().await? {
            Incoming::Frame(f) if f["type"] == "welcome" => {
                client.connection_id = f["connection_id"].as_u64().unwrap_or(0);
                client.node = f["node"].as_str().unwrap_or_default().to_string();
                client.protocol = f["protocol"].as_str().unwrap_or_default().to_string();
                Ok(client)
            }
            other => Err(ClientError::NoWelcome(format!("{other:?}"))),
        }
    }

    /// Sends a raw text frame (for tests of bad input).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        self.socket.send(Message::Text(text.into().into())).await?;
        Ok(())
    }

    /// Sends a `subscribe`; `from` is `"latest"`, `"earliest"`, `{"offsets":{..}}` or `{"timestamp":ms}`.
    /// Returns the request id used.
    pub async fn subscribe(&mut self, channel: &str, from: Value) -> Result<String, ClientError> {
        let id = self.fresh_id();
        let cmd = json!({"type": "subscribe", "id": id, "channel": channel, "from": from});
        self.send_text(cmd.to_string()).await?;
        Ok(id)
    }

    /// Sends a `subscribe` with more fields (`max_rate`, `filter`, `delta`, ...);
    /// [`Client::next`] and [`Client::next_text`] return deltas as full event frames.
    /// Returns the request id used.
    pub async fn subscribe_with(
        &mut self,
        channel: &str,
        from: Value,
        fields: Value,
    ) -> Result<String, ClientError> {
        let id = self.fresh_id();
        let mut cmd = json!({"type": "subscribe", "id": id, "channel": channel, "from": from});
        if let (Some(cmd), Value::Object(fields)) = (cmd.as_object_mut(), fields) {
            cmd.extend(fields);
        }
        self.send_text(cmd.to_string()).await?;
        Ok(id)
    }

    /// Sends an `unsubscribe`; returns the request id used.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<String, ClientError> {
        let id = self.fresh_id();
        self.send_text(json!({"type": "unsubscribe", "id": id, "channel": channel}).to_string())
            .await?;
        Ok(id)
    }

    fn fresh_id(&mut self) -> String {
        let id = format!("r{}", self.next_id);
        self.next_id += 1;
        id
    }

    /// The next text frame, unparsed (`None` when the connection closed), for clients that
    /// parse only the fields they need.
    pub async fn next_text(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            match self.socket.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(text))) => {
                    return Ok(Some(self.deltas.receive(text.to_string())?));
                }
                Some(Ok(_)) => continue,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// The next data message, text or binary (`None` when the connection closed).
    pub async fn next_raw(&mut self) -> Result<Option<Raw>, ClientError> {
        loop {
            match self.socket.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(text))) => return Ok(Some(Raw::Text(text.to_string()))),
                Some(Ok(Message::Binary(data))) => return Ok(Some(Raw::Binary(data))),
                Some(Ok(_)) => continue,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Attaches a durable session; returns the `attached` reply.
    pub async fn attach(&mut self, session: &str) -> Result<Value, ClientError> {
        let id = self.fresh_id();
        self.send_text(json!({"type": "attach", "id": id, "session": session}).to_string())
            .await?;
        let (reply, _) = self.until("attached", Duration::from_secs(30)).await?;
        Ok(reply)
    }

    /// Acknowledges every record of `topic`/`partition` up to and including `offset`.
    pub async fn ack(
        &mut self,
        topic: &str,
        partition: i64,
        offset: i64,
    ) -> Result<(), ClientError> {
        self.send_text(
            json!({"type": "ack", "topic": topic, "partition": partition, "offset": offset})
                .to_string(),
        )
        .await
    }

    /// The next frame from the server.
    pub async fn next(&mut self) -> Result<Incoming, ClientError> {
        loop {
            match self.socket.next().await {
                None => return Ok(Incoming::Closed(None)),
                Some(Ok(Message::Text(text))) => {
                    let text = self.deltas.receive(text.to_string())?;
                    return serde_json::from_str(&text)
                        .map(Incoming::Frame)
                        .map_err(|_| ClientError::NotJson(text));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Incoming::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Ok(Incoming::Closed(None));
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// [`Client::next`] with a time limit.
    pub async fn next_within(&mut self, limit: Duration) -> Result<Incoming, ClientError> {
        tokio::time::timeout(limit, self.next())
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    /// Reads frames until one of `kind` arrives (other frames are returned alongside).
    pub async fn until(
        &mut self,
        kind: &str,
        limit: Duration,
    ) -> Result<(Value, Vec<Value>), ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await? {
                Incoming::Frame(f) if f["type"] == kind => return Ok((f, skipped)),
                Incoming::Frame(f) => skipped.push(f),
                Incoming::Closed(c) => {
                    return Err(ClientError::NotJson(format!(
                        "closed while waiting for {kind}: {c:?}"
                    )));
                }
            }
        }
    }

    /// Closes the connection normally.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
