//! Admission control for new connections: attempts per IP (governor), open
//! connections in total and per identity.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use governor::clock::MonotonicClock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use crate::config::LimitsConfig;
use crate::stats::stats;

/// A connection's command rate limiter. On the standard clock: it is checked per command
/// only, and is 32 bytes smaller than governor's default (every connection holds one).
pub type CommandLimiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    MonotonicClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many upgrade attempts from this IP (HTTP 429 `rate_limited`).
    AttemptRate,
    /// `limits.max_connections` reached (HTTP 503 `too_many_connections`).
    MaxConnections,
    /// `limits.max_connections_per_identity` reached (HTTP 429 `too_many_connections_for_identity`).
    IdentityConnections,
}

/// Decides whether a new connection may open.
pub struct Admission {
    attempts: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
    open: AtomicUsize,
    per_identity: Mutex<HashMap<String, usize>>,
    max_total: usize,
    max_per_identity: usize,
    commands: Quota,
}

/// Holds a connection's place; released when dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    identity: String,
}

/// A quota of `per_sec` with `burst`, both at least 1.
pub fn quota(per_sec: u32, burst: u32) -> Quota {
    let one = NonZeroU32::MIN;
    Quota::per_second(NonZeroU32::new(per_sec).unwrap_or(one))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(one))
}

impl Admission {
    /// Admission for the configured limits.
    pub fn new(limits: &LimitsConfig) -> Arc<Admission> {
        Arc::new(Admission {
            attempts: RateLimiter::keyed(quota(
                limits.connection_attempts_per_ip_per_sec,
                limits.connection_attempts_burst,
            )),
            checks: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            per_identity: Mutex::new(HashMap::new()),
            max_total: limits.max_connections,
            max_per_identity: limits.max_connections_per_identity,
            commands: quota(limits.commands_per_sec, limits.commands_burst),
        })
    }

    /// A new connection's command rate limiter (`limits.commands_per_sec`, `commands_burst`).
    pub fn command_limiter(&self) -> CommandLimiter {
        RateLimiter::direct_with_clock(self.commands, MonotonicClock)
    }

    /// Counts a connection attempt from `ip` against its rate, before any costly check.
    pub fn attempt(&self, ip: IpAddr) -> Result<(), Refusal> {
        // Forget idle keys now and then so the limiter's memory stays bounded.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.attempts.retain_recent();
        }
        if self.attempts.check_key(&ip).is_err() {
            stats().refused_attempt_rate.add(1);
            return Err(Refusal::AttemptRate);
        }
        Ok(())
    }

    /// Admits a connection of `identity` (the token subject, or the client IP without
    /// authentication), or says why not (and counts the refusal).
    pub fn admit(self: &Arc<Self>, identity: String) -> Result<Ticket, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            stats().refused_max_connections.add(1);
            return Err(Refusal::MaxConnections);
        }
        let mut per = self.per_identity.lock();
        let count = per.entry(identity.clone()).or_insert(0);
        if *count >= self.max_per_identity {
            drop(per);
            self.open.fetch_sub(1, Ordering::AcqRel);
            stats().refused_identity_connections.add(1);
            return Err(Refusal::IdentityConnections);
        }
        *count += 1;
        Ok(Ticket {
            admission: self.clone(),
            identity,
        })
    }

    /// Connections admitted and still open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
        let mut per = self.admission.per_identity.lock();
        if let Some(count) = per.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                per.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_each_limit_and_releases_on_drop() {
        let limits = LimitsConfig {
            connection_attempts_per_ip_per_sec: 1,
            connection_attempts_burst: 3,
            max_connections: 3,
            max_connections_per_identity: 2,
            ..LimitsConfig::default()
        };
        let a = Admission::new(&limits);
        let ip1: IpAddr = [127, 0, 0, 1].into();
        let ip2: IpAddr = [127, 0, 0, 2].into();
        let admit = |ip: IpAddr, who: &str| a.attempt(ip).and_then(|()| a.admit(who.to_string()));
        let t1 = admit(ip1, "alice").unwrap();
        let _t2 = admit(ip1, "alice").unwrap();
        assert_eq!(
            admit(ip1, "alice").err(),
            Some(Refusal::IdentityConnections)
        );
        assert_eq!(
            admit(ip1, "bob").err(),
            Some(Refusal::AttemptRate),
            "burst of 3 used up"
        );
        let _t3 = admit(ip2, "bob").unwrap();
        assert_eq!(admit(ip2, "bob").err(), Some(Refusal::MaxConnections));
        drop(t1);
        assert_eq!(a.open(), 2);
        assert!(admit(ip2, "bob").is_ok());
    }
}
