//! MQTT topic names and filters as kgate channels: the first level is the Kafka
//! topic, the rest the record key (docs/mqtt.md). A record's own name is its
//! [`Bare::path`](crate::codec::Bare).

use super::codec::Reason;

/// Where a client's PUBLISH goes: a Kafka topic and an optional record key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub topic: String,
    pub key: Option<String>,
}

/// Splits a PUBLISH topic name `topic[/key]`.
pub fn target(name: &str) -> Result<Target, Reason> {
    let (topic, key) = match name.split_once('/') {
        Some((_, "")) => return Err(Reason::TOPIC_NAME_INVALID),
        Some((topic, key)) => (topic, Some(key.to_string())),
        None => (name, None),
    };
    if topic.is_empty() || name.contains(['+', '#']) {
        return Err(Reason::TOPIC_NAME_INVALID);
    }
    Ok(Target {
        topic: topic.to_string(),
        key,
    })
}

/// The kgate channel a SUBSCRIBE filter names: `topic`, `topic/#` and `topic/+` are the
/// whole topic (`topic`); `topic/key` is one key (`topic:key`). Other wildcards are refused.
pub fn channel(filter: &str) -> Result<String, Reason> {
    if filter.starts_with("$share/") {
        return Err(Reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
    }
    if !super::codec::is_valid_filter(filter) {
        return Err(Reason::TOPIC_FILTER_INVALID);
    }
    let (topic, rest) = match filter.split_once('/') {
        Some((topic, rest)) => (topic, Some(rest)),
        None => (filter, None),
    };
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(Reason::WILDCARDS_NOT_SUPPORTED);
    }
    match rest {
        None | Some("#") | Some("+") => Ok(topic.to_string()),
        Some(key) if key.contains(['+', '#']) => Err(Reason::WILDCARDS_NOT_SUPPORTED),
        Some("") => Err(Reason::TOPIC_FILTER_INVALID),
        Some(key) => Ok(format!("{topic}:{key}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_map_to_channels_or_their_reason() {
        assert_eq!(channel("prices/#"), Ok("prices".into()));
        assert_eq!(channel("prices/+"), Ok("prices".into()));
        assert_eq!(channel("prices"), Ok("prices".into()));
        assert_eq!(channel("prices/AAPL"), Ok("prices:AAPL".into()));
        assert_eq!(channel("devices/a/b"), Ok("devices:a/b".into()));
        assert_eq!(channel("#"), Err(Reason::WILDCARDS_NOT_SUPPORTED));
        assert_eq!(channel("+/x"), Err(Reason::WILDCARDS_NOT_SUPPORTED));
        assert_eq!(channel("prices/+/x"), Err(Reason::WILDCARDS_NOT_SUPPORTED));
        assert_eq!(channel("prices/a/#"), Err(Reason::WILDCARDS_NOT_SUPPORTED));
        assert_eq!(channel("prices/#/x"), Err(Reason::TOPIC_FILTER_INVALID));
        assert_eq!(
            channel("$share/g/prices"),
            Err(Reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
        );
    }

    #[test]
    fn publish_names_split_into_topic_and_key() {
        assert_eq!(
            target("telemetry/dev-1"),
            Ok(Target {
                topic: "telemetry".into(),
                key: Some("dev-1".into())
            })
        );
        assert_eq!(target("telemetry").unwrap().key, None);
        assert_eq!(target("telemetry/"), Err(Reason::TOPIC_NAME_INVALID));
        assert_eq!(target("/x"), Err(Reason::TOPIC_NAME_INVALID));
    }
}
