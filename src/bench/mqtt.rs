//! The MQTT scenario: fan-out to N MQTT clients at QoS 0 and at QoS 1 (each record
//! acknowledged with PUBACK), and gateway memory per idle MQTT connection, each against
//! kgate's own WebSocket protocol on the same gateway in the same run. The MQTT load
//! clients are rumqttc (MQTT 3.1.1), the WebSocket ones the load client of every scenario.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeReasonCode};

use super::fanout::{Delivery, deliver};
use super::idle::measure;
use super::load::{Connect, Target, connect_many};
use super::{CpuMeter, GatewayProc, IdleOptions, Row, produce, progress};
use kgate::kafka::producer::Producer;

/// Options of the MQTT scenario.
#[derive(Debug, Clone)]
pub struct MqttOptions {
    /// Live clients of each fan-out run.
    pub clients: usize,
    /// Records produced in each fan-out run.
    pub records: usize,
    /// Idle connections of each memory run (0 skips them).
    pub idle_clients: usize,
    /// Load processes holding the idle connections.
    pub processes: usize,
}

/// One MQTT load client, subscribed; its connection moves only while it is read.
pub struct MqttClient {
    events: EventLoop,
    _client: AsyncClient,
}

impl MqttClient {
    /// Connects to `mqtt://host:port` with a clean session and subscribes to `filter`.
    pub async fn connect(url: &str, filter: &str, qos: u8) -> anyhow::Result<MqttClient> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let addr: SocketAddr = url
            .strip_prefix("mqtt://")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("{url:?} is not mqtt://ip:port"))?;
        let id = format!(
            "bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options
            .set_keep_alive(Duration::from_secs(60))
            .set_clean_session(true)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 16);
        let qos = match qos {
            0 => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        client.subscribe(filter, qos).await?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(60), events.poll())
                .await
                .context("no SUBACK within 60 s")??;
            if let Event::Incoming(Packet::SubAck(ack)) = event {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    bail!("subscription to {filter} refused");
                }
                break;
            }
        }
        Ok(MqttClient {
            events,
            _client: client,
        })
    }

    /// The payload of the next PUBLISH (`None` when the connection ended).
    pub async fn next_payload(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            match self.events.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => return Ok(Some(publish.payload)),
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    bail!("connection refused: {code:?}")
                }
                Err(_) => return Ok(None),
            }
        }
    }
}

/// Runs the scenario; returns the summary rows.
pub async fn run_mqtt(opts: &MqttOptions) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let (broker, bootstrap) = super::procs::broker(dir.path())?;
    let mqtt_port = super::procs::free_port()?;
    let topics = ["bench-mqtt-ws", "bench-mqtt-qos0", "bench-mqtt-qos1"];
    let mut gw = GatewayProc::start(
        &dir.path().join("gw"),
        &bootstrap,
        &topics.map(|t| (t, 1)),
        &format!("[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n"),
    )?;
    let mqtt_url = format!("mqtt://127.0.0.1:{mqtt_port}");
    let producer = Producer::new(&super::kafka_config(&bootstrap))?;
    let (n, clients) = (opts.records, opts.clients);
    let scenario = format!("mqtt ({clients} clients)");
    let mut rows = Vec::new();
    let mut websocket: Option<(f64, f64)> = None;
    for (topic, name) in topics.iter().zip(["WebSocket", "MQTT QoS 0", "MQTT QoS 1"]) {
        let target = match name {
            "WebSocket" => Target::kgate(&gw.ws_url(), topic),
            _ => Target::Mqtt {
                url: mqtt_url.clone(),
                filter: format!("{topic}/#"),
                qos: u8::from(name.ends_with('1')),
            },
        };
        let load = connect_many(&target, clients, Connect::default()).await?;
        progress(format!(
            "{name}: producing {n} records to {clients} clients"
        ));
        let cpu = CpuMeter::start(&[gw.proc.pid(), broker.proc.pid()]);
        let d: Delivery = deliver(load, n, produce(&producer, topic, n)).await?;
        let gw_cpu = cpu.used()[0];
        if d.received != d.expected {
            bail!(
                "{name}: kgate lost messages: {} of {} arrived; {}",
                d.received,
                d.expected,
                d.stopped
            );
        }
        let (rate, per) = (d.rate(), d.cpu_per_message(gw_cpu));
        let base = *websocket.get_or_insert((rate, per));
        let vs = (name != "WebSocket").then_some(());
        rows.push(Row {
            scenario: scenario.clone(),
            metric: format!("kgate {name}: messages delivered ({n} records)"),
            value: rate,
            unit: "msgs/s".into(),
            ratio: vs.map(|()| rate / base.0),
        });
        rows.push(Row {
            scenario: scenario.clone(),
            metric: format!("kgate {name}: CPU per delivered message"),
            value: per,
            unit: "us/msg".into(),
            ratio: vs.map(|()| per / base.1),
        });
    }
    gw.stop();
    if opts.idle_clients > 0 {
        let idle = IdleOptions {
            clients: opts.idle_clients,
            processes: opts.processes,
            deflate: false,
        };
        let scenario = format!("mqtt idle ({} connections)", opts.idle_clients);
        // Each on a fresh gateway, as the idle scenario measures: memory the fan-out runs
        // freed would otherwise be reused and hide what the connections take.
        let mut per = Vec::new();
        for (i, name) in ["WebSocket", "MQTT"].into_iter().enumerate() {
            let gw = GatewayProc::start(
                &dir.path().join(format!("idle-{i}")),
                &bootstrap,
                &[(topics[0], 1)],
                &format!("[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n"),
            )?;
            let target = match name {
                "WebSocket" => Target::kgate(&gw.ws_url(), topics[0]),
                _ => Target::Mqtt {
                    url: mqtt_url.clone(),
                    filter: format!("{}/#", topics[0]),
                    qos: 0,
                },
            };
            // One connection first, so one-off allocations are not counted.
            drop(connect_many(&target, 1, Connect::default()).await?);
            let pid = gw.proc.pid();
            let bytes =
                measure(dir.path(), &target, &idle, || super::procs::rss_bytes(pid)).await?;
            rows.push(Row {
                scenario: scenario.clone(),
                metric: format!("kgate RSS per idle subscribed {name} connection"),
                value: bytes,
                unit: "bytes".into(),
                ratio: per.first().map(|ws| bytes / ws),
            });
            per.push(bytes);
        }
    }
    Ok(rows)
}
