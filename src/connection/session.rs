//! Durable sessions on a connection: attach (and resume the stored subscriptions),
//! cumulative acks, and takeover by another connection.

use serde_json::Value;

use super::Connection;
use super::ServerFrame;
use super::protocol::ErrorCode;
use super::subscribe::{Resolved, SubscribeError};
use crate::router::Channel;
use crate::session::subscription::Start;

impl Connection {
    /// Attaches a durable session and resumes its stored subscriptions from their positions.
    pub(super) async fn attach(&mut self, id: Option<Value>, session: String) {
        if self.session.is_some() || !self.subs.is_empty() {
            return self.error(
                id.as_ref(),
                ErrorCode::InvalidState,
                "attach must be the first command of a connection, and only once",
            );
        }
        // Ids are per token subject: two users' sessions never meet.
        let scoped = self.identity.scoped_session(&session);
        // On the store's threads, not the shared blocking pool: when thousands of clients
        // resume at once, their Kafka replays queue there.
        let key = scoped.clone();
        let (record, resumed) = match self.services.sessions.call(move |s| s.touch(&key)).await {
            Ok(touched) => touched,
            Err(e) => return self.error(id.as_ref(), ErrorCode::StoreFailed, e.to_string()),
        };
        let outbox = self.outbox.clone();
        self.services
            .attachments
            .attach(&scoped, self.guard.id, outbox);
        tracing::debug!(conn = self.guard.id, session = %scoped, "session attached");
        tracing::Span::current().record("session", scoped.as_str());
        self.session = Some(scoped);
        let channels = record
            .subscriptions
            .iter()
            .map(|s| (s.channel.clone(), s.options.clone()))
            .collect();
        self.push(ServerFrame::Attached {
            id,
            session,
            resumed,
            subscriptions: channels,
        });
        for stored in record.subscriptions {
            let starts: Vec<Start> = stored
                .positions
                .iter()
                .map(|p| p.map_or(Start::Earliest, Start::Offset))
                .collect();
            if let Err(e) = self.resume(&stored.channel, starts, stored.options).await {
                let message = format!("cannot resume {:?}: {e}", stored.channel);
                self.error(None, e.code(), message);
            }
        }
    }

    /// Registers a stored subscription again, from its stored positions.
    async fn resume(
        &mut self,
        name: &str,
        starts: Vec<Start>,
        options: crate::session::subscription::Options,
    ) -> Result<(), SubscribeError> {
        let max = self.services.config.websocket.max_channel_bytes;
        let channel = Channel::parse(name, max)?;
        self.permit(&channel, name)?;
        let starts = Resolved::Stored(starts);
        self.register(None, name, channel, starts, options, false)
            .await
    }

    /// A cumulative ack: every record of `topic`/`partition` up to `offset` was processed.
    pub(super) fn ack(&mut self, id: Option<&Value>, topic: &str, partition: i32, offset: i64) {
        let Some(session) = &self.session else {
            return self.error(
                id,
                ErrorCode::NoSession,
                "ack needs a session: send attach first",
            );
        };
        for active in self.subs.values() {
            if &*active.sub.channel.topic != topic {
                continue;
            }
            // Never past what this subscription was sent: an ack cannot skip undelivered records.
            if let Some(sent) = active.sub.delivered_next(partition) {
                let next = offset.saturating_add(1).min(sent);
                self.services
                    .sessions
                    .ack(session, &active.name, partition, next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::SlowConsumerPolicy;
    use crate::connection::protocol::CloseCode;
    use crate::connection::testing::{Harness, Peer, TOPIC};

    /// Attaches `session`; returns the `attached` frame's `resumed` and `subscriptions`.
    async fn attach(peer: &mut Peer, session: &str) -> (serde_json::Value, serde_json::Value) {
        peer.send(json!({"type": "attach", "session": session}));
        let attached = peer.frame("attached").await;
        (
            attached["resumed"].clone(),
            attached["subscriptions"].clone(),
        )
    }

    /// A session resumes after the last acked offset; a second attach takes it over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attach_resumes_after_the_acked_offset_and_a_second_attach_takes_over() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, |_| {});
        let mut first = h.connect();
        first.frame("welcome").await;
        assert_eq!(attach(&mut first, "s1").await, (json!(false), json!([])));
        first.send(json!({"type": "subscribe", "channel": TOPIC}));
        first.frame("subscribed").await;
        h.publish(5, 5).await;
        assert_eq!(first.events(5).await.0, vec![0, 1, 2, 3, 4]);
        first.send(json!({"type": "ack", "topic": TOPIC, "partition": 0, "offset": 2}));
        first.nothing_pending().await;
        h.services.sessions.blocking().commit().expect("commit");
        first.hang_up();
        first.ended().await;
        // Records 5 and 6 arrive while nobody is attached.
        h.publish(2, 2).await;

        let mut second = h.connect();
        second.frame("welcome").await;
        assert_eq!(
            attach(&mut second, "s1").await,
            (json!(true), json!([TOPIC]))
        );
        let (offsets, _) = second.events(4).await;
        assert_eq!(offsets, vec![3, 4, 5, 6], "resumed after the acked offset");
        second.frame("live").await;
        // An ack past what was delivered counts only up to what was delivered.
        second.send(json!({"type": "ack", "topic": TOPIC, "partition": 0, "offset": 90}));
        second.nothing_pending().await;
        h.services.sessions.blocking().commit().expect("commit");
        second.hang_up();
        second.ended().await;

        let mut third = h.connect();
        third.frame("welcome").await;
        attach(&mut third, "s1").await;
        h.publish(1, 1).await;
        let (offsets, _) = third.events(1).await;
        assert_eq!(
            offsets,
            vec![7],
            "offsets 0-6 were acked, 7-90 were never delivered"
        );

        let mut fourth = h.connect();
        fourth.frame("welcome").await;
        attach(&mut fourth, "s1").await;
        assert_eq!(third.closed().await, CloseCode::SessionTakenOver);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attach_is_refused_after_a_subscribe_and_ack_without_a_session() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, |_| {});
        let mut peer = h.connect();
        peer.frame("welcome").await;
        peer.send(json!({"type": "ack", "topic": TOPIC, "partition": 0, "offset": 1}));
        assert_eq!(peer.frame("error").await["code"], "no_session");
        peer.send(json!({"type": "subscribe", "channel": TOPIC}));
        peer.frame("subscribed").await;
        peer.frame("live").await;
        peer.send(json!({"type": "attach", "session": "late"}));
        assert_eq!(peer.frame("error").await["code"], "invalid_state");
    }
}
