//! Channel names: `topic` (every record) or `topic:key` (records with that key).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::is_valid_topic_name;

/// A parsed channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Channel {
    pub topic: Arc<str>,
    /// `Some` restricts the channel to records with exactly this key.
    pub key: Option<Bytes>,
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {len} bytes; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("{topic:?} is not a valid topic name (1-249 characters of [a-zA-Z0-9._-])")]
    BadTopic { topic: String },
    #[error("channel {channel:?} has an empty key after ':'")]
    EmptyKey { channel: String },
}

impl Channel {
    /// Parses `topic` or `topic:key`; the key is everything after the first `:`.
    pub fn parse(name: &str, max_len: usize) -> Result<Channel, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > max_len {
            return Err(ChannelError::TooLong {
                len: name.len(),
                max: max_len,
            });
        }
        let (topic, key) = match name.split_once(':') {
            Some((topic, key)) => (topic, Some(key)),
            None => (name, None),
        };
        if !is_valid_topic_name(topic) {
            return Err(ChannelError::BadTopic {
                topic: topic.to_string(),
            });
        }
        if key == Some("") {
            return Err(ChannelError::EmptyKey {
                channel: name.to_string(),
            });
        }
        Ok(Channel {
            topic: topic.into(),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        })
    }

    /// True when a record with `key` belongs to this channel.
    pub fn matches(&self, key: Option<&[u8]>) -> bool {
        match &self.key {
            None => true,
            Some(wanted) => key == Some(wanted.as_ref()),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            None => f.write_str(&self.topic),
            Some(key) => write!(f, "{}:{}", self.topic, String::from_utf8_lossy(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topic_and_key() {
        let c = Channel::parse("prices", 100).unwrap();
        assert_eq!((&*c.topic, c.key.is_none()), ("prices", true));
        let c = Channel::parse("prices:BRK:B", 100).unwrap();
        assert_eq!(c.key.as_deref(), Some(&b"BRK:B"[..]));
        assert!(c.matches(Some(b"BRK:B")) && !c.matches(Some(b"BRK")) && !c.matches(None));
        assert_eq!(c.to_string(), "prices:BRK:B");
    }

    #[test]
    fn refuses_malformed_names() {
        assert_eq!(Channel::parse("", 10), Err(ChannelError::Empty));
        assert!(matches!(
            Channel::parse("a b", 10),
            Err(ChannelError::BadTopic { .. })
        ));
        assert!(matches!(
            Channel::parse(":k", 10),
            Err(ChannelError::BadTopic { .. })
        ));
        assert!(matches!(
            Channel::parse("t:", 10),
            Err(ChannelError::EmptyKey { .. })
        ));
        assert!(matches!(
            Channel::parse("abcdefghijk", 10),
            Err(ChannelError::TooLong { len: 11, max: 10 })
        ));
    }
}
