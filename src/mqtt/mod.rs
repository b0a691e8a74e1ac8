//! The MQTT front end (docs/mqtt.md): MQTT 3.1.1 and 5.0 clients over TCP (or TLS)
//! and WebSocket, served by the same connection engine as kgate's own protocol.
//!
//! - [`codec`]: packets, framed and decoded by the `mqtt-proto` crate, version-neutral;
//! - [`topic`]: MQTT topic names and filters as kgate channels;
//! - [`wire`]: the bytes under MQTT (a stream, or WebSocket binary messages);
//! - [`link`]: the engine's [`Link`](crate::connection::Link) for MQTT;
//! - [`tcp`]: the TCP listener (the WebSocket endpoint `/mqtt` is in
//!   `transport::ws::mqtt`).
//!
//! Here: the CONNECT handshake (authentication, admission, clean and persistent
//! sessions) and what follows the connection (the will).

pub mod codec;
pub mod link;
pub mod tcp;
pub mod topic;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::auth::Identity;
use crate::config::PayloadFormat;
use crate::connection::Connection;
use crate::connection::protocol::is_valid_session_id;
use crate::connection::services::Services;
use crate::limits::{Refusal, Ticket};
use crate::publish::{self, Publication};
use crate::stats::stats;
use codec::{Connect, FrameError, Outgoing, Reason, Version, Will};
use link::{MqttLink, Settings};
use wire::Wire;

/// What every MQTT connection of a gateway shares.
pub struct Front {
    services: Arc<Services>,
    settings: Arc<Settings>,
}

impl Front {
    /// The MQTT front end of a gateway's services.
    pub fn new(services: Arc<Services>) -> Arc<Front> {
        let config = &services.config;
        let topics = |keep: fn(&crate::config::TopicConfig) -> bool| {
            config
                .topics
                .iter()
                .filter(|t| keep(t))
                .map(|t| t.name.clone())
                .collect()
        };
        let settings = Settings {
            max_packet: config.mqtt.max_packet_bytes,
            window: config.mqtt.max_inflight,
            snapshot_topics: topics(|t| t.snapshot),
            json_topics: topics(|t| t.format == PayloadFormat::Json),
        };
        Arc::new(Front {
            services,
            settings: Arc::new(settings),
        })
    }

    /// Serves one MQTT client on `wire` from its CONNECT to its end. `handshake_token`
    /// is a token the WebSocket upgrade carried (the CONNECT password wins).
    pub async fn serve<W: Wire + 'static>(
        self: Arc<Self>,
        mut wire: W,
        remote: Option<SocketAddr>,
        handshake_token: Option<String>,
    ) {
        let mut buf = BytesMut::new();
        let timeout = Duration::from_secs(self.services.config.mqtt.connect_timeout_secs);
        let connect =
            match tokio::time::timeout(timeout, self.read_connect(&mut wire, &mut buf)).await {
                Ok(Ok(connect)) => connect,
                Ok(Err(Some((version, reason, why)))) => {
                    tracing::info!(?remote, %why, "MQTT CONNECT refused");
                    refuse(&mut wire, version, reason).await;
                    return;
                }
                Ok(Err(None)) => return,
                Err(_) => {
                    tracing::debug!(?remote, "no MQTT CONNECT in time");
                    wire.shutdown().await;
                    return;
                }
            };
        let version = connect.version;
        let (ticket, identity, session) = match self.admit(&connect, remote, handshake_token).await
        {
            Ok(admitted) => admitted,
            Err((reason, why)) => {
                tracing::info!(?remote, client = %connect.client_id, %why, "MQTT CONNECT refused");
                refuse(&mut wire, version, reason).await;
                return;
            }
        };
        let link = MqttLink::new(wire, &connect, session.clone(), self.settings.clone(), buf);
        let connection = Connection::new(self.services.clone(), remote, ticket, identity.clone());
        // A task of its own, as WebSocket connections get: this one (holding the
        // CONNECT phase's state) ends here instead of for the connection's lifetime.
        let ends_with_connection = match (session, version, connect.session_expiry) {
            // MQTT 5: Clean Start 0 with no Session Expiry resumes a session that ends here.
            (Some(session), Version::V5, 0) => Some(session),
            _ => None,
        };
        tokio::spawn(async move {
            let link = connection.run(link).await;
            // Boxed: an idle connection's task would otherwise hold room for a produce.
            Box::pin(self.after(link, identity, ends_with_connection)).await;
        });
    }

    /// What follows a connection's end: its will, and the end of a session that lasts
    /// only as long as the connection.
    async fn after<W: Wire>(
        &self,
        mut link: MqttLink<W>,
        identity: Identity,
        ends_with_connection: Option<String>,
    ) {
        if let Some(will) = link.take_will() {
            self.publish_will(&identity, will).await;
        }
        if let Some(session) = ends_with_connection {
            let key = identity.scoped_session(&session);
            if let Err(e) = self.services.sessions.call(move |s| s.delete(&key)).await {
                tracing::warn!(%session, error = %e, "cannot end the MQTT session");
            }
        }
        tracing::debug!(disconnected = link.disconnected(), "MQTT connection ended");
    }

    /// Reads the CONNECT; `Err(None)` when the peer went away first.
    async fn read_connect<W: Wire>(
        &self,
        wire: &mut W,
        buf: &mut BytesMut,
    ) -> Result<Connect, Option<(Version, Reason, String)>> {
        let max = self.settings.max_packet;
        loop {
            match codec::take_connect(buf, max) {
                Ok(Some(connect)) => return Ok(connect),
                Ok(None) => {}
                // An unknown protocol level is answered (3.1.1: return code 1), a packet
                // too large too (in MQTT 5, when the client speaks it); anything else
                // that is not a CONNECT is closed without a word.
                Err(e @ FrameError::UnsupportedProtocol(_)) => {
                    return Err(Some((Version::V3, e.reason(), e.to_string())));
                }
                Err(e @ FrameError::TooLarge { .. }) if buf.get(8) == Some(&5) => {
                    return Err(Some((Version::V5, e.reason(), e.to_string())));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "not an MQTT CONNECT; closed");
                    return Err(None);
                }
            }
            match wire.read(buf).await {
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => {}
            }
        }
    }

    /// Checks the client id, the token and the connection limits, and prepares the
    /// session: a clean start discards a stored one.
    async fn admit(
        &self,
        connect: &Connect,
        remote: Option<SocketAddr>,
        handshake_token: Option<String>,
    ) -> Result<(Ticket, Identity, Option<String>), (Reason, String)> {
        let services = &self.services;
        let ip = remote.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |r| r.ip());
        services
            .admission
            .attempt(ip)
            .map_err(|r| refusal(services, r))?;
        let persistent = match connect.version {
            Version::V3 => !connect.clean,
            Version::V5 => !connect.clean || connect.session_expiry > 0,
        };
        if persistent && !is_valid_session_id(&connect.client_id) {
            return Err((
                Reason::CLIENT_ID_NOT_VALID,
                format!(
                    "client id {:?}: a persistent session needs 1-128 characters of [A-Za-z0-9._:@-]",
                    connect.client_id
                ),
            ));
        }
        let password = connect
            .password
            .as_ref()
            .and_then(|p| std::str::from_utf8(p).ok())
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        let token = password.or(handshake_token);
        let identity = services.auth.authenticate(token.as_deref()).map_err(|e| {
            stats().auth_failures.add(1);
            let reason = match token {
                None => Reason::NOT_AUTHORIZED,
                Some(_) => Reason::BAD_USER_NAME_OR_PASSWORD,
            };
            (reason, format!("{}: {e}", e.code()))
        })?;
        let who = match identity.subject.is_empty() {
            true => ip.to_string(),
            false => identity.subject.clone(),
        };
        let ticket = services
            .admission
            .admit(who)
            .map_err(|r| refusal(services, r))?;
        if connect.clean && !connect.client_id.is_empty() {
            // A clean start discards the session a client id had.
            let key = identity.scoped_session(&connect.client_id);
            if let Err(e) = services.sessions.call(move |s| s.delete(&key)).await {
                return Err((Reason::SERVER_UNAVAILABLE, format!("session store: {e}")));
            }
        }
        let session = persistent.then(|| connect.client_id.clone());
        Ok((ticket, identity, session))
    }

    /// Produces the will of a connection that ended without DISCONNECT.
    async fn publish_will(&self, identity: &Identity, will: Will) {
        let Some(producer) = &self.services.producer else {
            return;
        };
        let Ok(target) = topic::target(&will.topic) else {
            tracing::info!(topic = %will.topic, "will not published: not a kgate topic name");
            return;
        };
        let publication = Publication {
            json: self.settings.json_topics.contains(&target.topic),
            topic: target.topic,
            key: target.key.map(Bytes::from),
            headers: will
                .headers
                .into_iter()
                .map(|(n, v)| (n, Bytes::from(v)))
                .collect(),
            value: will.payload,
        };
        let checked = publish::check_topic(
            &identity.permissions,
            &self.services.router,
            &publication.topic,
        )
        .and_then(|()| {
            publish::check_value(
                &self.services.config.publish,
                &publication.value,
                publication.json,
            )
        });
        let result = match checked {
            Ok(()) => publish::produce(producer, &publication).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tracing::debug!(topic = %publication.topic, "will published"),
            Err(e) => tracing::info!(topic = %publication.topic, error = %e, "will not published"),
        }
    }
}

fn refusal(services: &Services, refusal: Refusal) -> (Reason, String) {
    match refusal {
        Refusal::AttemptRate => (
            Reason::SERVER_BUSY,
            "too many connection attempts from this address".into(),
        ),
        Refusal::MaxConnections => (
            Reason::SERVER_BUSY,
            "the gateway is at its connection limit".into(),
        ),
        Refusal::IdentityConnections => (
            Reason::QUOTA_EXCEEDED,
            format!(
                "at most {} open connections per identity",
                services.config.limits.max_connections_per_identity
            ),
        ),
    }
}

/// Answers a refused CONNECT with a CONNACK naming the reason, and closes.
async fn refuse<W: Wire>(wire: &mut W, version: Version, reason: Reason) {
    let mut out = Vec::new();
    let connack = Outgoing::Connack {
        session_present: false,
        reason,
        receive_max: 0,
        max_packet: 0,
    };
    if codec::encode(connack, version, &mut out).is_ok() {
        let _ = wire.write(&out).await;
    }
    wire.shutdown().await;
}
