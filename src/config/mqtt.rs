//! Configuration of the MQTT front end (`[mqtt]`): the WebSocket endpoint `/mqtt` on the
//! gateway's port and the plain TCP listener.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[mqtt]`: MQTT 3.1.1 and 5.0 clients (docs/mqtt.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Serve MQTT over WebSocket at `/mqtt` on `server.listen`.
    pub enabled: bool,
    /// The MQTT TCP listener (TLS when `[tls]` is set); none when unset. `serve --demo`
    /// listens on port 1883 of `server.listen`'s address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Largest packet a client may send (the connection is closed past it; MQTT 5
    /// clients are told with reason 0x95 and in CONNACK's Maximum Packet Size).
    pub max_packet_bytes: usize,
    /// QoS 1 records in flight (sent, not yet acknowledged) per connection; a client's
    /// smaller Receive Maximum wins.
    pub max_inflight: u16,
    /// A CONNECT must arrive within this many seconds of the connection opening.
    pub connect_timeout_secs: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            listen: None,
            max_packet_bytes: 1024 * 1024,
            max_inflight: 100,
            connect_timeout_secs: 10,
        }
    }
}

impl super::Config {
    /// Checks `[mqtt]`.
    pub(super) fn validate_mqtt(&self) -> Result<(), super::ConfigError> {
        let invalid = |key: &'static str, value: String, expected: &'static str| {
            Err(super::ConfigError::Invalid {
                key,
                value,
                expected,
            })
        };
        let mqtt = &self.mqtt;
        // 268,435,455 is the largest remaining length MQTT's 4-byte length can express.
        if !(64..=268_435_455).contains(&mqtt.max_packet_bytes) {
            return invalid(
                "mqtt.max_packet_bytes",
                mqtt.max_packet_bytes.to_string(),
                "64 to 268435455 bytes",
            );
        }
        if mqtt.max_inflight == 0 {
            return invalid("mqtt.max_inflight", "0".into(), "1 to 65535 records");
        }
        if !(1..=3600).contains(&mqtt.connect_timeout_secs) {
            return invalid(
                "mqtt.connect_timeout_secs",
                mqtt.connect_timeout_secs.to_string(),
                "1 to 3600 seconds",
            );
        }
        if mqtt.listen.is_some_and(|l| l == self.server.listen) {
            return invalid(
                "mqtt.listen",
                format!("{:?}", mqtt.listen),
                "an address other than server.listen (MQTT over WebSocket is served there at /mqtt)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    #[test]
    fn bad_values_name_their_key() {
        for (toml, key) in [
            ("[mqtt]\nmax_packet_bytes = 10", "mqtt.max_packet_bytes"),
            ("[mqtt]\nmax_inflight = 0", "mqtt.max_inflight"),
            (
                "[mqtt]\nconnect_timeout_secs = 0",
                "mqtt.connect_timeout_secs",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:9000\"\n[mqtt]\nlisten = \"127.0.0.1:9000\"",
                "mqtt.listen",
            ),
        ] {
            match Config::from_toml(&format!("[auth]\nmode = \"none\"\n{toml}")) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{toml}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
        let ok = Config::from_toml("[auth]\nmode = \"none\"\n[mqtt]\nlisten = \"127.0.0.1:1883\"")
            .unwrap();
        assert_eq!(ok.mqtt.listen, Some("127.0.0.1:1883".parse().unwrap()));
    }
}
