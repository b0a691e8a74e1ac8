//! Commands from the client: the per-connection rate limit, then parsing and
//! dispatch to the concern that executes each.

use std::time::Instant;

use serde_json::Value;

use super::protocol::{self, CloseCode, Command, ErrorCode};
use super::{Connection, End, ServerFrame};
use crate::stats::stats;

impl Connection {
    /// Executes one command (JSON text); `Err` when the connection must close.
    pub(super) async fn on_command(&mut self, text: &str) -> Result<(), End> {
        if !self.admit_command(None)? {
            return Ok(());
        }
        let ws = &self.services.config.websocket;
        let max = protocol::Limits {
            command: ws.max_command_bytes,
            publish: ws.max_message_bytes,
        };
        match protocol::parse_command(text, max) {
            Err(e) => self.error(e.id.as_ref(), e.code, &e.message),
            Ok(command) => self.execute(command).await,
        }
        Ok(())
    }

    /// Executes a command a front end parsed itself; rate limited like JSON commands.
    pub(super) async fn on_parsed(&mut self, command: Command) -> Result<(), End> {
        if self.admit_command(command.id())? {
            self.execute(command).await;
        }
        Ok(())
    }

    /// The per-connection command rate limit: `Ok(false)` refuses this command (its
    /// `id` when known before parsing), `Err` closes a connection that keeps flooding.
    fn admit_command(&mut self, id: Option<&Value>) -> Result<bool, End> {
        // Every command counts, acks too: a client acks cumulatively, per partition, not per event.
        let limits = &self.services.config.limits;
        if self.commands.check().is_err() {
            self.rate_limited_streak += 1;
            stats().rate_limited_commands.add(1);
            if self.rate_limited_streak > limits.max_rate_limited_commands {
                tracing::info!(conn = self.guard.id, "closing: command flood");
                stats().rate_limit_disconnects.add(1);
                return Err(End::Close(CloseCode::RateLimited));
            }
            let message = format!(
                "more than {} commands per second; this one was not executed",
                limits.commands_per_sec
            );
            self.error(id, ErrorCode::RateLimited, message);
            return Ok(false);
        }
        self.rate_limited_streak = 0;
        Ok(true)
    }

    async fn execute(&mut self, command: Command) {
        match command {
            Command::Ping { id } => self.push(ServerFrame::Pong { id }),
            Command::Attach { id, session } => self.attach(id, session).await,
            Command::Auth { id, token } => self.refresh_token(id.as_ref(), &token),
            Command::Publish { id, publication } => self.publish(id, publication),
            Command::Ack {
                id,
                topic,
                partition,
                offset,
            } => self.ack(id.as_ref(), &topic, partition, offset),
            Command::Unsubscribe { id, channel } => {
                if self.remove_subscription(&channel) {
                    self.forget(&channel).await;
                    self.push(ServerFrame::Unsubscribed { id, channel });
                } else {
                    self.error(
                        id.as_ref(),
                        ErrorCode::NotSubscribed,
                        format!("not subscribed to {channel:?}"),
                    );
                }
            }
            Command::Subscribe {
                id,
                channel,
                from,
                options,
                snapshot,
            } => {
                if let Err(e) = self
                    .subscribe(id.clone(), &channel, from, options, snapshot)
                    .await
                {
                    self.error(id.as_ref(), e.code(), e.to_string());
                }
            }
        }
        self.idle_since = if self.subs.is_empty() {
            self.idle_since.or(Some(Instant::now()))
        } else {
            None
        };
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::SlowConsumerPolicy;
    use crate::connection::protocol::CloseCode;
    use crate::connection::testing::Harness;

    /// Past the burst, commands are refused (not executed) with `rate_limited`; past
    /// `max_rate_limited_commands` refusals in a row the connection closes with 4029.
    #[tokio::test]
    async fn a_command_flood_is_refused_then_closed() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, |c| {
            c.limits.commands_per_sec = 1;
            c.limits.commands_burst = 2;
            c.limits.max_rate_limited_commands = 3;
        });
        let mut peer = h.connect();
        peer.frame("welcome").await;
        for id in 0..10 {
            peer.send(json!({"type": "ping", "id": id}));
        }
        assert_eq!(peer.frame("pong").await["id"], 0);
        assert_eq!(peer.frame("pong").await["id"], 1);
        for _ in 0..3 {
            let error = peer.frame("error").await;
            assert_eq!(error["code"], "rate_limited", "{error}");
        }
        assert_eq!(peer.closed().await, CloseCode::RateLimited);
    }
}
