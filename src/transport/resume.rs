//! Positions of an HTTP-transport client (SSE, long-poll): the subscribe commands
//! that start (or resume) its channels, and the cursor after each event.
//!
//! Channels are numbered in the order the client listed them; the cursor holds the
//! next offset of every partition of every channel that has one (see
//! [`crate::codec::cursor`]). A partition without a position (an `earliest` start
//! with nothing delivered yet) resumes from the earliest record, so nothing is skipped.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::codec::EncodedRecord;
use crate::codec::cursor::{Cursor, CursorError, Position};

/// How a channel without a cursor position starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// The `from` of a subscribe command (`"latest"`, `"earliest"`, ...).
    From(Value),
    /// Resumed: these partitions at these offsets, others from the earliest record.
    Resume(BTreeMap<i32, i64>),
}

/// The positions of one client across its channels.
#[derive(Debug)]
pub struct Resume {
    channels: Vec<(Arc<str>, Start)>,
    positions: BTreeMap<(u32, i32), i64>,
}

impl Resume {
    /// Channels in the client's order, all starting at `from`, unless `cursor` resumes them.
    pub fn new(
        channels: &[String],
        from: Value,
        cursor: Option<&str>,
    ) -> Result<Resume, CursorError> {
        let mut resume = Resume {
            channels: channels
                .iter()
                .map(|c| (Arc::from(c.as_str()), Start::From(from.clone())))
                .collect(),
            positions: BTreeMap::new(),
        };
        let Some(text) = cursor else {
            return Ok(resume);
        };
        let positions = match Cursor::decode(text)? {
            Cursor::Inline(positions) => positions,
            // Session cursors are issued only by gateways that keep positions server-side.
            Cursor::Session(_) => return Err(CursorError::UnknownForm),
        };
        for p in positions {
            let Some((_, start)) = resume.channels.get_mut(p.channel as usize) else {
                return Err(CursorError::OutOfRange);
            };
            match start {
                Start::Resume(map) => {
                    map.insert(p.partition, p.next);
                }
                other => *other = Start::Resume(BTreeMap::from([(p.partition, p.next)])),
            }
            resume.positions.insert((p.channel, p.partition), p.next);
        }
        Ok(resume)
    }

    /// The subscribe commands that start every channel.
    pub fn commands(&self) -> Vec<String> {
        self.channels
            .iter()
            .map(|(channel, start)| {
                let from = match start {
                    Start::From(from) => from.clone(),
                    Start::Resume(map) => {
                        let offsets: BTreeMap<String, i64> =
                            map.iter().map(|(p, o)| (p.to_string(), *o)).collect();
                        json!({"offsets": offsets, "others": "earliest"})
                    }
                };
                json!({"type": "subscribe", "id": &**channel, "channel": &**channel, "from": from})
                    .to_string()
            })
            .collect()
    }

    /// Notes the starting positions a `subscribed` frame reveals (a `latest` start is at
    /// the live offsets it names); other frames are ignored.
    pub fn on_control(&mut self, frame: &str) {
        if !frame.contains(r#""type":"subscribed""#) {
            return;
        }
        let Ok(value) = serde_json::from_str::<Value>(frame) else {
            return;
        };
        if value["type"] != "subscribed" {
            return;
        }
        let Some(index) = self.index(value["channel"].as_str().unwrap_or("")) else {
            return;
        };
        let latest = matches!(&self.channels[index as usize].1, Start::From(f) if f == "latest");
        if !latest {
            return;
        }
        if let Some(live) = value["live_offsets"].as_object() {
            for (p, o) in live {
                if let (Ok(p), Some(o)) = (p.parse::<i32>(), o.as_i64()) {
                    self.positions.entry((index, p)).or_insert(o);
                }
            }
        }
    }

    /// Records that `record` was sent on `channel`.
    pub fn on_event(&mut self, channel: &str, record: &EncodedRecord) {
        if let Some(index) = self.index(channel) {
            let next = record.meta.offset + 1;
            let slot = self
                .positions
                .entry((index, record.meta.partition))
                .or_insert(next);
            *slot = (*slot).max(next);
        }
    }

    /// The cursor that resumes right after everything recorded so far.
    pub fn cursor(&self) -> String {
        let positions = self
            .positions
            .iter()
            .map(|(&(channel, partition), &next)| Position {
                channel,
                partition,
                next,
            })
            .collect();
        Cursor::Inline(positions).encode()
    }

    fn index(&self, channel: &str) -> Option<u32> {
        self.channels
            .iter()
            .position(|(c, _)| &**c == channel)
            .map(|i| i as u32)
    }
}
