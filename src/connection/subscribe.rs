//! Subscriptions: the channel checked (syntax, permission, topic, limits), where each
//! partition starts resolved, the subscription registered with the router and its
//! replays started; and their removal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Connection;
use super::ServerFrame;
use super::flow::Active;
use super::link::Outbound;
use super::protocol::{ErrorCode, From};
use super::throttle::Throttle;
use crate::config::SlowConsumerPolicy;
use crate::kafka::cluster::ClusterError;
use crate::router::outbox::SubscriptionId;
use crate::router::{Channel, ChannelError, Registered, TopicRoute};
use crate::session::subscription::{Options, Start, Subscription};
use crate::stats::stats;
use crate::store::StoreError;

/// Why a subscription was refused; each names what was wrong and maps to a protocol code.
#[derive(Debug, thiserror::Error)]
pub(super) enum SubscribeError {
    #[error(transparent)]
    InvalidChannel(#[from] ChannelError),
    #[error("the token does not permit channel {0:?}")]
    Forbidden(String),
    #[error("topic {topic:?} is not served here; served topics: {served}")]
    UnknownTopic { topic: String, served: String },
    #[error("topic {0:?} is no longer served")]
    NoLongerServed(String),
    #[error("topic {0:?} was deleted from the cluster")]
    TopicDeleted(String),
    #[error("already subscribed to {0:?}")]
    AlreadySubscribed(String),
    #[error("a connection may hold {0} subscriptions")]
    TooManySubscriptions(usize),
    #[error("topic {0:?} keeps no snapshot: set `snapshot = true` in its [[topics]] entry")]
    NoSnapshot(String),
    #[error("the snapshot of {0:?} is still loading; retry shortly")]
    SnapshotLoading(String),
    #[error(
        "offset {offset} of {topic:?} partition {partition} is past its end: the next record there will be offset {end}"
    )]
    PastEnd {
        topic: String,
        partition: i32,
        offset: i64,
        end: i64,
    },
    #[error("topic {topic:?} has {partitions} partitions; there is no partition {partition}")]
    NoSuchPartition {
        topic: String,
        partitions: i32,
        partition: i32,
    },
    #[error(transparent)]
    Kafka(#[from] ClusterError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SubscribeError {
    /// The code the `error` frame carries.
    pub(super) fn code(&self) -> ErrorCode {
        match self {
            SubscribeError::InvalidChannel(_) => ErrorCode::InvalidChannel,
            SubscribeError::Forbidden(_) => ErrorCode::Forbidden,
            SubscribeError::UnknownTopic { .. } | SubscribeError::NoLongerServed(_) => {
                ErrorCode::UnknownTopic
            }
            SubscribeError::TopicDeleted(_) => ErrorCode::TopicDeleted,
            SubscribeError::AlreadySubscribed(_) => ErrorCode::AlreadySubscribed,
            SubscribeError::TooManySubscriptions(_) => ErrorCode::TooManySubscriptions,
            SubscribeError::NoSnapshot(_) | SubscribeError::SnapshotLoading(_) => {
                ErrorCode::SnapshotUnavailable
            }
            SubscribeError::PastEnd { .. } | SubscribeError::NoSuchPartition { .. } => {
                ErrorCode::InvalidPosition
            }
            SubscribeError::Kafka(_) => ErrorCode::KafkaUnavailable,
            SubscribeError::Store(_) => ErrorCode::StoreFailed,
        }
    }
}

/// Where the starts of a subscription come from.
pub(super) enum Resolved {
    /// A client's subscribe: stored in the session, if one is attached.
    Requested(Vec<Start>),
    /// A session's stored positions, being resumed.
    Stored(Vec<Start>),
}

/// Waits (up to 30 s) for the topic's last-value cache to finish loading.
async fn wait_for_snapshot(route: &TopicRoute) -> Result<(), SubscribeError> {
    let Some(latest) = route.latest() else {
        return Err(SubscribeError::NoSnapshot(route.name().to_string()));
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !latest.lock().is_loaded() {
        if Instant::now() > deadline {
            return Err(SubscribeError::SnapshotLoading(route.name().to_string()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Refuses a subscription to a topic deleted from the cluster.
fn not_deleted(route: &TopicRoute) -> Result<(), SubscribeError> {
    match route.is_deleted() {
        true => Err(SubscribeError::TopicDeleted(route.name().to_string())),
        false => Ok(()),
    }
}

impl Connection {
    /// Refuses an offset past its partition's end: the subscription would wait, silent, for
    /// records that may never come. Ingest may lag Kafka (or the node the client came from),
    /// so Kafka's own end is asked before refusing.
    async fn offsets_within_end(
        &self,
        route: &TopicRoute,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), SubscribeError> {
        for (&partition, &offset) in offsets {
            if partition >= route.partitions() {
                continue; // refused with its own message by the caller
            }
            let known = route
                .live_offset(partition)
                .into_iter()
                .chain(route.high_watermark(partition))
                .max()
                .unwrap_or(0);
            if offset <= known {
                continue;
            }
            let end = self.services.end_offset(route.name(), partition).await?;
            if offset > end {
                return Err(SubscribeError::PastEnd {
                    topic: route.name().to_string(),
                    partition,
                    offset,
                    end,
                });
            }
        }
        Ok(())
    }

    /// Refuses a channel the token does not permit.
    pub(super) fn permit(&self, channel: &Channel, name: &str) -> Result<(), SubscribeError> {
        if self.identity.permissions.can_subscribe(channel) {
            return Ok(());
        }
        stats().auth_forbidden.add(1);
        Err(SubscribeError::Forbidden(name.to_string()))
    }

    /// A client's `subscribe`: checks it, resolves where each partition starts, registers it.
    pub(super) async fn subscribe(
        &mut self,
        id: Option<Value>,
        name: &str,
        from: From,
        options: Options,
        snapshot: bool,
    ) -> Result<(), SubscribeError> {
        let services = self.services.clone();
        let limits = &services.config.websocket;
        let channel = Channel::parse(name, limits.max_channel_bytes)?;
        self.permit(&channel, name)?;
        let Some(route) = services.router.topic(&channel.topic) else {
            let served: Vec<&str> = services.router.topics().map(|t| &**t.name()).collect();
            return Err(SubscribeError::UnknownTopic {
                topic: channel.topic.to_string(),
                served: served.join(", "),
            });
        };
        not_deleted(route)?;
        if self.subscribed_as(name).is_some() {
            return Err(SubscribeError::AlreadySubscribed(name.to_string()));
        }
        if self.subs.len() >= limits.max_subscriptions {
            return Err(SubscribeError::TooManySubscriptions(
                limits.max_subscriptions,
            ));
        }
        if snapshot {
            wait_for_snapshot(route).await?;
        }
        let partitions = route.partitions();
        if let From::Offsets(offsets) | From::OffsetsElseEarliest(offsets) = &from {
            self.offsets_within_end(route, offsets).await?;
        }
        let starts: Vec<Start> = match from {
            From::Latest => vec![Start::Latest; partitions as usize],
            From::Earliest => vec![Start::Earliest; partitions as usize],
            From::Offsets(offsets) | From::OffsetsElseEarliest(offsets)
                if offsets.keys().any(|p| *p >= partitions) =>
            {
                return Err(SubscribeError::NoSuchPartition {
                    topic: channel.topic.to_string(),
                    partitions,
                    partition: offsets.keys().max().copied().unwrap_or(0),
                });
            }
            From::OffsetsElseEarliest(offsets) => (0..partitions)
                .map(|p| {
                    offsets
                        .get(&p)
                        .map_or(Start::Earliest, |o| Start::Offset(*o))
                })
                .collect(),
            From::Offsets(offsets) => (0..partitions)
                .map(|p| offsets.get(&p).map_or(Start::Latest, |o| Start::Offset(*o)))
                .collect(),
            From::Timestamp(ts) => services
                .replay
                .offsets_for_time(&channel.topic, partitions, ts)
                .await?
                .into_iter()
                .map(|o| o.map_or(Start::Latest, Start::Offset))
                .collect(),
        };
        self.register(
            id,
            name,
            channel,
            Resolved::Requested(starts),
            options,
            snapshot,
        )
        .await
    }

    /// Registers a subscription with the router and starts the replays it needs.
    pub(super) async fn register(
        &mut self,
        id: Option<Value>,
        name: &str,
        channel: Channel,
        starts: Resolved,
        options: Options,
        snapshot: bool,
    ) -> Result<(), SubscribeError> {
        let services = self.services.clone();
        let route = services
            .router
            .topic(&channel.topic)
            .ok_or_else(|| SubscribeError::NoLongerServed(channel.topic.to_string()))?;
        not_deleted(route)?;
        let partitions = route.partitions();
        let (persist, mut starts) = match starts {
            Resolved::Requested(s) => (true, s),
            Resolved::Stored(s) => (false, s),
        };
        // Partitions added since the session stored its positions start at the beginning.
        starts.resize(
            partitions as usize,
            if persist {
                Start::Latest
            } else {
                Start::Earliest
            },
        );
        let Registered {
            id: sub_id,
            live,
            snapshot: snapshot_records,
            pulls,
        } = services.router.subscribe(
            route,
            &channel,
            options.filter.clone(),
            self.outbox.clone(),
            snapshot,
        );
        if let (true, Some(session)) = (persist, &self.session) {
            let positions: Vec<Option<i64>> = starts
                .iter()
                .zip(&live)
                .map(|(start, live)| match start {
                    Start::Latest => Some(*live),
                    Start::Offset(o) => Some(*o),
                    Start::Earliest => None,
                })
                .collect();
            let (session, channel_name, stored) =
                (session.clone(), name.to_string(), options.clone());
            let added = services
                .sessions
                .call(move |s| s.add_subscription(&session, &channel_name, &stored, &positions))
                .await;
            if let Err(e) = added {
                services.router.unsubscribe(route, &channel, sub_id);
                return Err(e.into());
            }
        }
        let buffer = services.config.replay.handoff_buffer_records;
        let (sub, replays) = Subscription::new(
            sub_id,
            channel,
            options.filter,
            id.clone(),
            &starts,
            &live,
            buffer,
        );
        let handles = self.start_replays(sub_id, route.name(), replays, &live);
        let name: Arc<str> = Arc::from(name);
        let delta = options.delta && route.delta_keys() > 0;
        if delta {
            route.add_delta_subscriber();
            let max_keys = services.config.limits.delta_keys_per_connection;
            self.sent
                .get_or_insert_with(|| Box::new(super::delta::Sent::new(max_keys)));
        }
        self.push(ServerFrame::Subscribed {
            id: id.clone(),
            channel: name.clone(),
            live,
            delta_topic: delta.then_some(route.id()),
        });
        if snapshot {
            let count = snapshot_records.len();
            self.pending
                .extend(snapshot_records.into_iter().map(|record| Outbound::Event {
                    channel: name.clone(),
                    record,
                    delta,
                }));
            self.push(ServerFrame::SnapshotEnd {
                id: id.clone(),
                channel: name.clone(),
                count,
            });
        }
        let mut active = Active {
            sub,
            pulls,
            disconnect_when_behind: route.slow_consumer() == SlowConsumerPolicy::Disconnect,
            behind_since: None,
            name: name.clone(),
            released: Vec::new(),
            delta,
            replays: handles,
            throttle: options
                .max_rate
                .or(route.default_max_rate())
                .map(|rate| Box::new(Throttle::new(rate))),
        };
        if active.sub.take_live_marker() {
            self.push(ServerFrame::Live {
                id,
                channel: name.clone(),
            });
        }
        self.subs.insert(sub_id, Box::new(active));
        Ok(())
    }

    /// Ends the subscriptions to topics deleted from the cluster, each with an error
    /// naming its channel: no record will come, and waiting silently would look like a
    /// quiet topic. A durable session forgets them too.
    pub(super) async fn end_deleted_topics(&mut self) {
        let router = &self.services.router;
        let gone: Vec<(Arc<str>, Option<Value>)> = self
            .subs
            .values()
            .filter(|a| {
                router
                    .topic(&a.sub.channel.topic)
                    .is_none_or(|r| r.is_deleted())
            })
            .map(|a| (a.name.clone(), a.sub.request_id.clone()))
            .collect();
        for (name, request_id) in gone {
            self.remove_subscription(&name);
            self.forget(&name).await;
            let message = format!("the topic of channel {name:?} was deleted from the cluster");
            self.error(request_id.as_ref(), ErrorCode::TopicDeleted, message);
        }
    }

    /// Removes a channel from the attached session, if any, so it is not resumed.
    pub(super) async fn forget(&mut self, name: &str) {
        let Some(session) = &self.session else {
            return;
        };
        let (key, channel) = (session.clone(), name.to_string());
        let removed = self
            .services
            .sessions
            .call(move |s| s.remove_subscription(&key, &channel))
            .await;
        if let Err(e) = removed {
            tracing::warn!(conn = self.guard.id, %session, error = %e, "cannot remove subscription from session");
        }
    }

    /// Drops a subscription (the session keeps it: see [`Connection::forget`]); false
    /// when there was none.
    pub(super) fn remove_subscription(&mut self, name: &str) -> bool {
        let Some(id) = self.subscribed_as(name) else {
            return false;
        };
        if let Some(active) = self.subs.remove(&id) {
            if let Some(route) = self.services.router.topic(&active.sub.channel.topic) {
                self.services
                    .router
                    .unsubscribe(route, &active.sub.channel, id);
                if active.delta {
                    route.remove_delta_subscriber();
                }
            }
        }
        true
    }

    pub(super) fn unsubscribe_all(&mut self) {
        let names: Vec<Arc<str>> = self.subs.values().map(|a| a.name.clone()).collect();
        for name in names {
            self.remove_subscription(&name);
        }
    }

    /// The subscription to the channel named `name`. A scan, not a second map: it runs
    /// per command, over at most `max_subscriptions`, and every connection would hold
    /// the map.
    fn subscribed_as(&self, name: &str) -> Option<SubscriptionId> {
        self.subs
            .iter()
            .find(|(_, a)| &*a.name == name)
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::SlowConsumerPolicy;
    use crate::connection::testing::{Harness, TOPIC};

    #[tokio::test]
    async fn subscribe_streams_live_records_and_unsubscribe_stops_them() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, |_| {});
        h.publish(5, 5).await;
        let mut peer = h.connect();
        peer.frame("welcome").await;
        peer.send(json!({"type": "subscribe", "id": 1, "channel": TOPIC}));
        let subscribed = peer.frame("subscribed").await;
        assert_eq!(subscribed["id"], 1);
        assert_eq!(
            subscribed["live_offsets"],
            json!({"0": 5}),
            "from latest: after the 5 records there"
        );
        peer.frame("live").await;
        h.publish(3, 1).await;
        let (offsets, frames) = peer.events(3).await;
        assert_eq!(offsets, vec![5, 6, 7]);
        assert!(frames.is_empty(), "{frames:?}");

        peer.send(json!({"type": "unsubscribe", "id": 2, "channel": TOPIC}));
        assert_eq!(peer.frame("unsubscribed").await["id"], 2);
        h.publish(3, 1).await;
        peer.nothing_pending().await;
        assert_eq!(
            h.services
                .router
                .topic(TOPIC)
                .map(|t| t.subscription_count()),
            Some(0)
        );
    }

    #[tokio::test]
    async fn bad_subscriptions_are_refused_with_their_reason_and_the_connection_goes_on() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, |_| {});
        let mut peer = h.connect();
        peer.frame("welcome").await;
        peer.send(json!({"type": "subscribe", "id": 1, "channel": "nope"}));
        let error = peer.frame("error").await;
        assert_eq!(error["code"], "unknown_topic");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("served topics: prices")),
            "{error}"
        );

        peer.send(json!({"type": "subscribe", "id": 2, "channel": TOPIC,
                         "from": {"offsets": {"0": 7}}}));
        let error = peer.frame("error").await;
        assert_eq!(error["code"], "invalid_position", "{error}");

        peer.send(json!({"type": "subscribe", "id": 3, "channel": TOPIC}));
        peer.frame("subscribed").await;
        peer.frame("live").await;
        peer.send(json!({"type": "subscribe", "id": 4, "channel": TOPIC}));
        assert_eq!(peer.frame("error").await["code"], "already_subscribed");
        peer.send(json!({"type": "unsubscribe", "id": 5, "channel": "prices:AAPL"}));
        assert_eq!(peer.frame("error").await["code"], "not_subscribed");
        h.publish(1, 1).await;
        assert_eq!(
            peer.events(1).await.0,
            vec![0],
            "the subscription still streams"
        );
    }
}
