//! The floor baseline: the least work any gateway can do per delivered message. A
//! broadcast server with no Kafka: tokio-tungstenite, a task per connection, records
//! generated in-process (stamped with their time, like bench records) and shared by
//! every connection, each connection writing all it has queued with one flush. It runs
//! in its own process (`kgate bench floor-serve`) so its CPU is measured on its own.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{ChildStdin, ChildStdout, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::procs::{Proc, free_port, wait_tcp};

/// Records generated but not yet taken by every connection before generation waits.
const BACKLOG: usize = 32 * 1024;

/// The floor server as a child process.
pub struct Floor {
    pub proc: Proc,
    port: u16,
    commands: ChildStdin,
    done: BufReader<ChildStdout>,
}

impl Floor {
    /// Starts `kgate bench floor-serve` on a free port.
    pub fn start(dir: &std::path::Path) -> anyhow::Result<Floor> {
        let port = free_port()?;
        let exe = std::env::current_exe().context("cannot find the kgate executable")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "bench",
            "floor-serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]);
        let (mut proc, stdout) = Proc::piped(cmd, dir.join("floor.log"))?;
        let commands = proc.take_stdin().context("the floor server has no stdin")?;
        wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(30))?;
        Ok(Floor {
            proc,
            port,
            commands,
            done: BufReader::new(stdout),
        })
    }

    /// The load client's target: every message is a record.
    pub fn target(&self) -> super::load::Target {
        super::load::Target::Plain {
            url: format!("ws://127.0.0.1:{}/", self.port),
        }
    }

    /// Has the server generate `n` records at `rate` per second (0: as fast as its
    /// clients take them) and waits until it has; returns how long that took.
    pub async fn generate(&mut self, n: usize, rate: f64) -> anyhow::Result<Duration> {
        self.generate_as(n, rate, Frames::Bare).await
    }

    /// [`Floor::generate`], each record sent as `frames`.
    pub async fn generate_as(
        &mut self,
        n: usize,
        rate: f64,
        frames: Frames,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        writeln!(self.commands, "{n} {rate} {}", frames.word())?;
        self.commands.flush()?;
        let mut line = String::new();
        tokio::task::block_in_place(|| self.done.read_line(&mut line))?;
        if !line.starts_with("done") {
            bail!("the floor server stopped: {line:?}");
        }
        Ok(started.elapsed())
    }
}

/// What the floor sends of each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// The record's value alone (about 100 bytes): the least any server can send.
    Bare,
    /// The value in kgate's `event` frame (topic, partition, offset, timestamp, key),
    /// made by kgate's own encoder: the same bytes per message as kgate sends.
    Event,
}

impl Frames {
    fn word(self) -> &'static str {
        match self {
            Frames::Bare => "bare",
            Frames::Event => "event",
        }
    }
}

/// `kgate bench floor-serve`: serves until stdin closes; each stdin line `N RATE
/// [bare|event]` generates N records and answers `done` on stdout.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let (records, _) = broadcast::channel::<Utf8Bytes>(2 * BACKLOG);
    let sender = records.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, sender.subscribe()));
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut next = 0usize;
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let n: usize = words.next().and_then(|w| w.parse().ok()).context("N")?;
        let rate: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
        let frames = match words.next() {
            Some("event") => Frames::Event,
            _ => Frames::Bare,
        };
        generate(&records, next, n, rate, frames).await;
        next += n;
        stdout.write_all(b"done\n").await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// Sends records `first..first + n`, paced at `rate` per second when it is positive.
async fn generate(
    records: &broadcast::Sender<Utf8Bytes>,
    first: usize,
    n: usize,
    rate: f64,
    frames: Frames,
) {
    let topic: std::sync::Arc<str> = "bench-fanout".into();
    let started = tokio::time::Instant::now();
    for i in 0..n {
        if rate > 0.0 {
            tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        // Like a gateway's bounded queue: wait for the slowest connection to catch up.
        while records.len() > BACKLOG {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let now = super::load::now_us();
        let (key, body) = super::bench_record(first + i, now);
        let frame = match frames {
            Frames::Bare => Utf8Bytes::from(body),
            Frames::Event => event_frame(&topic, first + i, now, &key, &body),
        };
        let _ = records.send(frame);
    }
}

/// One client: every record goes out; what is queued is written with one flush.
async fn connection(stream: tokio::net::TcpStream, mut records: broadcast::Receiver<Utf8Bytes>) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut incoming) = ws.split();
    loop {
        tokio::select! {
            record = records.recv() => {
                let record = match record {
                    Ok(record) => record,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if sink.feed(Message::Text(record)).await.is_err() {
                    return;
                }
                while let Ok(record) = records.try_recv() {
                    if sink.feed(Message::Text(record)).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `body` in the `event` frame kgate would send for it (partition 0, offset `i`).
fn event_frame(
    topic: &std::sync::Arc<str>,
    i: usize,
    now_us: u64,
    key: &str,
    body: &str,
) -> Utf8Bytes {
    use kgate::codec::{Data, RecordMeta, encode_event};
    let meta = RecordMeta {
        topic: topic.clone(),
        partition: 0,
        offset: i as i64,
    };
    let timestamp = Some((now_us / 1000) as i64);
    // The bench's own records are JSON; were one not, the bare body goes out instead.
    match serde_json::from_str(body) {
        Ok(json) => encode_event(
            &meta,
            timestamp,
            Some(key.as_bytes()),
            &[],
            &Data::Verbatim(json),
        ),
        Err(_) => Utf8Bytes::from(body.to_string()),
    }
}
