//! Channel permissions carried by a token: patterns such as `prices:*`,
//! `telemetry:device-42` or `*`.

use serde::Deserialize;

use crate::router::Channel;

/// One permission pattern: `*` (everything), `topic` or `topic:*` (the whole topic and
/// any key of it), `topic:key` (that key only), or a trailing `*` as a prefix match
/// on either part (`telemetry:device-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(text: &str) -> Pattern {
        Pattern(text.to_string())
    }

    /// True when the pattern allows the whole channel `topic` (`key` = `None`) or `topic:key`.
    pub fn allows(&self, topic: &str, key: Option<&[u8]>) -> bool {
        let (p_topic, p_key) = match self.0.split_once(':') {
            Some((t, k)) => (t, Some(k)),
            None => (self.0.as_str(), None),
        };
        if !glob(p_topic, topic.as_bytes()) {
            return false;
        }
        match (p_key, key) {
            // `topic` alone allows every key; `*` as the whole pattern is handled by glob.
            (None, _) => true,
            (Some(pk), Some(k)) => glob(pk, k),
            // A whole-topic subscription needs a pattern that allows every key.
            (Some(pk), None) => pk == "*",
        }
    }
}

/// `pattern` with an optional trailing `*` (prefix match) against `text`.
fn glob(pattern: &str, text: &[u8]) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix.as_bytes()),
        None => pattern.as_bytes() == text,
    }
}

/// What an identity may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Channels it may subscribe to.
    pub subscribe: Vec<Pattern>,
    /// Topics it may publish to.
    pub publish: Vec<Pattern>,
    /// It may use `/v1/admin/*`.
    pub admin: bool,
}

impl Permissions {
    /// Everything allowed (`auth.mode = "none"`).
    pub fn all() -> Permissions {
        Permissions {
            subscribe: vec![Pattern::new("*")],
            publish: vec![Pattern::new("*")],
            admin: true,
        }
    }

    /// May subscribe to `channel`.
    pub fn can_subscribe(&self, channel: &Channel) -> bool {
        self.subscribe
            .iter()
            .any(|p| p.allows(&channel.topic, channel.key.as_deref()))
    }

    /// May publish to `topic`.
    pub fn can_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.allows(topic, None))
    }
}

/// A claim that is either one pattern or a list of them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn patterns(&self) -> Vec<Pattern> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(p) => vec![Pattern::new(p)],
            OneOrMany::Many(ps) => ps.iter().map(|p| Pattern::new(p)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, channel: &str) -> bool {
        let c = Channel::parse(channel, 512).expect("valid channel");
        Pattern::new(pattern).allows(&c.topic, c.key.as_deref())
    }

    #[test]
    fn patterns_match_topics_and_keys() {
        assert!(allows("*", "prices"));
        assert!(allows("*", "prices:AAPL"));
        assert!(allows("prices", "prices"));
        assert!(allows("prices", "prices:AAPL"));
        assert!(allows("prices:*", "prices"));
        assert!(allows("prices:*", "prices:MSFT"));
        assert!(allows("telemetry:device-42", "telemetry:device-42"));
        assert!(!allows("telemetry:device-42", "telemetry:device-43"));
        assert!(
            !allows("telemetry:device-42", "telemetry"),
            "one key never allows the whole topic"
        );
        assert!(allows("telemetry:device-*", "telemetry:device-7"));
        assert!(!allows("telemetry:device-*", "telemetry"));
        assert!(!allows("prices", "pricesX"));
        assert!(!allows("prices:*", "orders:1"));
        assert!(allows("price*", "prices:AAPL"));
    }
}
