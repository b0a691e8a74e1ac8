//! Header filters: a subscription can ask for only the records whose headers
//! carry given values, besides (or instead of) a key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::EncodedRecord;

/// Every named header must be present with one of its listed values (`null`
/// matches a header whose value is null). Values compare as UTF-8 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeaderFilter(BTreeMap<String, Vec<Option<String>>>);

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("`filter.headers` must name at least one header")]
    Empty,
    #[error("`filter.headers` names {count} headers; the limit is {max}")]
    TooMany { count: usize, max: usize },
    #[error("`filter.headers.{name}` must be a string, null or a non-empty array of them")]
    BadValue { name: String },
}

/// Most headers one filter may name, and most values per header.
const MAX_HEADERS: usize = 16;
const MAX_VALUES: usize = 64;

impl HeaderFilter {
    /// Parses `{"name": "value" | null | ["v1", "v2", null]}`.
    pub fn parse(value: &serde_json::Value) -> Result<HeaderFilter, FilterError> {
        use serde_json::Value;
        let Value::Object(map) = value else {
            return Err(FilterError::Empty);
        };
        if map.is_empty() {
            return Err(FilterError::Empty);
        }
        if map.len() > MAX_HEADERS {
            return Err(FilterError::TooMany {
                count: map.len(),
                max: MAX_HEADERS,
            });
        }
        let one = |v: &Value| match v {
            Value::String(s) => Some(Some(s.clone())),
            Value::Null => Some(None),
            _ => None,
        };
        let mut headers = BTreeMap::new();
        for (name, v) in map {
            let bad = || FilterError::BadValue { name: name.clone() };
            let values = match v {
                Value::Array(items) if !items.is_empty() && items.len() <= MAX_VALUES => {
                    items.iter().map(one).collect::<Option<Vec<_>>>()
                }
                Value::Array(_) => None,
                single => one(single).map(|v| vec![v]),
            }
            .ok_or_else(bad)?;
            headers.insert(name.clone(), values);
        }
        Ok(HeaderFilter(headers))
    }

    /// True when the record's headers satisfy every condition.
    pub fn matches(&self, record: &EncodedRecord) -> bool {
        self.0
            .iter()
            .all(|(name, wanted)| match record.header(name) {
                None => false,
                Some(value) => wanted
                    .iter()
                    .any(|w| w.as_deref().map(str::as_bytes) == value),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;
    use bytes::Bytes;
    use serde_json::json;

    fn record(headers: &[(&str, Option<&str>)]) -> EncodedRecord {
        let mut r = EncodedRecord::new(
            RecordMeta {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            None,
            "{}".into(),
        );
        r.headers = headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                )
            })
            .collect();
        r
    }

    #[test]
    fn every_header_must_hold_one_of_its_values() {
        let f = HeaderFilter::parse(&json!({"region": "eu", "venue": ["XNAS", null]})).unwrap();
        assert!(f.matches(&record(&[("region", Some("eu")), ("venue", Some("XNAS"))])));
        assert!(f.matches(&record(&[("venue", None), ("region", Some("eu"))])));
        assert!(!f.matches(&record(&[("region", Some("us")), ("venue", Some("XNAS"))])));
        assert!(
            !f.matches(&record(&[("region", Some("eu"))])),
            "a missing header fails"
        );
        assert!(!f.matches(&record(&[])));
    }

    #[test]
    fn refuses_malformed_filters() {
        assert_eq!(HeaderFilter::parse(&json!({})), Err(FilterError::Empty));
        assert_eq!(HeaderFilter::parse(&json!("eu")), Err(FilterError::Empty));
        for bad in [json!({"a": 1}), json!({"a": []}), json!({"a": [{"b": 1}]})] {
            assert!(
                matches!(HeaderFilter::parse(&bad), Err(FilterError::BadValue { .. })),
                "{bad}"
            );
        }
        let many: serde_json::Map<_, _> = (0..17).map(|i| (i.to_string(), json!("x"))).collect();
        assert!(matches!(
            HeaderFilter::parse(&serde_json::Value::Object(many)),
            Err(FilterError::TooMany { count: 17, max: 16 })
        ));
    }
}
