//! Per-subscription delivery throttle: at most `rate` updates per second per
//! key; a newer value replaces a held one (latest wins, never an old value
//! after a newer one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::EncodedRecord;
pub use crate::config::{MAX_RATE, MIN_RATE, valid_rate};

/// Throttle state of one subscription.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    keys: HashMap<Option<Bytes>, Slot>,
}

#[derive(Debug)]
struct Slot {
    next_allowed: Instant,
    held: Option<Arc<EncodedRecord>>,
}

impl Throttle {
    /// A throttle of `rate` updates per second per key. A rate outside the valid range
    /// (a session stored before it was enforced, say) is clamped to it, never a panic.
    pub fn new(rate: f64) -> Throttle {
        let rate = match rate.is_nan() {
            true => MAX_RATE,
            false => rate.clamp(MIN_RATE, MAX_RATE),
        };
        Throttle {
            interval: Duration::from_secs_f64(1.0 / rate),
            keys: HashMap::new(),
        }
    }

    /// Sends `record` now if its key may update, else holds it (replacing an older held value).
    pub fn offer(
        &mut self,
        record: Arc<EncodedRecord>,
        now: Instant,
        out: &mut Vec<Arc<EncodedRecord>>,
    ) {
        let slot = self.keys.entry(record.key.clone()).or_insert(Slot {
            next_allowed: now,
            held: None,
        });
        if now >= slot.next_allowed && slot.held.is_none() {
            slot.next_allowed = now + self.interval;
            out.push(record);
        } else {
            slot.held = Some(record);
        }
    }

    /// Sends held values that are due; returns when the next one will be.
    pub fn flush_due(
        &mut self,
        now: Instant,
        out: &mut Vec<Arc<EncodedRecord>>,
    ) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for slot in self.keys.values_mut() {
            if slot.held.is_none() {
                continue;
            }
            if now >= slot.next_allowed {
                if let Some(r) = slot.held.take() {
                    out.push(r);
                }
                slot.next_allowed = now + self.interval;
            } else {
                next = Some(next.map_or(slot.next_allowed, |n| n.min(slot.next_allowed)));
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;

    fn rec(offset: i64, key: &str) -> Arc<EncodedRecord> {
        Arc::new(EncodedRecord::new(
            RecordMeta {
                topic: "t".into(),
                partition: 0,
                offset,
            },
            Some(Bytes::copy_from_slice(key.as_bytes())),
            "".into(),
        ))
    }

    #[test]
    fn latest_value_per_key_at_most_rate_per_second() {
        let mut t = Throttle::new(4.0); // every 250 ms
        let t0 = Instant::now();
        let mut out = Vec::new();
        t.offer(rec(0, "A"), t0, &mut out);
        t.offer(rec(1, "A"), t0 + Duration::from_millis(10), &mut out);
        t.offer(rec(2, "A"), t0 + Duration::from_millis(20), &mut out);
        t.offer(rec(3, "B"), t0 + Duration::from_millis(30), &mut out);
        let offsets =
            |out: &[Arc<EncodedRecord>]| out.iter().map(|r| r.meta.offset).collect::<Vec<_>>();
        assert_eq!(offsets(&out), vec![0, 3]);
        assert_eq!(
            t.flush_due(t0 + Duration::from_millis(100), &mut out),
            Some(t0 + Duration::from_millis(250))
        );
        t.flush_due(t0 + Duration::from_millis(250), &mut out);
        assert_eq!(offsets(&out), vec![0, 3, 2], "1 was replaced by 2");
        assert_eq!(t.flush_due(t0 + Duration::from_millis(600), &mut out), None);
    }

    /// Issue 17.1: rates a client or an old stored session may hold never panic.
    #[test]
    fn any_rate_makes_a_throttle_that_works() {
        let t0 = Instant::now();
        for rate in [
            1e-300,
            1e-19,
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e300,
            5e-324,
        ] {
            let mut t = Throttle::new(rate);
            let mut out = Vec::new();
            t.offer(rec(0, "A"), t0, &mut out);
            t.offer(rec(1, "A"), t0, &mut out);
            assert_eq!(out.len(), 1, "rate {rate}");
            let _ = t.flush_due(t0 + Duration::from_secs(2_000), &mut out);
            assert_eq!(out.len(), 2, "rate {rate}");
        }
        assert!(!valid_rate(1e-300) && !valid_rate(f64::NAN) && valid_rate(MIN_RATE));
    }
}
