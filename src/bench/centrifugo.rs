//! Centrifugo v6 as a peer: it consumes the bench topic with its built-in Kafka consumer
//! in publication data mode (a record's value is the publication, its
//! `centrifugo-channels` header names the channel) and serves the same load client over
//! WebSocket. `benches/run` installs it with `go install` through the Go module proxy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::load::Target;
use super::procs::{Proc, free_port};

/// The pinned version `benches/run` installs.
pub const VERSION: &str = "v6.9.1";
/// The channel bench records are published to.
pub const CHANNEL: &str = "bench";

/// How a Centrifugo is configured for a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live delivery only.
    Live,
    /// The channel keeps a history and clients recover missed publications on reconnect.
    History,
    /// Connections that never read (memory per idle connection).
    Idle,
}

/// A running Centrifugo.
pub struct Centrifugo {
    pub proc: Proc,
    port: u16,
}

/// The binary: `KGATE_CENTRIFUGO`, else where `benches/run` installs it, else `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KGATE_CENTRIFUGO") {
        return PathBuf::from(path);
    }
    let installed = std::env::var_os("HOME").map(|home| {
        PathBuf::from(home).join(format!(".cache/kgate/centrifugo-{VERSION}/centrifugo"))
    });
    match installed {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("centrifugo"),
    }
}

/// Headers that route a record to [`CHANNEL`] in publication data mode.
pub fn headers() -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: "centrifugo-channels",
        value: Some(CHANNEL),
    })
}

impl Centrifugo {
    /// Why Centrifugo cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        match Command::new(binary()).arg("version").output() {
            Ok(out) if out.status.success() => None,
            _ => Some(format!(
                "{} is not installed (benches/run installs it: go install \
                 github.com/centrifugal/centrifugo/v6@{VERSION})",
                binary().display()
            )),
        }
    }

    /// [`Centrifugo::start`] when Centrifugo is installed; otherwise says why the peer
    /// is skipped.
    pub fn start_if_installed(
        dir: &Path,
        bootstrap: &str,
        topic: &str,
        mode: Mode,
    ) -> anyhow::Result<Option<Self>> {
        match Self::unavailable() {
            Some(why) => {
                super::progress(format!("skipping the Centrifugo peer: {why}"));
                Ok(None)
            }
            None => Self::start(dir, bootstrap, topic, mode).map(Some),
        }
    }

    /// Starts Centrifugo consuming `topic` from `bootstrap`, configured for `mode`.
    pub fn start(dir: &Path, bootstrap: &str, topic: &str, mode: Mode) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut channel = json!({"allow_subscribe_for_client": true});
        let mut client = json!({"insecure": true, "allowed_origins": ["*"]});
        match mode {
            Mode::Live => {}
            Mode::History => {
                channel["history_size"] = json!(1000);
                channel["history_ttl"] = json!("600s");
                channel["force_recovery"] = json!(true);
                channel["force_positioning"] = json!(true);
            }
            // Idle holders never read, so they never answer a ping: no pong deadline, as
            // kgate's idle holders stay within its heartbeat timeout.
            Mode::Idle => client["pong_timeout"] = json!("-1s"),
        }
        let config = json!({
            "http_server": {"address": "127.0.0.1", "port": port},
            "log": {"level": "warn"},
            "health": {"enabled": true},
            "client": client,
            "channel": {"without_namespace": channel},
            "consumers": [{
                "enabled": true,
                "name": "bench",
                "type": "kafka",
                "kafka": {
                    "brokers": [bootstrap],
                    "topics": [topic],
                    "consumer_group": format!("centrifugo-{topic}"),
                    // kgate's default fetch wait on Kafka, for a like-for-like feed.
                    "fetch_max_wait": "100ms",
                    "publication_data_mode": {"enabled": true, "channels_header": "centrifugo-channels"},
                },
            }],
        });
        let file = dir.join("centrifugo.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&config)?)?;
        let mut cmd = Command::new(binary());
        cmd.arg("--config").arg(&file);
        let log = dir.join("centrifugo.log");
        let proc = Proc::command(cmd, log.clone())?;
        let health = format!("http://127.0.0.1:{port}/health");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut proc = proc;
        while !ureq::get(&health).call().is_ok_and(|r| r.status() == 200) {
            if proc.exited() {
                let log = std::fs::read_to_string(proc.log()).unwrap_or_default();
                bail!("Centrifugo exited at start:\n{log}");
            }
            if Instant::now() > deadline {
                bail!(
                    "Centrifugo did not start within 60 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Centrifugo { proc, port })
    }

    /// The WebSocket URL of its client protocol.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/connection/websocket", self.port)
    }

    /// The load client's target.
    pub fn target(&self) -> Target {
        Target::Centrifugo {
            url: self.ws_url(),
            channel: CHANNEL.to_string(),
        }
    }

    /// Waits until a probe client receives a record produced now: Centrifugo's consumer
    /// has joined its group and reads live, so the measured run starts on equal terms.
    pub async fn wait_consuming(
        &self,
        producer: &kgate::kafka::producer::Producer,
        topic: &str,
    ) -> anyhow::Result<()> {
        let mut probe = super::load::LoadClient::connect(&self.target(), Default::default())
            .await
            .context("Centrifugo probe client")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (key, body) = super::bench_record(0, super::load::now_us());
            producer
                .send(
                    topic,
                    Some(key.as_bytes()),
                    Some(body.as_bytes()),
                    Some(headers()),
                )
                .await?;
            if let Ok(Ok(Some(_))) =
                tokio::time::timeout(Duration::from_secs(2), probe.next_record()).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Centrifugo delivered nothing from {topic} within 60 s");
            }
        }
    }
}

/// A Centrifugo subscriber that keeps its stream position, to recover what it missed.
pub struct Recovering {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    epoch: String,
    offset: u64,
}

impl Recovering {
    /// Connects and subscribes, recovering from `since` (a previous client's position)
    /// when given; returns the client and the publications the subscribe reply carried.
    pub async fn connect(
        url: &str,
        since: Option<(String, u64)>,
    ) -> anyhow::Result<(Recovering, usize)> {
        use futures_util::SinkExt;
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
        let mut subscribe = json!({"channel": CHANNEL});
        if let Some((epoch, offset)) = &since {
            subscribe["recover"] = json!(true);
            subscribe["epoch"] = json!(epoch);
            subscribe["offset"] = json!(offset);
        }
        let commands = format!(
            "{}\n{}",
            json!({"id": 1, "connect": {}}),
            json!({"id": 2, "subscribe": subscribe})
        );
        socket.send(Message::Text(commands.into())).await?;
        let mut client = Recovering {
            socket,
            epoch: String::new(),
            offset: 0,
        };
        loop {
            for line in client.next_lines().await? {
                let reply: serde_json::Value = serde_json::from_str(&line)?;
                if reply["id"] != 2 {
                    continue;
                }
                let result = &reply["subscribe"];
                if result.is_null() {
                    bail!("Centrifugo refused the subscription: {line}");
                }
                if since.is_some() && result["recovered"] != true {
                    bail!("Centrifugo did not recover the stream: {line}");
                }
                client.epoch = result["epoch"].as_str().unwrap_or_default().to_string();
                client.offset = result["offset"].as_u64().unwrap_or(0);
                let publications = result["publications"].as_array().map_or(0, Vec::len);
                if let Some(last) = result["publications"].as_array().and_then(|p| p.last()) {
                    client.offset = client.offset.max(last["offset"].as_u64().unwrap_or(0));
                }
                return Ok((client, publications));
            }
        }
    }

    /// Lines of the next text frame, answering pings.
    async fn next_lines(&mut self) -> anyhow::Result<Vec<String>> {
        use futures_util::{SinkExt, StreamExt};
        loop {
            let Some(message) = self.socket.next().await else {
                bail!("Centrifugo closed the connection");
            };
            if let Message::Text(text) = message? {
                if text.as_str() == "{}" {
                    self.socket.send(Message::Text("{}".into())).await?;
                    continue;
                }
                return Ok(text.lines().map(str::to_string).collect());
            }
        }
    }

    /// Reads `n` publications, keeping the position of the last.
    pub async fn read(&mut self, n: usize) -> anyhow::Result<()> {
        let mut seen = 0;
        while seen < n {
            for line in self.next_lines().await? {
                let push: serde_json::Value = serde_json::from_str(&line)?;
                if let Some(offset) = push["push"]["pub"]["offset"].as_u64() {
                    self.offset = self.offset.max(offset);
                    seen += 1;
                }
            }
        }
        Ok(())
    }

    /// Where this client is in the channel's stream.
    pub fn position(&self) -> (String, u64) {
        (self.epoch.clone(), self.offset)
    }
}
