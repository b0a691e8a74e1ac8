//! MQTT packets as the front end sees them, whatever the protocol version: bytes are
//! framed and decoded by the `mqtt-proto` crate (3.1, 3.1.1 and 5.0), then turned into
//! the version-neutral [`Incoming`]; [`Outgoing`] is encoded back for the client's version.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mqtt_proto::{Pid, Protocol, QoS, QosPid, TopicFilter, TopicName, v3, v5};

/// The protocol family a client speaks (3.1 and 3.1.1 share one packet format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3,
    V5,
}

/// An MQTT 5 reason code; MQTT 3 clients get the nearest return code, or a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(pub u8);

impl Reason {
    pub const SUCCESS: Reason = Reason(0x00);
    pub const GRANTED_QOS1: Reason = Reason(0x01);
    pub const NO_SUBSCRIPTION_EXISTED: Reason = Reason(0x11);
    pub const UNSPECIFIED: Reason = Reason(0x80);
    pub const MALFORMED_PACKET: Reason = Reason(0x81);
    pub const PROTOCOL_ERROR: Reason = Reason(0x82);
    pub const UNSUPPORTED_PROTOCOL_VERSION: Reason = Reason(0x84);
    pub const CLIENT_ID_NOT_VALID: Reason = Reason(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: Reason = Reason(0x86);
    pub const NOT_AUTHORIZED: Reason = Reason(0x87);
    pub const SERVER_UNAVAILABLE: Reason = Reason(0x88);
    pub const SERVER_BUSY: Reason = Reason(0x89);
    pub const SERVER_SHUTTING_DOWN: Reason = Reason(0x8B);
    pub const KEEP_ALIVE_TIMEOUT: Reason = Reason(0x8D);
    pub const SESSION_TAKEN_OVER: Reason = Reason(0x8E);
    pub const TOPIC_FILTER_INVALID: Reason = Reason(0x8F);
    pub const TOPIC_NAME_INVALID: Reason = Reason(0x90);
    pub const RECEIVE_MAXIMUM_EXCEEDED: Reason = Reason(0x93);
    pub const PACKET_TOO_LARGE: Reason = Reason(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: Reason = Reason(0x96);
    pub const QUOTA_EXCEEDED: Reason = Reason(0x97);
    pub const PAYLOAD_FORMAT_INVALID: Reason = Reason(0x99);
    pub const QOS_NOT_SUPPORTED: Reason = Reason(0x9B);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Reason = Reason(0x9E);
    pub const WILDCARDS_NOT_SUPPORTED: Reason = Reason(0xA2);

    /// True for the codes that report success (below 0x80).
    pub fn is_success(self) -> bool {
        self.0 < 0x80
    }
}

/// A will message, produced to Kafka if the connection ends without DISCONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// MQTT 5 user properties (Kafka headers).
    pub headers: Vec<(String, String)>,
}

/// The CONNECT packet, version-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    /// 3.1.1 Clean Session / 5.0 Clean Start.
    pub clean: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// MQTT 5 Session Expiry Interval (seconds; 0 when absent).
    pub session_expiry: u32,
    /// MQTT 5 Receive Maximum (65,535 when absent).
    pub receive_max: u16,
    /// MQTT 5 Maximum Packet Size the client accepts.
    pub max_packet: Option<u32>,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub filter: String,
    pub qos: u8,
    /// MQTT 5 Retain Handling: 2 asks for no retained messages.
    pub no_retained: bool,
}

/// A packet from the client after CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Publish {
        topic: String,
        payload: Bytes,
        /// The packet id of a QoS 1 publish.
        pid: Option<u16>,
        /// QoS 2, which kgate does not grant.
        qos2: bool,
        headers: Vec<(String, String)>,
    },
    Puback(u16),
    Subscribe {
        pid: u16,
        filters: Vec<Filter>,
    },
    Unsubscribe {
        pid: u16,
        filters: Vec<String>,
    },
    Pingreq,
    /// `with_will`: MQTT 5 reason 0x04 asks for the will to be published anyway.
    Disconnect {
        with_will: bool,
    },
    /// A packet a client may not send here (a second CONNECT, QoS 2 flow, AUTH, ...).
    Unexpected(&'static str),
}

/// A packet for the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Connack {
        session_present: bool,
        reason: Reason,
        /// MQTT 5: the in-flight window and packet size kgate accepts.
        receive_max: u16,
        max_packet: u32,
    },
    Publish {
        topic: Arc<str>,
        payload: Bytes,
        /// `Some` for QoS 1.
        pid: Option<u16>,
        dup: bool,
        retain: bool,
        headers: Vec<(String, String)>,
    },
    Puback {
        pid: u16,
        reason: Reason,
    },
    /// Granted QoS (0, 1) or a failure reason per filter.
    Suback {
        pid: u16,
        reasons: Vec<Reason>,
    },
    Unsuback {
        pid: u16,
        reasons: Vec<Reason>,
    },
    Pingresp,
    /// MQTT 5 only; MQTT 3 servers just close.
    Disconnect(Reason),
}

/// Why bytes from the client are not a packet kgate accepts.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("packet of {size} bytes; mqtt.max_packet_bytes is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("the first packet must be CONNECT")]
    NotConnect,
    #[error("unsupported protocol {0}")]
    UnsupportedProtocol(String),
}

impl FrameError {
    /// The reason code a client is told.
    pub fn reason(&self) -> Reason {
        match self {
            FrameError::TooLarge { .. } => Reason::PACKET_TOO_LARGE,
            FrameError::Malformed(_) => Reason::MALFORMED_PACKET,
            FrameError::NotConnect => Reason::PROTOCOL_ERROR,
            FrameError::UnsupportedProtocol(_) => Reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// The length of the complete packet at the start of `buf`, `None` until its fixed
/// header has arrived; refuses a packet over `max` before its body is buffered.
fn packet_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    match v3::Header::decode(buf) {
        Ok(header) => {
            let total = mqtt_proto::total_len(header.remaining_len as usize)
                .map_err(|e| FrameError::Malformed(e.to_string()))?;
            if total > max {
                return Err(FrameError::TooLarge { size: total, max });
            }
            Ok(Some(total))
        }
        Err(e) if e.is_eof() => Ok(None),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// Takes the first packet, a CONNECT, from `buf`: `Ok(None)` until it is complete.
pub fn take_connect(buf: &mut BytesMut, max: usize) -> Result<Option<Connect>, FrameError> {
    let Some(total) = packet_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    if buf[0] >> 4 != 1 {
        return Err(FrameError::NotConnect);
    }
    let packet = buf.split_to(total);
    // The protocol name and level follow the fixed header.
    let mut offset = mqtt_proto::header_len(total);
    let protocol = Protocol::decode(&packet, &mut offset)
        .map_err(|e| FrameError::UnsupportedProtocol(e.to_string()))?;
    let malformed = |e: &dyn std::fmt::Display| FrameError::Malformed(e.to_string());
    match protocol {
        Protocol::V500 => match v5::Packet::decode(&packet) {
            Ok(Some(v5::Packet::Connect(c))) => Ok(Some(connect_v5(c))),
            Ok(_) => Err(FrameError::NotConnect),
            Err(e) => Err(malformed(&e)),
        },
        Protocol::V310 | Protocol::V311 => match v3::Packet::decode(&packet) {
            Ok(Some(v3::Packet::Connect(c))) => Ok(Some(connect_v3(c))),
            Ok(_) => Err(FrameError::NotConnect),
            Err(e) => Err(malformed(&e)),
        },
    }
}

fn connect_v3(c: v3::Connect) -> Connect {
    Connect {
        version: Version::V3,
        client_id: c.client_id.to_string(),
        clean: c.clean_session,
        keep_alive: c.keep_alive,
        username: c.username.map(|u| u.to_string()),
        password: c.password,
        will: c.last_will.map(|w| Will {
            topic: w.topic_name.to_string(),
            payload: w.message,
            qos: w.qos as u8,
            headers: Vec::new(),
        }),
        session_expiry: 0,
        receive_max: u16::MAX,
        max_packet: None,
    }
}

fn connect_v5(c: v5::Connect) -> Connect {
    Connect {
        version: Version::V5,
        client_id: c.client_id.to_string(),
        clean: c.clean_start,
        keep_alive: c.keep_alive,
        username: c.username.map(|u| u.to_string()),
        password: c.password,
        will: c.last_will.map(|w| Will {
            topic: w.topic_name.to_string(),
            payload: w.payload,
            qos: w.qos as u8,
            headers: properties(&w.properties.user_properties),
        }),
        session_expiry: c.properties.session_expiry_interval.unwrap_or(0),
        receive_max: c.properties.receive_max.unwrap_or(u16::MAX),
        max_packet: c.properties.max_packet_size,
    }
}

fn properties(user: &[v5::UserProperty]) -> Vec<(String, String)> {
    user.iter()
        .map(|p| (p.name.to_string(), p.value.to_string()))
        .collect()
}

/// Takes the next whole packet from `buf`, `Ok(None)` until one has arrived.
pub fn take(
    buf: &mut BytesMut,
    version: Version,
    max: usize,
) -> Result<Option<Incoming>, FrameError> {
    let Some(total) = packet_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let packet = buf.split_to(total);
    let malformed = |e: &dyn std::fmt::Display| FrameError::Malformed(e.to_string());
    let incoming = match version {
        Version::V3 => from_v3(
            v3::Packet::decode(&packet)
                .map_err(|e| malformed(&e))?
                .ok_or_else(|| malformed(&"truncated packet"))?,
        ),
        Version::V5 => from_v5(
            v5::Packet::decode(&packet)
                .map_err(|e| malformed(&e))?
                .ok_or_else(|| malformed(&"truncated packet"))?,
        ),
    };
    Ok(Some(incoming))
}

fn publish_pid(qos_pid: QosPid) -> (Option<u16>, bool) {
    match qos_pid {
        QosPid::Level0 => (None, false),
        QosPid::Level1(pid) => (Some(pid.value()), false),
        QosPid::Level2(pid) => (Some(pid.value()), true),
    }
}

fn from_v3(packet: v3::Packet) -> Incoming {
    match packet {
        v3::Packet::Publish(p) => {
            let (pid, qos2) = publish_pid(p.qos_pid);
            Incoming::Publish {
                topic: p.topic_name.to_string(),
                payload: p.payload,
                pid,
                qos2,
                headers: Vec::new(),
            }
        }
        v3::Packet::Puback(pid) => Incoming::Puback(pid.value()),
        v3::Packet::Subscribe(s) => Incoming::Subscribe {
            pid: s.pid.value(),
            filters: s
                .topics
                .into_iter()
                .map(|(filter, qos)| Filter {
                    filter: filter.to_string(),
                    qos: qos as u8,
                    no_retained: false,
                })
                .collect(),
        },
        v3::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pid: u.pid.value(),
            filters: u.topics.iter().map(|t| t.to_string()).collect(),
        },
        v3::Packet::Pingreq => Incoming::Pingreq,
        v3::Packet::Disconnect => Incoming::Disconnect { with_will: false },
        other => Incoming::Unexpected(v3_name(&other)),
    }
}

fn v3_name(packet: &v3::Packet) -> &'static str {
    match packet {
        v3::Packet::Connect(_) => "CONNECT",
        v3::Packet::Pubrec(_) | v3::Packet::Pubrel(_) | v3::Packet::Pubcomp(_) => "QoS 2 flow",
        _ => "a server packet",
    }
}

fn from_v5(packet: v5::Packet) -> Incoming {
    match packet {
        v5::Packet::Publish(p) => {
            let (pid, qos2) = publish_pid(p.qos_pid);
            if p.properties.topic_alias.is_some() {
                // kgate's CONNACK allows no topic aliases (Topic Alias Maximum absent = 0).
                return Incoming::Unexpected("a topic alias");
            }
            Incoming::Publish {
                topic: p.topic_name.to_string(),
                payload: p.payload,
                pid,
                qos2,
                headers: properties(&p.properties.user_properties),
            }
        }
        v5::Packet::Puback(p) => Incoming::Puback(p.pid.value()),
        v5::Packet::Subscribe(s) => Incoming::Subscribe {
            pid: s.pid.value(),
            filters: s
                .topics
                .into_iter()
                .map(|(filter, options)| Filter {
                    filter: filter.to_string(),
                    qos: options.max_qos as u8,
                    no_retained: options.retain_handling == v5::RetainHandling::DoNotSend,
                })
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pid: u.pid.value(),
            filters: u.topics.iter().map(|t| t.to_string()).collect(),
        },
        v5::Packet::Pingreq => Incoming::Pingreq,
        v5::Packet::Disconnect(d) => Incoming::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        v5::Packet::Connect(_) => Incoming::Unexpected("CONNECT"),
        v5::Packet::Auth(_) => Incoming::Unexpected("AUTH"),
        v5::Packet::Pubrec(_) | v5::Packet::Pubrel(_) | v5::Packet::Pubcomp(_) => {
            Incoming::Unexpected("QoS 2 flow")
        }
        _ => Incoming::Unexpected("a server packet"),
    }
}

/// Why a packet could not be encoded (a topic MQTT cannot carry, a zero packet id).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {reason}")]
pub struct EncodeError {
    what: &'static str,
    reason: String,
}

fn pid(value: u16) -> Result<Pid, EncodeError> {
    Pid::try_from(value).map_err(|e| EncodeError {
        what: "packet id",
        reason: e.to_string(),
    })
}

fn qos_pid(value: Option<u16>) -> Result<QosPid, EncodeError> {
    Ok(match value {
        Some(p) => QosPid::Level1(pid(p)?),
        None => QosPid::Level0,
    })
}

/// Appends `packet`, encoded for `version`, to `out`. MQTT 3 has no DISCONNECT from a
/// server, no reason on PUBACK or UNSUBACK: those parts are left out.
pub fn encode(packet: Outgoing, version: Version, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let failed = |what: &'static str| {
        move |e: &dyn std::fmt::Display| EncodeError {
            what,
            reason: e.to_string(),
        }
    };
    match version {
        Version::V3 => {
            let packet = match packet {
                Outgoing::Connack {
                    session_present,
                    reason,
                    ..
                } => v3::Packet::Connack(v3::Connack::new(session_present, connack_v3(reason))),
                Outgoing::Publish {
                    topic,
                    payload,
                    pid,
                    dup,
                    retain,
                    ..
                } => v3::Packet::Publish(v3::Publish {
                    dup,
                    retain,
                    qos_pid: qos_pid(pid)?,
                    topic_name: TopicName::try_from(topic).map_err(|e| failed("topic")(&e))?,
                    payload,
                }),
                Outgoing::Puback { pid: p, .. } => v3::Packet::Puback(pid(p)?),
                Outgoing::Suback { pid: p, reasons } => v3::Packet::Suback(v3::Suback::new(
                    pid(p)?,
                    reasons
                        .into_iter()
                        .map(|r| match r {
                            Reason::SUCCESS => v3::SubscribeReturnCode::MaxLevel0,
                            Reason::GRANTED_QOS1 => v3::SubscribeReturnCode::MaxLevel1,
                            _ => v3::SubscribeReturnCode::Failure,
                        })
                        .collect(),
                )),
                Outgoing::Unsuback { pid: p, .. } => v3::Packet::Unsuback(pid(p)?),
                Outgoing::Pingresp => v3::Packet::Pingresp,
                Outgoing::Disconnect(_) => return Ok(()),
            };
            let bytes = packet.encode().map_err(|e| failed("packet")(&e))?;
            out.extend_from_slice(bytes.as_ref());
        }
        Version::V5 => {
            let packet = match packet {
                Outgoing::Connack {
                    session_present,
                    reason,
                    receive_max,
                    max_packet,
                } => {
                    let mut connack = v5::Connack::new(
                        session_present,
                        v5::ConnectReasonCode::from_u8(reason.0)
                            .unwrap_or(v5::ConnectReasonCode::UnspecifiedError),
                    );
                    if reason.is_success() {
                        let p = &mut connack.properties;
                        p.receive_max = Some(receive_max);
                        p.max_packet_size = Some(max_packet);
                        p.max_qos = Some(QoS::Level1);
                        // A record published to a snapshot topic is its key's latest value.
                        p.retain_available = Some(true);
                        p.shared_subscription_available = Some(false);
                        p.wildcard_subscription_available = Some(true);
                        p.subscription_id_available = Some(false);
                    }
                    v5::Packet::Connack(connack)
                }
                Outgoing::Publish {
                    topic,
                    payload,
                    pid,
                    dup,
                    retain,
                    headers,
                } => {
                    let properties = v5::PublishProperties {
                        user_properties: headers
                            .into_iter()
                            .map(|(name, value)| v5::UserProperty {
                                name: name.into(),
                                value: value.into(),
                            })
                            .collect(),
                        ..Default::default()
                    };
                    v5::Packet::Publish(v5::Publish {
                        dup,
                        retain,
                        qos_pid: qos_pid(pid)?,
                        topic_name: TopicName::try_from(topic).map_err(|e| failed("topic")(&e))?,
                        payload,
                        properties,
                    })
                }
                Outgoing::Puback { pid: p, reason } => v5::Packet::Puback(v5::Puback::new(
                    pid(p)?,
                    v5::PubackReasonCode::from_u8(reason.0)
                        .unwrap_or(v5::PubackReasonCode::UnspecifiedError),
                )),
                Outgoing::Suback { pid: p, reasons } => v5::Packet::Suback(v5::Suback::new(
                    pid(p)?,
                    reasons
                        .into_iter()
                        .map(|r| {
                            v5::SubscribeReasonCode::from_u8(r.0)
                                .unwrap_or(v5::SubscribeReasonCode::UnspecifiedError)
                        })
                        .collect(),
                )),
                Outgoing::Unsuback { pid: p, reasons } => v5::Packet::Unsuback(v5::Unsuback::new(
                    pid(p)?,
                    reasons
                        .into_iter()
                        .map(|r| {
                            v5::UnsubscribeReasonCode::from_u8(r.0)
                                .unwrap_or(v5::UnsubscribeReasonCode::UnspecifiedError)
                        })
                        .collect(),
                )),
                Outgoing::Pingresp => v5::Packet::Pingresp,
                Outgoing::Disconnect(reason) => v5::Packet::Disconnect(v5::Disconnect::new(
                    v5::DisconnectReasonCode::from_u8(reason.0)
                        .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
                )),
            };
            let bytes = packet.encode().map_err(|e| failed("packet")(&e))?;
            out.extend_from_slice(bytes.as_ref());
        }
    }
    Ok(())
}

/// MQTT 3.1.1's CONNACK return codes (§3.2.2.3) for a reason.
fn connack_v3(reason: Reason) -> v3::ConnectReturnCode {
    use v3::ConnectReturnCode as C;
    match reason {
        Reason::SUCCESS => C::Accepted,
        Reason::UNSUPPORTED_PROTOCOL_VERSION => C::UnacceptableProtocolVersion,
        Reason::CLIENT_ID_NOT_VALID => C::IdentifierRejected,
        Reason::BAD_USER_NAME_OR_PASSWORD => C::BadUserNameOrPassword,
        Reason::NOT_AUTHORIZED => C::NotAuthorized,
        _ => C::ServerUnavailable,
    }
}

/// Topic filters MQTT allows: checked by the codec crate's own rules.
pub fn is_valid_filter(filter: &str) -> bool {
    TopicFilter::try_from(filter).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_bytes(version: Version, client_id: &str, clean: bool) -> BytesMut {
        let protocol = match version {
            Version::V3 => Protocol::V311,
            Version::V5 => Protocol::V500,
        };
        let bytes = match version {
            Version::V3 => {
                let mut c = v3::Connect::new(client_id.into(), 30);
                c.protocol = protocol;
                c.clean_session = clean;
                c.password = Some(Bytes::from_static(b"token"));
                v3::Packet::Connect(c).encode().unwrap().as_ref().to_vec()
            }
            Version::V5 => {
                let mut c = v5::Connect::new(client_id.into(), 30);
                c.clean_start = clean;
                c.properties.receive_max = Some(7);
                v5::Packet::Connect(c).encode().unwrap().as_ref().to_vec()
            }
        };
        BytesMut::from(&bytes[..])
    }

    #[test]
    fn connect_of_either_version_is_read_whole_or_not_at_all() {
        for version in [Version::V3, Version::V5] {
            let full = connect_bytes(version, "dev-1", false);
            let mut partial = BytesMut::from(&full[..full.len() - 1]);
            assert!(take_connect(&mut partial, 1024).unwrap().is_none());
            let mut buf = full.clone();
            let connect = take_connect(&mut buf, 1024).unwrap().unwrap();
            assert_eq!(connect.version, version);
            assert_eq!(connect.client_id, "dev-1");
            assert!(!connect.clean);
            assert!(buf.is_empty());
            let mut buf = full.clone();
            assert!(matches!(
                take_connect(&mut buf, 8),
                Err(FrameError::TooLarge { max: 8, .. })
            ));
        }
        assert_eq!(
            take_connect(&mut connect_bytes(Version::V5, "x", true), 1024)
                .unwrap()
                .unwrap()
                .receive_max,
            7
        );
    }

    #[test]
    fn a_wrong_protocol_level_or_first_packet_is_refused() {
        let mut bad = connect_bytes(Version::V3, "x", true);
        // The level byte: fixed header (2), name length (2), "MQTT" (4).
        bad[8] = 9;
        assert!(matches!(
            take_connect(&mut bad, 1024),
            Err(FrameError::UnsupportedProtocol(_))
        ));
        let mut ping = BytesMut::from(&[0xC0u8, 0][..]);
        assert!(matches!(
            take_connect(&mut ping, 1024),
            Err(FrameError::NotConnect)
        ));
        let mut garbage = BytesMut::from(&[0x00u8, 0][..]);
        assert!(matches!(
            take(&mut garbage, Version::V3, 1024),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn packets_round_trip_through_the_codec_crate() {
        for version in [Version::V3, Version::V5] {
            let mut out = Vec::new();
            encode(
                Outgoing::Publish {
                    topic: "prices/AAPL".into(),
                    payload: Bytes::from_static(b"{}"),
                    pid: Some(9),
                    dup: true,
                    retain: false,
                    headers: vec![("source".into(), "demo".into())],
                },
                version,
                &mut out,
            )
            .unwrap();
            // A client's PUBLISH has the same form: decode it as one.
            let mut buf = BytesMut::from(&out[..]);
            match take(&mut buf, version, 1024).unwrap().unwrap() {
                Incoming::Publish {
                    topic,
                    pid,
                    headers,
                    ..
                } => {
                    assert_eq!(topic, "prices/AAPL");
                    assert_eq!(pid, Some(9));
                    assert_eq!(headers.is_empty(), version == Version::V3);
                }
                other => panic!("{other:?}"),
            }
            let mut out = Vec::new();
            encode(
                Outgoing::Disconnect(Reason::PACKET_TOO_LARGE),
                version,
                &mut out,
            )
            .unwrap();
            assert_eq!(out.is_empty(), version == Version::V3);
        }
    }
}
