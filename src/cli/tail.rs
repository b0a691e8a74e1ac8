//! `kgate tail`: print the events of a channel, as a client of the gateway.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use kgate_client::{Client, Incoming};

/// Options of `kgate tail`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Channel: a topic (`prices`) or a topic and key (`prices:AAPL`).
    channel: String,
    /// Gateway WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    url: String,
    /// Start position: latest, earliest, a timestamp in epoch ms (`ts:1700000000000`),
    /// or offsets per partition (`0:120,1:80`).
    #[arg(long, default_value = "latest")]
    from: String,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Exit with an error if no frame arrives for this many seconds.
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// A token for a gateway whose auth.mode is "jwt".
    #[arg(long, env = "KGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn parse_from(text: &str) -> anyhow::Result<Value> {
    if text == "latest" || text == "earliest" {
        return Ok(Value::from(text));
    }
    if let Some(ts) = text.strip_prefix("ts:") {
        let ts: i64 = ts.parse().with_context(|| {
            format!("--from {text:?}: the timestamp must be epoch milliseconds")
        })?;
        return Ok(serde_json::json!({ "timestamp": ts }));
    }
    let mut offsets = serde_json::Map::new();
    for part in text.split(',') {
        let (p, o) = part.split_once(':').with_context(|| {
            format!(
                "--from {text:?}: expected latest, earliest, ts:<ms> or <partition>:<offset>,..."
            )
        })?;
        let p: u32 = p
            .trim()
            .parse()
            .with_context(|| format!("--from: bad partition {p:?}"))?;
        let o: i64 = o
            .trim()
            .parse()
            .with_context(|| format!("--from: bad offset {o:?}"))?;
        offsets.insert(p.to_string(), o.into());
    }
    Ok(serde_json::json!({ "offsets": offsets }))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let from = parse_from(&args.from)?;
    let mut client = Client::connect_with_token(&args.url, args.token.as_deref()).await?;
    client.subscribe(&args.channel, from).await?;
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    loop {
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
        let incoming = match args.idle_timeout_secs {
            Some(secs) => client.next_within(Duration::from_secs(secs)).await?,
            None => client.next().await?,
        };
        match incoming {
            Incoming::Frame(frame) => match frame["type"].as_str() {
                Some("event") => {
                    seen += 1;
                    let mut out = stdout.lock();
                    // A closed pipe (tail | head) ends the command quietly.
                    if writeln!(out, "{frame}").and_then(|_| out.flush()).is_err() {
                        return Ok(());
                    }
                }
                Some("error") => bail!(
                    "{}: {}",
                    frame["code"].as_str().unwrap_or("error"),
                    frame["message"].as_str().unwrap_or("")
                ),
                _ => eprintln!("{frame}"),
            },
            Incoming::Closed(reason) => bail!("connection closed by the gateway: {reason:?}"),
        }
    }
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_forms() {
        assert_eq!(parse_from("earliest").unwrap(), Value::from("earliest"));
        assert_eq!(
            parse_from("ts:5").unwrap(),
            serde_json::json!({"timestamp": 5})
        );
        assert_eq!(
            parse_from("0:1,2:3").unwrap(),
            serde_json::json!({"offsets": {"0": 1, "2": 3}})
        );
        assert!(parse_from("yesterday").is_err());
    }
}
