//! Flow: live records from the ring or the outbox routed through their
//! subscriptions, the slow-consumer policy applied to what was dropped, and
//! per-subscription throttles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::link::Outbound;
use super::throttle::Throttle;
use super::{Connection, End};
use crate::codec::EncodedRecord;
use crate::connection::protocol::CloseCode;
use crate::kafka::replay::ReplayHandle;
use crate::router::Read;
use crate::router::outbox::Outbox;
use crate::session::subscription::Subscription;
use crate::stats::stats;

/// Live records routed per write: bounds the frames held at once (one drain may bring an
/// outbox's 10,000, the ring holds more) and lets commands and pings through between chunks.
pub(super) const ROUTE_CHUNK: usize = 256;

/// A subscription plus the replays feeding it.
pub(super) struct Active {
    pub(super) sub: Subscription,
    /// Reads its live records from the ring (see [`crate::router`]) rather than the outbox.
    pub(super) pulls: bool,
    /// The topic's slow-consumer policy is `disconnect`.
    pub(super) disconnect_when_behind: bool,
    /// Since when the subscription has been off the live path because the outbox dropped
    /// its records; cleared when it is live again.
    pub(super) behind_since: Option<Instant>,
    /// The channel name as the client wrote it (the session store's key).
    pub(super) name: Arc<str>,
    pub(super) replays: Vec<ReplayHandle>,
    /// Boxed: most subscriptions have none.
    pub(super) throttle: Option<Box<Throttle>>,
    /// Records the throttle released, before they are tagged with the channel (reused).
    pub(super) released: Vec<Arc<EncodedRecord>>,
    /// Its records go as deltas where the client holds their base.
    pub(super) delta: bool,
}

impl Active {
    /// Passes records the subscription let through its throttle, if it has one.
    pub(super) fn emit(
        &mut self,
        records: &mut Vec<Arc<EncodedRecord>>,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        match &mut self.throttle {
            None => self.released.append(records),
            Some(t) => records
                .drain(..)
                .for_each(|r| t.offer(r, now, &mut self.released)),
        }
        self.tag_released(out);
    }

    /// Moves released records to `out` as events of this subscription's channel.
    fn tag_released(&mut self, out: &mut Vec<Outbound>) {
        out.extend(self.released.drain(..).map(|record| Outbound::Event {
            channel: self.name.clone(),
            record,
            delta: self.delta,
        }));
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.replays.iter().for_each(ReplayHandle::cancel);
    }
}

/// Resolves when the connection must close as a slow consumer: a `disconnect`-policy
/// subscription has been behind (records refused by the outbox, not yet drained, or
/// caught up from `behind_since` on) for `grace`.
pub(super) async fn slow_consumer(outbox: &Outbox, behind_since: Option<Instant>, grace: Duration) {
    loop {
        // `notify_one` leaves a permit, so a refusal between this read and the wait is not missed.
        let refused = outbox.refused();
        let since = behind_since.into_iter().chain(outbox.refused_since()).min();
        match since {
            Some(since) => tokio::select! {
                _ = tokio::time::sleep_until((since + grace).into()) => return,
                _ = refused => {}
            },
            None => refused.await,
        }
    }
}

impl Connection {
    /// How long a `disconnect`-policy subscription may stay behind.
    pub(super) fn grace(&self) -> Duration {
        Duration::from_millis(self.services.config.limits.slow_consumer_grace_ms)
    }

    /// Since when the longest-behind `disconnect`-policy subscription has been behind.
    pub(super) fn behind_since(&self) -> Option<Instant> {
        // Refusals drained but not yet acted on count from the first of them.
        self.subs
            .values()
            .filter_map(|a| a.behind_since)
            .chain(self.dropped.refused_since)
            .min()
    }

    pub(super) fn slow_consumer_close(&self) -> End {
        tracing::info!(
            conn = self.guard.id,
            "closing: slow consumer past its grace period"
        );
        stats().slow_consumer_disconnected.add(1);
        End::Close(CloseCode::SlowConsumer)
    }

    /// Takes what the outbox queued and dropped, and routes the first chunk of it; then
    /// reads the ring for the subscriptions that pull.
    pub(super) fn on_outbox(&mut self) {
        self.dropped = self.outbox.drain_into(&mut self.drained);
        self.route_drained();
        self.pull();
    }

    /// Reads live records from the ring for each subscription that pulls, up to
    /// [`ROUTE_CHUNK`] in all (`pull_more` is set when more may be there). When the
    /// budget runs out, the next read starts at the next subscription and partition, so
    /// one busy partition cannot starve the others. A subscription the ring no longer
    /// covers leaves the live path and re-reads from Kafka, as `catch_up` does for
    /// records an outbox dropped.
    pub(super) fn pull(&mut self) {
        let more = std::mem::take(&mut self.pull_more);
        let mut order = std::mem::take(&mut self.pull_order);
        order.clear();
        order.extend(self.subs.iter().filter(|(_, a)| a.pulls).map(|(id, _)| *id));
        if order.is_empty() {
            self.pull_order = order;
            return;
        }
        if more {
            self.pull_turn = self.pull_turn.wrapping_add(1);
        }
        let turn = self.pull_turn as usize;
        let first = turn % order.len();
        order.rotate_left(first);
        let now = Instant::now();
        let mut budget = ROUTE_CHUNK;
        let mut out = std::mem::take(&mut self.scratch);
        let mut behind = Vec::new();
        let router = &self.services.router;
        for id in &order {
            let Some(active) = self.subs.get_mut(id) else {
                continue;
            };
            let Some(route) = router.topic(&active.sub.channel.topic) else {
                continue;
            };
            let partitions = route.partitions();
            for i in 0..partitions {
                let partition = ((turn + i as usize) % partitions as usize) as i32;
                let Some(next) = active.sub.live_next(partition, partitions) else {
                    continue;
                };
                let (sub, emitted) = (&mut active.sub, &mut self.emitted);
                let read = route.read(partition, next, budget, |record| {
                    match sub.filter.as_ref().is_none_or(|f| f.matches(record)) {
                        true => sub.on_live(record.clone(), emitted),
                        false => sub.pass_live(partition, record.meta.offset),
                    }
                });
                match read {
                    Read::Records(n) => budget -= n,
                    Read::Evicted { covered_from } => {
                        // Kafka serves only what the ring lost; the ring serves the rest.
                        if let Some(start) = active.sub.fall_behind(partition, covered_from - 1) {
                            tracing::debug!(
                                conn = self.guard.id,
                                partition,
                                next,
                                covered_from,
                                "reader fell off the ring; catching up"
                            );
                            behind.push((*id, partition, start, covered_from));
                        }
                    }
                }
                if budget == 0 {
                    break;
                }
            }
            active.emit(&mut self.emitted, now, &mut out);
            if budget == 0 {
                self.pull_more = true;
                break;
            }
        }
        self.pull_order = order;
        self.scratch = out;
        self.emit_scratch();
        for (id, partition, start, until) in behind {
            stats().slow_consumer_catch_up.add(1);
            self.restart_replay(id, partition, start, until);
        }
    }

    /// Routes up to [`ROUTE_CHUNK`] drained live records through their subscriptions; once
    /// all are routed, applies the slow-consumer policy to what the outbox dropped after them.
    pub(super) fn route_drained(&mut self) {
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.scratch);
        for delivery in self.drained.take(ROUTE_CHUNK) {
            if let Some(active) = self.subs.get_mut(&delivery.subscription) {
                active.sub.on_live(delivery.record, &mut self.emitted);
                active.emit(&mut self.emitted, now, &mut out);
            }
        }
        self.scratch = out;
        self.emit_scratch();
        self.flush_throttles();
        if !self.drained.is_empty() {
            return;
        }
        let report = std::mem::take(&mut self.dropped);
        for ((id, partition), range) in report.dropped {
            let Some(active) = self.subs.get_mut(&id) else {
                continue;
            };
            if active.disconnect_when_behind && active.behind_since.is_none() {
                // The grace clock started at the first refusal, not at this drain.
                active.behind_since = Some(report.refused_since.unwrap_or(now).min(now));
            }
            // Off the live path: re-read from the ring or Kafka at the client's pace.
            if let Some(start) = active.sub.fall_behind(partition, range.last) {
                stats().slow_consumer_catch_up.add(1);
                self.restart_replay(id, partition, start, range.last + 1);
            }
        }
    }

    /// Gives back the buffer memory a burst left behind. Called at each heartbeat: a busy
    /// connection keeps its buffers (growing them afresh costs page faults at high rates),
    /// a quiet one returns them.
    pub(super) fn shrink_buffers(&mut self) {
        self.pending.shrink_to_fit();
        self.scratch.shrink_to_fit();
        self.emitted.shrink_to_fit();
        self.pull_order = Vec::new();
        self.drained.shrink();
        self.outbox.shrink();
        self.subs
            .values_mut()
            .for_each(|a| a.released.shrink_to_fit());
    }

    /// Sends throttled values that are due and notes when the next one will be.
    pub(super) fn flush_throttles(&mut self) {
        // Called after every route: without throttles there is nothing to do, no clock to read.
        if self.subs.values().all(|a| a.throttle.is_none()) {
            self.next_flush = None;
            return;
        }
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.scratch);
        let mut next: Option<Instant> = None;
        for active in self.subs.values_mut() {
            if let Some(due) = active
                .throttle
                .as_mut()
                .and_then(|t| t.flush_due(now, &mut active.released))
            {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
            active.tag_released(&mut out);
        }
        self.scratch = out;
        self.emit_scratch();
        self.next_flush = next;
    }

    pub(super) fn emit_scratch(&mut self) {
        self.pending.append(&mut self.scratch);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::SlowConsumerPolicy;
    use crate::connection::protocol::CloseCode;
    use crate::connection::testing::{Harness, TOPIC};

    fn small_outbox(c: &mut crate::config::Config) {
        c.websocket.outbox_max_messages = 8;
        c.limits.slow_consumer_grace_ms = 200;
    }

    /// `catch_up`, whole topic, `live_from_ring`: a client that stops reading keeps its
    /// place in the ring (nothing is queued for it), then gets every record it missed, in
    /// order, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_reader_pulls_what_it_missed_from_the_ring() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, |c| {
            small_outbox(c);
            c.replay.live_from_ring = true;
        });
        let mut peer = h.connect();
        peer.frame("welcome").await;
        peer.send(json!({"type": "subscribe", "id": 1, "channel": TOPIC}));
        peer.frame("subscribed").await;
        peer.frame("live").await;
        peer.pause();
        h.publish(500, 10).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        peer.resume();
        let (offsets, frames) = peer.events(500).await;
        assert_eq!(offsets, (0..500).collect::<Vec<i64>>());
        assert!(frames.is_empty(), "{frames:?}");
        h.publish(1, 1).await;
        assert_eq!(peer.events(1).await.0, vec![500], "live again");
    }

    /// `catch_up` (pushed to the outbox): a client that stops reading loses its
    /// place in the outbox, then gets every record it missed from the ring, in order,
    /// once, and goes live again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catch_up_policy_rereads_what_the_outbox_dropped() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, small_outbox);
        let mut peer = h.connect();
        peer.frame("welcome").await;
        let channel = format!("{TOPIC}:k0");
        peer.send(json!({"type": "subscribe", "id": 1, "channel": channel}));
        peer.frame("subscribed").await;
        peer.frame("live").await;
        peer.pause();
        h.publish(1500, 10).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        peer.resume();
        // Keys cycle k0, k1, k2: k0 is every third offset. The outbox holds 8 of them.
        let (offsets, frames) = peer.events(500).await;
        assert_eq!(offsets, (0..1500).step_by(3).collect::<Vec<i64>>());
        assert!(frames.iter().all(|f| f["type"] == "live"), "{frames:?}");
        h.publish(3, 1).await;
        assert_eq!(peer.events(1).await.0, vec![1500], "live again");
    }

    /// `disconnect`: a client behind for longer than the grace is closed with 4008, even
    /// while a write to it is blocked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disconnect_policy_closes_a_client_behind_past_its_grace() {
        let h = Harness::new(SlowConsumerPolicy::Disconnect, small_outbox);
        let mut peer = h.connect();
        let mut reader = h.connect();
        peer.frame("welcome").await;
        reader.frame("welcome").await;
        for p in [&peer, &reader] {
            p.send(json!({"type": "subscribe", "channel": TOPIC}));
        }
        peer.frame("subscribed").await;
        reader.frame("subscribed").await;
        peer.pause();
        h.publish(100, 10).await;
        assert_eq!(peer.closed().await, CloseCode::SlowConsumer);
        let (offsets, _) = reader.events(100).await;
        assert_eq!(
            offsets,
            (0..100).collect::<Vec<i64>>(),
            "the client that reads is not affected"
        );
    }
}
