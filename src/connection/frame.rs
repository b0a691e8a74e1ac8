//! What the server says besides events: one typed frame per message of the
//! protocol, rendered as JSON text by the transports that write it. Events are
//! not here: each is encoded once, at ingest, and shared by every recipient.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::protocol::{CloseCode, ErrorCode};
use crate::session::subscription::Options;

/// A server frame other than an event, in the order the connection sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// The first frame on every connection.
    Welcome {
        connection_id: u64,
        node: String,
        protocol: &'static str,
    },
    /// The reply to a successful subscribe: the live offset of every partition.
    Subscribed {
        id: Option<Value>,
        channel: Arc<str>,
        live: Vec<i64>,
        /// The topic's id, when the subscription gets deltas (delta frames name it).
        delta_topic: Option<u32>,
    },
    /// A subscription's catch-up ended and live delivery began.
    Live {
        id: Option<Value>,
        channel: Arc<str>,
    },
    /// A snapshot ended: `count` latest-per-key events were sent; live events follow.
    SnapshotEnd {
        id: Option<Value>,
        channel: Arc<str>,
        count: usize,
    },
    /// Records before `earliest` were deleted by retention and will never be delivered.
    Gap {
        channel: String,
        topic: Arc<str>,
        partition: i32,
        requested: i64,
        earliest: i64,
    },
    /// The reply to an unsubscribe.
    Unsubscribed { id: Option<Value>, channel: String },
    /// The reply to `attach`: the session and the subscriptions being resumed (with
    /// their options, for front ends that map them to their own protocol).
    Attached {
        id: Option<Value>,
        session: String,
        resumed: bool,
        subscriptions: Vec<(String, Options)>,
    },
    /// The reply to an accepted `auth` command.
    Authenticated {
        id: Option<Value>,
        expires_at: Option<u64>,
    },
    /// The reply to `ping`.
    Pong { id: Option<Value> },
    /// The reply to `publish`, once Kafka acknowledged the record: where it landed.
    Published {
        id: Option<Value>,
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// A refused command or a failure, with its stable code.
    Error {
        id: Option<Value>,
        code: ErrorCode,
        message: String,
    },
    /// Ends an SSE stream or a long-poll answer (WebSocket has close frames).
    Close(CloseCode),
}

impl ServerFrame {
    /// The frame as a JSON value (docs/protocol.md).
    pub fn to_value(&self) -> Value {
        let (mut frame, id) = match self {
            ServerFrame::Welcome {
                connection_id,
                node,
                protocol,
            } => (
                json!({"type": "welcome", "protocol": protocol, "connection_id": connection_id,
                       "node": node, "server": concat!("kgate/", env!("CARGO_PKG_VERSION"))}),
                None,
            ),
            ServerFrame::Subscribed {
                id,
                channel,
                live,
                delta_topic,
            } => {
                let partitions: BTreeMap<String, i64> = live
                    .iter()
                    .enumerate()
                    .map(|(p, o)| (p.to_string(), *o))
                    .collect();
                let mut frame = json!({"type": "subscribed", "channel": &**channel, "live_offsets": partitions});
                if let Some(topic_id) = delta_topic {
                    frame["delta"] = json!(true);
                    frame["topic_id"] = json!(topic_id);
                }
                (frame, id.as_ref())
            }
            ServerFrame::Live { id, channel } => {
                (json!({"type": "live", "channel": &**channel}), id.as_ref())
            }
            ServerFrame::SnapshotEnd { id, channel, count } => (
                json!({"type": "snapshot_end", "channel": &**channel, "count": count}),
                id.as_ref(),
            ),
            ServerFrame::Gap {
                channel,
                topic,
                partition,
                requested,
                earliest,
            } => (
                json!({"type": "gap", "channel": channel, "topic": &**topic, "partition": partition,
                       "requested": requested, "earliest": earliest}),
                None,
            ),
            ServerFrame::Unsubscribed { id, channel } => (
                json!({"type": "unsubscribed", "channel": channel}),
                id.as_ref(),
            ),
            ServerFrame::Attached {
                id,
                session,
                resumed,
                subscriptions,
            } => (
                json!({"type": "attached", "session": session, "resumed": resumed,
                       "subscriptions": subscriptions.iter().map(|(c, _)| c).collect::<Vec<_>>()}),
                id.as_ref(),
            ),
            ServerFrame::Authenticated { id, expires_at } => (
                json!({"type": "authenticated", "expires_at": expires_at}),
                id.as_ref(),
            ),
            ServerFrame::Pong { id } => (json!({"type": "pong"}), id.as_ref()),
            ServerFrame::Published {
                id,
                topic,
                partition,
                offset,
            } => (
                json!({"type": "published", "topic": topic, "partition": partition, "offset": offset}),
                id.as_ref(),
            ),
            ServerFrame::Error { id, code, message } => (
                json!({"type": "error", "code": code.as_str(), "message": message}),
                id.as_ref(),
            ),
            ServerFrame::Close(code) => (
                json!({"type": "close", "code": code.code(), "reason": code.reason()}),
                None,
            ),
        };
        if let (Some(id), Some(obj)) = (id, frame.as_object_mut()) {
            obj.insert("id".into(), id.clone());
        }
        frame
    }

    /// The frame as JSON text, as WebSocket and SSE write it.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// True for frames a long-poll answer leaves out: they say nothing a poller needs.
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            ServerFrame::Welcome { .. } | ServerFrame::Live { .. } | ServerFrame::Pong { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_ids_and_render_as_documented() {
        let error = ServerFrame::Error {
            id: Some(json!(3)),
            code: ErrorCode::UnknownTopic,
            message: "no".into(),
        };
        assert_eq!(
            error.to_value(),
            json!({"type":"error","id":3,"code":"unknown_topic","message":"no"})
        );
        let subscribed = ServerFrame::Subscribed {
            id: None,
            channel: "prices".into(),
            live: vec![4, 9],
            delta_topic: None,
        };
        assert_eq!(
            subscribed.to_json(),
            r#"{"channel":"prices","live_offsets":{"0":4,"1":9},"type":"subscribed"}"#
        );
        assert_eq!(
            ServerFrame::Close(CloseCode::SlowConsumer).to_value()["code"],
            4008
        );
    }
}
