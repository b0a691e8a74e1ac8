//! The loop that owns a connection: waits on the client, the outbox, replays, timers
//! and the gateway's signals, hands each to its concern, and writes what is pending
//! with one flush per turn.

use std::collections::VecDeque;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::flow::{ROUTE_CHUNK, slow_consumer};
use super::link::{Inbound, Link, Outbound};
use super::protocol::{CloseCode, ErrorCode};
use super::publish::next_produced;
use super::replay::next_replay;
use super::{Connection, End, Opened, ServerFrame};
use crate::config::HeartbeatConfig;
use crate::stats::stats;
use crate::telemetry;

/// How long a closing connection waits for the peer to read its close frame and answer.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

impl Connection {
    pub(super) async fn serve<L: Link>(&mut self, link: &mut L) {
        let conn = self.guard.id;
        let opened = Instant::now();
        telemetry::connection_opened(L::TRANSPORT);
        self.opened = Some(Opened {
            transport: L::TRANSPORT,
            at: opened,
            reason: None,
        });
        tracing::debug!(conn, remote = ?self.remote, transport = L::TRANSPORT, "connection opened");
        let hb = self.services.config.heartbeat.clone();
        let ping_every = Duration::from_secs(hb.ping_interval_secs);
        let mut ping_at = tokio::time::Instant::now() + ping_every;
        // One timer for every deadline (pings, throttles, the token, a slow consumer's
        // grace), reset only when the earliest moves: each timer a select waits on takes
        // room in every connection's task.
        let mut timer = Box::pin(tokio::time::sleep_until(ping_at));
        self.push(ServerFrame::Welcome {
            connection_id: conn,
            node: self.services.node.clone(),
            protocol: link.protocol(),
        });
        // Outbox wake-ups taken in a row without the select (see below).
        let mut outbox_streak = 0u8;
        let end = loop {
            // Boxed: the write's state (the link's send, its timeout, the slow-consumer
            // watch) is larger than the rest of this loop, and every idle connection's task
            // would otherwise hold room for it.
            if self.has_output(link)
                && let Err(end) = Box::pin(self.flush(link)).await
            {
                break end;
            }
            // Shutdown wakes every outbox (`Connections::wake_all`).
            if *self.services.shutdown.borrow() {
                break End::Close(CloseCode::GoingAway);
            }
            if !self.drained.is_empty() {
                self.route_drained();
                continue;
            }
            if self.pull_more {
                // Other connections first: while its socket takes writes, nothing here
                // waits, and one reader could otherwise take the whole ring in one turn
                // while thousands of others wait for theirs.
                tokio::task::yield_now().await;
                self.pull();
                continue;
            }
            // Woken by the outbox, the usual case while records flow: take it without the
            // select, which would poll the socket and the timer for nothing. A bounded run,
            // so that under a steady stream the socket and the timer are still looked at.
            if outbox_streak < 16 && self.outbox.try_ready() {
                outbox_streak += 1;
                if let Err(end) = self.on_outbox_wake() {
                    break end;
                }
                continue;
            }
            outbox_streak = 0;
            let flush_at = self.next_flush.map(tokio::time::Instant::from_std);
            let token_deadline = self.token_deadline();
            // A refusal after this read wakes `ready` (the outbox's first drop does), and
            // the drain that follows moves it into `behind_since`.
            let slow_at = self
                .behind_since()
                .into_iter()
                .chain(self.outbox.refused_since())
                .min()
                .map(|since| tokio::time::Instant::from_std(since + self.grace()));
            let wake_at = [flush_at, token_deadline, slow_at]
                .into_iter()
                .flatten()
                .fold(ping_at, std::cmp::min);
            if timer.deadline() != wake_at {
                timer.as_mut().reset(wake_at);
            }
            tokio::select! {
                inbound = link.recv() => {
                    self.last_heard = Instant::now();
                    match inbound {
                        Inbound::Gone => break End::Gone,
                        Inbound::Command(text) => {
                            // Boxed, as are the other rare awaits below: a command's future
                            // (subscribe, attach) is the largest state of this loop, and every
                            // idle connection's task would otherwise hold room for it.
                            if let Err(end) = Box::pin(self.on_command(&text)).await {
                                break end;
                            }
                        }
                        Inbound::Parsed(command) => {
                            if let Err(end) = Box::pin(self.on_parsed(*command)).await {
                                break end;
                            }
                        }
                        Inbound::Acked(acked) => {
                            for a in acked {
                                self.ack(None, &a.topic, a.partition, a.offset);
                            }
                        }
                        Inbound::Binary => self.error(None, ErrorCode::BinaryNotSupported,
                            "binary frames carry no commands in protocol v1; send JSON text"),
                        Inbound::Alive => {}
                        Inbound::ProtocolError(why) => {
                            tracing::info!(conn, %why, "closing: protocol error");
                            break End::Close(CloseCode::ProtocolError);
                        }
                        Inbound::TooBig { size, max } => {
                            tracing::info!(conn, size, max, "closing: inbound message too big");
                            stats().oversize_messages_closed.add(1);
                            break End::Close(CloseCode::MessageTooBig);
                        }
                    }
                }
                _ = self.outbox.ready() => {
                    if let Err(end) = self.on_outbox_wake() {
                        break end;
                    }
                }
                Some(event) = next_replay(self.replay_rx.as_mut()) => {
                    self.on_replay(event);
                    // Take what else is ready, so one write carries many records; a route's
                    // chunk at most, so a slow reader's commands and pongs are still read.
                    while self.pending.len() < ROUTE_CHUNK {
                        match self.replay_rx.as_mut().map(mpsc::Receiver::try_recv) {
                            Some(Ok(event)) => self.on_replay(event),
                            _ => break,
                        }
                    }
                }
                Some(produced) = next_produced(self.publishing.as_deref_mut()) => {
                    self.on_produced(produced);
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if slow_at.is_some_and(|d| d <= now) {
                        break self.slow_consumer_close();
                    }
                    if token_deadline.is_some_and(|d| d <= now) {
                        tracing::info!(conn, "closing: token expired");
                        stats().token_expired_closes.add(1);
                        break End::Close(CloseCode::TokenExpired);
                    }
                    if ping_at <= now {
                        ping_at = now + ping_every;
                        if let Err(end) = self.on_heartbeat(link, &hb) {
                            break end;
                        }
                        Box::pin(self.end_deleted_topics()).await;
                    }
                    if flush_at.is_some_and(|d| d <= now) {
                        self.flush_throttles();
                    }
                }
            }
        };
        Box::pin(self.end(link, end, opened)).await;
    }

    /// The outbox woke the connection: records arrived, or its session was taken over.
    fn on_outbox_wake(&mut self) -> Result<(), End> {
        if self.outbox.is_taken_over() {
            tracing::info!(conn = self.guard.id, "closing: session attached elsewhere");
            return Err(End::Close(CloseCode::SessionTakenOver));
        }
        self.on_outbox();
        Ok(())
    }

    /// A heartbeat: closes a connection whose peer went quiet (or that stayed without
    /// subscriptions too long), else returns spare buffers and queues a ping.
    fn on_heartbeat<L: Link>(&mut self, link: &mut L, hb: &HeartbeatConfig) -> Result<(), End> {
        let conn = self.guard.id;
        let now = Instant::now();
        if L::ANSWERS_PINGS
            && !link.peer_reads()
            && now.duration_since(self.last_heard) > Duration::from_secs(hb.timeout_secs)
        {
            tracing::info!(conn, "closing: heartbeat timeout");
            stats().heartbeat_timeouts.add(1);
            return Err(End::Close(CloseCode::HeartbeatTimeout));
        }
        if L::CLOSES_IDLE
            && self
                .idle_since
                .is_some_and(|t| now.duration_since(t) > Duration::from_secs(hb.idle_timeout_secs))
        {
            tracing::info!(conn, "closing: idle without subscriptions");
            stats().idle_timeouts.add(1);
            return Err(End::Close(CloseCode::IdleTimeout));
        }
        self.shrink_buffers();
        self.pending.push(Outbound::Ping);
        Ok(())
    }

    /// Releases everything, records why the connection ended and closes the link.
    async fn end<L: Link>(&mut self, link: &mut L, end: End, opened: Instant) {
        let conn = self.guard.id;
        let session = self.session.clone();
        self.release();
        if let Some(session) = &session {
            let key = session.clone();
            if let Err(e) = self
                .services
                .sessions
                .call(move |s| s.mark_seen(&key))
                .await
            {
                tracing::warn!(conn, %session, error = %e, "cannot record session last-seen time");
            }
        }
        let reason = match end {
            End::Gone => "peer_gone",
            End::Close(code) => code.name(),
        };
        if let Some(opened) = &mut self.opened {
            opened.reason = Some(reason);
        }
        if let End::Close(code) = end {
            let linger = match code.peer_may_answer() {
                true => CLOSE_LINGER,
                false => Duration::from_millis(200),
            };
            let _ = tokio::time::timeout(linger, link.close(code)).await;
        }
        tracing::info!(
            conn,
            transport = L::TRANSPORT,
            session = session.as_deref().unwrap_or("-"),
            reason,
            lifetime_ms = opened.elapsed().as_millis() as u64,
            "connection closed"
        );
    }

    /// True when frames wait to be written.
    fn has_output<L: Link>(&self, link: &L) -> bool {
        !self.pending.is_empty() || link.has_output()
    }

    /// Writes every pending frame, at most [`ROUTE_CHUNK`] per write.
    async fn flush<L: Link>(&mut self, link: &mut L) -> Result<(), End> {
        let mut frames = std::mem::take(&mut self.pending);
        if let Some(sent) = self.sent.as_deref_mut() {
            sent.resolve(&mut frames);
        }
        // Each write has the whole write timeout: a slow reader of a long batch (a
        // hand-off's buffered records) is not closed while it keeps reading. Rare, so
        // the usual batch goes in one write with no copy.
        if frames.len() > ROUTE_CHUNK {
            let mut rest: VecDeque<Outbound> = frames.split_off(ROUTE_CHUNK).into();
            while !frames.is_empty() {
                self.write(link, &mut frames).await?;
                frames.extend(rest.drain(..ROUTE_CHUNK.min(rest.len())));
            }
        } else {
            self.write(link, &mut frames).await?;
        }
        // A large buffer is kept for the next batch (growing one afresh costs page faults at
        // high rates; `shrink_buffers` returns it once the connection is quiet); a small one
        // is cheap to make again, and an idle connection holds none.
        if frames.capacity() > 64 {
            self.pending = frames;
        }
        Ok(())
    }

    /// Writes `frames` (leaving it empty) and flushes once, within the write timeout.
    async fn write<L: Link>(
        &mut self,
        link: &mut L,
        frames: &mut Vec<Outbound>,
    ) -> Result<(), End> {
        let timeout = Duration::from_secs(self.services.config.websocket.write_timeout_secs);
        let (mut records, mut bytes, mut newest) = (0, 0, None);
        for frame in frames.iter() {
            if let Outbound::Event { record, delta, .. } = frame {
                records += 1;
                bytes += link.event_bytes(record, *delta) as u64;
                newest = newest.max(record.timestamp);
            }
        }
        let mut write = std::pin::pin!(link.send(frames));
        // Most writes finish at once (the socket takes them): no timer, no slow-consumer watch.
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        let written = match first {
            Poll::Ready(r) => r.map_err(|_| End::Gone),
            Poll::Pending => {
                // A blocked write still gives way to a slow-consumer disconnect.
                let outbox = self.outbox.clone();
                let behind_since = self.behind_since();
                tokio::select! {
                    r = tokio::time::timeout(timeout, write) => match r {
                        Ok(r) => r.map_err(|_| End::Gone),
                        Err(_) => Err(End::Close(CloseCode::WriteTimeout)),
                    },
                    _ = slow_consumer(&outbox, behind_since, self.grace()) => Err(self.slow_consumer_close()),
                }
            }
        };
        if written.is_ok() && records > 0 {
            telemetry::delivered(L::TRANSPORT, records, bytes, newest);
        }
        written
    }
}
