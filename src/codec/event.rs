//! The `event` frame: one Kafka record as the JSON text sent to clients.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::payload::Data;

/// An encoded frame: UTF-8 text checked once, cloned by reference count.
pub type Frame = Utf8Bytes;

/// Where a record came from, carried by every delivery so clients can drop duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A record encoded once at ingest and shared by every recipient.
#[derive(Debug)]
pub struct EncodedRecord {
    pub meta: RecordMeta,
    /// The record key, kept raw for key-filter routing.
    pub key: Option<Bytes>,
    /// The record headers, kept raw for header filters.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// The Kafka timestamp (epoch ms), for delivery latency.
    pub timestamp: Option<i64>,
    /// A tombstone: the value was null.
    pub deleted: bool,
    /// The binary envelope (`kgate.v1.avro`), for topics with `binary = true`.
    pub binary: Option<Bytes>,
    /// The complete `event` frame (JSON text), shared by every recipient.
    pub frame: Frame,
    /// The frame as a delta from the previous record of its key, made at ingest for
    /// topics some subscription wants deltas of.
    pub delta: Option<super::delta::Delta>,
    /// The record as protocols without frames carry it (MQTT), made by the first such recipient.
    bare: OnceLock<Bare>,
    /// The frame compressed for permessage-deflate, made by the first such recipient.
    deflated: OnceLock<Option<Bytes>>,
}

/// A record as protocols without frames carry it (MQTT): a path naming it and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bare {
    /// `topic/key`, or `topic` when there is no key or the key cannot be a path level
    /// (not UTF-8, empty, or holding `+`, `#` or NUL).
    pub path: Arc<str>,
    pub payload: Payload,
}

/// A record's value on its own, for protocols that carry bare payloads (MQTT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The value: JSON text, or the raw bytes of a binary value.
    Value(Bytes),
    /// A tombstone (empty).
    Deleted,
    /// The record is a `skipped` notice: its frame is the payload.
    Skipped(Bytes),
}

impl EncodedRecord {
    /// A record with no headers.
    pub fn new(meta: RecordMeta, key: Option<Bytes>, frame: Frame) -> EncodedRecord {
        EncodedRecord {
            meta,
            key,
            headers: Vec::new(),
            timestamp: None,
            deleted: false,
            binary: None,
            frame,
            delta: None,
            bare: OnceLock::new(),
            deflated: OnceLock::new(),
        }
    }

    /// The frame compressed for permessage-deflate, once and shared; `None` when it is
    /// shorter than `min_bytes` or compressing does not shrink it.
    pub fn deflated(&self, min_bytes: usize) -> Option<&Bytes> {
        super::deflate::once(&self.deflated, &self.frame, min_bytes)
    }

    /// True for an `event` frame (not a `skipped` notice in the record's place).
    pub fn is_event(&self) -> bool {
        self.frame.starts_with(r#"{"type":"event""#)
    }

    /// The record's path and value without the frame around them, made once and shared.
    pub fn bare(&self) -> &Bare {
        self.bare.get_or_init(|| {
            let topic = &self.meta.topic;
            let path = match self.key.as_deref().map(std::str::from_utf8) {
                Some(Ok(key)) if !key.is_empty() && !key.contains(['+', '#', '\0']) => {
                    format!("{topic}/{key}").into()
                }
                _ => topic.clone(),
            };
            Bare {
                path,
                payload: self.payload(),
            }
        })
    }

    /// The value cut out of the event frame.
    fn payload(&self) -> Payload {
        #[derive(serde::Deserialize)]
        struct Parts<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            #[serde(borrow)]
            data: Option<&'a RawValue>,
            data_b64: Option<&'a str>,
        }
        // The frame was encoded here, so it parses; a failure would leave the value empty.
        let Ok(parts) = serde_json::from_str::<Parts>(&self.frame) else {
            return Payload::Deleted;
        };
        let frame = Bytes::from(self.frame.clone());
        if parts.kind != "event" {
            return Payload::Skipped(frame);
        }
        match (parts.data, parts.data_b64) {
            // A slice of the shared frame: no copy.
            (Some(json), _) => Payload::Value(frame.slice_ref(json.get().as_bytes())),
            (None, Some(b64)) => BASE64
                .decode(b64)
                .map_or(Payload::Deleted, |v| Payload::Value(v.into())),
            (None, None) => Payload::Deleted,
        }
    }

    /// The value of header `name` (the first, if repeated); `Some(None)` for a null value.
    pub fn header(&self, name: &str) -> Option<Option<&[u8]>> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }

    /// Bytes this record holds in memory (frame, key and headers), for byte-bounded buffers.
    pub fn size(&self) -> usize {
        self.frame.len()
            + self.delta.as_ref().map_or(0, |d| d.frame.len())
            + self.binary.as_ref().map_or(0, Bytes::len)
            + self.key.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
    }
}

struct Headers<'a>(&'a [(&'a str, Option<&'a [u8]>)]);

impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct B64 {
            b64: String,
        }
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            match value.map(std::str::from_utf8) {
                None => map.serialize_entry(name, &())?,
                Some(Ok(text)) => map.serialize_entry(name, text)?,
                Some(Err(_)) => map.serialize_entry(
                    name,
                    &B64 {
                        b64: BASE64.encode(value.unwrap_or_default()),
                    },
                )?,
            }
        }
        map.end()
    }
}

/// A record delivered as a notice in its place (too large, or its value does not decode); encoded once, like events.
/// `detail` is an object merged into the frame (`bytes`, `error`).
pub fn skipped_frame(
    topic: &str,
    partition: i32,
    offset: i64,
    reason: &str,
    detail: serde_json::Value,
) -> String {
    let mut frame = serde_json::json!({"type": "skipped", "topic": topic, "partition": partition,
                           "offset": offset, "reason": reason});
    if let (Some(frame), serde_json::Value::Object(detail)) = (frame.as_object_mut(), detail) {
        frame.extend(detail);
    }
    frame.to_string()
}

/// Encodes one record into its `event` frame.
///
/// JSON goes out as `data` (verbatim when the payload was JSON); bytes go out
/// base64-encoded as `data_b64` (with `decode_error` when they should have decoded),
/// so a frame is always valid JSON. A tombstone has neither field and is marked
/// `"deleted": true`, with its key, so a client can drop that key's state.
pub fn encode_event(
    meta: &RecordMeta,
    timestamp: Option<i64>,
    key: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    data: &Data<'_>,
) -> Frame {
    let (key_text, key_b64) = match key.map(std::str::from_utf8) {
        None => (None, None),
        Some(Ok(text)) => (Some(text), None),
        Some(Err(_)) => (None, key.map(|k| BASE64.encode(k))),
    };
    let (json, data_b64, decode_error) = match data {
        Data::Verbatim(json) => (Some(*json), None, None),
        // Decoder output is JSON text by construction; borrowing it re-checks, never copies.
        Data::Decoded(text) => (serde_json::from_str(text).ok(), None, None),
        Data::Bytes(bytes) => (None, Some(BASE64.encode(bytes)), None),
        Data::Undecodable(bytes, why) => (None, Some(BASE64.encode(bytes)), Some(why.as_str())),
        Data::Deleted => (None, None, None),
    };
    // Written by hand: serde escaped every field name as well (8% of the gateway's
    // samples in a Kafka-tier replay; BENCHMARKS.md).
    let mut out = String::with_capacity(
        96 + meta.topic.len()
            + key.map_or(0, |k| 2 * k.len())
            + json.map_or(0, |j| j.get().len())
            + data_b64.as_ref().map_or(0, String::len),
    );
    out.push_str(r#"{"type":"event","topic":"#);
    push_str(&mut out, &meta.topic);
    out.push_str(r#","partition":"#);
    out.push_str(itoa::Buffer::new().format(meta.partition));
    out.push_str(r#","offset":"#);
    out.push_str(itoa::Buffer::new().format(meta.offset));
    if let Some(timestamp) = timestamp {
        out.push_str(r#","timestamp":"#);
        out.push_str(itoa::Buffer::new().format(timestamp));
    }
    if let Some(key) = key_text {
        out.push_str(r#","key":"#);
        push_str(&mut out, key);
    }
    if let Some(key) = &key_b64 {
        out.push_str(r#","key_b64":"#);
        push_str(&mut out, key);
    }
    if !headers.is_empty() {
        out.push_str(r#","headers":"#);
        // Names and values of any text: serde escapes them (a map of strings cannot fail).
        out.push_str(&serde_json::to_string(&Headers(headers)).unwrap_or_default());
    }
    if let Some(json) = json {
        out.push_str(r#","data":"#);
        out.push_str(json.get());
    }
    if let Some(b64) = &data_b64 {
        out.push_str(r#","data_b64":"#);
        push_str(&mut out, b64);
    }
    if let Some(why) = decode_error {
        out.push_str(r#","decode_error":"#);
        push_str(&mut out, why);
    }
    if matches!(data, Data::Deleted) {
        out.push_str(r#","deleted":true"#);
    }
    out.push('}');
    Frame::from(out)
}

/// Appends `text` as a JSON string (RFC 8259, 7): quotes, backslashes and control
/// characters escaped, everything else as it is.
fn push_str(out: &mut String, text: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, byte) in text.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&text[plain..i]);
        match escape.is_empty() {
            true => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
            false => out.push_str(escape),
        }
        plain = i + 1;
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn meta() -> RecordMeta {
        RecordMeta {
            topic: "prices".into(),
            partition: 2,
            offset: 41,
        }
    }

    fn decode(frame: &Frame) -> Value {
        serde_json::from_str(frame).expect("frame is JSON")
    }

    #[test]
    fn json_payload_passes_through() {
        let frame = encode_event(
            &meta(),
            Some(1_700_000_000_000),
            Some(b"AAPL"),
            &[("source", Some(b"demo"))],
            &Data::Verbatim(serde_json::from_str(r#"{"price": 101.5}"#).unwrap()),
        );
        assert_eq!(
            decode(&frame),
            json!({"type":"event","topic":"prices","partition":2,"offset":41,
                   "timestamp":1_700_000_000_000_i64,"key":"AAPL",
                   "headers":{"source":"demo"},"data":{"price":101.5}})
        );
        // Verbatim: the payload's own spacing survives.
        assert!(frame.contains(r#"{"price": 101.5}"#));
    }

    #[test]
    fn topics_keys_and_errors_are_escaped_as_json_strings() {
        let odd = "a\"b\\c\n\r\t\u{1}\u{8}\u{c}\u{1f}\u{7f} é€😀/";
        let meta = RecordMeta {
            topic: odd.into(),
            partition: -1,
            offset: i64::MAX,
        };
        let frame = encode_event(
            &meta,
            Some(i64::MIN),
            Some(odd.as_bytes()),
            &[(odd, Some(odd.as_bytes()))],
            &Data::Undecodable(b"\xff", odd.to_string()),
        );
        assert_eq!(
            decode(&frame),
            json!({"type":"event","topic":odd,"partition":-1,"offset":i64::MAX,
                   "timestamp":i64::MIN,"key":odd,"headers":{odd:odd},
                   "data_b64":"/w==","decode_error":odd})
        );
        let mut plain = String::new();
        push_str(&mut plain, "plain text, no escapes");
        assert_eq!(plain, r#""plain text, no escapes""#);
    }

    #[test]
    fn bare_is_the_path_and_value_without_the_frame() {
        let with_key = |key: &[u8]| {
            let frame = encode_event(&meta(), None, Some(key), &[], &Data::Bytes(b"1"));
            EncodedRecord::new(meta(), Some(Bytes::copy_from_slice(key)), frame)
        };
        assert_eq!(&*with_key(b"AAPL").bare().path, "prices/AAPL");
        assert_eq!(&*with_key(b"a/b").bare().path, "prices/a/b");
        assert_eq!(&*with_key(b"a+b").bare().path, "prices", "not a path level");
        assert_eq!(&*with_key(&[0xff]).bare().path, "prices", "not UTF-8");
        let record = |frame: Frame| EncodedRecord::new(meta(), None, frame);
        let json = Data::Verbatim(serde_json::from_str(r#"{"price": 101.5}"#).unwrap());
        let frame = encode_event(&meta(), None, Some(b"AAPL"), &[], &json);
        assert_eq!(
            record(frame).bare().payload,
            Payload::Value(Bytes::from_static(br#"{"price": 101.5}"#))
        );
        let frame = encode_event(&meta(), None, None, &[], &Data::Bytes(&[0, 255]));
        assert_eq!(
            record(frame).bare().payload,
            Payload::Value(Bytes::from_static(&[0, 255]))
        );
        let frame = encode_event(&meta(), None, None, &[], &Data::Deleted);
        assert_eq!(record(frame).bare().payload, Payload::Deleted);
        assert_eq!(
            &*record(encode_event(&meta(), None, None, &[], &Data::Deleted))
                .bare()
                .path,
            "prices"
        );
        let notice = skipped_frame("prices", 2, 41, "record_too_large", json!({"bytes": 9}));
        assert!(matches!(
            record(notice.into()).payload(),
            Payload::Skipped(_)
        ));
    }

    #[test]
    fn undecodable_and_raw_go_base64() {
        let frame = encode_event(
            &meta(),
            None,
            None,
            &[],
            &Data::Undecodable(b"not json", "not JSON: expected value".into()),
        );
        assert_eq!(decode(&frame)["data_b64"], "bm90IGpzb24=");
        assert_eq!(decode(&frame)["decode_error"], "not JSON: expected value");
        assert!(decode(&frame).get("data").is_none());
        let frame = encode_event(&meta(), None, None, &[], &Data::Bytes(b"{}"));
        assert_eq!(decode(&frame)["data_b64"], "e30=");
        assert!(decode(&frame).get("decode_error").is_none());
        let frame = encode_event(
            &meta(),
            None,
            None,
            &[],
            &Data::Decoded(r#"{"n":1}"#.into()),
        );
        assert_eq!(decode(&frame)["data"], json!({"n": 1}));
    }

    #[test]
    fn binary_key_and_header_and_tombstone() {
        let frame = encode_event(
            &meta(),
            None,
            Some(&[0xff, 0x00]),
            &[("bin", Some(&[0xfe])), ("none", None)],
            &Data::Deleted,
        );
        let v = decode(&frame);
        assert_eq!(v["key_b64"], "/wA=");
        assert_eq!(v["headers"], json!({"bin":{"b64":"/g=="},"none":null}));
        assert!(v.get("data").is_none() && v.get("data_b64").is_none());
        assert_eq!(v["deleted"], true, "a tombstone is a delete event");
        let live = decode(&encode_event(&meta(), None, None, &[], &Data::Bytes(b"1")));
        assert!(
            live.get("deleted").is_none(),
            "only tombstones carry the flag"
        );
    }
}
