//! Who a client is and what it may do: JWTs checked at the handshake (and on refresh),
//! channel and publish permissions from their claims.

mod permissions;
mod token;

use std::path::Path;
use std::sync::{Arc, LazyLock};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use crate::config::{AuthConfig, AuthMode, KeyAlgorithm};
pub use permissions::{Pattern, Permissions};
pub use token::{BEARER_SUBPROTOCOL_PREFIX, token_from_request};

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`; empty without authentication.
    pub subject: String,
    /// Shared: every anonymous connection holds the same one.
    pub permissions: Arc<Permissions>,
    /// Unix seconds when the token expires; `None` without authentication.
    pub expires_at: Option<u64>,
}

/// The permissions of every anonymous identity.
static EVERYTHING: LazyLock<Arc<Permissions>> = LazyLock::new(|| Arc::new(Permissions::all()));

impl Identity {
    /// The identity of every client when `auth.mode = "none"`.
    pub fn anonymous() -> Identity {
        Identity {
            subject: String::new(),
            permissions: EVERYTHING.clone(),
            expires_at: None,
        }
    }

    /// The name a session id is stored under: ids are per subject, so two users'
    /// sessions named alike never meet. Session ids cannot contain `/`.
    pub fn scoped_session(&self, id: &str) -> String {
        if self.subject.is_empty() {
            id.to_string()
        } else {
            format!("{}/{id}", self.subject)
        }
    }
}

/// Why a token was refused; `code()` is what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send Authorization: Bearer <jwt>, the {0:?} query parameter, or a {BEARER_SUBPROTOCOL_PREFIX}<jwt> subprotocol"
    )]
    Missing(String),
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm {0:?} is not accepted by any configured key")]
    AlgorithmNotAllowed(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer is not the configured one")]
    WrongIssuer,
    #[error("the token's audience does not include the configured one")]
    WrongAudience,
    #[error("the token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("the refreshed token is for another subject")]
    SubjectChanged,
}

impl AuthError {
    /// The reason code in HTTP bodies and error frames.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing(_) => "token_missing",
            AuthError::Malformed => "token_malformed",
            AuthError::AlgorithmNotAllowed(_) => "token_algorithm_not_allowed",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongIssuer => "token_wrong_issuer",
            AuthError::WrongAudience => "token_wrong_audience",
            AuthError::MissingClaim(_) => "token_missing_claim",
            AuthError::SubjectChanged => "token_subject_changed",
        }
    }
}

/// A configured key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("auth.keys (key #{index}, {alg:?}): {reason}")]
pub struct KeyError {
    index: usize,
    alg: KeyAlgorithm,
    reason: String,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Checks tokens against the configured keys, issuer and audience.
pub struct Authenticator {
    mode: AuthMode,
    keys: Vec<Key>,
    validation: Validation,
    query_param: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The claims kgate reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    // Optional here so a missing one is reported as such, not as a malformed token.
    sub: Option<String>,
    exp: Option<u64>,
    #[serde(default)]
    channels: permissions::OneOrMany,
    #[serde(default)]
    publish: permissions::OneOrMany,
    #[serde(default)]
    admin: bool,
}

impl Authenticator {
    /// Loads the keys named in `config` (reading key files relative to the working directory).
    pub fn new(config: &AuthConfig) -> Result<Authenticator, KeyError> {
        let mut keys = Vec::new();
        for (i, k) in config.keys.iter().enumerate() {
            let error = |reason: String| KeyError {
                index: i + 1,
                alg: k.alg,
                reason,
            };
            let material = match (&k.key, &k.key_file) {
                (Some(inline), _) => inline.as_bytes().to_vec(),
                (None, Some(path)) => read_key(path).map_err(error)?,
                (None, None) => return Err(error("no key or key_file".into())),
            };
            let (alg, key) = match k.alg {
                KeyAlgorithm::HS256 => (Algorithm::HS256, Ok(DecodingKey::from_secret(&material))),
                KeyAlgorithm::RS256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(&material)),
                KeyAlgorithm::ES256 => (Algorithm::ES256, DecodingKey::from_ec_pem(&material)),
            };
            let key = key.map_err(|e| error(format!("not a usable key: {e}")))?;
            keys.push(Key {
                kid: k.kid.clone(),
                alg,
                key,
            });
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if config.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&config.issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&config.audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        Ok(Authenticator {
            mode: config.mode,
            keys,
            validation,
            query_param: config.query_param.clone(),
        })
    }

    /// True when clients must present a token.
    pub fn required(&self) -> bool {
        self.mode == AuthMode::Jwt
    }

    /// The query parameter that may carry a token.
    pub fn query_param(&self) -> &str {
        &self.query_param
    }

    /// Checks `token` (or its absence) and returns who it names.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        if !self.required() {
            return Ok(Identity::anonymous());
        }
        let token = token.ok_or_else(|| AuthError::Missing(self.query_param.clone()))?;
        let header_alg = header_algorithm(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| k.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::AlgorithmNotAllowed(header_alg));
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let mut last = AuthError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    let (Some(subject), Some(exp)) = (c.sub, c.exp) else {
                        return Err(AuthError::MissingClaim("sub and exp".into()));
                    };
                    // An empty subject would turn off session scoping: `phone` instead of
                    // `alice/phone`, shared with every other empty-subject token.
                    if subject.is_empty() {
                        return Err(AuthError::MissingClaim("a non-empty sub".into()));
                    }
                    return Ok(Identity {
                        subject,
                        permissions: Arc::new(Permissions {
                            subscribe: c.channels.patterns(),
                            publish: c.publish.patterns(),
                            admin: c.admin,
                        }),
                        expires_at: Some(exp),
                    });
                }
                Err(e) => {
                    last = classify(e.kind());
                    // Only a signature mismatch is worth trying the next key for.
                    if last != AuthError::BadSignature {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

/// The `alg` a token's header names, read before any check so `none` is reported as such.
fn header_algorithm(token: &str) -> Result<String, AuthError> {
    let header = token.split('.').next().ok_or(AuthError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    #[derive(Deserialize)]
    struct Alg {
        alg: String,
    }
    let alg: Alg = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    const ACCEPTED: [&str; 3] = ["HS256", "RS256", "ES256"];
    if !ACCEPTED.contains(&alg.alg.as_str()) {
        return Err(AuthError::AlgorithmNotAllowed(alg.alg));
    }
    Ok(alg.alg)
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed("mismatch".into()),
        _ => AuthError::Malformed,
    }
}

fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read key_file {}: {e}", path.display()))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Hostile tokens: every input is refused with a reason, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::config::KeyConfig;
    use proptest::prelude::*;

    fn authenticator() -> Authenticator {
        let config = AuthConfig {
            keys: vec![KeyConfig {
                alg: KeyAlgorithm::HS256,
                kid: None,
                key: Some("a secret of thirty-two bytes or more".into()),
                key_file: None,
            }],
            ..AuthConfig::default()
        };
        Authenticator::new(&config).expect("test authenticator")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn arbitrary_tokens_are_refused(text in ".{0,300}") {
            prop_assert!(authenticator().authenticate(Some(&text)).is_err());
        }

        #[test]
        fn three_part_tokens_are_refused(
            parts in proptest::collection::vec("[A-Za-z0-9_=-]{0,80}", 3),
        ) {
            let token = parts.join(".");
            prop_assert!(authenticator().authenticate(Some(&token)).is_err());
        }

        #[test]
        fn arbitrary_headers_are_refused(header in ".{0,120}", payload in ".{0,120}") {
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            let token = format!("{}.{}.", b64(&header), b64(&payload));
            prop_assert!(authenticator().authenticate(Some(&token)).is_err());
        }
    }
}
