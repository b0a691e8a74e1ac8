//! Demo data: a stock ticker (symbols as keys, prices as a random walk) and IoT
//! telemetry (device ids as keys: temperature, battery, position), which the
//! devices publish over MQTT when the gateway listens for it.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rumqttc::{MqttOptions, QoS};
use serde_json::json;

use kgate::kafka::producer::Producer;

/// Ticker symbols with plausible starting prices.
pub const SYMBOLS: &[(&str, f64)] = &[
    ("AAPL", 189.5),
    ("MSFT", 412.3),
    ("GOOG", 171.2),
    ("AMZN", 182.7),
    ("NVDA", 121.4),
    ("META", 502.1),
    ("TSLA", 248.9),
    ("JPM", 201.6),
    ("V", 276.4),
    ("XOM", 118.3),
    ("BRK.B", 452.0),
    ("UNH", 521.8),
    ("JNJ", 158.2),
    ("WMT", 68.9),
    ("PG", 167.5),
    ("MA", 468.3),
    ("HD", 389.2),
    ("KO", 62.4),
    ("PEP", 171.9),
    ("NFLX", 684.5),
];

/// What to generate and how fast.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub ticker_topic: String,
    pub telemetry_topic: String,
    /// Updates per second per symbol.
    pub ticks_per_symbol: f64,
    /// Number of devices sending telemetry.
    pub devices: usize,
    /// Readings per second per device.
    pub readings_per_device: f64,
    /// Stop after this long (forever when `None`).
    pub duration: Option<Duration>,
    /// The gateway's MQTT listener: devices publish their readings there (device →
    /// kgate → Kafka), else straight to Kafka.
    pub mqtt: Option<SocketAddr>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            ticker_topic: "prices".into(),
            telemetry_topic: "telemetry".into(),
            ticks_per_symbol: 4.0,
            devices: 8,
            readings_per_device: 1.0,
            duration: None,
            mqtt: None,
        }
    }
}

struct Quote {
    symbol: &'static str,
    price: f64,
    open: f64,
}

struct Device {
    id: String,
    /// The device's MQTT connection, when devices publish over MQTT.
    mqtt: Option<rumqttc::AsyncClient>,
    temperature: f64,
    battery: f64,
    lat: f64,
    lon: f64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Produces demo records until `options.duration` passes; returns how many were produced.
pub async fn run(
    producer: Producer,
    options: DemoOptions,
) -> Result<u64, rdkafka::error::KafkaError> {
    let mut rng = StdRng::from_os_rng();
    let mut quotes: Vec<Quote> = SYMBOLS
        .iter()
        .map(|&(symbol, price)| Quote {
            symbol,
            price,
            open: price,
        })
        .collect();
    let mut devices: Vec<Device> = (1..=options.devices)
        .map(|i| Device {
            mqtt: options
                .mqtt
                .map(|addr| connect_device(&format!("device-{i}"), addr)),
            id: format!("device-{i}"),
            temperature: rng.random_range(18.0..24.0),
            battery: rng.random_range(0.6..1.0),
            lat: 52.52 + rng.random_range(-0.05..0.05),
            lon: 13.40 + rng.random_range(-0.05..0.05),
        })
        .collect();
    // One tick of the clock produces a fraction of each stream; 20 ticks per second.
    let tick = Duration::from_millis(50);
    let tick_rate = 1.0 / tick.as_secs_f64();
    let quote_p = (options.ticks_per_symbol / tick_rate).min(1.0);
    let reading_p = (options.readings_per_device / tick_rate).min(1.0);
    let started = tokio::time::Instant::now();
    let mut interval = tokio::time::interval(tick);
    let mut produced = 0u64;
    loop {
        interval.tick().await;
        if options.duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(produced);
        }
        let mut sends = Vec::new();
        for q in quotes.iter_mut() {
            if !rng.random_bool(quote_p) {
                continue;
            }
            // Geometric random walk: ~0.1% per step.
            let step: f64 = rng.random_range(-1.0..1.0) * 0.001;
            q.price = (q.price * (1.0 + step)).max(0.01);
            let spread = q.price * 0.0002;
            let body = json!({
                "symbol": q.symbol,
                "price": round(q.price, 2),
                "bid": round(q.price - spread, 2),
                "ask": round(q.price + spread, 2),
                "change": round(q.price - q.open, 2),
                "change_pct": round((q.price / q.open - 1.0) * 100.0, 3),
                "volume": rng.random_range(100..5000),
                "ts": now_ms(),
            });
            sends.push((
                options.ticker_topic.as_str(),
                q.symbol.to_string(),
                body.to_string(),
            ));
        }
        for d in devices.iter_mut() {
            if !rng.random_bool(reading_p) {
                continue;
            }
            d.temperature += rng.random_range(-0.2..0.2);
            d.battery = (d.battery - rng.random_range(0.0..0.0005)).max(0.0);
            d.lat += rng.random_range(-0.0002..0.0002);
            d.lon += rng.random_range(-0.0002..0.0002);
            let body = json!({
                "device": d.id,
                "temperature": round(d.temperature, 2),
                "battery": round(d.battery, 4),
                "position": {"lat": round(d.lat, 6), "lon": round(d.lon, 6)},
                "ts": now_ms(),
            });
            match &d.mqtt {
                Some(client) => {
                    let topic = format!("{}/{}", options.telemetry_topic, d.id);
                    // Never waits: a reading the queue has no room for (the gateway is
                    // away) is dropped, as a sensor's would be.
                    if client
                        .try_publish(topic, QoS::AtLeastOnce, false, body.to_string())
                        .is_ok()
                    {
                        produced += 1;
                    }
                }
                None => sends.push((
                    options.telemetry_topic.as_str(),
                    d.id.clone(),
                    body.to_string(),
                )),
            }
        }
        let futures = sends.iter().map(|(topic, key, body)| {
            producer.send(topic, Some(key.as_bytes()), Some(body.as_bytes()), None)
        });
        for result in futures_util::future::join_all(futures).await {
            result?;
            produced += 1;
        }
    }
}

/// Connects one device to the gateway's MQTT listener; its connection runs (and
/// reconnects) on a task of its own.
fn connect_device(id: &str, addr: SocketAddr) -> rumqttc::AsyncClient {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
    let id = id.to_string();
    tokio::spawn(async move {
        loop {
            if let Err(e) = events.poll().await {
                tracing::debug!(device = %id, error = %e, "demo device: MQTT connection lost; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    client
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}
