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

use super::load::Target;
use super::procs::{Proc, free_port};

/// The pinned version `benches/run` installs.
pub const VERSION: &str = "v6.9.1";
/// The channel bench records are published to.
pub const CHANNEL: &str = "bench";

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
    let installed = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/kgate/go-bin/centrifugo"));
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

    /// Starts Centrifugo consuming `topic` from `bootstrap`; with `history`, the channel
    /// keeps a history stream and clients recover missed publications on reconnect.
    pub fn start(dir: &Path, bootstrap: &str, topic: &str, history: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut channel = json!({"allow_subscribe_for_client": true});
        if history {
            channel["history_size"] = json!(1000);
            channel["history_ttl"] = json!("600s");
            channel["force_recovery"] = json!(true);
            channel["force_positioning"] = json!(true);
        }
        let config = json!({
            "http_server": {"address": "127.0.0.1", "port": port},
            "log": {"level": "warn"},
            "health": {"enabled": true},
            "client": {"insecure": true, "allowed_origins": ["*"]},
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
        while !ureq::get(&health).call().is_ok_and(|r| r.status() == 200) {
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

    /// The load client's target.
    pub fn target(&self) -> Target {
        Target::Centrifugo {
            url: format!("ws://127.0.0.1:{}/connection/websocket", self.port),
            channel: CHANNEL.to_string(),
        }
    }

    /// Waits until a probe client receives a record produced now: Centrifugo's consumer
    /// has joined its group and reads live, so the measured run starts on equal terms.
    pub async fn wait_consuming(
        &self,
        producer: &crate::kafka::producer::Producer,
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
