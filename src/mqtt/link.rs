//! The MQTT [`Link`]: packets from the client become the engine's commands, and the
//! engine's frames and records become packets. QoS 1 records are numbered, bounded by
//! the in-flight window, and their PUBACKs become cumulative acks of the session.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::codec::{self, Connect, FrameError, Incoming, Outgoing, Reason, Version, Will};
use super::topic;
use super::wire::Wire;
use crate::codec::{EncodedRecord, Payload};
use crate::connection::protocol::{CloseCode, Command, ErrorCode, From as Start};
use crate::connection::{Acked, Gone, Inbound, Link, Outbound, ServerFrame};
use crate::publish::Publication;
use crate::session::subscription::Options;

/// The id of the `attach` a persistent session starts with.
const CONNECT_ID: &str = "connect";
/// The id of QoS 0 publishes: nothing is answered.
const QOS0_ID: &str = "qos0";

/// A subscription as MQTT sees it.
#[derive(Debug)]
struct Sub {
    qos: u8,
    /// Records of the snapshot go out as retained messages until `snapshot_end`.
    retained: bool,
    /// Records before these offsets (per partition) are re-deliveries of a resumed session.
    dup_below: Vec<i64>,
}

/// A SUBSCRIBE or UNSUBSCRIBE waiting for the engine's answer to each of its filters.
struct PendingAck {
    pid: u16,
    subscribe: bool,
    reasons: Vec<Option<Reason>>,
}

/// A QoS 1 record sent and not yet acknowledged.
struct InFlight {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    /// False for retained (snapshot) records, whose offsets say nothing of the position,
    /// and on clean sessions, which store no position.
    counts: bool,
}

/// Offsets of one partition in flight and acknowledged, to turn PUBACKs (in any order)
/// into a cumulative ack that never passes an unacknowledged record.
#[derive(Default)]
struct PartitionAcks {
    /// Sent and not acknowledged (a count: two subscriptions may send one offset).
    unacked: BTreeMap<i64, u32>,
    /// Acknowledged, not yet reported.
    acked: BTreeSet<i64>,
}

impl PartitionAcks {
    fn sent(&mut self, offset: i64) {
        *self.unacked.entry(offset).or_default() += 1;
    }

    fn acked(&mut self, offset: i64) {
        if let Some(n) = self.unacked.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                self.unacked.remove(&offset);
            }
        }
        self.acked.insert(offset);
    }

    /// The highest acknowledged offset below every unacknowledged one, once.
    fn advance(&mut self) -> Option<i64> {
        let bound = self.unacked.keys().next().copied().unwrap_or(i64::MAX);
        let upto = *self.acked.range(..bound).next_back()?;
        while self.acked.first().is_some_and(|&a| a <= upto) {
            self.acked.pop_first();
        }
        Some(upto)
    }
}

/// What the MQTT session needs from the gateway's configuration.
#[derive(Debug)]
pub struct Settings {
    /// Largest packet accepted from the client.
    pub max_packet: usize,
    /// QoS 1 records in flight.
    pub window: u16,
    /// Topics whose subscribers get the latest value per key as retained messages.
    pub snapshot_topics: Vec<String>,
    /// Topics whose values are JSON (a PUBLISH to them must carry JSON).
    pub json_topics: Vec<String>,
}

/// One MQTT client's connection, as the engine's [`Link`].
pub struct MqttLink<W: Wire> {
    wire: W,
    version: Version,
    settings: Arc<Settings>,
    /// QoS 1 records in flight at most.
    window: u16,
    /// Largest packet the client accepts (MQTT 5 Maximum Packet Size).
    client_max_packet: usize,
    /// The client must send something within this (1.5 × its keep-alive).
    keep_alive: Option<Duration>,
    last_heard: Instant,
    /// Bytes read and not yet a whole packet.
    buf: BytesMut,
    /// Encoded packets waiting for one write.
    out: Vec<u8>,
    /// Packets already turned into what the engine reads next.
    inbound: VecDeque<Inbound>,
    /// True once CONNACK went out; true from the start for a clean session's link
    /// (its CONNACK goes out with the `welcome`).
    persistent: bool,
    connack_sent: bool,
    subs: HashMap<String, Sub>,
    pending_acks: HashMap<u16, PendingAck>,
    in_flight: HashMap<u16, InFlight>,
    partitions: HashMap<(Arc<str>, i32), PartitionAcks>,
    next_pid: u16,
    /// The reason told to the client when the link closes for a fault of its own.
    violation: Option<Reason>,
    /// The will, until a DISCONNECT discards it.
    will: Option<Will>,
    /// The client said DISCONNECT.
    disconnected: bool,
}

impl<W: Wire> MqttLink<W> {
    /// The link for a client whose CONNECT was accepted; `rest` holds what the client
    /// sent after it. A persistent session is attached first (CONNACK follows `attached`).
    pub fn new(
        wire: W,
        connect: &Connect,
        session: Option<String>,
        settings: Arc<Settings>,
        rest: BytesMut,
    ) -> MqttLink<W> {
        // The client's Receive Maximum bounds kgate's window.
        let window = settings.window.min(connect.receive_max.max(1));
        let mut inbound = VecDeque::new();
        let persistent = session.is_some();
        if let Some(session) = session {
            inbound.push_back(Inbound::Parsed(Box::new(Command::Attach {
                id: Some(Value::from(CONNECT_ID)),
                session,
            })));
        }
        MqttLink {
            wire,
            version: connect.version,
            settings,
            window,
            client_max_packet: connect.max_packet.map_or(usize::MAX, |m| m as usize),
            keep_alive: (connect.keep_alive > 0)
                .then(|| Duration::from_millis(connect.keep_alive as u64 * 1500)),
            last_heard: Instant::now(),
            buf: rest,
            out: Vec::new(),
            inbound,
            persistent,
            connack_sent: false,
            subs: HashMap::new(),
            pending_acks: HashMap::new(),
            in_flight: HashMap::new(),
            partitions: HashMap::new(),
            next_pid: 0,
            violation: None,
            will: connect.will.clone(),
            disconnected: false,
        }
    }

    /// The will to publish now that the connection ended, if the client did not
    /// discard it with DISCONNECT.
    pub fn take_will(&mut self) -> Option<Will> {
        self.will.take()
    }

    /// True when the client ended the connection with DISCONNECT.
    pub fn disconnected(&self) -> bool {
        self.disconnected
    }

    fn queue(&mut self, packet: Outgoing) {
        if let Err(e) = codec::encode(packet, self.version, &mut self.out) {
            tracing::warn!(error = %e, "MQTT packet not sent");
        }
    }

    /// Breaks off for a fault of the client's: the engine closes, the client is told `reason`.
    fn violated(&mut self, reason: Reason, why: String) -> Inbound {
        self.violation = Some(reason);
        Inbound::ProtocolError(why)
    }

    /// Turns the next whole packet in `buf` into what the engine reads (possibly nothing).
    fn on_packet(&mut self) -> Result<bool, Inbound> {
        let packet = match codec::take(&mut self.buf, self.version, self.settings.max_packet) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(false),
            Err(FrameError::TooLarge { size, max }) => {
                self.violation = Some(Reason::PACKET_TOO_LARGE);
                return Err(Inbound::TooBig { size, max });
            }
            Err(e) => return Err(self.violated(e.reason(), e.to_string())),
        };
        match packet {
            Incoming::Pingreq => self.queue(Outgoing::Pingresp),
            Incoming::Puback(pid) => self.on_puback(pid),
            Incoming::Publish {
                topic,
                payload,
                pid,
                qos2,
                headers,
            } => {
                if qos2 {
                    return Err(self.violated(
                        Reason::QOS_NOT_SUPPORTED,
                        "QoS 2 publish: kgate grants QoS 1 at most".into(),
                    ));
                }
                self.on_publish(&topic, payload, pid, headers);
            }
            Incoming::Subscribe { pid, filters } => self.on_subscribe(pid, filters),
            Incoming::Unsubscribe { pid, filters } => self.on_unsubscribe(pid, filters),
            Incoming::Disconnect { with_will } => {
                self.disconnected = true;
                if !with_will {
                    self.will = None;
                }
                return Err(Inbound::Gone);
            }
            Incoming::Unexpected(what) => {
                return Err(
                    self.violated(Reason::PROTOCOL_ERROR, format!("unexpected packet: {what}"))
                );
            }
        }
        Ok(true)
    }

    fn on_puback(&mut self, pid: u16) {
        let Some(sent) = self.in_flight.remove(&pid) else {
            // Unknown ids are ignored (a PUBACK after a takeover, say).
            return;
        };
        if !sent.counts {
            return;
        }
        let acks = self
            .partitions
            .entry((sent.topic.clone(), sent.partition))
            .or_default();
        acks.acked(sent.offset);
        if let Some(offset) = acks.advance() {
            let acked = Acked {
                topic: sent.topic,
                partition: sent.partition,
                offset,
            };
            // One ack per partition per read: merge with a queued one.
            if let Some(Inbound::Acked(list)) = self.inbound.back_mut() {
                match list
                    .iter_mut()
                    .find(|a| a.topic == acked.topic && a.partition == acked.partition)
                {
                    Some(a) => a.offset = a.offset.max(offset),
                    None => list.push(acked),
                }
            } else {
                self.inbound.push_back(Inbound::Acked(vec![acked]));
            }
        }
    }

    fn on_publish(
        &mut self,
        name: &str,
        payload: Bytes,
        pid: Option<u16>,
        headers: Vec<(String, String)>,
    ) {
        let target = match topic::target(name) {
            Ok(target) => target,
            Err(reason) => {
                if let Some(pid) = pid {
                    self.queue(Outgoing::Puback { pid, reason });
                }
                return;
            }
        };
        let json = self.settings.json_topics.contains(&target.topic);
        let id = match pid {
            Some(pid) => Value::from(pid),
            None => Value::from(QOS0_ID),
        };
        self.inbound
            .push_back(Inbound::Parsed(Box::new(Command::Publish {
                id: Some(id),
                publication: Publication {
                    topic: target.topic,
                    key: target.key.map(Bytes::from),
                    headers: headers
                        .into_iter()
                        .map(|(n, v)| (n, Bytes::from(v)))
                        .collect(),
                    value: payload,
                    json,
                },
            })));
    }

    fn on_subscribe(&mut self, pid: u16, filters: Vec<codec::Filter>) {
        let mut reasons = Vec::with_capacity(filters.len());
        for (i, filter) in filters.into_iter().enumerate() {
            let channel = match topic::channel(&filter.filter) {
                Ok(channel) => channel,
                Err(reason) => {
                    reasons.push(Some(reason));
                    continue;
                }
            };
            reasons.push(None);
            let topic_name = channel.split(':').next().unwrap_or_default();
            let snapshot = !filter.no_retained
                && self
                    .settings
                    .snapshot_topics
                    .iter()
                    .any(|t| t == topic_name);
            self.inbound
                .push_back(Inbound::Parsed(Box::new(Command::Subscribe {
                    // The id says what the answer needs: which filter, the QoS, a snapshot.
                    id: Some(Value::from(format!(
                        "s{pid}.{i}.{}.{}",
                        filter.qos.min(1),
                        u8::from(snapshot)
                    ))),
                    channel,
                    from: Start::Latest,
                    options: Options {
                        qos: filter.qos.min(1),
                        ..Options::default()
                    },
                    snapshot,
                })));
        }
        self.await_answers(pid, true, reasons);
    }

    fn on_unsubscribe(&mut self, pid: u16, filters: Vec<String>) {
        let mut reasons = Vec::with_capacity(filters.len());
        for (i, filter) in filters.iter().enumerate() {
            match topic::channel(filter) {
                Ok(channel) => {
                    reasons.push(None);
                    self.inbound
                        .push_back(Inbound::Parsed(Box::new(Command::Unsubscribe {
                            id: Some(Value::from(format!("u{pid}.{i}"))),
                            channel,
                        })));
                }
                Err(reason) => reasons.push(Some(reason)),
            }
        }
        self.await_answers(pid, false, reasons);
    }

    fn await_answers(&mut self, pid: u16, subscribe: bool, reasons: Vec<Option<Reason>>) {
        let pending = PendingAck {
            pid,
            subscribe,
            reasons,
        };
        if pending.reasons.iter().all(Option::is_some) {
            self.finish(pending);
        } else {
            self.pending_acks.insert(pid, pending);
        }
    }

    fn finish(&mut self, pending: PendingAck) {
        let reasons = pending.reasons.into_iter().flatten().collect();
        let packet = match pending.subscribe {
            true => Outgoing::Suback {
                pid: pending.pid,
                reasons,
            },
            false => Outgoing::Unsuback {
                pid: pending.pid,
                reasons,
            },
        };
        self.queue(packet);
    }

    /// Records the engine's answer to filter `i` of SUBSCRIBE/UNSUBSCRIBE `pid`.
    fn answer(&mut self, pid: u16, i: usize, reason: Reason) {
        let Some(pending) = self.pending_acks.get_mut(&pid) else {
            return;
        };
        if let Some(slot) = pending.reasons.get_mut(i) {
            *slot = Some(reason);
        }
        if pending.reasons.iter().all(Option::is_some)
            && let Some(pending) = self.pending_acks.remove(&pid)
        {
            self.finish(pending);
        }
    }

    fn connack(&mut self, session_present: bool, reason: Reason) {
        self.connack_sent = true;
        let max_packet = self.settings.max_packet.min(u32::MAX as usize) as u32;
        self.queue(Outgoing::Connack {
            session_present,
            reason,
            receive_max: self.window,
            max_packet,
        });
    }

    /// A frame the engine sends, as MQTT packets.
    fn on_frame(&mut self, frame: ServerFrame) -> Result<(), Gone> {
        match frame {
            ServerFrame::Welcome { .. } => {
                if !self.persistent {
                    self.connack(false, Reason::SUCCESS);
                }
            }
            ServerFrame::Attached {
                resumed,
                subscriptions,
                ..
            } => {
                for (channel, options) in subscriptions {
                    self.subs.insert(
                        channel,
                        Sub {
                            qos: options.qos,
                            retained: false,
                            dup_below: Vec::new(),
                        },
                    );
                }
                self.connack(resumed, Reason::SUCCESS);
            }
            ServerFrame::Subscribed {
                id, channel, live, ..
            } => match request(&id) {
                // A resumed subscription: what it replays was possibly sent before.
                None => {
                    if let Some(sub) = self.subs.get_mut(&*channel) {
                        sub.dup_below = live;
                    }
                }
                Some(Request::Subscribe {
                    pid,
                    i,
                    qos,
                    snapshot,
                }) => {
                    self.subs.insert(
                        channel.to_string(),
                        Sub {
                            qos,
                            // Until `snapshot_end`.
                            retained: snapshot,
                            dup_below: Vec::new(),
                        },
                    );
                    self.answer(pid, i, granted(qos));
                }
                Some(_) => {}
            },
            ServerFrame::SnapshotEnd { channel, .. } => {
                if let Some(sub) = self.subs.get_mut(&*channel) {
                    sub.retained = false;
                }
            }
            ServerFrame::Unsubscribed { id, channel } => {
                self.subs.remove(&channel);
                if let Some(Request::Unsubscribe { pid, i }) = request(&id) {
                    self.answer(pid, i, Reason::SUCCESS);
                }
            }
            ServerFrame::Published { id, .. } => {
                if let Some(Request::Publish { pid }) = request(&id) {
                    self.queue(Outgoing::Puback {
                        pid,
                        reason: Reason::SUCCESS,
                    });
                }
            }
            ServerFrame::Error { id, code, message } => {
                return self.on_error(id, code, message);
            }
            frame @ ServerFrame::Gap { .. } => self.notice("gap", &frame),
            ServerFrame::Live { .. } | ServerFrame::Pong { .. } => {}
            ServerFrame::Authenticated { .. } | ServerFrame::Close(_) => {}
        }
        Ok(())
    }

    fn on_error(
        &mut self,
        id: Option<Value>,
        code: ErrorCode,
        message: String,
    ) -> Result<(), Gone> {
        match request(&id) {
            Some(Request::Connect) => {
                tracing::warn!(%message, "MQTT session not attached");
                self.connack(false, Reason::SERVER_UNAVAILABLE);
                return Err(Gone);
            }
            Some(Request::Subscribe { pid, i, qos, .. }) => {
                let reason = match code {
                    // MQTT replaces a subscription to the same filter.
                    ErrorCode::AlreadySubscribed => granted(qos),
                    _ => subscribe_reason(code),
                };
                if !reason.is_success() {
                    tracing::info!(%message, "MQTT subscription refused");
                }
                self.answer(pid, i, reason);
            }
            Some(Request::Unsubscribe { pid, i }) => {
                let reason = match code {
                    ErrorCode::NotSubscribed => Reason::NO_SUBSCRIPTION_EXISTED,
                    _ => Reason::UNSPECIFIED,
                };
                self.answer(pid, i, reason);
            }
            Some(Request::Publish { pid }) => {
                tracing::info!(%message, "MQTT publish refused");
                if self.version == Version::V3 {
                    // MQTT 3.1.1 has no negative PUBACK: a refused record closes the
                    // connection rather than being acknowledged as if produced.
                    return Err(Gone);
                }
                let reason = publish_reason(code);
                self.queue(Outgoing::Puback { pid, reason });
            }
            Some(Request::Qos0Publish) => {
                tracing::info!(%message, "MQTT QoS 0 publish refused");
            }
            None => {
                let frame = ServerFrame::Error { id, code, message };
                self.notice("error", &frame);
            }
        }
        Ok(())
    }

    /// A frame MQTT has no packet for (a retention gap, an error of no request), sent as
    /// a QoS 0 message on `$kgate/<kind>/...` with the frame's JSON as payload.
    fn notice(&mut self, kind: &str, frame: &ServerFrame) {
        let topic = match frame {
            ServerFrame::Gap { topic, .. } => format!("$kgate/{kind}/{topic}"),
            _ => format!("$kgate/{kind}"),
        };
        self.queue(Outgoing::Publish {
            topic: topic.into(),
            payload: Bytes::from(frame.to_json()),
            pid: None,
            dup: false,
            retain: false,
            headers: Vec::new(),
        });
    }

    /// A record for `channel`, as a PUBLISH at the subscription's QoS; a QoS 1 record
    /// waits for room in the in-flight window.
    async fn on_event(&mut self, channel: &str, record: &EncodedRecord) -> Result<(), Gone> {
        let Some(sub) = self.subs.get(channel) else {
            return Ok(());
        };
        if sub.qos > 0 && self.in_flight.len() >= self.window as usize {
            // Boxed: rare, and every connection's task would otherwise hold room for it.
            Box::pin(self.wait_for_window()).await?;
        }
        self.publish(channel, record);
        Ok(())
    }

    fn publish(&mut self, channel: &str, record: &EncodedRecord) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        let (qos, retained) = (sub.qos, sub.retained);
        let dup = sub
            .dup_below
            .get(record.meta.partition as usize)
            .is_some_and(|&below| record.meta.offset < below);
        let bare = record.bare();
        let (name, payload) = match &bare.payload {
            Payload::Value(value) => (bare.path.clone(), value.clone()),
            Payload::Deleted => (bare.path.clone(), Bytes::new()),
            Payload::Skipped(notice) => (
                format!("$kgate/skipped/{}", record.meta.topic).into(),
                notice.clone(),
            ),
        };
        if payload.len() + name.len() + 64 > self.client_max_packet {
            tracing::info!(
                topic = %record.meta.topic,
                offset = record.meta.offset,
                "record larger than the MQTT client's Maximum Packet Size; not sent"
            );
            return;
        }
        let headers = match self.version {
            Version::V5 => record
                .headers
                .iter()
                .filter_map(|(n, v)| {
                    let v = std::str::from_utf8(v.as_deref()?).ok()?;
                    Some((n.clone(), v.to_string()))
                })
                .collect(),
            Version::V3 => Vec::new(),
        };
        let pid = (qos > 0).then(|| self.take_pid());
        if let Some(pid) = pid {
            // Positions matter only to a session that stores them.
            let counts = !retained && self.persistent;
            if counts {
                self.partitions
                    .entry((record.meta.topic.clone(), record.meta.partition))
                    .or_default()
                    .sent(record.meta.offset);
            }
            self.in_flight.insert(
                pid,
                InFlight {
                    topic: record.meta.topic.clone(),
                    partition: record.meta.partition,
                    offset: record.meta.offset,
                    counts,
                },
            );
        }
        self.queue(Outgoing::Publish {
            topic: name,
            payload,
            pid,
            dup: dup && pid.is_some(),
            retain: retained,
            headers,
        });
    }

    /// Writes what is queued and reads until PUBACKs free room in the in-flight window
    /// (other packets read meanwhile are kept for `recv`).
    async fn wait_for_window(&mut self) -> Result<(), Gone> {
        while self.in_flight.len() >= self.window as usize {
            self.write_out().await?;
            match self.wire.read(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(Gone),
                Ok(_) => self.last_heard = Instant::now(),
            }
            loop {
                match self.on_packet() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(inbound) => {
                        self.inbound.push_back(inbound);
                        return Err(Gone);
                    }
                }
            }
        }
        Ok(())
    }

    /// A packet id not in flight (the window is smaller than the id space).
    fn take_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.in_flight.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    async fn write_out(&mut self) -> Result<(), Gone> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.wire.write(&self.out).await;
        self.out.clear();
        // A busy connection keeps its buffer; a quiet one (small writes) or one that
        // grew past 64 KiB gives it back.
        if !(4096..=64 * 1024).contains(&self.out.capacity()) {
            self.out = Vec::new();
        }
        written.map_err(|_| Gone)
    }
}

/// What an engine frame's id says it answers.
enum Request {
    Connect,
    Subscribe {
        pid: u16,
        i: usize,
        qos: u8,
        snapshot: bool,
    },
    Unsubscribe {
        pid: u16,
        i: usize,
    },
    Publish {
        pid: u16,
    },
    Qos0Publish,
}

fn request(id: &Option<Value>) -> Option<Request> {
    match id.as_ref()? {
        Value::Number(n) => Some(Request::Publish {
            pid: u16::try_from(n.as_u64()?).ok()?,
        }),
        Value::String(s) if s == CONNECT_ID => Some(Request::Connect),
        Value::String(s) if s == QOS0_ID => Some(Request::Qos0Publish),
        Value::String(s) => {
            let (kind, rest) = s.split_at_checked(1)?;
            let mut parts = rest.split('.');
            let pid = parts.next()?.parse().ok()?;
            let i = parts.next()?.parse().ok()?;
            match kind {
                "s" => Some(Request::Subscribe {
                    pid,
                    i,
                    qos: parts.next()?.parse().ok()?,
                    snapshot: parts.next()? == "1",
                }),
                "u" => Some(Request::Unsubscribe { pid, i }),
                _ => None,
            }
        }
        _ => None,
    }
}

fn granted(qos: u8) -> Reason {
    match qos {
        0 => Reason::SUCCESS,
        _ => Reason::GRANTED_QOS1,
    }
}

fn subscribe_reason(code: ErrorCode) -> Reason {
    match code {
        ErrorCode::Forbidden => Reason::NOT_AUTHORIZED,
        ErrorCode::InvalidChannel | ErrorCode::UnknownTopic | ErrorCode::TopicDeleted => {
            Reason::TOPIC_FILTER_INVALID
        }
        ErrorCode::TooManySubscriptions | ErrorCode::RateLimited => Reason::QUOTA_EXCEEDED,
        _ => Reason::UNSPECIFIED,
    }
}

fn publish_reason(code: ErrorCode) -> Reason {
    match code {
        ErrorCode::Forbidden | ErrorCode::PublishDisabled => Reason::NOT_AUTHORIZED,
        ErrorCode::UnknownTopic => Reason::TOPIC_NAME_INVALID,
        ErrorCode::InvalidJson => Reason::PAYLOAD_FORMAT_INVALID,
        ErrorCode::RecordTooLarge | ErrorCode::RateLimited => Reason::QUOTA_EXCEEDED,
        _ => Reason::UNSPECIFIED,
    }
}

/// The DISCONNECT reason for an engine close code.
fn close_reason(code: CloseCode) -> Reason {
    match code {
        CloseCode::GoingAway => Reason::SERVER_SHUTTING_DOWN,
        CloseCode::ProtocolError => Reason::PROTOCOL_ERROR,
        CloseCode::MessageTooBig => Reason::PACKET_TOO_LARGE,
        CloseCode::TokenExpired => Reason::NOT_AUTHORIZED,
        CloseCode::SlowConsumer | CloseCode::WriteTimeout => Reason::QUOTA_EXCEEDED,
        CloseCode::SessionTakenOver => Reason::SESSION_TAKEN_OVER,
        CloseCode::HeartbeatTimeout => Reason::KEEP_ALIVE_TIMEOUT,
        CloseCode::RateLimited => Reason::MESSAGE_RATE_TOO_HIGH,
        CloseCode::IdleTimeout | CloseCode::InternalError => Reason::UNSPECIFIED,
    }
}

impl<W: Wire> Link for MqttLink<W> {
    const TRANSPORT: &'static str = W::TRANSPORT;
    // An MQTT server cannot ping; the client's keep-alive is checked in `recv`.
    const ANSWERS_PINGS: bool = false;
    // Devices that only publish hold no subscription.
    const CLOSES_IDLE: bool = false;

    async fn recv(&mut self) -> Inbound {
        loop {
            if let Some(inbound) = self.inbound.pop_front() {
                return inbound;
            }
            // Replies made while reading (PINGRESP, refusals) are written by `send`,
            // which the engine calls next: a write here could be cut off half-way.
            if !self.out.is_empty() {
                return Inbound::Alive;
            }
            match self.on_packet() {
                Ok(true) => continue,
                // Every packet read was taken: an idle connection keeps no read buffer.
                Ok(false) if self.buf.is_empty() => self.buf = BytesMut::new(),
                Ok(false) => {}
                Err(inbound) => return inbound,
            }
            let read = self.wire.read(&mut self.buf);
            let read = match self.keep_alive {
                Some(limit) => {
                    let deadline = tokio::time::Instant::from_std(self.last_heard + limit);
                    match tokio::time::timeout_at(deadline, read).await {
                        Ok(read) => read,
                        Err(_) => {
                            return self.violated(
                                Reason::KEEP_ALIVE_TIMEOUT,
                                "nothing received within 1.5 times the keep-alive".into(),
                            );
                        }
                    }
                }
                None => read.await,
            };
            match read {
                Ok(0) => return Inbound::Gone,
                Ok(_) => self.last_heard = Instant::now(),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return self.violated(Reason::MALFORMED_PACKET, e.to_string());
                }
                Err(_) => return Inbound::Gone,
            }
        }
    }

    async fn send(&mut self, batch: &mut Vec<Outbound>) -> Result<(), Gone> {
        for item in batch.drain(..) {
            match item {
                Outbound::Frame(frame) => self.on_frame(frame)?,
                Outbound::Event {
                    channel, record, ..
                } => self.on_event(&channel, &record).await?,
                Outbound::Ping => {}
            }
        }
        self.write_out().await
    }

    fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    fn event_bytes(&self, record: &EncodedRecord, _delta: bool) -> usize {
        match &record.bare().payload {
            Payload::Value(v) | Payload::Skipped(v) => v.len(),
            Payload::Deleted => 0,
        }
    }

    async fn close(&mut self, code: CloseCode) {
        let reason = self.violation.take().unwrap_or(close_reason(code));
        if !self.connack_sent {
            // Closed before CONNACK (the session could not attach, say).
            self.connack(false, Reason::SERVER_UNAVAILABLE);
        } else {
            self.queue(Outgoing::Disconnect(reason));
        }
        let _ = self.write_out().await;
        self.wire.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubacks_in_any_order_ack_only_what_has_no_gap_before_it() {
        let mut p = PartitionAcks::default();
        for offset in 10..15 {
            p.sent(offset);
        }
        p.acked(12);
        assert_eq!(p.advance(), None, "10 and 11 are still unacknowledged");
        p.acked(10);
        assert_eq!(p.advance(), Some(10));
        p.acked(11);
        assert_eq!(p.advance(), Some(12));
        p.acked(14);
        assert_eq!(p.advance(), None, "13 is unacknowledged");
        p.acked(13);
        assert_eq!(p.advance(), Some(14));
        assert_eq!(p.advance(), None, "reported once");
    }

    #[test]
    fn frame_ids_name_their_request() {
        assert!(matches!(
            request(&Some(Value::from("s7.2.1.1"))),
            Some(Request::Subscribe {
                pid: 7,
                i: 2,
                qos: 1,
                snapshot: true
            })
        ));
        assert!(matches!(
            request(&Some(Value::from("u9.0"))),
            Some(Request::Unsubscribe { pid: 9, i: 0 })
        ));
        assert!(matches!(
            request(&Some(Value::from(5))),
            Some(Request::Publish { pid: 5 })
        ));
        assert!(matches!(
            request(&Some(Value::from(CONNECT_ID))),
            Some(Request::Connect)
        ));
        assert!(request(&None).is_none());
    }
}
