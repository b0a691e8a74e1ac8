//! The wire scenario: bytes per event on the ticker stream, JSON frames
//! (`kgate.v1.json`) against binary envelopes (`kgate.v1.avro`), for a JSON
//! ticker topic and an Avro one (schemas/tick.avsc). The baseline is the JSON
//! frame of the JSON topic, what a plain Kafka-to-WebSocket bridge sends.

use std::time::Duration;

use apache_avro::types::Value as Avro;
use serde_json::json;

use super::{GatewayProc, Row, progress};
use kgate::kafka::producer::Producer;
use kgate_client::{Client, Raw};

/// Options of the wire scenario.
#[derive(Debug, Clone)]
pub struct WireOptions {
    /// Ticker updates per topic.
    pub records: usize,
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
    let dir = tempfile::tempdir()?;
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
