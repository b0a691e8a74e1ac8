//! Delta frames (docs/protocol.md, "Deltas"): `[topic_id, partition, base_offset,
//! edit...]`, applied to the text of the last event frame of the same key.

use std::collections::HashMap;

use serde_json::Value;

/// Why a delta frame could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("not a delta frame: {0}")]
    Malformed(String),
    #[error("the delta's edits run past the end of its base frame")]
    PastEnd,
    #[error("no frame held for topic id {topic_id} partition {partition} offset {offset}")]
    NoBase {
        topic_id: u64,
        partition: i64,
        offset: i64,
    },
}

/// Applies delta frame `delta` to `base`; returns (topic id, partition, base offset) and the frame text.
#[allow(clippy::type_complexity)]
pub fn apply(base: &str, delta: &str) -> Result<((u32, i32, i64), String), DeltaError> {
    let malformed = || DeltaError::Malformed(delta.chars().take(200).collect());
    let parts: Vec<Value> = serde_json::from_str(delta).map_err(|_| malformed())?;
    let head = |i: usize| parts.get(i).and_then(Value::as_i64).ok_or_else(malformed);
    let id = (head(0)? as u32, head(1)? as i32, head(2)?);
    Ok((id, edit(base, &parts[3..]).ok_or(DeltaError::PastEnd)?))
}

/// Applies the edits `copy, [remove,] insert` to `base`.
fn edit(base: &str, mut edits: &[Value]) -> Option<String> {
    let mut out = String::with_capacity(base.len() + 16);
    let mut at = 0usize;
    while let [copy, rest @ ..] = edits {
        let copy = copy.as_u64()? as usize;
        let (remove, insert, rest) = match rest {
            [Value::String(insert), rest @ ..] => (insert.chars().count(), insert, rest),
            [remove, Value::String(insert), rest @ ..] => (remove.as_u64()? as usize, insert, rest),
            _ => return None,
        };
        out.push_str(base.get(at..at.checked_add(copy)?)?);
        out.push_str(insert);
        at = at.checked_add(copy)?.checked_add(remove)?;
        edits = rest;
    }
    out.push_str(base.get(at..)?);
    Some(out)
}

/// What a client holds to apply deltas: from the `subscribed` frame that grants a topic's
/// deltas on, the last event frame of every key of that topic, and the topic's id.
#[derive(Debug, Default)]
pub struct Deltas {
    /// Per topic: key -> (partition, offset) of its last frame, and the frames by position.
    topics: HashMap<String, Held>,
    names: HashMap<u64, String>,
}

#[derive(Debug, Default)]
struct Held {
    by_key: HashMap<String, (i64, i64)>,
    frames: HashMap<(i64, i64), String>,
}

impl Deltas {
    /// Takes a text frame as received; returns the frame to use: a delta's full event
    /// frame, anything else unchanged.
    pub fn receive(&mut self, text: String) -> Result<String, DeltaError> {
        if text.starts_with('[') {
            let parts: Vec<Value> = serde_json::from_str(&text)
                .map_err(|_| DeltaError::Malformed(text.chars().take(200).collect()))?;
            let field = |i: usize| parts.get(i).and_then(Value::as_i64).unwrap_or(-1);
            let (topic_id, partition, offset) = (field(0) as u64, field(1), field(2));
            let no_base = DeltaError::NoBase {
                topic_id,
                partition,
                offset,
            };
            let base = self
                .names
                .get(&topic_id)
                .and_then(|name| self.topics.get(name))
                .and_then(|held| held.frames.get(&(partition, offset)))
                .ok_or(no_base)?;
            let frame =
                edit(base, parts.get(3..).unwrap_or_default()).ok_or(DeltaError::PastEnd)?;
            self.hold(&frame);
            return Ok(frame);
        }
        // Only topics granted deltas hold frames: the others pay no parse per event.
        if text.starts_with(r#"{"type":"event""#) {
            if !self.topics.is_empty() {
                self.hold(&text);
            }
        } else if text.contains(r#""subscribed""#) {
            self.on_subscribed(&text);
        }
        Ok(text)
    }

    /// Learns a topic's id from a `subscribed` frame granting deltas; the gateway counts
    /// what it sends of the topic from this frame on, so frames are held from here.
    fn on_subscribed(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let (Some(id), Some(channel)) = (frame["topic_id"].as_u64(), frame["channel"].as_str())
        else {
            return;
        };
        if frame["type"] == "subscribed" {
            let topic = channel.split(':').next().unwrap_or(channel);
            self.topics.entry(topic.to_string()).or_default();
            self.names.insert(id, topic.to_string());
        }
    }

    /// Keeps an event frame of a tracked topic as its key's last.
    fn hold(&mut self, frame: &str) {
        #[derive(serde::Deserialize)]
        struct Event<'a> {
            #[serde(borrow)]
            topic: std::borrow::Cow<'a, str>,
            partition: i64,
            offset: i64,
            key: Option<String>,
            key_b64: Option<String>,
        }
        let Ok(event) = serde_json::from_str::<Event>(frame) else {
            return;
        };
        let Some(held) = self.topics.get_mut(&*event.topic) else {
            return;
        };
        let Some(key) = event
            .key
            .map(|k| format!("k{k}"))
            .or(event.key_b64.map(|k| format!("b{k}")))
        else {
            return;
        };
        let at = (event.partition, event.offset);
        if let Some(old) = held.by_key.insert(key, at) {
            held.frames.remove(&old);
        }
        held.frames.insert(at, frame.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_copy_remove_and_insert() {
        let (id, frame) = apply("abcdefgh", r#"[1,2,3,2,"XY",1,0,"-",2,"Z"]"#).unwrap();
        assert_eq!(id, (1, 2, 3));
        assert_eq!(frame, "abXYe-fgZ");
        assert_eq!(apply("abc", r#"[1,2,3,4,"x"]"#), Err(DeltaError::PastEnd));
        assert!(matches!(
            apply("abc", r#"{"a":1}"#),
            Err(DeltaError::Malformed(_))
        ));
    }

    #[test]
    fn a_held_frame_is_the_base_of_the_next_delta() {
        let mut deltas = Deltas::default();
        let subscribed = r#"{"type":"subscribed","channel":"t:a","topic_id":4,"delta":true}"#;
        deltas.receive(subscribed.into()).unwrap();
        let first = r#"{"type":"event","topic":"t","partition":0,"offset":7,"key":"a","data":1}"#;
        assert_eq!(deltas.receive(first.into()).unwrap(), first);
        let full = deltas.receive(r#"[4,0,7,51,"8",18,"2"]"#.into()).unwrap();
        assert_eq!(
            full,
            r#"{"type":"event","topic":"t","partition":0,"offset":8,"key":"a","data":2}"#
        );
        // The key's newer frame replaced the older as the base.
        assert!(matches!(
            deltas.receive(r#"[4,0,7,51,"9"]"#.into()),
            Err(DeltaError::NoBase { offset: 7, .. })
        ));
        deltas.receive(r#"[4,0,8,51,"9"]"#.into()).unwrap();
    }
}
