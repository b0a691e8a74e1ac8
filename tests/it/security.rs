//! Issue 5: tokens at the handshake, channel permissions, session scope, token
//! refresh and expiry, Origin allowlist, TLS, authenticated publish.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use kgate_client::{Client, Incoming};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::harness::*;

const SECRET: &str = "kgate-test-secret-that-is-long-enough";
const ISSUER: &str = "kgate-tests";
const AUDIENCE: &str = "kgate";

pub(crate) fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

pub(crate) fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// `[auth]` with one key of each algorithm, issuer and audience checks, no leeway.
pub(crate) fn auth_toml(extra: &str) -> String {
    format!(
        "[auth]\nmode = \"jwt\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nleeway_secs = 0\n{extra}\n\
         [[auth.keys]]\nalg = \"HS256\"\nkey = \"{SECRET}\"\n\n\
         [[auth.keys]]\nalg = \"RS256\"\nkey_file = \"{}\"\n\n\
         [[auth.keys]]\nalg = \"ES256\"\nkey_file = \"{}\"\n",
        key_file("rsa-public.pem").display(),
        key_file("ec-public.pem").display(),
    )
}

/// Standard claims for `sub` valid for an hour, merged with `extra`.
pub(crate) fn claims(sub: &str, extra: Value) -> Value {
    let mut c =
        json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600, "iat": now()});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

pub(crate) fn hs256(claims: &Value) -> String {
    hs256_with(claims, SECRET)
}

fn hs256_with(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign HS256")
}

fn signed_with_file(alg: Algorithm, file: &str, claims: &Value) -> String {
    let pem = std::fs::read(key_file(file)).expect("test key");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("test key parses");
    encode(&Header::new(alg), claims, &key).expect("sign")
}

/// An unsigned token (`alg: none`), the classic forgery.
fn alg_none(claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

/// The handshake's outcome: `Ok` on 101, else the status and the JSON body.
async fn handshake(url: &str, headers: &[(&'static str, String)]) -> Result<(), (u16, Value)> {
    let mut request = url.into_client_request().expect("request");
    for (k, v) in headers {
        request
            .headers_mut()
            .insert(*k, v.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

fn stats(port: u16) -> Value {
    serde_json::from_str(&http_get(port, "/v1/stats").expect("stats").1).expect("stats JSON")
}

/// An HTTP request with an optional bearer token: status and JSON body.
fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let response = match (method, body) {
        ("GET", _) => agent.get(url).header("authorization", &auth).call(),
        ("DELETE", _) => agent.delete(url).header("authorization", &auth).call(),
        (_, Some((content_type, bytes))) => agent
            .post(url)
            .header("authorization", &auth)
            .header("content-type", content_type)
            .header("kgate-header-source", "test")
            .send(bytes),
        (_, None) => agent.post(url).header("authorization", &auth).send_empty(),
    }
    .expect("HTTP request");
    let status = response.status().as_u16();
    let body = response.into_body().read_json().unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_401_and_its_reason() {
    let t = topic("authn");
    let gw = Gateway::start(&[(&t, 1)], &auth_toml(""));
    let url = gw.ws_url();
    let ok = claims("alice", json!({"channels": ["*"]}));
    let cases: Vec<(&str, Vec<(&'static str, String)>, &str)> = vec![
        ("no token", vec![], "token_missing"),
        ("garbage", bearer("not-a-jwt"), "token_malformed"),
        (
            "expired",
            bearer(&hs256(&claims("alice", json!({"exp": now() - 60})))),
            "token_expired",
        ),
        (
            "not yet valid",
            bearer(&hs256(&claims("alice", json!({"nbf": now() + 600})))),
            "token_not_yet_valid",
        ),
        (
            "wrong signature",
            bearer(&hs256_with(&ok, "another-secret-that-is-long-enough!!")),
            "token_bad_signature",
        ),
        (
            "wrong audience",
            bearer(&hs256(&claims("alice", json!({"aud": "someone-else"})))),
            "token_wrong_audience",
        ),
        (
            "wrong issuer",
            bearer(&hs256(&claims("alice", json!({"iss": "mallory"})))),
            "token_wrong_issuer",
        ),
        (
            "alg none",
            bearer(&alg_none(&ok)),
            "token_algorithm_not_allowed",
        ),
        (
            "no subject",
            bearer(&hs256(
                &json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 60}),
            )),
            "token_missing_claim",
        ),
        (
            // Issue 17.10: an empty subject would turn off session scoping.
            "empty subject",
            bearer(&hs256(
                &json!({"sub": "", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 60}),
            )),
            "token_missing_claim",
        ),
        (
            "HS384",
            bearer(
                &encode(
                    &Header::new(Algorithm::HS384),
                    &ok,
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .unwrap(),
            ),
            "token_algorithm_not_allowed",
        ),
    ];
    for (what, headers, code) in &cases {
        match handshake(&url, headers).await {
            Err((401, body)) => assert_eq!(body["code"], *code, "{what}: {body}"),
            other => panic!("{what}: expected 401 {code}, got {other:?}"),
        }
    }
    assert_eq!(
        stats(gw.port)["auth"]["failures"],
        cases.len(),
        "each refusal counted"
    );
    // Valid tokens of each algorithm, in each place a client may put one.
    let rs = signed_with_file(Algorithm::RS256, "rsa-private.pem", &ok);
    let es = signed_with_file(Algorithm::ES256, "ec-private.pem", &ok);
    handshake(&url, &bearer(&hs256(&ok)))
        .await
        .expect("HS256 in the header");
    handshake(&url, &bearer(&rs))
        .await
        .expect("RS256 in the header");
    handshake(&url, &bearer(&es))
        .await
        .expect("ES256 in the header");
    let protocols = vec![(
        "sec-websocket-protocol",
        format!("kgate.v1.json, kgate.bearer.{es}"),
    )];
    handshake(&url, &protocols)
        .await
        .expect("token in a subprotocol entry");
    handshake(&format!("{url}?access_token={rs}"), &[])
        .await
        .expect("token in the query");
    // The token never reaches the log.
    let log = gw.proc.log_text();
    assert!(
        !log.contains(&rs) && !log.contains(&es),
        "a token was logged"
    );
    // HTTP routes that need a token refuse without one.
    let (status, body) = request(
        "GET",
        &format!("http://127.0.0.1:{}/v1/admin/sessions", gw.port),
        None,
        None,
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_missing"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_limited_by_claims_and_sessions_by_subject() {
    let prices = topic("perm-prices");
    let telemetry = topic("perm-telemetry");
    let gw = Gateway::start(&[(&prices, 1), (&telemetry, 1)], &auth_toml(""));
    let url = gw.ws_url();
    let alice = hs256(&claims(
        "alice",
        json!({"channels": [format!("{prices}:*"), format!("{telemetry}:device-42")]}),
    ));
    let bob = hs256(&claims("bob", json!({"channels": [format!("{prices}:*")]})));
    let admin = hs256(&claims("ops", json!({"admin": true})));

    let mut a = Client::connect_with_token(&url, Some(&alice))
        .await
        .expect("alice connects");
    a.send_text(json!({"type": "subscribe", "id": 1, "channel": telemetry}).to_string())
        .await
        .unwrap();
    let f = next_frame(&mut a).await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{f}"
    );
    let device = format!("{telemetry}:device-42");
    a.subscribe(&device, json!("latest"))
        .await
        .expect("allowed key");
    let producer = producer();
    for (i, key) in ["device-7", "device-42", "device-7", "device-42"]
        .iter()
        .enumerate()
    {
        let body = json!({"n": i}).to_string();
        producer
            .send(
                &telemetry,
                Some(key.as_bytes()),
                Some(body.as_bytes()),
                None,
            )
            .await
            .expect("produce");
    }
    let events = read_events(&mut a, 2, Duration::from_secs(30)).await;
    assert!(
        events.iter().all(|e| e["key"] == "device-42"),
        "only the permitted key: {events:?}"
    );
    assert_eq!(stats(gw.port)["auth"]["forbidden"], 1);

    // Sessions are per subject: bob's "s1" is not alice's "s1".
    let mut a2 = Client::connect_with_token(&url, Some(&alice))
        .await
        .unwrap();
    let attached = a2.attach("s1").await.expect("alice attaches");
    assert_eq!(attached["resumed"], false);
    a2.subscribe(&format!("{prices}:AAPL"), json!("latest"))
        .await
        .expect("subscribe");
    let mut b = Client::connect_with_token(&url, Some(&bob)).await.unwrap();
    let attached = b.attach("s1").await.expect("bob attaches");
    assert_eq!(
        attached["resumed"], false,
        "bob gets his own fresh session: {attached}"
    );
    assert_eq!(
        attached["subscriptions"],
        json!([]),
        "and sees none of alice's channels"
    );
    // alice's connection was not taken over.
    a2.send_text(json!({"type": "ping", "id": 9}).to_string())
        .await
        .unwrap();
    a2.until("pong", Duration::from_secs(30))
        .await
        .expect("alice still attached");

    // Admin routes need the admin claim; the listing shows sessions by subject.
    let base = format!("http://127.0.0.1:{}/v1/admin/sessions", gw.port);
    let (status, body) = request("GET", &base, Some(&alice), None);
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = request("GET", &base, Some(&admin), None);
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"alice/s1") && ids.contains(&"bob/s1"),
        "{ids:?}"
    );
    let (status, _) = request("GET", &format!("{base}/alice%2Fs1"), Some(&bob), None);
    assert_eq!(status, 403, "bob cannot read alice's positions");
}

/// Publish tests' setting: topics `orders` and `other`, a writer's token that may publish
/// to `orders` only, and a reader (whose token may not publish) subscribed to `orders`.
struct Publishing {
    gw: Gateway,
    orders: String,
    other: String,
    writer: String,
    reader: String,
    sub: Client,
}

async fn publishing(name: &str, publish_toml: &str) -> Publishing {
    let orders = topic(&format!("{name}-orders"));
    let other = topic(&format!("{name}-other"));
    let gw = Gateway::start(
        &[(&orders, 1), (&other, 1)],
        &auth_toml(&format!("[publish]\n{publish_toml}")),
    );
    let writer = hs256(&claims(
        "svc",
        json!({"publish": [orders.clone()], "channels": [orders.clone()]}),
    ));
    let reader = hs256(&claims("app", json!({"channels": ["*"]})));
    let mut sub = Client::connect_with_token(&gw.ws_url(), Some(&reader))
        .await
        .unwrap();
    sub.subscribe(&orders, json!("latest")).await.unwrap();
    Publishing {
        gw,
        orders,
        other,
        writer,
        reader,
        sub,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_needs_a_token_with_publish_permission() {
    let Publishing {
        gw,
        orders,
        other,
        writer,
        reader,
        mut sub,
    } = publishing("publish", "max_body_bytes = 1024\n").await;
    let url = |t: &str| format!("http://127.0.0.1:{}/v1/publish/{t}?key=o-1", gw.port);
    let body = br#"{"qty": 5}"#;
    let (status, answer) = request(
        "POST",
        &url(&orders),
        Some(&writer),
        Some(("application/json", body)),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["partition"].as_i64(), answer["offset"].as_i64()),
        (Some(0), Some(0))
    );
    let events = read_events(&mut sub, 1, Duration::from_secs(30)).await;
    assert_eq!(events[0]["data"], json!({"qty": 5}));
    assert_eq!(events[0]["key"], "o-1");
    assert_eq!(events[0]["headers"]["source"], "test", "{}", events[0]);

    let (status, answer) = request(
        "POST",
        &url(&other),
        Some(&writer),
        Some(("application/json", body)),
    );
    assert_eq!((status, answer["code"].as_str()), (403, Some("forbidden")));
    let (status, answer) = request(
        "POST",
        &url(&orders),
        Some(&reader),
        Some(("application/json", body)),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("forbidden")),
        "subscribe rights are not publish rights"
    );
    let (status, answer) = request(
        "POST",
        &url(&orders),
        None,
        Some(("application/json", body)),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("token_missing"))
    );
    let big = vec![b'x'; 2048];
    let (status, answer) = request(
        "POST",
        &url(&orders),
        Some(&writer),
        Some(("application/octet-stream", &big)),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let (status, answer) = request(
        "POST",
        &url(&orders),
        Some(&writer),
        Some(("application/json", b"{nope")),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_json"))
    );
    assert_eq!(
        stats(gw.port)["published"],
        1,
        "only the good request produced"
    );
}

/// The `publish` command: answered with `published` once Kafka acknowledged the record
/// (which then reaches subscribers with its key and headers); refused with a code naming
/// why for every bad case, while the connection goes on; rate-limited per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_the_connection_is_acknowledged_by_kafka_and_checked() {
    let Publishing {
        gw,
        orders,
        other,
        writer,
        mut sub,
        ..
    } = publishing(
        "wspublish",
        "max_body_bytes = 1024\nmax_per_connection_per_sec = 5\n",
    )
    .await;
    sub.until("live", Duration::from_secs(30)).await.unwrap();
    let mut device = Client::connect_with_token(&gw.ws_url(), Some(&writer))
        .await
        .unwrap();
    /// Sends a command and returns its answer (`published` or `error`).
    async fn send(client: &mut Client, command: Value) -> Value {
        client.send_text(command.to_string()).await.unwrap();
        let answer = loop {
            match client.next_within(Duration::from_secs(30)).await.unwrap() {
                Incoming::Frame(f) if f["type"] == "published" || f["type"] == "error" => break f,
                Incoming::Frame(_) => continue,
                Incoming::Closed(c) => panic!("closed: {c:?}"),
            }
        };
        assert_eq!(answer["id"], command["id"], "{answer}");
        answer
    }
    let answer = send(
        &mut device,
        json!({"type": "publish", "id": 1, "topic": orders, "key": "o-1",
               "headers": {"source": "ws"}, "data": {"qty": 5, "note": "a  b"}}),
    )
    .await;
    assert_eq!(
        (answer["type"].as_str(), answer["topic"].as_str()),
        (Some("published"), Some(orders.as_str())),
        "{answer}"
    );
    assert_eq!(
        (answer["partition"].as_i64(), answer["offset"].as_i64()),
        (Some(0), Some(0))
    );
    let events = read_events(&mut sub, 1, Duration::from_secs(30)).await;
    assert_eq!(events[0]["data"], json!({"qty": 5, "note": "a  b"}));
    assert_eq!(
        (events[0]["key"].as_str(), events[0]["offset"].as_i64()),
        (Some("o-1"), Some(0))
    );
    assert_eq!(events[0]["headers"]["source"], "ws", "{}", events[0]);
    let answer = send(
        &mut device,
        json!({"type": "publish", "id": 2, "topic": orders, "data_b64": "AAEC"}),
    )
    .await;
    assert_eq!(
        (answer["type"].as_str(), answer["offset"].as_i64()),
        (Some("published"), Some(1))
    );
    let events = read_events(&mut sub, 1, Duration::from_secs(30)).await;
    assert_eq!(
        events[0]["offset"], 1,
        "the binary value reached the subscriber too"
    );

    let refused = [
        (
            json!({"type": "publish", "id": 3, "topic": other, "data": 1}),
            "forbidden",
        ),
        (
            json!({"type": "publish", "id": 4, "topic": orders, "data_b64": "A".repeat(2000)}),
            "record_too_large",
        ),
        (
            json!({"type": "publish", "id": 5, "topic": orders}),
            "invalid_frame",
        ),
        (
            json!({"type": "publish", "id": 6, "topic": orders, "data_b64": "not base64!"}),
            "invalid_frame",
        ),
    ];
    for (command, code) in refused {
        let answer = send(&mut device, command.clone()).await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some(code)),
            "{command} -> {answer}"
        );
    }
    let answer = send(
        &mut sub,
        json!({"type": "publish", "id": 7, "topic": orders, "data": 1}),
    )
    .await;
    assert_eq!(
        answer["code"], "forbidden",
        "subscribe rights are not publish rights"
    );

    // Past the per-connection rate (5 a second, burst 5; 2 spent above), publishes are
    // refused and not produced.
    for id in 10..20 {
        device
            .send_text(
                json!({"type": "publish", "id": id, "topic": orders, "data": id}).to_string(),
            )
            .await
            .unwrap();
    }
    let (mut published, mut limited) = (0, 0);
    while published + limited < 10 {
        match device.next_within(Duration::from_secs(30)).await.unwrap() {
            Incoming::Frame(f) if f["type"] == "published" => published += 1,
            Incoming::Frame(f) if f["code"] == "rate_limited" => limited += 1,
            Incoming::Frame(_) => {}
            Incoming::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    assert!(
        limited > 0 && published < 10,
        "{published} published, {limited} rate-limited"
    );
    // The subscriber got exactly what was acknowledged, and both connections go on.
    let events = read_events(&mut sub, published, Duration::from_secs(30)).await;
    assert_eq!(events.len(), published);
    assert_eq!(
        stats(gw.port)["published"],
        2 + published as u64,
        "only what was acknowledged was produced"
    );
    let answer = send(
        &mut device,
        json!({"type": "publish", "id": 99, "topic": orders, "data": {}}),
    )
    .await;
    assert!(
        answer["type"] == "published" || answer["code"] == "rate_limited",
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refresh_before_expiry_and_close_4001_at_expiry() {
    let t = topic("expiry");
    let gw = Gateway::start(&[(&t, 1)], &auth_toml(""));
    let url = gw.ws_url();
    let short = |sub: &str, channels: Value| {
        hs256(&claims(
            sub,
            json!({"exp": now() + 3, "channels": channels}),
        ))
    };
    let started = Instant::now();
    let mut lapsing = Client::connect_with_token(&url, Some(&short("carol", json!(["*"]))))
        .await
        .unwrap();
    subscribe_live(&mut lapsing, &t).await;
    let mut renewing = Client::connect_with_token(&url, Some(&short("dave", json!(["*"]))))
        .await
        .unwrap();
    subscribe_live(&mut renewing, &t).await;
    subscribe_live(&mut renewing, &format!("{t}:k1")).await;

    // A token for another subject is refused; the connection keeps its own.
    let send = |token: String| json!({"type": "auth", "id": "r", "token": token}).to_string();
    renewing
        .send_text(send(short("mallory", json!(["*"]))))
        .await
        .unwrap();
    let f = next_frame(&mut renewing).await;
    assert_eq!(f["code"], "invalid_token", "{f}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("token_subject_changed"),
        "{f}"
    );
    // A fresh token that only allows key k1: the whole-topic subscription is dropped.
    let fresh = hs256(&claims("dave", json!({"channels": [format!("{t}:k1")]})));
    renewing.send_text(send(fresh)).await.unwrap();
    let f = next_frame(&mut renewing).await;
    assert_eq!(
        (f["code"].as_str(), f["type"].as_str()),
        (Some("forbidden"), Some("error")),
        "{f}"
    );
    let f = next_frame(&mut renewing).await;
    assert_eq!(f["type"], "authenticated", "{f}");

    match lapsing.next_within(Duration::from_secs(30)).await {
        Ok(Incoming::Closed(Some((code, _)))) => assert_eq!(code, 4001),
        other => panic!("expected close 4001, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not closed before expiry"
    );
    // The renewed connection outlives the first token and still streams its key.
    tokio::time::sleep(Duration::from_secs(2)).await;
    producer()
        .send(&t, Some(b"k1"), Some(br#"{"v":1}"#), None)
        .await
        .unwrap();
    let events = read_events(&mut renewing, 1, Duration::from_secs(30)).await;
    assert_eq!(events[0]["key"], "k1");
    assert_eq!(stats(gw.port)["auth"]["expired_closes"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_the_origin_allowlist() {
    let t = topic("tls");
    let extra = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n{}",
        key_file("tls-cert.pem").display(),
        key_file("tls-key.pem").display(),
        auth_toml("allowed_origins = [\"https://app.example.com\"]"),
    );
    let gw = Gateway::start(&[(&t, 1)], &extra);
    let token = hs256(&claims("erin", json!({"channels": ["*"]})));
    let connector = tls_connector();
    // https: the health route over TLS.
    let mut tls = connector.connect_to(gw.port).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tls.read_to_string(&mut text).await.unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
        "{text}"
    );
    // wss from an allowed origin streams; a foreign origin gets 403.
    let url = format!("wss://localhost:{}/v1/ws", gw.port);
    let wss = |origin: &'static str| {
        let mut request = url.as_str().into_client_request().unwrap();
        let h = request.headers_mut();
        h.insert("origin", origin.parse().unwrap());
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h.insert("sec-websocket-protocol", "kgate.v1.json".parse().unwrap());
        request
    };
    let stream = connector.connect_to(gw.port).await;
    match tokio_tungstenite::client_async(wss("https://evil.example.com"), stream).await {
        Err(WsError::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("foreign origin: {:?}", other.map(|_| ())),
    }
    let stream = connector.connect_to(gw.port).await;
    let (mut ws, _) = tokio_tungstenite::client_async(wss("https://app.example.com"), stream)
        .await
        .expect("allowed origin over wss");
    use futures_util::SinkExt;
    ws.send(Message::Text(
        json!({"type": "subscribe", "channel": t})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut seen_live = false;
    while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("frame in time")
    {
        let f: Value = serde_json::from_str(m.to_text().unwrap_or("null")).unwrap_or(Value::Null);
        if f["type"] == "live" && !seen_live {
            seen_live = true;
            producer()
                .send(&t, Some(b"k"), Some(br#"{"secure":true}"#), None)
                .await
                .unwrap();
        }
        if f["type"] == "event" {
            assert_eq!(f["data"], json!({"secure": true}));
            break;
        }
    }
    assert_eq!(
        stats_tls(&connector, gw.port).await["auth"]["origin_refused"],
        1
    );
    // Plain HTTP to the TLS port gets nothing useful.
    assert!(http_get(gw.port, "/healthz").is_none_or(|(s, _)| s != 200));
}

async fn subscribe_live(c: &mut Client, channel: &str) {
    c.subscribe(channel, json!("latest"))
        .await
        .expect("subscribe");
    c.until("live", Duration::from_secs(30))
        .await
        .expect("live");
}

async fn next_frame(c: &mut Client) -> Value {
    match c.next_within(Duration::from_secs(30)).await {
        Ok(Incoming::Frame(f)) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// A TLS client that trusts the test certificate.
struct TlsConnector(tokio_rustls::TlsConnector);

fn tls_connector() -> TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(key_file("tls-cert.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

impl TlsConnector {
    async fn connect_to(
        &self,
        port: u16,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        self.0.connect(name, tcp).await.expect("TLS handshake")
    }
}

async fn stats_tls(connector: &TlsConnector, port: u16) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = connector.connect_to(port).await;
    tls.write_all(b"GET /v1/stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tls.read_to_string(&mut text).await.unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_poll_use_the_same_token_checks() {
    let t = topic("authn-http");
    let secret_topic = topic("authn-secret");
    let gw = Gateway::start(&[(&t, 1), (&secret_topic, 1)], &auth_toml(""));
    let token = hs256(&claims("frank", json!({"channels": [t.clone()]})));
    let expired = hs256(&claims(
        "frank",
        json!({"exp": now() - 60, "channels": ["*"]}),
    ));
    let base = format!("http://127.0.0.1:{}", gw.port);
    // Long-poll: no token, an expired one, then a good one (header or query parameter).
    let poll = format!("{base}/v1/poll?channel={t}&wait_ms=0");
    let (status, body) = request("GET", &poll, None, None);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_missing"))
    );
    let (status, body) = request("GET", &poll, Some(&expired), None);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_expired"))
    );
    let (status, body) = request("GET", &poll, Some(&token), None);
    assert_eq!(status, 200, "{body}");
    let (status, _) = request("GET", &format!("{poll}&access_token={token}"), None, None);
    assert_eq!(
        status, 200,
        "the query parameter works for clients that cannot set headers"
    );
    // A channel outside the token's claims: a `forbidden` frame and no data.
    let (status, body) = request(
        "GET",
        &format!("{base}/v1/poll?channel={secret_topic}&wait_ms=0"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(body["frames"][0]["code"], "forbidden", "{body}");
    // SSE: refused before any stream starts without a token.
    let (status, body) = request("GET", &format!("{base}/v1/sse?channel={t}"), None, None);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_missing"))
    );
}

/// Issue 17.1: an `exp` far in the future is arithmetic on a client-supplied number:
/// 10^19 once panicked the connection, and 2^64-1 wrapped into an immediate 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_expiry_neither_panics_nor_closes() {
    let t = topic("farexp");
    let config = auth_toml("").replace("leeway_secs = 0", "leeway_secs = 30");
    let gw = Gateway::start(&[(&t, 1)], &config);
    for exp in [json!(10_000_000_000_000_000_000u64), json!(u64::MAX)] {
        let token = hs256(&claims("far", json!({ "exp": exp })));
        let mut c = Client::connect_with_token(&gw.ws_url(), Some(&token))
            .await
            .unwrap_or_else(|e| panic!("exp {exp}: {e}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.send_text(json!({"type": "ping", "id": 1}).to_string())
            .await
            .expect("send");
        let f = next_frame(&mut c).await;
        assert_eq!(f["type"], "pong", "exp {exp}: {f}");
    }
}

/// Issue 17.3, 17.6, 17.7 and 17.10: publish checks the token, the permission and the
/// Content-Length before it reads a body; the documented 1 MiB is reachable; deep JSON
/// is refused; and a stranger cannot tell which topics are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_before_reading_and_accepts_up_to_its_limit() {
    use std::io::{Read, Write};
    let t = topic("publish-limits");
    let gw = Gateway::start(&[(&t, 1)], &auth_toml(""));
    let writer = hs256(&claims("svc", json!({"publish": [t.clone()]})));
    let url = |t: &str| format!("http://127.0.0.1:{}/v1/publish/{t}", gw.port);

    // Headers announcing 1 MB and no token: 401 at once, though no body byte was sent.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /v1/publish/{t} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .expect("an answer before the body was sent");
    assert_eq!(&head, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&head));

    // Just under 1 MiB of JSON: produced (it was 503 "MessageSizeTooLarge").
    let big = format!("\"{}\"", "x".repeat(1024 * 1024 - 100));
    let (status, answer) = request(
        "POST",
        &url(&t),
        Some(&writer),
        Some(("application/json", big.as_bytes())),
    );
    assert_eq!(status, 200, "{answer}");

    // 100,000 levels of nesting: refused.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, answer) = request(
        "POST",
        &url(&t),
        Some(&writer),
        Some(("application/json", deep.as_bytes())),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_json")),
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_json_depth"),
        "{answer}"
    );

    // No permission: 403 whether or not the topic is served.
    let (status, answer) = request(
        "POST",
        &url("no-such-topic"),
        Some(&writer),
        Some(("application/json", b"{}")),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("forbidden")),
        "{answer}"
    );
}

/// Issue 17.5: with auth on, sessions are listed as `subject/id`; each listed id can be
/// shown and deleted, spelled with `/` or `%2F`, and `kgate sessions` reaches it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_sessions_can_be_shown_and_deleted_by_operators() {
    let t = topic("scoped");
    let gw = Gateway::start(&[(&t, 1)], &auth_toml(""));
    let alice = hs256(&claims("alice", json!({"channels": ["*"]})));
    let admin = hs256(&claims("ops", json!({"admin": true})));
    let mut c = Client::connect_with_token(&gw.ws_url(), Some(&alice))
        .await
        .expect("alice connects");
    c.attach("phone").await.expect("attach");
    let base = format!("http://127.0.0.1:{}/v1/admin/sessions", gw.port);
    let (status, list) = request("GET", &base, Some(&admin), None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["sessions"][0]["id"], "alice/phone", "{list}");
    for spelling in ["alice/phone", "alice%2Fphone"] {
        let (status, shown) = request("GET", &format!("{base}/{spelling}"), Some(&admin), None);
        assert_eq!(
            (status, shown["id"].as_str()),
            (200, Some("alice/phone")),
            "{spelling}: {shown}"
        );
    }
    let out = std::process::Command::new(kgate_bin())
        .args(["sessions", "show", "alice/phone", "--url"])
        .arg(format!("http://127.0.0.1:{}", gw.port))
        .args(["--token", &admin])
        .output()
        .expect("kgate sessions");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, deleted) = request(
        "DELETE",
        &format!("{base}/alice%2Fphone"),
        Some(&admin),
        None,
    );
    assert_eq!(
        (status, deleted["deleted"].as_str()),
        (200, Some("alice/phone")),
        "{deleted}"
    );
    match c.next_within(Duration::from_secs(10)).await {
        Ok(Incoming::Closed(Some((code, _)))) => assert_eq!(code, 4010),
        other => panic!("expected close 4010, got {other:?}"),
    }
}
