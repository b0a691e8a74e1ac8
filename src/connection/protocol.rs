//! WebSocket protocol v1: client commands, error codes and close codes (the
//! server's frames are [`super::frame`]). docs/protocol.md is the reference; keep the two in step.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::publish::Publication;
use crate::router::HeaderFilter;
use crate::session::subscription::Options;

/// The subprotocol a client offers in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "kgate.v1.json";

/// The binary subprotocol: as `kgate.v1.json`, but events of topics with
/// `binary = true` arrive as binary messages (schemas/envelope.avsc).
pub const BINARY_SUBPROTOCOL: &str = "kgate.v1.avro";

/// Stable, machine-readable error codes carried by `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The text frame is not JSON.
    InvalidJson,
    /// JSON, but not a valid command (missing or mistyped field).
    InvalidFrame,
    /// The `type` names no command.
    UnknownType,
    /// The command is larger than `websocket.max_command_bytes`.
    MessageTooLarge,
    /// Binary frames carry no commands in v1.
    BinaryNotSupported,
    /// The channel name is malformed.
    InvalidChannel,
    /// The gateway does not serve this topic.
    UnknownTopic,
    /// The `from` position is malformed or names a partition the topic lacks.
    InvalidPosition,
    /// The connection is already subscribed to this channel.
    AlreadySubscribed,
    /// Unsubscribe from a channel the connection is not subscribed to.
    NotSubscribed,
    /// The connection holds `websocket.max_subscriptions` already.
    TooManySubscriptions,
    /// Kafka did not answer a lookup (offsets for a timestamp); retry later.
    KafkaUnavailable,
    /// A catch-up read failed; the subscription was removed.
    ReplayFailed,
    /// The session id is malformed.
    InvalidSession,
    /// `attach` after subscribing, or a second `attach` on one connection.
    InvalidState,
    /// `ack` on a connection with no session attached.
    NoSession,
    /// The session store failed; the command had no effect.
    StoreFailed,
    /// More commands than `limits.commands_per_sec` allows; the command was not executed.
    RateLimited,
    /// The token does not permit this channel; nothing was subscribed.
    Forbidden,
    /// A refreshed token was refused; the message names the reason code (`token_expired`, ...).
    InvalidToken,
    /// `snapshot` on a topic without `snapshot = true`, or its cache is still loading.
    SnapshotUnavailable,
    /// The topic was deleted from the cluster; the subscription was removed.
    TopicDeleted,
    /// `publish` on a gateway with `publish.enabled = false`.
    PublishDisabled,
    /// A published value past `publish.max_body_bytes`, or a record the topic refuses.
    RecordTooLarge,
}

impl ErrorCode {
    /// The wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::UnknownTopic => "unknown_topic",
            ErrorCode::InvalidPosition => "invalid_position",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::KafkaUnavailable => "kafka_unavailable",
            ErrorCode::ReplayFailed => "replay_failed",
            ErrorCode::InvalidSession => "invalid_session",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::NoSession => "no_session",
            ErrorCode::StoreFailed => "store_failed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::SnapshotUnavailable => "snapshot_unavailable",
            ErrorCode::TopicDeleted => "topic_deleted",
            ErrorCode::PublishDisabled => "publish_disabled",
            ErrorCode::RecordTooLarge => "record_too_large",
        }
    }
}

/// WebSocket close codes kgate sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1001: the gateway is shutting down; reconnect (to another node).
    GoingAway,
    /// 1002: the client broke its protocol's rules (MQTT: a malformed or unexpected packet).
    ProtocolError,
    /// 1009: an inbound message exceeded `websocket.max_message_bytes`.
    MessageTooBig,
    /// 1011: an internal error ended the connection.
    InternalError,
    /// 4001: the token expired and no fresh one was sent with an `auth` command.
    TokenExpired,
    /// 4008: the client did not read fast enough and its outbox filled.
    SlowConsumer,
    /// 4009: a socket write did not complete within `websocket.write_timeout_secs`.
    WriteTimeout,
    /// 4010: another connection attached the same session.
    SessionTakenOver,
    /// 4011: no frame (not even a pong) arrived within `heartbeat.timeout_secs`.
    HeartbeatTimeout,
    /// 4012: no subscription for `heartbeat.idle_timeout_secs`.
    IdleTimeout,
    /// 4029: too many rate-limited commands in a row.
    RateLimited,
}

impl CloseCode {
    /// False when the peer is presumed gone or not reading (no pong, a write that timed
    /// out): waiting for its close reply would only hold the socket.
    pub fn peer_may_answer(self) -> bool {
        !matches!(self, CloseCode::HeartbeatTimeout | CloseCode::WriteTimeout)
    }

    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TokenExpired => 4001,
            CloseCode::SlowConsumer => 4008,
            CloseCode::WriteTimeout => 4009,
            CloseCode::SessionTakenOver => 4010,
            CloseCode::HeartbeatTimeout => 4011,
            CloseCode::IdleTimeout => 4012,
            CloseCode::RateLimited => 4029,
        }
    }

    /// A short snake_case name, for metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::WriteTimeout => "write_timeout",
            CloseCode::SessionTakenOver => "session_taken_over",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::RateLimited => "rate_limited",
        }
    }

    /// The close reason text.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "server shutting down; reconnect",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::TokenExpired => "token expired; reconnect with a fresh token",
            CloseCode::SlowConsumer => "slow consumer: outbox full",
            CloseCode::WriteTimeout => "write timeout",
            CloseCode::SessionTakenOver => "session attached by another connection",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::IdleTimeout => "idle: no subscription",
            CloseCode::RateLimited => "too many commands",
        }
    }
}

/// Where a subscription starts, as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    Latest,
    Earliest,
    /// Explicit offsets by partition; partitions not named start at the live end.
    Offsets(BTreeMap<i32, i64>),
    /// Explicit offsets by partition; partitions not named start at the earliest record
    /// (`"others": "earliest"`: a resume that must not skip partitions it has no position for).
    OffsetsElseEarliest(BTreeMap<i32, i64>),
    /// Milliseconds since the epoch, resolved with Kafka's offsets-for-times.
    Timestamp(i64),
}

/// A parsed client command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Subscribe {
        id: Option<Value>,
        channel: String,
        from: From,
        /// Rate and header filter (kept by a session).
        options: Options,
        /// Send the latest record per key first, then `snapshot_end`, then live records.
        snapshot: bool,
    },
    Unsubscribe {
        id: Option<Value>,
        channel: String,
    },
    Ping {
        id: Option<Value>,
    },
    Attach {
        id: Option<Value>,
        session: String,
    },
    Ack {
        id: Option<Value>,
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// A fresh token for the same subject, sent before the current one expires.
    Auth {
        id: Option<Value>,
        token: String,
    },
    /// A record to produce to Kafka, answered with `published` once Kafka acknowledged it.
    Publish {
        id: Option<Value>,
        publication: Publication,
    },
}

impl Command {
    /// The request id the client gave, echoed by the answer.
    pub fn id(&self) -> Option<&Value> {
        match self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::Ping { id }
            | Command::Attach { id, .. }
            | Command::Ack { id, .. }
            | Command::Auth { id, .. }
            | Command::Publish { id, .. } => id.as_ref(),
        }
    }
}

/// How large a command may be: `publish` carries a record, every other command is small.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `websocket.max_command_bytes`.
    pub command: usize,
    /// `publish` commands (`websocket.max_message_bytes`: the frame limit).
    pub publish: usize,
}

impl Limits {
    /// The same limit for every command.
    pub fn all(bytes: usize) -> Limits {
        Limits {
            command: bytes,
            publish: bytes,
        }
    }
}

/// A command that could not be parsed; answered with an `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    pub id: Option<Value>,
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFields {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "id")]
    _id: Option<Value>,
    channel: String,
    #[serde(default)]
    from: Option<Value>,
    #[serde(default)]
    max_rate: Option<f64>,
    #[serde(default)]
    filter: Option<FilterFields>,
    #[serde(default)]
    snapshot: bool,
    #[serde(default)]
    delta: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterFields {
    headers: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeFields {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "id")]
    _id: Option<Value>,
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachFields {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "id")]
    _id: Option<Value>,
    session: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckFields {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "id")]
    _id: Option<Value>,
    topic: String,
    partition: u16,
    offset: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFields {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "id")]
    _id: Option<Value>,
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFields<'a> {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "id")]
    _id: Option<Value>,
    topic: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    data_b64: Option<String>,
}

/// Session ids: 1-128 characters of `[A-Za-z0-9._:@-]`.
pub fn is_valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

const FROM_HELP: &str = r#"`from` must be "latest", "earliest", {"offsets": {"<partition>": <offset>}} or {"timestamp": <epoch ms>}"#;

/// Parses one text frame into a command.
pub fn parse_command(text: &str, limits: Limits) -> Result<Command, CommandError> {
    let fail = |id: Option<Value>, code, message: String| CommandError { id, code, message };
    let too_large = |max: usize| {
        fail(
            None,
            ErrorCode::MessageTooLarge,
            format!("command is {} bytes; the limit is {max}", text.len()),
        )
    };
    if text.len() > limits.command.max(limits.publish) {
        return Err(too_large(limits.command.max(limits.publish)));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| fail(None, ErrorCode::InvalidJson, format!("not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(fail(
            None,
            ErrorCode::InvalidFrame,
            "a command must be a JSON object".into(),
        ));
    };
    let id = object.get("id").cloned();
    if let Some(bad) = id
        .as_ref()
        .filter(|v| !(v.is_string() || v.is_u64() || v.is_i64()))
    {
        return Err(fail(
            None,
            ErrorCode::InvalidFrame,
            format!("`id` must be a string or an integer, not {bad}"),
        ));
    }
    let Some(kind) = object.get("type").and_then(Value::as_str) else {
        return Err(fail(
            id,
            ErrorCode::InvalidFrame,
            "missing string field `type`".into(),
        ));
    };
    let invalid = |id: &Option<Value>, e: serde_json::Error| {
        fail(id.clone(), ErrorCode::InvalidFrame, format!("{kind}: {e}"))
    };
    let limit = match kind {
        "publish" => limits.publish,
        _ => limits.command,
    };
    if text.len() > limit {
        return Err(too_large(limit));
    }
    match kind {
        "subscribe" => {
            let f: SubscribeFields =
                serde_json::from_value(value.clone()).map_err(|e| invalid(&id, e))?;
            let from = parse_from(f.from.as_ref())
                .map_err(|m| fail(id.clone(), ErrorCode::InvalidPosition, m))?;
            if let Some(rate) = f.max_rate.filter(|r| !super::throttle::valid_rate(*r)) {
                return Err(fail(
                    id,
                    ErrorCode::InvalidFrame,
                    format!(
                        "`max_rate` must be a number of updates per second per key from {} to {}, not {rate}",
                        super::throttle::MIN_RATE,
                        super::throttle::MAX_RATE
                    ),
                ));
            }
            if f.snapshot && from != From::Latest {
                return Err(fail(
                    id,
                    ErrorCode::InvalidFrame,
                    "`snapshot` starts at the live end: leave `from` out or set it to \"latest\""
                        .into(),
                ));
            }
            let filter = match f.filter {
                None => None,
                Some(fields) => Some(
                    HeaderFilter::parse(&fields.headers)
                        .map_err(|e| fail(id.clone(), ErrorCode::InvalidFrame, e.to_string()))?
                        .into(),
                ),
            };
            Ok(Command::Subscribe {
                id,
                channel: f.channel,
                from,
                options: Options {
                    max_rate: f.max_rate,
                    filter,
                    qos: 0,
                    delta: f.delta,
                },
                snapshot: f.snapshot,
            })
        }
        "unsubscribe" => {
            let f: UnsubscribeFields =
                serde_json::from_value(value.clone()).map_err(|e| invalid(&id, e))?;
            Ok(Command::Unsubscribe {
                id,
                channel: f.channel,
            })
        }
        "ping" => Ok(Command::Ping { id }),
        "attach" => {
            let f: AttachFields =
                serde_json::from_value(value.clone()).map_err(|e| invalid(&id, e))?;
            if !is_valid_session_id(&f.session) {
                return Err(fail(
                    id,
                    ErrorCode::InvalidSession,
                    format!(
                        "session id {:?} must be 1-128 characters of [A-Za-z0-9._:@-]",
                        f.session
                    ),
                ));
            }
            Ok(Command::Attach {
                id,
                session: f.session,
            })
        }
        "ack" => {
            let f: AckFields =
                serde_json::from_value(value.clone()).map_err(|e| invalid(&id, e))?;
            Ok(Command::Ack {
                id,
                topic: f.topic,
                partition: i32::from(f.partition),
                offset: i64::try_from(f.offset).unwrap_or(i64::MAX),
            })
        }
        "auth" => {
            let f: AuthFields =
                serde_json::from_value(value.clone()).map_err(|e| invalid(&id, e))?;
            Ok(Command::Auth { id, token: f.token })
        }
        "publish" => {
            // From the text, so `data` is produced exactly as the client wrote it.
            let f: PublishFields = serde_json::from_str(text).map_err(|e| invalid(&id, e))?;
            let (value, json) = match (f.data, f.data_b64) {
                (Some(data), None) => (Bytes::copy_from_slice(data.get().as_bytes()), true),
                (None, Some(b64)) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(&b64)
                        .map_err(|e| {
                            fail(
                                id.clone(),
                                ErrorCode::InvalidFrame,
                                format!("publish: `data_b64` is not base64: {e}"),
                            )
                        })?;
                    (Bytes::from(raw), false)
                }
                _ => {
                    return Err(fail(
                        id,
                        ErrorCode::InvalidFrame,
                        "publish: give the value as exactly one of `data` (JSON) or `data_b64`"
                            .into(),
                    ));
                }
            };
            let publication = Publication {
                topic: f.topic,
                key: f.key.map(Bytes::from),
                headers: f
                    .headers
                    .into_iter()
                    .map(|(name, value)| (name, Bytes::from(value)))
                    .collect(),
                value,
                json,
            };
            Ok(Command::Publish { id, publication })
        }
        other => Err(fail(
            id.clone(),
            ErrorCode::UnknownType,
            format!(
                "unknown command type {other:?}; expected subscribe, unsubscribe, publish, attach, ack, auth or ping"
            ),
        )),
    }
}

fn parse_from(from: Option<&Value>) -> Result<From, String> {
    let Some(from) = from else {
        return Ok(From::Latest);
    };
    match from {
        Value::String(s) if s == "latest" => Ok(From::Latest),
        Value::String(s) if s == "earliest" => Ok(From::Earliest),
        Value::Object(o) if o.len() == 1 && o.contains_key("timestamp") => {
            match o["timestamp"].as_i64() {
                Some(ts) if ts >= 0 => Ok(From::Timestamp(ts)),
                _ => Err(format!(
                    "`from.timestamp` must be a non-negative integer (epoch ms), not {}",
                    o["timestamp"]
                )),
            }
        }
        Value::Object(o)
            if o.contains_key("offsets")
                && (o.len() == 1 || (o.len() == 2 && o.contains_key("others"))) =>
        {
            let earliest = match o.get("others").map(|v| v.as_str()) {
                None | Some(Some("latest")) => false,
                Some(Some("earliest")) => true,
                Some(_) => {
                    return Err(format!(
                        "`from.others` must be \"latest\" or \"earliest\", not {}",
                        o["others"]
                    ));
                }
            };
            let Some(map) = o["offsets"].as_object() else {
                return Err("`from.offsets` must be an object of partition to offset".into());
            };
            let mut offsets = BTreeMap::new();
            for (p, off) in map {
                let partition: i32 =
                    p.parse().ok().filter(|p| *p >= 0).ok_or_else(|| {
                        format!("`from.offsets` key {p:?} is not a partition number")
                    })?;
                let offset = off.as_i64().filter(|o| *o >= 0).ok_or_else(|| {
                    format!("`from.offsets.{p}` must be a non-negative integer, not {off}")
                })?;
                offsets.insert(partition, offset);
            }
            Ok(match earliest {
                true => From::OffsetsElseEarliest(offsets),
                false => From::Offsets(offsets),
            })
        }
        other => Err(format!("{FROM_HELP}; got {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(text: &str) -> CommandError {
        parse_command(text, Limits::all(1000)).unwrap_err()
    }

    #[test]
    fn parses_subscribe_variants() {
        let c = parse_command(
            r#"{"type":"subscribe","id":"a","channel":"prices:AAPL"}"#,
            Limits::all(1000),
        )
        .unwrap();
        assert_eq!(
            c,
            Command::Subscribe {
                id: Some(json!("a")),
                channel: "prices:AAPL".into(),
                from: From::Latest,
                options: Options::default(),
                snapshot: false,
            }
        );
        let c = parse_command(
            r#"{"type":"subscribe","channel":"p","snapshot":true,"filter":{"headers":{"region":["eu",null]}}}"#,
            Limits::all(1000),
        )
        .unwrap();
        let Command::Subscribe {
            options:
                Options {
                    filter: Some(filter),
                    ..
                },
            snapshot: true,
            ..
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!(
            *filter,
            HeaderFilter::parse(&json!({"region": ["eu", null]})).unwrap()
        );
        let c = parse_command(
            r#"{"type":"subscribe","id":7,"channel":"p","from":{"offsets":{"0":5,"2":9}}}"#,
            Limits::all(1000),
        )
        .unwrap();
        let Command::Subscribe {
            from: From::Offsets(o),
            ..
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!(o.into_iter().collect::<Vec<_>>(), vec![(0, 5), (2, 9)]);
        let c = parse_command(
            r#"{"type":"subscribe","channel":"p","from":{"timestamp":1700}}"#,
            Limits::all(1000),
        )
        .unwrap();
        assert!(matches!(
            c,
            Command::Subscribe {
                from: From::Timestamp(1700),
                ..
            }
        ));
        let c = parse_command(
            r#"{"type":"subscribe","channel":"p","from":"earliest"}"#,
            Limits::all(1000),
        )
        .unwrap();
        assert!(matches!(
            c,
            Command::Subscribe {
                from: From::Earliest,
                ..
            }
        ));
    }

    #[test]
    fn each_bad_input_has_its_code() {
        assert_eq!(err("{nope").code, ErrorCode::InvalidJson);
        assert_eq!(err("[1]").code, ErrorCode::InvalidFrame);
        assert_eq!(err(r#"{"id":"x"}"#).id, Some(json!("x")));
        assert_eq!(
            err(r#"{"type":"dance","id":1}"#).code,
            ErrorCode::UnknownType
        );
        assert_eq!(
            err(r#"{"type":"subscribe","id":1}"#).code,
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"p","extra":1}"#).code,
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"p","from":"yesterday"}"#).code,
            ErrorCode::InvalidPosition
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"p","snapshot":true,"from":"earliest"}"#).code,
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"p","filter":{"headers":{"a":1}}}"#).code,
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"p","filter":{"key":"a"}}"#).code,
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"p","from":{"offsets":{"x":1}}}"#).code,
            ErrorCode::InvalidPosition
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"p","from":{"offsets":{"0":-1}}}"#).code,
            ErrorCode::InvalidPosition
        );
        assert_eq!(
            err(r#"{"type":"ping","id":{"a":1}}"#).code,
            ErrorCode::InvalidFrame
        );
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000));
        assert_eq!(err(&big).code, ErrorCode::MessageTooLarge);
    }
}

/// Hostile input: the parser answers every frame with a command or an error, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// JSON values of any shape, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Commands with a known type and fields drawn from the real field names.
    fn command_like() -> impl Strategy<Value = String> {
        let kind = prop_oneof![
            Just("subscribe"),
            Just("unsubscribe"),
            Just("ping"),
            Just("attach"),
            Just("ack"),
            Just("auth"),
            Just("bogus"),
        ];
        let field = prop_oneof![
            Just("id"),
            Just("channel"),
            Just("from"),
            Just("max_rate"),
            Just("session"),
            Just("topic"),
            Just("partition"),
            Just("offset"),
            Just("token"),
            Just("offsets"),
        ];
        (
            kind,
            proptest::collection::btree_map(field, json_value(), 0..6),
        )
            .prop_map(|(kind, fields)| {
                let mut object: serde_json::Map<String, Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                object.insert("type".into(), Value::from(kind));
                Value::Object(object).to_string()
            })
    }

    /// Cases per property: 3,000 in `cargo test`; `PROPTEST_CASES=1000000` runs longer.
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000)
    }

    /// `max_rate` values where float arithmetic breaks: tiny, huge, subnormal, any.
    fn rate() -> impl Strategy<Value = Value> {
        prop_oneof![
            (-400i32..400).prop_map(|e| Value::from(10f64.powi(e))),
            Just(Value::from(5e-324)),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            any::<u64>().prop_map(Value::from),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = parse_command(&text, Limits::all(4096));
        }

        /// The whole subscribe path past the parser: a rate that is accepted drives a
        /// throttle through offers and flushes at any time (1e-300 once panicked here).
        #[test]
        fn accepted_rates_make_throttles_that_never_panic(
            rate in rate(),
            offsets in proptest::collection::vec(0i64..i64::MAX, 1..8),
            later in proptest::collection::vec(0u64..u64::MAX / 4, 1..8),
        ) {
            let text = json!({"type": "subscribe", "channel": "t", "max_rate": rate,
                              "from": {"offsets": {"0": offsets[0]}}}).to_string();
            if let Ok(Command::Subscribe { options, .. }) = parse_command(&text, Limits::all(4096)) {
                let rate = options.max_rate.unwrap_or(1.0);
                prop_assert!(crate::config::valid_rate(rate));
                let mut throttle = super::super::throttle::Throttle::new(rate);
                let start = std::time::Instant::now();
                let mut out = Vec::new();
                for (offset, ns) in offsets.iter().zip(later.iter().cycle()) {
                    let record = crate::codec::EncodedRecord::new(
                        crate::codec::RecordMeta { topic: "t".into(), partition: 0, offset: *offset },
                        Some(bytes::Bytes::from_static(b"k")),
                        "{}".into(),
                    );
                    let at = start
                        .checked_add(std::time::Duration::from_nanos(*ns))
                        .unwrap_or(start);
                    throttle.offer(std::sync::Arc::new(record), at, &mut out);
                    let _ = throttle.flush_due(at, &mut out);
                }
                prop_assert!(!out.is_empty());
            }
        }

        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            let _ = parse_command(&value.to_string(), Limits::all(4096));
        }

        #[test]
        fn command_shaped_frames_never_panic(text in command_like()) {
            let _ = parse_command(&text, Limits::all(4096));
        }

        #[test]
        fn arbitrary_channel_names_never_panic(name in ".{0,600}") {
            let _ = crate::router::Channel::parse(&name, 512);
        }
    }
}
