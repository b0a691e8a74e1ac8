//! Catch-up reads feeding a subscription: replays started from the ring or Kafka,
//! their events applied in order, and the hand-off to live.

use std::time::Instant;

use tokio::sync::mpsc;

use super::Connection;
use super::ServerFrame;
use super::link::Outbound;
use super::protocol::ErrorCode;
use crate::kafka::replay::{Addressed, ReplayHandle, ReplayRequest};
use crate::router::outbox::SubscriptionId;
use crate::session::subscription::{ReplayEvent, ReplayStep, Start};
use crate::telemetry;

/// The next replayed record, or never while no replay has started.
pub(super) async fn next_replay(rx: Option<&mut mpsc::Receiver<Addressed>>) -> Option<Addressed> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The handle of `partition`'s replay, made on first use: a subscription that starts
/// live holds none.
fn handle_slot(handles: &mut Vec<ReplayHandle>, partition: i32) -> &mut ReplayHandle {
    let index = partition as usize;
    if handles.len() <= index {
        handles.resize_with(index + 1, ReplayHandle::default);
    }
    &mut handles[index]
}

impl Connection {
    /// The sender replay readers deliver to, made on first use.
    pub(super) fn replay_sender(&mut self) -> mpsc::Sender<Addressed> {
        if let Some(tx) = &self.replay_tx {
            return tx.clone();
        }
        // Events carry batches of up to 256 records: at most about 1,000 records in flight.
        let (tx, rx) = mpsc::channel(4);
        self.replay_rx = Some(rx);
        self.replay_tx = Some(tx.clone());
        tx
    }

    /// Starts a replay of one partition of subscription `id`, replacing (and cancelling)
    /// the one that fed it.
    pub(super) fn restart_replay(
        &mut self,
        id: SubscriptionId,
        partition: i32,
        start: Start,
        until: i64,
    ) {
        let Some(topic) = self.subs.get(&id).map(|a| a.sub.channel.topic.clone()) else {
            return;
        };
        let request = ReplayRequest {
            subscription: id,
            topic,
            partition,
            start,
            until,
        };
        let tx = self.replay_sender();
        let handle = self.services.replay.start(request, tx);
        if let Some(active) = self.subs.get_mut(&id) {
            let slot = handle_slot(&mut active.replays, partition);
            slot.cancel();
            *slot = handle;
        }
    }

    /// Applies one replay event to its subscription.
    pub(super) fn on_replay(&mut self, addressed: Addressed) {
        let Addressed {
            subscription: id,
            partition,
            replay,
            event,
        } = addressed;
        let Some(active) = self.subs.get_mut(&id) else {
            return;
        };
        // Events of a replay this one replaced (still queued, or sent as it was
        // cancelled) would move the new replay's position past records it has not read.
        if active.replays.get(partition as usize).map(ReplayHandle::id) != Some(replay) {
            return;
        }
        match &event {
            ReplayEvent::Gap {
                requested,
                earliest,
            } => {
                let frame = ServerFrame::Gap {
                    channel: active.sub.channel.to_string(),
                    topic: active.sub.channel.topic.clone(),
                    partition,
                    requested: *requested,
                    earliest: *earliest,
                };
                self.pending.push(Outbound::Frame(frame));
            }
            ReplayEvent::Failed(reason) => {
                let channel = active.sub.channel.to_string();
                let message = format!(
                    "catch-up read of {channel} partition {partition} failed ({reason}); subscription removed"
                );
                let request_id = active.sub.request_id.clone();
                let name = active.name.clone();
                self.remove_subscription(&name);
                self.error(request_id.as_ref(), ErrorCode::ReplayFailed, message);
                return;
            }
            _ => {}
        }
        let step = active.sub.on_replay(partition, event, &mut self.emitted);
        let mut out = std::mem::take(&mut self.scratch);
        active.emit(&mut self.emitted, Instant::now(), &mut out);
        self.scratch = out;
        match step {
            ReplayStep::Continue => {}
            ReplayStep::Live => {
                // Events after the hand-off report Live again: count the hand-off once.
                if let Some(handle) = active
                    .replays
                    .get(partition as usize)
                    .filter(|h| !h.is_cancelled())
                {
                    telemetry::replay_completed(handle.tier().as_str());
                    handle.cancel();
                }
                if active.sub.is_live() {
                    active.behind_since = None;
                }
                // The ring may already hold what came after the hand-off, and no wake-up
                // will say so.
                self.pull_more |= active.pulls;
            }
            ReplayStep::Restart(from) => {
                let until = active.sub.catch_up_target(partition).unwrap_or(from);
                self.restart_replay(id, partition, Start::Offset(from), until);
            }
        }
        self.emit_scratch();
        if let Some(active) = self.subs.get_mut(&id) {
            if active.sub.take_live_marker() {
                let frame = ServerFrame::Live {
                    id: active.sub.request_id.clone(),
                    channel: active.sub.channel.to_string().into(),
                };
                self.push(frame);
            }
        }
    }

    /// The handles of replays started for a new subscription, one per partition.
    pub(super) fn start_replays(
        &mut self,
        id: SubscriptionId,
        topic: &std::sync::Arc<str>,
        replays: Vec<(i32, Start)>,
        live: &[i64],
    ) -> Vec<ReplayHandle> {
        let mut handles = Vec::new();
        for (partition, start) in replays {
            let request = ReplayRequest {
                subscription: id,
                topic: topic.clone(),
                partition,
                start,
                until: live[partition as usize],
            };
            let tx = self.replay_sender();
            *handle_slot(&mut handles, partition) = self.services.replay.start(request, tx);
        }
        handles
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::SlowConsumerPolicy;
    use crate::connection::testing::{Harness, Peer, TOPIC};

    /// A subscription from an old offset replays from the ring while new records keep
    /// arriving live; every offset arrives once, in order, and `live` once, at the hand-off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_hands_off_to_live_with_no_gap_and_no_duplicate() {
        let h = std::sync::Arc::new(Harness::new(SlowConsumerPolicy::CatchUp, |c| {
            c.replay.handoff_buffer_records = 16;
        }));
        h.publish(2_000, 50).await;
        let mut peer = h.connect();
        peer.frame("welcome").await;
        peer.send(json!({"type": "subscribe", "id": 1, "channel": TOPIC,
                         "from": {"offsets": {"0": 0}}}));
        let live_at = peer.frame("subscribed").await["live_offsets"]["0"].as_i64();
        assert_eq!(live_at, Some(2_000));
        let more = tokio::spawn({
            let h = h.clone();
            async move { h.publish(3_000, 7).await }
        });
        let (offsets, frames) = peer.events(5_000).await;
        more.await.expect("publisher");
        let expected: Vec<i64> = (0..5_000).collect();
        assert!(
            offsets == expected,
            "first difference at {:?}",
            offsets.iter().zip(&expected).position(|(a, b)| a != b)
        );
        let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
        assert_eq!(kinds, vec!["live"]);
        peer.nothing_pending().await;
    }

    /// Publishes `n` records, then connects a reader that stops reading and subscribes
    /// from offset 0: its replay from the ring waits on it.
    async fn paused_replay_from_zero(h: &Harness, n: usize) -> Peer {
        h.publish(n, 50).await;
        let mut peer = h.connect();
        peer.frame("welcome").await;
        peer.pause();
        peer.send(json!({"type": "subscribe", "id": 1, "channel": TOPIC,
                         "from": {"offsets": {"0": 0}}}));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        peer
    }

    /// A hand-off releases every record buffered while the replay ran (3,000 here) at
    /// once. To a slow reader that keeps reading, they go in writes of a bounded size,
    /// each within the write timeout, though all of them take longer than that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_hand_off_to_a_slow_reader_is_not_a_write_timeout() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, |c| {
            c.websocket.write_timeout_secs = 1;
        });
        let mut peer = paused_replay_from_zero(&h, 1_000).await;
        // Live while the replay waits on the paused reader: buffered for the hand-off.
        h.publish(3_000, 100).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // 3,000 frames in one write would take 3 s.
        peer.read_slowly(std::time::Duration::from_millis(1));
        peer.resume();
        let (offsets, frames) = peer.events(4_000).await;
        assert_eq!(offsets, (0..4_000).collect::<Vec<i64>>());
        let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
        assert_eq!(kinds, vec!["subscribed"]);
        peer.frame("live").await;
    }

    /// Records that reached the ring while a replay ran, with no dispatch after the
    /// hand-off to wake the connection, are still read: the hand-off itself reads the ring.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_in_the_ring_at_the_hand_off_are_read_without_a_wake_up() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, |c| {
            c.replay.live_from_ring = true
        });
        let mut peer = paused_replay_from_zero(&h, 2_000).await;
        // All of it at once, while the replay waits on the paused reader: the one wake-up
        // it brings is spent before the hand-off.
        h.publish(3_000, 3_000).await;
        peer.resume();
        let (offsets, frames) = peer.events(5_000).await;
        assert_eq!(offsets, (0..5_000).collect::<Vec<i64>>());
        let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
        assert_eq!(kinds, vec!["subscribed", "live"]);
    }
}
