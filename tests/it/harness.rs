//! Processes and clients shared by the integration tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kgate::config::Config;
use kgate::kafka::producer::Producer;
use kgate_client::{Client, Incoming};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The kgate binary under test.
pub fn kgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kgate")
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct free loopback ports: all are held until every one is chosen, since the
/// kernel may hand a port just released to the next bind.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"));
    held.map(|l| l.local_addr().expect("a bound address").port())
}

/// A child process killed when dropped; its stderr is kept in a file for diagnosis.
pub struct Proc {
    pub child: Child,
    _stdin: Option<ChildStdin>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `kgate <args>` with `env`, stderr to `log`, exiting when this handle is dropped.
    pub fn spawn(args: &[&str], env: &[(&str, String)], log: &Path) -> Proc {
        Self::spawn_program(kgate_bin(), args, env, log)
    }

    /// Spawns `program <args>` like [`Proc::spawn`].
    pub fn spawn_program(program: &str, args: &[&str], env: &[(&str, String)], log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(file)
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let stdin = child.stdin.take();
        Proc {
            child,
            _stdin: stdin,
            log: log.to_path_buf(),
        }
    }

    /// The process's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which broker the tests run against: `KGATE_TEST_BROKER=tansu|kafka` (default tansu,
/// kgate's embedded broker; `kafka` is Apache Kafka from `tests/kafka/kafka`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Tansu,
    Kafka,
}

/// The broker this run uses.
pub fn broker_kind() -> BrokerKind {
    match std::env::var("KGATE_TEST_BROKER").as_deref() {
        Ok("kafka") => BrokerKind::Kafka,
        Ok("tansu") | Ok("") | Err(_) => BrokerKind::Tansu,
        Ok(other) => panic!("KGATE_TEST_BROKER={other:?}: use tansu or kafka"),
    }
}

/// The broker shared by every test in this binary (its process exits with ours:
/// it watches its stdin, which closes when this process ends).
pub struct Broker {
    pub addr: String,
    _proc: Mutex<Proc>,
    _dir: tempfile::TempDir,
}

/// Starts the shared broker on first use.
pub fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port_pair());
        let proc = spawn_broker(&addr, dir.path());
        Broker {
            addr,
            _proc: Mutex::new(proc),
            _dir: dir,
        }
    })
}

/// A free loopback port whose successor is free too (Kafka's controller listens there).
pub fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Starts a broker process of this run's kind on `addr` (pick it with
/// [`free_port_pair`]) with its data in `dir`, and waits until it serves; retention
/// is applied every second. The same `dir` restarts the same broker.
pub fn spawn_broker(addr: &str, dir: &Path) -> Proc {
    let log = dir.join(format!("broker-{}.log", free_port()));
    match broker_kind() {
        BrokerKind::Tansu => {
            let data = dir.display().to_string();
            let args = [
                "broker",
                "--listen",
                addr,
                "--data-dir",
                &data,
                "--exit-on-stdin-eof",
            ];
            let env = [(
                "KGATE_EMBEDDED_BROKER__RETENTION_CHECK_SECS",
                "1".to_string(),
            )];
            let proc = Proc::spawn(&args, &env, &log);
            wait_tcp(addr, Duration::from_secs(30));
            proc
        }
        BrokerKind::Kafka => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/kafka");
            let port = addr.rsplit(':').next().expect("addr has a port");
            let data = dir.join("kafka").display().to_string();
            let args = ["run", port, &data, "--exit-on-stdin-eof"];
            let proc = Proc::spawn_program(&script.display().to_string(), &args, &[], &log);
            // The broker logs this once it serves clients; the port opens earlier.
            let deadline = Instant::now() + Duration::from_secs(90);
            while !proc.log_text().contains("Kafka Server started") {
                assert!(
                    Instant::now() < deadline,
                    "Kafka did not start within 90 s:\n{}",
                    proc.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            proc
        }
    }
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_tcp(addr: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{addr} did not start listening within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A topic name unique to this test run.
pub fn topic(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A config pointing at the shared broker.
pub fn client_config() -> Config {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = broker().addr.clone();
    config.kafka.fetch_wait_max_ms = 5;
    config
}

/// A producer on the shared broker.
pub fn producer() -> Producer {
    Producer::new(&client_config()).expect("producer")
}

/// A gateway process serving `topics` (name, partitions) from the shared broker.
pub struct Gateway {
    pub proc: Proc,
    pub port: u16,
    /// The MQTT TCP listener (`mqtt.listen`).
    pub mqtt_port: u16,
    pub dir: tempfile::TempDir,
    restarts: u32,
}

impl Gateway {
    /// Starts a gateway on the shared broker and waits until it is ready; `extra` is appended to its config file.
    pub fn start(topics: &[(&str, i32)], extra: &str) -> Gateway {
        Self::start_on(&broker().addr, topics, extra)
    }

    /// Starts a gateway on the broker at `bootstrap`.
    pub fn start_on<'a>(bootstrap: &str, topics: &[(&str, i32)], extra: &'a str) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let [port, mqtt_port] = free_ports();
        // `extra` may open with a `[server]` table, then a `[kafka]` one: their keys join
        // the harness's own.
        let leading = |extra: &'a str, table: &str| -> (&'a str, &'a str) {
            match extra.strip_prefix(table) {
                Some(rest) => rest.split_at(rest.find("\n[").map_or(rest.len(), |i| i + 1)),
                None => ("", extra),
            }
        };
        let (server, extra) = leading(extra, "[server]\n");
        let (kafka, extra) = leading(extra, "[kafka]\n");
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nshutdown_timeout_secs = 5\n{server}\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\nfetch_wait_max_ms = 5\ncreate_missing_topics = true\nretry_initial_ms = 100\nretry_max_ms = 1000\n{kafka}\n",
            dir.path().join("data").display(),
        );
        for (name, partitions) in topics {
            toml.push_str(&format!(
                "[[topics]]\nname = \"{name}\"\npartitions = {partitions}\n\n"
            ));
        }
        let mqtt = format!("[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n");
        match extra.contains("[mqtt]\n") {
            true => toml.push_str(&extra.replace("[mqtt]\n", &mqtt)),
            false => {
                toml.push_str(extra);
                toml.push_str(&format!("\n{mqtt}"));
            }
        }
        if !extra.contains("[auth]") {
            toml.push_str("\n[auth]\nmode = \"none\"\n");
        }
        if !extra.contains("[limits]") {
            // Every test client connects from 127.0.0.1: lift the per-address limits.
            toml.push_str("\n[limits]\nconnection_attempts_per_ip_per_sec = 100000\nconnection_attempts_burst = 100000\nmax_connections_per_identity = 100000\n");
        }
        std::fs::write(dir.path().join("kgate.toml"), toml).expect("write config");
        let proc = Self::spawn(dir.path(), 0);
        let gw = Gateway {
            proc,
            port,
            mqtt_port,
            dir,
            restarts: 0,
        };
        if extra.contains("[tls]") {
            // Plain HTTP cannot poll /readyz on a TLS port: wait for the listening line.
            gw.wait_log("kgate listening on https", Duration::from_secs(60));
        } else {
            gw.wait_ready(Duration::from_secs(60));
        }
        gw
    }

    /// Waits until the gateway's log contains `text`.
    pub fn wait_log(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.proc.log_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log within {limit:?}:\n{}",
                self.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(dir: &Path, n: u32) -> Proc {
        let config = dir.join("kgate.toml");
        Proc::spawn(
            &[
                "serve",
                "--config",
                &config.display().to_string(),
                "--exit-on-stdin-eof",
            ],
            &[("KGATE_LOG__LEVEL", "info".to_string())],
            &dir.join(format!("gateway-{n}.log")),
        )
    }

    /// Kills the gateway with SIGKILL (no drain, no flush).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Stops the gateway with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) {
        let pid = self.proc.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.proc.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "gateway did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the gateway again on the same port and data directory.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.restarts += 1;
        self.proc = Self::spawn(self.dir.path(), self.restarts);
        self.wait_ready(Duration::from_secs(60));
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if http_get(self.port, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready within {limit:?}; log:\n{}",
                self.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A numeric field of `topic` in `/v1/topics` (`partitions`, `subscriptions`, ...), or -1.
pub fn topic_stat(port: u16, topic: &str, field: &str) -> i64 {
    let (_, body) = http_get(port, "/v1/topics").expect("topics");
    let topics: Value = serde_json::from_str(&body).expect("topics JSON");
    topics["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == topic))
        .and_then(|t| t[field].as_i64())
        .unwrap_or(-1)
}

/// Connects a client and subscribes, returning once the subscription is live.
pub async fn subscribed_client(url: &str, channel: &str, from: Value) -> Client {
    let mut client = Client::connect(url).await.expect("connect");
    client.subscribe(channel, from).await.expect("subscribe");
    let (reply, _) = client
        .until("subscribed", Duration::from_secs(30))
        .await
        .expect("subscribed reply");
    assert_eq!(reply["channel"], channel);
    client
}

/// Offsets received per partition, in arrival order.
pub type Received = BTreeMap<i64, Vec<i64>>;

/// Reads events until `count` have arrived (panics after `limit`); returns the event frames.
pub async fn read_events(client: &mut Client, count: usize, limit: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_within(left).await {
            Ok(Incoming::Frame(f)) if f["type"] == "event" => events.push(f),
            Ok(Incoming::Frame(_)) => {}
            Ok(Incoming::Closed(c)) => {
                panic!("closed after {} of {count} events: {c:?}", events.len())
            }
            Err(e) => panic!("after {} of {count} events: {e}", events.len()),
        }
    }
    events
}

/// Reads `count` events and keeps only their positions by partition, in arrival order: many
/// clients reading thousands of records each would hold gigabytes of whole frames.
pub async fn read_offsets(client: &mut Client, count: usize, limit: Duration) -> Received {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Received::new();
    let mut seen = 0;
    while seen < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_within(left).await {
            Ok(Incoming::Frame(f)) if f["type"] == "event" => {
                seen += 1;
                out.entry(f["partition"].as_i64().expect("partition"))
                    .or_default()
                    .push(f["offset"].as_i64().expect("offset"));
            }
            Ok(Incoming::Frame(_)) => {}
            Ok(Incoming::Closed(c)) => panic!("closed after {seen} of {count} events: {c:?}"),
            Err(e) => panic!("after {seen} of {count} events: {e}"),
        }
    }
    out
}

/// Groups event offsets by partition, in arrival order.
pub fn by_partition(events: &[Value]) -> Received {
    let mut out = Received::new();
    for e in events {
        out.entry(e["partition"].as_i64().expect("partition"))
            .or_default()
            .push(e["offset"].as_i64().expect("offset"));
    }
    out
}

/// Reads stdout lines of a finished command.
pub fn lines(bytes: &[u8]) -> Vec<String> {
    BufReader::new(bytes)
        .lines()
        .map_while(Result::ok)
        .collect()
}

/// The Python of `tests/python/.venv` (made by `.ci/setup-tests`: confluent-kafka, fastavro, PyYAML).
pub fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/.venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run .ci/setup-tests",
        venv.display()
    );
    venv
}

/// Produces `n` records to `topic` in chunks (pausing `pause` between them); returns the end offset per partition.
pub async fn produce_paced(
    producer: &Producer,
    topic: &str,
    n: usize,
    chunk: usize,
    pause: Duration,
    progress: Option<watch::Sender<usize>>,
) -> BTreeMap<i64, i64> {
    let mut ends = BTreeMap::new();
    let mut sent = 0;
    while sent < n {
        let size = chunk.min(n - sent);
        let sends = (sent..sent + size).map(|i| {
            let key = format!("k{}", i % 31);
            let body = json!({"seq": i}).to_string();
            async move {
                producer
                    .send(topic, Some(key.as_bytes()), Some(body.as_bytes()), None)
                    .await
            }
        });
        for d in futures_util::future::join_all(sends).await {
            let d = d.expect("produce");
            let end = ends.entry(d.partition as i64).or_insert(0);
            *end = (*end).max(d.offset + 1);
        }
        sent += size;
        if let Some(p) = &progress {
            let _ = p.send(sent);
        }
        tokio::time::sleep(pause).await;
    }
    ends
}

/// Runs `tests/browser/<script>` with node (it drives Debian's chromium) and checks that
/// it succeeded with `checks` lines starting `ok:`.
pub fn browser_checks(script: &str, args: &[String], checks: usize) {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists()
            && browser_dir.join("node_modules/mqtt").exists(),
        "playwright-core or mqtt is not installed: run .ci/setup-tests (npm ci in tests/browser)"
    );
    let out = Command::new("node")
        .arg(browser_dir.join(script))
        .args(args)
        .current_dir(&browser_dir)
        .output()
        .expect("run node (install it with .ci/setup-tests)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok:")).count(),
        checks,
        "{stdout}"
    );
}

/// A one-partition topic whose records Kafka deletes once they are a minute old by
/// their timestamp; it rolls a segment a second, since Kafka deletes closed ones only.
pub struct AgingTopic {
    pub name: String,
    producer: rdkafka::producer::FutureProducer,
}

impl AgingTopic {
    /// Creates the topic.
    pub async fn create(prefix: &str) -> AgingTopic {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let name = topic(prefix);
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            kgate::kafka::client_config(&client_config(), "test-admin")
                .create()
                .expect("admin client");
        let new = NewTopic::new(&name, 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "delete")
            .set("retention.ms", "60000")
            .set("segment.ms", "1000");
        admin
            .create_topics(&[new], &AdminOptions::new())
            .await
            .expect("create topic");
        let producer = kgate::kafka::client_config(&client_config(), "test-producer")
            .create()
            .expect("producer");
        AgingTopic { name, producer }
    }

    /// An age past the topic's retention (an hour; retention is a minute).
    pub const EXPIRED: Duration = Duration::from_secs(3600);

    /// Produces `body` (keyed `key`) to partition 0, timestamped `age` ago.
    pub async fn send(&self, key: Option<&str>, body: &str, age: Duration) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as i64;
        let mut record = rdkafka::producer::FutureRecord::to(&self.name)
            .partition(0)
            .payload(body)
            .timestamp(now - age.as_millis() as i64);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produce");
    }

    /// Waits (up to a minute) until retention has deleted every offset below `offset`.
    pub async fn wait_deleted_below(&self, offset: i64) {
        let cluster = kgate::kafka::cluster::Cluster::new(&client_config()).expect("cluster");
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster
            .watermarks(&self.name, 0)
            .await
            .expect("watermarks")
            .0
            < offset
        {
            assert!(
                Instant::now() < deadline,
                "retention did not delete the records below {offset}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs tests/python/ws_client.py and returns the JSON it prints.
pub fn ws_client(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ws_client.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("run tests/python/ws_client.py");
    assert!(
        out.status.success(),
        "ws_client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}
