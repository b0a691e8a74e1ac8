//! The load client every scenario uses, for kgate and for the baselines alike:
//! one WebSocket per client, optionally bound to a chosen loopback address,
//! counting the messages that carry a record; or one MQTT connection
//! ([`super::mqtt::MqttClient`]) for kgate's MQTT front end.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::mqtt::MqttClient;
use super::progress;
use kgate::connection::protocol::SUBPROTOCOL;
use kgate::transport::ws::inflate::Inflating;

/// The largest message a load client inflates.
const MAX_INFLATED: usize = 1 << 20;

/// Where a load client connects and which messages it counts.
#[derive(Debug, Clone)]
pub enum Target {
    /// kgate: subscribe live to each channel, count `event` frames.
    Kgate { url: String, channels: Vec<String> },
    /// A server that pushes every record to every connection (the baselines): count every message.
    Plain { url: String },
    /// Centrifugo's JSON protocol: connect, subscribe to `channel`, count publications
    /// (several may share a frame, one per line) and answer its pings.
    Centrifugo { url: String, channel: String },
    /// kgate's MQTT listener (`mqtt://ip:port`): subscribe to `filter` at `qos`, count PUBLISHes.
    Mqtt {
        url: String,
        filter: String,
        qos: u8,
    },
}

impl Target {
    /// kgate, live on one channel.
    pub fn kgate(url: &str, channel: &str) -> Target {
        Target::Kgate {
            url: url.to_string(),
            channels: vec![channel.to_string()],
        }
    }

    fn url(&self) -> &str {
        match self {
            Target::Kgate { url, .. }
            | Target::Plain { url }
            | Target::Centrifugo { url, .. }
            | Target::Mqtt { url, .. } => url,
        }
    }
}

/// How load clients connect.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connect {
    /// Local address to connect from.
    pub bind: Option<IpAddr>,
    /// Idle holders read nothing: small buffers, so thousands fit in one load process.
    pub idle: bool,
    /// Offer permessage-deflate (to kgate) and inflate what arrives compressed.
    pub deflate: bool,
    /// Ask kgate for deltas (counted as records, not applied: the bench measures the gateway).
    pub delta: bool,
}

/// Which protocol a connected client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    Kgate,
    Plain,
    Centrifugo,
}

/// One connected load client.
pub enum LoadClient {
    Ws(WsClient),
    Mqtt(Box<MqttClient>),
}

impl LoadClient {
    /// Connects and, for kgate, subscribes and waits until live.
    pub async fn connect(target: &Target, how: Connect) -> anyhow::Result<LoadClient> {
        Ok(match target {
            Target::Mqtt { url, filter, qos } => {
                LoadClient::Mqtt(Box::new(MqttClient::connect(url, filter, *qos).await?))
            }
            _ => LoadClient::Ws(WsClient::connect(target, how).await?),
        })
    }

    /// The next message carrying a record (`None` when the connection closed).
    pub async fn next_record(&mut self) -> anyhow::Result<Option<Utf8Bytes>> {
        match self {
            LoadClient::Ws(ws) => ws.next_record().await,
            LoadClient::Mqtt(mqtt) => match mqtt.next_payload().await? {
                Some(payload) => Ok(Some(Utf8Bytes::try_from(payload)?)),
                None => Ok(None),
            },
        }
    }

    /// How many records the next message carries (`None` when the connection closed),
    /// copying nothing.
    async fn next_count(&mut self) -> anyhow::Result<Option<usize>> {
        match self {
            LoadClient::Ws(ws) => ws.next_count().await,
            LoadClient::Mqtt(mqtt) => Ok(mqtt.next_payload().await?.map(|_| 1)),
        }
    }

    /// Reads up to `n` records, giving up when none arrives for `quiet` (60 s before the
    /// first; noticed within twice `quiet`); returns how many arrived, when the last did (to
    /// within 64 messages when it stopped short), and why it stopped short.
    pub async fn count_up_to(
        &mut self,
        n: usize,
        quiet: Duration,
    ) -> (usize, Option<Instant>, Option<Stop>) {
        // The clock is read, and the one timer re-armed, once per 64 messages: a timer and
        // a clock read per message were a fifth of the load client's CPU, which capped
        // what every server could show.
        let timer = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(timer);
        let (mut seen, mut messages, mut checked) = (0, 0u64, 0);
        let mut last = None;
        while seen < n {
            let next = self.next_count();
            tokio::pin!(next);
            // The read is never dropped half-way: the timer only looks at the progress.
            let got = loop {
                tokio::select! {
                    biased;
                    got = &mut next => break got,
                    () = &mut timer => {
                        if seen == checked {
                            return (seen, last, Some(Stop::Quiet));
                        }
                        checked = seen;
                        timer.as_mut().reset(tokio::time::Instant::now() + quiet);
                    }
                }
            };
            let stop = match got {
                Ok(Some(count)) => {
                    seen += count;
                    messages += 1;
                    if messages % 64 == 1 || seen >= n {
                        let now = tokio::time::Instant::now();
                        last = Some(now.into_std());
                        timer.as_mut().reset(now + quiet);
                        checked = seen;
                    }
                    continue;
                }
                Ok(None) => Stop::Closed,
                Err(e) => Stop::Failed(format!("{e:#}")),
            };
            return (seen, last, Some(stop));
        }
        (seen.min(n), last, None)
    }
}

/// Why a load client stopped before its last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The server closed the connection.
    Closed,
    /// Nothing arrived for the quiet period.
    Quiet,
    /// The connection failed.
    Failed(String),
}

/// One connected WebSocket load client.
pub struct WsClient {
    socket: WebSocketStream<Inflating<TcpStream>>,
    speaks: Speaks,
    /// Publications of a Centrifugo frame not yet returned.
    pending: std::collections::VecDeque<Utf8Bytes>,
}

impl WsClient {
    async fn connect(target: &Target, how: Connect) -> anyhow::Result<WsClient> {
        let url = target.url();
        let mut request = url.into_client_request()?;
        let host = request.uri().host().context("URL has no host")?;
        let port = request.uri().port_u16().context("URL has no port")?;
        let addr: SocketAddr = format!("{host}:{port}").parse()?;
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = how.bind {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("cannot bind a load client to {ip}"))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        if matches!(target, Target::Kgate { .. }) {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        if how.deflate {
            request.headers_mut().insert(
                "sec-websocket-extensions",
                HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
            );
        }
        // tungstenite zero-fills its whole read buffer before each read (128 KiB by default).
        let config = match how.idle {
            true => WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0),
            false => WebSocketConfig::default().read_buffer_size(16 * 1024),
        };
        let stream = Inflating::after_response(stream, how.deflate.then_some(MAX_INFLATED));
        let (socket, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .with_context(|| format!("WebSocket handshake with {url} failed"))?;
        if how.deflate && !response.headers().contains_key("sec-websocket-extensions") {
            bail!("{url} declined permessage-deflate");
        }
        let mut client = WsClient {
            socket,
            speaks: Speaks::Plain,
            pending: Default::default(),
        };
        if let Target::Centrifugo { channel, .. } = target {
            let commands = format!(
                "{}\n{}",
                json!({"id": 1, "connect": {}}),
                json!({"id": 2, "subscribe": {"channel": channel}})
            );
            client.socket.send(Message::Text(commands.into())).await?;
            loop {
                let Some(text) = client.next_text().await? else {
                    bail!("Centrifugo closed the connection before the subscription");
                };
                if text.contains(r#""error""#) {
                    bail!("Centrifugo refused: {text}");
                }
                if text.lines().any(|l| l.starts_with(r#"{"id":2"#)) {
                    break;
                }
            }
            client.speaks = Speaks::Centrifugo;
        }
        if let Target::Kgate { channels, .. } = target {
            for channel in channels {
                let cmd = json!({"type": "subscribe", "channel": channel, "from": "latest",
                                 "delta": how.delta});
                client
                    .socket
                    .send(Message::Text(cmd.to_string().into()))
                    .await?;
            }
            let mut live = 0;
            while live < channels.len() {
                let Some(text) = client.next_text().await? else {
                    bail!("connection closed before the subscription was live");
                };
                let frame: serde_json::Value = serde_json::from_str(&text)?;
                match frame["type"].as_str() {
                    Some("live") => live += 1,
                    Some("error") => bail!("subscribe refused: {text}"),
                    _ => {}
                }
            }
            client.speaks = Speaks::Kgate;
        }
        Ok(client)
    }

    async fn next_text(&mut self) -> anyhow::Result<Option<Utf8Bytes>> {
        while let Some(msg) = self.socket.next().await {
            match msg? {
                Message::Text(t) => return Ok(Some(t)),
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    async fn next_record(&mut self) -> anyhow::Result<Option<Utf8Bytes>> {
        loop {
            if let Some(publication) = self.pending.pop_front() {
                return Ok(Some(publication));
            }
            let Some(text) = self.next_text().await? else {
                return Ok(None);
            };
            match self.speaks {
                Speaks::Plain => return Ok(Some(text)),
                Speaks::Kgate if is_kgate_record(&text) => return Ok(Some(text)),
                Speaks::Kgate => {}
                Speaks::Centrifugo => {
                    for line in publications(&text) {
                        self.pending.push_back(Utf8Bytes::from(line.to_string()));
                    }
                    self.answer_centrifugo_ping(&text).await?;
                }
            }
        }
    }

    /// [`LoadClient::next_count`] over WebSocket.
    async fn next_count(&mut self) -> anyhow::Result<Option<usize>> {
        loop {
            let Some(text) = self.next_text().await? else {
                return Ok(None);
            };
            let count = match self.speaks {
                Speaks::Plain => 1,
                Speaks::Kgate => usize::from(is_kgate_record(&text)),
                Speaks::Centrifugo => {
                    let count = publications(&text).count();
                    self.answer_centrifugo_ping(&text).await?;
                    count
                }
            };
            if count > 0 {
                return Ok(Some(count));
            }
        }
    }

    /// Answers a ping (a `{}` line): Centrifugo disconnects clients that do not.
    async fn answer_centrifugo_ping(&mut self, text: &str) -> anyhow::Result<()> {
        if text.lines().any(|line| line == "{}") {
            self.socket.send(Message::Text("{}".into())).await?;
        }
        Ok(())
    }
}

/// True for a kgate frame that carries a record: an event, or a delta.
fn is_kgate_record(text: &str) -> bool {
    text.starts_with(r#"{"type":"event""#) || text.starts_with('[')
}

/// The publications of a Centrifugo frame (one per line).
fn publications(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|line| line.starts_with(r#"{"push""#) && line.contains(r#""pub""#))
}

/// Connects `n` clients to `target`, 250 at a time.
pub async fn connect_many(
    target: &Target,
    n: usize,
    how: Connect,
) -> anyhow::Result<Vec<LoadClient>> {
    connect_each(&vec![target.clone(); n], how).await
}

/// Connects one client to each target, 250 at a time.
pub async fn connect_each(targets: &[Target], how: Connect) -> anyhow::Result<Vec<LoadClient>> {
    let n = targets.len();
    let mut clients = Vec::with_capacity(n);
    let mut last_report = Instant::now();
    while clients.len() < n {
        let start = clients.len();
        let connects = (start..n.min(start + 250)).map(|i| LoadClient::connect(&targets[i], how));
        for c in futures_util::future::join_all(connects).await {
            clients.push(c?);
        }
        if last_report.elapsed() > Duration::from_secs(2) || clients.len() == n {
            progress(format!(
                "connected {}/{n} clients to {}",
                clients.len(),
                targets[0].url()
            ));
            last_report = Instant::now();
        }
    }
    Ok(clients)
}

/// The microsecond timestamp a bench record carries in `"ts_us":N` (JSON-escaped or not).
pub fn timestamp_us(text: &str) -> Option<u64> {
    let at = text.find("ts_us")? + "ts_us".len();
    let rest = text[at..].trim_start_matches(|c: char| !c.is_ascii_digit());
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Microseconds since the Unix epoch, the clock bench records are stamped with.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::timestamp_us;

    #[test]
    fn finds_the_timestamp_plain_and_escaped() {
        assert_eq!(
            timestamp_us(r#"{"ts_us":1700000000123456,"pad":"x"}"#),
            Some(1700000000123456)
        );
        assert_eq!(timestamp_us(r#"{"value":"{\"ts_us\":42}"}"#), Some(42));
        assert_eq!(timestamp_us(r#"{"seq":1}"#), None);
    }
}
