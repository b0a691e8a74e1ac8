//! Issue 17.11: the HTTP request path fuzzed against a real gateway with auth on.
//!
//! Every request in the committed corpus (`tests/fuzz/http`, the hostile-input run's
//! findings and one request per route) is sent as is, then mutated byte-wise, then
//! requests are built from routes, query keys, tokens and bodies. A few go out at once
//! on their own connections. The gateway must answer each with a well-formed response
//! that is not a 5xx other than 503, a JSON body with a `code` on our own refusals, and
//! never panic; a canary subscriber streaming throughout must get every record.
//!
//! CI runs 64 cases; `PROPTEST_CASES=5000 cargo test --release --test it fuzz::` runs
//! longer. A failure prints the shrunk requests: add them to the corpus once fixed.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kgate_client::{Client, Incoming};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as RunConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};

use crate::harness::*;
use crate::security::{auth_toml, claims, hs256, now};

/// How long a request may go unanswered before it counts as held (SSE, long-poll, a
/// body the gateway still waits for): holding is allowed, answering wrongly is not.
const HELD_AFTER: Duration = Duration::from_secs(1);

/// The values substituted for `{name}` in corpus requests.
struct Vars {
    topic: String,
    tokens: Vec<(&'static str, String)>,
}

impl Vars {
    fn render(&self, template: &[u8]) -> Vec<u8> {
        let mut text = String::from_utf8_lossy(template).into_owned();
        text = text.replace("{topic}", &self.topic);
        for (name, token) in &self.tokens {
            text = text.replace(&format!("{{{name}}}"), token);
        }
        // Corpus files are written with LF; the head goes out with CRLF, the body as is.
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut out = head.replace('\n', "\r\n").into_bytes();
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// The committed corpus, in file-name order.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/http");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "http"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name.unwrap_or_default(), bytes)
        })
        .collect()
}

/// Byte strings that break parsers: separators, escapes, huge numbers, query keys.
const INTERESTING: &[&str] = &[
    "%",
    "%2F",
    "%00",
    "%ff",
    "..",
    "/",
    "\r\n",
    "\n",
    "\r\n\r\n",
    ":",
    "\0",
    "-1",
    "0",
    "18446744073709551616",
    "9223372036854775807",
    "1e308",
    "NaN",
    "\u{feff}",
    "é",
    "[",
    "{",
    "\"",
    ",",
    "?",
    "#",
    " ",
    "\t",
    "&channel=",
    "&from=ts:",
    "&from=earliest",
    "&cursor=p1.",
    "&wait_ms=",
    "&max=",
    "&last_event_id=",
    "&token=",
    "&session=",
    "&key=",
    "Transfer-Encoding: chunked\r\n",
    "Content-Length: 0\r\n",
    "Content-Length: -1\r\n",
    "Expect: 100-continue\r\n",
    "Connection: close\r\n",
    "Upgrade: websocket\r\n",
    "Authorization: Bearer x.y.z\r\n",
    "Content-Type: application/json\r\n",
];

/// One byte-level change to a request.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(Index, &'static str),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Byte(Index, u8),
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        match self {
            Mutation::Insert(at, s) => {
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, s.bytes());
            }
            Mutation::Delete(at, n) => {
                let at = at.index(bytes.len());
                bytes.drain(at..(at + n).min(bytes.len()));
            }
            Mutation::Duplicate(at, n) => {
                let at = at.index(bytes.len());
                let copy = bytes[at..(at + n).min(bytes.len())].to_vec();
                bytes.splice(at..at, copy);
            }
            Mutation::Byte(at, b) => {
                let at = at.index(bytes.len());
                bytes[at] = *b;
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), proptest::sample::select(INTERESTING))
            .prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), 1usize..4096).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
    ]
}

/// A request built from the gateway's routes, query keys, tokens and bodies.
fn built() -> impl Strategy<Value = String> {
    let method =
        proptest::sample::select(&["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "G\0T"][..]);
    let path = proptest::sample::select(
        &[
            "/v1/ws",
            "/v1/sse",
            "/v1/poll",
            "/v1/publish/{topic}",
            "/v1/publish/",
            "/v1/admin/sessions",
            "/v1/admin/sessions/",
            "/v1/topics",
            "/v1/stats",
            "/v1",
            "/metrics",
            "/healthz",
            "/readyz",
            "/sdk/kgate.js",
            "/",
            "/status",
        ][..],
    );
    let tail = "[a-zA-Z0-9%/.:_-]{0,12}";
    let key = proptest::sample::select(
        &[
            "channel",
            "from",
            "cursor",
            "last_event_id",
            "wait_ms",
            "max",
            "token",
            "session",
            "key",
            "partition",
        ][..],
    );
    let value = prop_oneof![
        Just("{topic}".to_string()),
        Just("{topic}:k".to_string()),
        Just("earliest".to_string()),
        "ts:-?[0-9]{1,20}",
        "p[0-9]{0,3}\\.[0-9:,.a-z]{0,16}",
        "-?[0-9]{1,21}",
        "[ -~]{0,24}",
    ];
    let query = proptest::collection::vec((key, value), 0..5);
    let auth = proptest::sample::select(
        &[
            "",
            "Authorization: Bearer {token}\n",
            "Authorization: Bearer {weak}\n",
            "Authorization: Bearer {expired}\n",
            "Authorization: Bearer {far}\n",
            "Authorization: Bearer {admin}\n",
            "Authorization: Bearer\n",
            "Authorization: {token}\n",
        ][..],
    );
    let extra = proptest::sample::subsequence(
        &[
            "Upgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n",
            "Content-Type: application/json\n",
            "Content-Type: application/octet-stream\n",
            "Kgate-Header-A: b\n",
            "Last-Event-ID: p1.0:5\n",
            "Origin: http://elsewhere\n",
            "Accept: text/event-stream\n",
            "Sec-WebSocket-Protocol: kgate.v1, mqtt\n",
        ][..],
        0..3,
    );
    let body = prop_oneof![
        Just(String::new()),
        Just("{\"a\": 1}".to_string()),
        "[\\[{\"a-z:,0-9\\]}]{0,64}",
        "[ -~]{0,256}",
    ];
    (method, path, tail, query, auth, extra, body).prop_map(
        |(method, path, tail, query, auth, extra, body)| {
            let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let query = match query.is_empty() {
                true => String::new(),
                false => format!("?{}", query.join("&")),
            };
            format!(
                "{method} {path}{tail}{query} HTTP/1.1\nHost: 127.0.0.1\n{auth}{}Content-Length: {}\n\n{body}",
                extra.concat(),
                body.len()
            )
        },
    )
}

/// A request to send: a corpus entry, possibly mutated, or a built one.
#[derive(Debug, Clone)]
enum Request {
    Seed(Index, Vec<Mutation>),
    Built(String),
}

fn request() -> impl Strategy<Value = (Request, bool)> {
    let request = prop_oneof![
        1 => any::<Index>().prop_map(|i| Request::Seed(i, Vec::new())),
        3 => (any::<Index>(), proptest::collection::vec(mutation(), 1..6)).prop_map(|(i, m)| Request::Seed(i, m)),
        2 => built().prop_map(Request::Built),
    ];
    // Whether the client shuts its sending side once the request is out.
    (request, any::<bool>())
}

/// The gateway's answer to one request.
#[derive(Debug)]
enum Answer {
    Response {
        status: u16,
        head: String,
        body: Vec<u8>,
    },
    /// Nothing within [`HELD_AFTER`].
    Held,
    /// The connection closed with no response.
    Closed,
}

/// Sends `bytes` on a new connection and reads the answer (the head, and as much body as
/// Content-Length says or arrives within [`HELD_AFTER`]).
fn exchange(port: u16, bytes: &[u8], half_close: bool) -> Answer {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Answer::Closed;
    };
    let _ = s.set_read_timeout(Some(HELD_AFTER));
    // The gateway may refuse before reading everything: write errors are its right.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let started = Instant::now();
    let mut got = Vec::new();
    let mut ended = false;
    let mut chunk = [0u8; 16384];
    loop {
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            // A response to HEAD has a length but no body.
            let length = length.map(|n| if bytes.starts_with(b"HEAD ") { 0 } else { n });
            let complete = length.is_some_and(|n| got.len() - end - 4 >= n);
            if complete || ended || started.elapsed() > HELD_AFTER {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                // Pipelined requests get several responses: the first is judged.
                let body_end = length.map_or(got.len(), |n| (end + 4 + n).min(got.len()));
                let body = got[end + 4..body_end].to_vec();
                return Answer::Response { status, head, body };
            }
        } else if ended {
            // A head cut off by the close: `check` reports it as malformed.
            let head = String::from_utf8_lossy(&got).into_owned();
            return Answer::Response {
                status: 0,
                head,
                body: Vec::new(),
            };
        }
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
            Ok(_) if got.is_empty() => return Answer::Closed,
            Err(e) if got.is_empty() => {
                return match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Answer::Held,
                    _ => Answer::Closed,
                };
            }
            // Closed or quiet after a partial answer: what came is the whole of it.
            _ => ended = true,
        }
    }
}

/// What every answer must satisfy.
fn check(request: &[u8], answer: &Answer) -> Result<(), TestCaseError> {
    let Answer::Response { status, head, body } = answer else {
        return Ok(());
    };
    let shown = String::from_utf8_lossy(&request[..request.len().min(400)]).into_owned();
    prop_assert!(
        head.starts_with("HTTP/1.1 ") || head.starts_with("HTTP/1.0 "),
        "malformed response {head:?} to {shown:?}"
    );
    prop_assert!(
        *status >= 100 && (*status < 500 || *status == 503),
        "{status} for {shown:?}: {head}\n{}",
        String::from_utf8_lossy(body)
    );
    // Our own refusals carry JSON `{code, message}`; hyper's parse errors have no body.
    let json = head
        .to_ascii_lowercase()
        .contains("content-type: application/json");
    if *status >= 400 && json && !request.starts_with(b"HEAD ") {
        let json: Value = serde_json::from_slice(body).map_err(|e| {
            TestCaseError::fail(format!("{status} body is not JSON ({e}) for {shown:?}"))
        })?;
        prop_assert!(
            json["code"].is_string(),
            "{status} without a code: {json} for {shown:?}"
        );
    }
    Ok(())
}

/// Streams records to a canary subscriber until stopped; returns how many were produced
/// and the offsets the canary received.
fn canary(
    port: u16,
    topic: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(i64, Vec<i64>)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let url = format!("ws://127.0.0.1:{port}/v1/ws");
            let mut c = Client::connect_with_token(&url, Some(&token))
                .await
                .expect("canary connects");
            c.subscribe(&topic, json!("earliest"))
                .await
                .expect("subscribe");
            c.until("live", Duration::from_secs(30))
                .await
                .expect("live");
            let producer = producer();
            let mut produced = 0i64;
            let mut received = Vec::new();
            let mut next_send = tokio::time::Instant::now();
            loop {
                let stopping = stop.load(Ordering::Acquire);
                if !stopping && tokio::time::Instant::now() >= next_send {
                    producer
                        .send(&topic, Some(b"k"), Some(br#"{"canary":true}"#), None)
                        .await
                        .expect("produce");
                    produced += 1;
                    next_send += Duration::from_millis(50);
                }
                if stopping && received.len() as i64 >= produced {
                    return (produced, received);
                }
                let wait = match stopping {
                    true => Duration::from_secs(30),
                    false => Duration::from_millis(50),
                };
                match c.next_within(wait).await {
                    Ok(Incoming::Frame(f)) if f["type"] == "event" => {
                        received.push(f["offset"].as_i64().unwrap_or(-1))
                    }
                    Ok(Incoming::Frame(_)) => {}
                    Ok(Incoming::Closed(close)) => panic!("the canary was closed: {close:?}"),
                    Err(_) if !stopping => {}
                    Err(e) => panic!(
                        "the canary stopped receiving at {} of {produced}: {e}",
                        received.len()
                    ),
                }
            }
        })
    })
}

#[test]
fn the_http_request_path_survives_fuzzing() {
    let topic_name = topic("fuzz");
    let canary_topic = topic("fuzz-canary");
    let gw = Gateway::start(
        &[(&topic_name, 2), (&canary_topic, 1)],
        &auth_toml("[publish]\nmax_body_bytes = 4096\n"),
    );
    let vars = Vars {
        topic: topic_name.clone(),
        tokens: vec![
            (
                "token",
                hs256(&claims(
                    "fuzz",
                    json!({"channels": ["*"], "publish": [topic_name.clone()]}),
                )),
            ),
            (
                "weak",
                hs256(&claims(
                    "weak",
                    json!({"channels": [format!("{topic_name}:k")]}),
                )),
            ),
            ("admin", hs256(&claims("ops", json!({"admin": true})))),
            (
                "expired",
                hs256(&claims("late", json!({"exp": now() - 3600}))),
            ),
            (
                "far",
                hs256(&claims(
                    "far",
                    json!({"exp": 10_000_000_000_000_000_000u64, "channels": ["*"]}),
                )),
            ),
        ],
    };
    let corpus = corpus();
    assert!(
        corpus.len() >= 20,
        "the corpus is missing: {} files",
        corpus.len()
    );
    let canary_token = hs256(&claims(
        "canary",
        json!({"channels": [canary_topic.clone()]}),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let canary = canary(gw.port, canary_topic, canary_token, stop.clone());
    let render = |request: &Request| -> Vec<u8> {
        let mut bytes = match request {
            Request::Seed(i, mutations) => {
                let mut bytes = vars.render(&corpus[i.index(corpus.len())].1);
                for m in mutations {
                    m.apply(&mut bytes);
                }
                bytes
            }
            Request::Built(text) => vars.render(text.as_bytes()),
        };
        // Draining would end the canary's stream by design, not by a defect.
        if let Some(at) = bytes.windows(5).position(|w| w == b"drain") {
            bytes[at] = b'_';
        }
        bytes
    };
    let log_seen = std::sync::atomic::AtomicUsize::new(0);
    let panicked = || {
        let log = gw.proc.log_text();
        let from = log_seen.swap(log.len(), Ordering::AcqRel).min(log.len());
        log.get(from..)
            .is_some_and(|new| new.contains("panicked at") || new.contains("task panicked"))
    };

    // Every corpus entry as committed.
    for (name, template) in &corpus {
        let bytes = vars.render(template);
        let answer = exchange(gw.port, &bytes, false);
        if let Err(e) = check(&bytes, &answer) {
            panic!("corpus {name}: {e}");
        }
        assert!(
            !panicked(),
            "corpus {name} panicked the gateway:\n{}",
            gw.proc.log_text()
        );
    }

    // Then mutated and built requests, a few at once.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(RunConfig {
        cases,
        failure_persistence: None,
        // Each shrink step sends requests again: bound it.
        max_shrink_time: 60_000,
        ..RunConfig::default()
    });
    let (answered, held, closed) = (Cell::new(0), Cell::new(0), Cell::new(0));
    let result = runner.run(&proptest::collection::vec(request(), 1..6), |batch| {
        let rendered: Vec<(Vec<u8>, bool)> =
            batch.iter().map(|(r, half)| (render(r), *half)).collect();
        let answers: Vec<Answer> = std::thread::scope(|scope| {
            let handles: Vec<_> = rendered
                .iter()
                .map(|(bytes, half)| scope.spawn(|| exchange(gw.port, bytes, *half)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("exchange thread"))
                .collect()
        });
        for ((bytes, _), answer) in rendered.iter().zip(&answers) {
            match answer {
                Answer::Response { .. } => answered.set(answered.get() + 1),
                Answer::Held => held.set(held.get() + 1),
                Answer::Closed => closed.set(closed.get() + 1),
            }
            check(bytes, answer)
                .inspect_err(|e| eprintln!("fuzz: failing (shrinking next): {e}"))?;
        }
        prop_assert!(!panicked(), "the gateway panicked:\n{}", gw.proc.log_text());
        Ok(())
    });
    eprintln!(
        "fuzz: {cases} batches: {} answered, {} held, {} closed without an answer",
        answered.get(),
        held.get(),
        closed.get()
    );
    if let Err(e) = result {
        panic!("{e}");
    }

    // The gateway is alive and serving, and the canary lost nothing.
    stop.store(true, Ordering::Release);
    let (produced, received) = canary.join().expect("canary");
    let expected: Vec<i64> = (0..produced).collect();
    assert_eq!(received, expected, "the canary's stream");
    assert!(
        produced > 10,
        "the canary streamed throughout ({produced} records)"
    );
    assert_eq!(http_get(gw.port, "/healthz").map(|(s, _)| s), Some(200));
    assert!(!gw.proc.log_text().contains("panicked at"));
}
