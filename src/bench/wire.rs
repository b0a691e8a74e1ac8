//! The wire scenario: bytes per event on the ticker stream, JSON frames
//! (`kgate.v1.json`) against binary envelopes (`kgate.v1.avro`), for a JSON
//! ticker topic and an Avro one (schemas/tick.avsc). The baseline is the JSON
//! frame of the JSON topic, what a plain Kafka-to-WebSocket bridge sends.
//!
//! Then permessage-deflate and deltas: socket bytes per event on the demo's ticker
//! and telemetry feeds plain, with deflate, with deltas and with both; the gateway's
//! CPU per delivered message with and without deflate, and its resident memory per
//! idle connection with and without it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use apache_avro::types::Value as Avro;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::fanout::deliver;
use super::idle::{IdleOptions, measure};
use super::load::{Connect, Target, connect_many};
use super::{CpuMeter, GatewayProc, Row, produce_each, progress};
use crate::demo::{self, DemoOptions};
use kgate::kafka::producer::Producer;
use kgate::transport::ws::inflate::Inflating;
use kgate_client::{Client, Raw};

/// Options of the wire scenario.
#[derive(Debug, Clone)]
pub struct WireOptions {
    /// Ticker updates per topic.
    pub records: usize,
    /// Clients of the CPU comparison with and without deflate (0 skips it).
    pub clients: usize,
    /// Idle connections of the memory comparison with and without deflate (0 skips it).
    pub idle_clients: usize,
    /// Load processes holding the idle connections.
    pub processes: usize,
}

/// One ticker update: symbol, price, size, sequence.
fn tick(i: usize) -> (String, f64, Option<i64>, i64) {
    let symbol = format!("SYM{:03}", i % 100);
    let price = 100.0 + (i % 997) as f64 / 100.0;
    let size = (i % 2 == 1).then_some(100 * (i % 7) as i64);
    (symbol, price, size, i as i64)
}

/// Runs the scenario; returns the summary rows.
pub async fn run_wire(opts: &WireOptions) -> anyhow::Result<Vec<Row>> {
    let mut dir = tempfile::tempdir()?;
    if std::env::var_os("KGATE_BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    let (_broker, bootstrap) = super::procs::broker(dir.path())?;
    let schema_path = std::env::current_dir()?.join("schemas/tick.avsc");
    let schema_text = std::fs::read_to_string(&schema_path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (run from the repository root)",
            schema_path.display()
        )
    })?;
    let extra = format!(
        "[[topics]]\nname = \"ticks-json\"\npartitions = 1\nbinary = true\n\n\
         [[topics]]\nname = \"ticks-avro\"\npartitions = 1\nformat = \"avro\"\nschema = \"{}\"\nbinary = true\n",
        schema_path.display()
    );
    let gw = GatewayProc::start(&dir.path().join("gw"), &bootstrap, &[], &extra)?;
    let config = super::kafka_config(&bootstrap);
    let producer = Producer::new(&config)?;
    let schema = apache_avro::Schema::parse_str(&schema_text)?;
    progress(format!("producing {} ticks to each topic", opts.records));
    for i in 0..opts.records {
        let (symbol, price, size, seq) = tick(i);
        let body = json!({"symbol": symbol, "price": price, "size": size, "seq": seq}).to_string();
        let cents = (price * 100.0).round() as i64;
        let record = Avro::Record(vec![
            ("symbol".into(), Avro::String(symbol.clone())),
            (
                "price".into(),
                Avro::Decimal(apache_avro::Decimal::from(cents.to_be_bytes().to_vec())),
            ),
            (
                "size".into(),
                match size {
                    Some(s) => Avro::Union(1, Box::new(Avro::Long(s))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
            ("seq".into(), Avro::Long(seq)),
        ]);
        let datum = apache_avro::to_avro_datum(&schema, record)?;
        let (a, b) = futures_util::join!(
            producer.send(
                "ticks-json",
                Some(symbol.as_bytes()),
                Some(body.as_bytes()),
                None
            ),
            producer.send("ticks-avro", Some(symbol.as_bytes()), Some(&datum), None),
        );
        a?;
        b?;
    }
    let mut rows = Vec::new();
    let mut baseline = None;
    for (topic, binary) in [
        ("ticks-json", false),
        ("ticks-json", true),
        ("ticks-avro", false),
        ("ticks-avro", true),
    ] {
        let per_event = bytes_per_event(&gw.ws_url(), topic, binary, opts.records).await?;
        let baseline = *baseline.get_or_insert(per_event);
        let protocol = if binary {
            "kgate.v1.avro"
        } else {
            "kgate.v1.json"
        };
        progress(format!(
            "{topic} over {protocol}: {per_event:.1} bytes per event"
        ));
        rows.push(Row {
            scenario: "wire".into(),
            metric: format!("{topic} over {protocol}"),
            value: per_event,
            unit: "B/event".into(),
            ratio: Some(per_event / baseline),
        });
    }
    drop(gw);
    rows.extend(deflate_bytes(dir.path(), &bootstrap).await?);
    if opts.clients > 0 {
        rows.extend(deflate_cpu(dir.path(), &bootstrap, opts).await?);
    }
    if opts.idle_clients > 0 {
        rows.extend(deflate_idle(dir.path(), &bootstrap, opts).await?);
    }
    Ok(rows)
}

/// Reads `n` events of `topic` from the start; returns the mean WebSocket payload size.
async fn bytes_per_event(url: &str, topic: &str, binary: bool, n: usize) -> anyhow::Result<f64> {
    let mut client = if binary {
        Client::connect_binary(url).await?
    } else {
        Client::connect(url).await?
    };
    client.subscribe(topic, json!("earliest")).await?;
    let (mut events, mut bytes) = (0, 0);
    while events < n {
        let next = tokio::time::timeout(Duration::from_secs(60), client.next_raw()).await;
        match next.map_err(|_| anyhow::anyhow!("no event within 60 s after {events} of {n}"))?? {
            Some(Raw::Binary(data)) if binary => {
                events += 1;
                bytes += data.len();
            }
            Some(Raw::Text(text)) if !binary && text.starts_with(r#"{"type":"event""#) => {
                events += 1;
                bytes += text.len();
            }
            Some(Raw::Text(text)) if text.starts_with(r#"{"type":"event""#) => {
                anyhow::bail!("a JSON event on the binary subprotocol: {text}")
            }
            Some(_) => {}
            None => anyhow::bail!("connection closed after {events} of {n} events"),
        }
    }
    client.close().await;
    Ok(bytes as f64 / n as f64)
}

/// Socket bytes per event on the demo's feeds: plain, with permessage-deflate, with
/// deltas, and with both.
async fn deflate_bytes(dir: &std::path::Path, bootstrap: &str) -> anyhow::Result<Vec<Row>> {
    let (ticker, telemetry) = ("demo-prices", "demo-telemetry");
    let gw = GatewayProc::start(
        &dir.join("gw-deflate"),
        bootstrap,
        &[(ticker, 1), (telemetry, 1)],
        "",
    )?;
    // Ingest makes deltas while a subscription wants them: one does from the start.
    let mut wanting = Vec::new();
    for topic in [ticker, telemetry] {
        let mut client = Client::connect(&gw.ws_url()).await?;
        client
            .subscribe_with(topic, json!("latest"), json!({"delta": true}))
            .await?;
        client.until("live", Duration::from_secs(30)).await?;
        wanting.push(client);
    }
    progress("running the demo's generator for 3 s: 20 symbols and 20 devices, 20 updates/s each");
    let options = DemoOptions {
        ticker_topic: ticker.into(),
        telemetry_topic: telemetry.into(),
        ticks_per_symbol: 20.0,
        devices: 20,
        readings_per_device: 20.0,
        duration: Some(Duration::from_secs(3)),
        mqtt: None,
    };
    demo::run(Producer::new(&super::kafka_config(bootstrap))?, options).await?;
    let mut rows = Vec::new();
    for (topic, feed) in [(ticker, "demo ticker"), (telemetry, "demo telemetry")] {
        let mut per_event = Vec::new();
        let mut events = None;
        for (how, deflate, delta) in [
            ("plain", false, false),
            ("permessage-deflate", true, false),
            ("delta", false, true),
            ("delta + permessage-deflate", true, true),
        ] {
            let (n, bytes) = socket_bytes(&gw.ws_url(), topic, deflate, delta).await?;
            if *events.get_or_insert(n) != n {
                bail!("{topic}: {n} events {how} but {events:?} plain");
            }
            per_event.push((how, bytes as f64 / n as f64));
        }
        let plain = per_event[0].1;
        progress(format!(
            "{feed} ({} events), socket bytes per event: {}",
            events.unwrap_or(0),
            per_event
                .iter()
                .map(|(how, v)| format!("{how} {v:.1} ({:.2})", v / plain))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for (how, value) in per_event {
            rows.push(Row {
                scenario: "wire: deflate, delta".into(),
                metric: format!("{feed}, {how}: socket bytes per event"),
                value,
                unit: "B/event".into(),
                ratio: Some(value / plain),
            });
        }
    }
    Ok(rows)
}

/// One ticker update as the demo makes it, deterministic in `i`.
fn demo_tick(i: usize) -> (String, String) {
    let (symbol, open) = demo::SYMBOLS[i % demo::SYMBOLS.len()];
    let price = open * (1.0 + ((i * 7919) % 2001) as f64 / 1e5 - 0.01);
    let spread = price * 0.0002;
    let round = |x: f64, places: i32| (x * 10f64.powi(places)).round() / 10f64.powi(places);
    let body = json!({
        "symbol": symbol,
        "price": round(price, 2),
        "bid": round(price - spread, 2),
        "ask": round(price + spread, 2),
        "change": round(price - open, 2),
        "change_pct": round((price / open - 1.0) * 100.0, 3),
        "volume": 100 + (i * 31) % 4900,
        "ts": 1_764_600_000_000u64 + i as u64,
    });
    (symbol.to_string(), body.to_string())
}

/// The gateway's CPU per delivered message with `opts.clients` clients: plain, with
/// deflate, and with deltas and deflate (ingest diffs each record once).
async fn deflate_cpu(
    dir: &std::path::Path,
    bootstrap: &str,
    opts: &WireOptions,
) -> anyhow::Result<Vec<Row>> {
    let topic = "wire-cpu";
    let mut gw = GatewayProc::start(&dir.join("gw-cpu"), bootstrap, &[(topic, 1)], "")?;
    let producer = Producer::new(&super::kafka_config(bootstrap))?;
    let (n, clients) = (opts.records, opts.clients);
    let mut rows = Vec::new();
    let mut plain_cpu = None;
    for (name, deflate, delta) in [
        ("plain", false, false),
        ("permessage-deflate", true, false),
        ("delta + permessage-deflate", true, true),
    ] {
        let how = Connect {
            deflate,
            delta,
            ..Connect::default()
        };
        let load = connect_many(&Target::kgate(&gw.ws_url(), topic), clients, how).await?;
        progress(format!(
            "{name}: producing {n} demo ticks to {clients} clients"
        ));
        let cpu = CpuMeter::start(&[gw.proc.pid()]);
        let d = deliver(load, n, produce_each(&producer, topic, n, None, demo_tick)).await?;
        if d.received != d.expected {
            bail!("{name}: {} of {} messages arrived", d.received, d.expected);
        }
        let per = d.cpu_per_message(cpu.used()[0]);
        progress(format!(
            "{name}: {:.0} msgs/s, {per:.3} us of gateway CPU per message",
            d.rate()
        ));
        rows.push(Row {
            scenario: format!("wire: deflate ({clients} clients)"),
            metric: format!("kgate CPU per delivered message, {name}"),
            value: per,
            unit: "us/msg".into(),
            ratio: Some(per / *plain_cpu.get_or_insert(per)),
        });
    }
    gw.stop();
    Ok(rows)
}

/// Resident memory per idle connection, without and with deflate, each on a fresh gateway.
async fn deflate_idle(
    dir: &std::path::Path,
    bootstrap: &str,
    opts: &WireOptions,
) -> anyhow::Result<Vec<Row>> {
    let topic = "wire-idle";
    let mut rows = Vec::new();
    let mut plain = None;
    for deflate in [false, true] {
        let name = if deflate {
            "permessage-deflate"
        } else {
            "plain"
        };
        let gw = GatewayProc::start(
            &dir.join(format!("gw-idle-{name}")),
            bootstrap,
            &[(topic, 1)],
            "",
        )?;
        let target = Target::kgate(&gw.ws_url(), topic);
        drop(connect_many(&target, 1, Connect::default()).await?);
        let idle = IdleOptions {
            clients: opts.idle_clients,
            processes: opts.processes,
            deflate,
        };
        let pid = gw.proc.pid();
        let bytes = measure(dir, &target, &idle, || super::procs::rss_bytes(pid)).await?;
        rows.push(Row {
            scenario: format!("wire: deflate idle ({} connections)", opts.idle_clients),
            metric: format!("kgate RSS per idle subscribed connection, {name}"),
            value: bytes,
            unit: "bytes".into(),
            ratio: Some(bytes / *plain.get_or_insert(bytes)),
        });
    }
    Ok(rows)
}

/// Subscribes to `topic` from offset 0 (a replay from the ring, whose records carry
/// their deltas) and reads until it goes quiet; returns the events and the bytes the
/// socket delivered for them (frames, headers, the few control frames), offering
/// permessage-deflate when `deflate` and asking for deltas when `delta`.
async fn socket_bytes(
    url: &str,
    topic: &str,
    deflate: bool,
    delta: bool,
) -> anyhow::Result<(usize, u64)> {
    let mut request = url.into_client_request()?;
    let host = request.uri().host().context("URL has no host")?;
    let port = request.uri().port_u16().context("URL has no port")?;
    let stream = TcpStream::connect((host, port)).await?;
    if deflate {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
        );
    }
    let read = Arc::new(AtomicU64::new(0));
    let (reader, writer) = stream.into_split();
    let counted = Counted {
        inner: reader,
        read: read.clone(),
    };
    let stream =
        Inflating::after_response(tokio::io::join(counted, writer), deflate.then_some(1 << 20));
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    if deflate != response.headers().contains_key("sec-websocket-extensions") {
        bail!("permessage-deflate was not negotiated as asked ({deflate})");
    }
    let start = read.load(Ordering::Relaxed);
    let subscribe = json!({"type": "subscribe", "channel": topic,
                           "from": {"offsets": {"0": 0}}, "delta": delta});
    ws.send(Message::Text(subscribe.to_string().into())).await?;
    let mut events = 0;
    loop {
        let quiet = Duration::from_secs(if events == 0 { 30 } else { 3 });
        match tokio::time::timeout(quiet, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Text(text))))
                if text.starts_with(r#"{"type":"event""#) || text.starts_with('[') =>
            {
                events += 1
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => bail!("reading {topic}: {e}"),
            Ok(None) => bail!("the gateway closed the connection after {events} events"),
        }
    }
    if events == 0 {
        bail!("no event on {topic}");
    }
    Ok((events, read.load(Ordering::Relaxed) - start))
}

/// A stream that counts the bytes read from it.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}
