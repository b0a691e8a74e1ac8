//! A connection's token: refreshed by an `auth` command, and the deadline at which
//! it expires (the connection then closes with 4011).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Connection;
use super::ServerFrame;
use super::protocol::ErrorCode;
use crate::stats::stats;

/// When a token that expires at `exp` (Unix seconds) runs out, `leeway` seconds later,
/// as an instant (`now` being `now_secs`); `None` when that is too far ahead to represent.
/// Both numbers come from a client's token: no arithmetic here may overflow.
fn expiry_deadline(
    now: tokio::time::Instant,
    now_secs: u64,
    exp: u64,
    leeway: u64,
) -> Option<tokio::time::Instant> {
    let left = exp.saturating_add(leeway).saturating_sub(now_secs);
    now.checked_add(Duration::from_secs(left))
}

impl Connection {
    /// When the token (plus the configured clock leeway) runs out; `None` without a token,
    /// or for an `exp` too far ahead to be a time this process will see.
    pub(super) fn token_deadline(&self) -> Option<tokio::time::Instant> {
        // Asked at every turn of the loop: read no clock without a token.
        let exp = self.identity.expires_at?;
        expiry_deadline(
            tokio::time::Instant::now(),
            crate::auth::now_secs(),
            exp,
            self.services.config.auth.leeway_secs,
        )
    }

    /// Replaces the connection's token with a fresh one for the same subject; subscriptions
    /// the new token no longer permits are removed.
    pub(super) fn refresh_token(&mut self, id: Option<&Value>, token: &str) {
        let identity = self
            .services
            .auth
            .authenticate(Some(token))
            .and_then(|identity| match identity.subject == self.identity.subject {
                true => Ok(identity),
                false => Err(crate::auth::AuthError::SubjectChanged),
            });
        let identity = match identity {
            Ok(identity) => identity,
            Err(e) => {
                stats().auth_failures.add(1);
                let message = format!(
                    "{}: {e}; the current token stays in force until it expires",
                    e.code()
                );
                return self.error(id, ErrorCode::InvalidToken, message);
            }
        };
        self.identity = identity;
        let revoked: Vec<(Arc<str>, Option<Value>)> = self
            .subs
            .values()
            .filter(|a| !self.identity.permissions.can_subscribe(&a.sub.channel))
            .map(|a| (a.name.clone(), a.sub.request_id.clone()))
            .collect();
        for (name, request_id) in revoked {
            self.remove_subscription(&name);
            stats().auth_forbidden.add(1);
            self.error(
                request_id.as_ref(),
                ErrorCode::Forbidden,
                format!("the new token does not permit {name:?}; unsubscribed"),
            );
        }
        self.push(ServerFrame::Authenticated {
            id: id.cloned(),
            expires_at: self.identity.expires_at,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::config::{AuthMode, KeyAlgorithm, KeyConfig, SlowConsumerPolicy};
    use crate::connection::protocol::CloseCode;
    use crate::connection::testing::{Harness, TOPIC};

    const SECRET: &str = "a secret of thirty-two bytes or more";

    fn token(subject: &str, expires_in: u64) -> String {
        let claims = json!({"sub": subject, "exp": crate::auth::now_secs() + expires_in,
                            "channels": [TOPIC]});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    fn with_jwt(config: &mut crate::config::Config) {
        config.auth.mode = AuthMode::Jwt;
        config.auth.leeway_secs = 0;
        config.auth.keys = vec![KeyConfig {
            alg: KeyAlgorithm::HS256,
            kid: None,
            key: Some(SECRET.into()),
            key_file: None,
        }];
    }

    /// A token that runs out closes its connection with 4001; one refreshed in time, with a
    /// token for the same subject, keeps it open; a token for another subject is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_token_closes_and_a_refreshed_one_keeps_the_connection() {
        let h = Harness::new(SlowConsumerPolicy::CatchUp, with_jwt);
        let identity = |t: &str| h.services.auth.authenticate(Some(t)).expect("valid token");
        let mut expiring = h.connect_as(Some(identity(&token("alice", 2))));
        let mut refreshed = h.connect_as(Some(identity(&token("alice", 2))));
        for peer in [&mut expiring, &mut refreshed] {
            peer.frame("welcome").await;
            peer.send(json!({"type": "subscribe", "channel": TOPIC}));
            peer.frame("subscribed").await;
            peer.frame("live").await;
        }
        refreshed.send(json!({"type": "auth", "id": 1, "token": token("mallory", 3600)}));
        let refused = refreshed.frame("error").await;
        assert_eq!(refused["code"], "invalid_token", "{refused}");
        refreshed.send(json!({"type": "auth", "id": 2, "token": token("alice", 3600)}));
        assert_eq!(refreshed.frame("authenticated").await["id"], 2);

        assert_eq!(expiring.closed().await, CloseCode::TokenExpired);
        tokio::time::sleep(Duration::from_secs(1)).await;
        refreshed.nothing_pending().await;
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
        ))]

        /// Token claims arithmetic (issue 17.1): any `exp` and leeway, never a panic, and a
        /// deadline that is never before now.
        #[test]
        fn expiry_deadlines_never_overflow(exp in any::<u64>(), leeway in any::<u64>(), now_secs in any::<u64>()) {
            let now = tokio::time::Instant::now();
            if let Some(deadline) = expiry_deadline(now, now_secs, exp, leeway) {
                prop_assert!(deadline >= now);
            }
        }
    }

    #[test]
    fn far_expiries_have_no_deadline_and_past_ones_are_due_now() {
        let now = tokio::time::Instant::now();
        assert_eq!(expiry_deadline(now, 1_000, u64::MAX, 60), None);
        assert_eq!(
            expiry_deadline(now, 1_000, 10_000_000_000_000_000_000, 60),
            None
        );
        assert_eq!(expiry_deadline(now, 1_000, 900, 60), Some(now));
        assert_eq!(
            expiry_deadline(now, 1_000, 1_000, 60),
            Some(now + Duration::from_secs(60))
        );
    }
}
