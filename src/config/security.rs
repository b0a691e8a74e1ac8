//! Configuration of authentication (`[auth]`), TLS (`[tls]`) and the publish endpoint (`[publish]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every WebSocket upgrade, publish and admin request needs a valid JWT.
    Jwt,
    /// No authentication: for the demo and local development only.
    None,
}

/// A JWT signature algorithm kgate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// One token verification key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The algorithm tokens verified with this key must name.
    pub alg: KeyAlgorithm,
    /// When set, only tokens whose header `kid` equals it use this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The key inline: the shared secret (HS256) or a PEM public key (RS256, ES256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A file holding the key, instead of `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[auth]`: token checks at the handshake, channel permissions, browser origins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `jwt` or `none`. `none` must be chosen explicitly (or by `serve --demo`).
    pub mode: AuthMode,
    /// When not empty, a token's `iss` must equal it.
    pub issuer: String,
    /// When not empty, a token's `aud` must contain it.
    pub audience: String,
    /// Clock skew allowed when checking `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Query parameter that may carry the token (for clients that cannot set headers).
    pub query_param: String,
    /// Browser origins allowed to open a WebSocket; empty allows any. Requests without an
    /// `Origin` header (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// Verification keys; a token is accepted if one key with its algorithm verifies it.
    pub keys: Vec<KeyConfig>,
}

/// `[tls]`: serve https and wss when both files are set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[publish]`: `POST /v1/publish/{topic}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Serve the publish endpoint.
    pub enabled: bool,
    /// Largest request body (HTTP 413 past it).
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects in a JSON body (HTTP 400 past it).
    pub max_json_depth: usize,
    /// `publish` commands one connection may send per second (also its burst).
    pub max_per_connection_per_sec: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Jwt,
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
            query_param: "access_token".into(),
            allowed_origins: Vec::new(),
            keys: Vec::new(),
        }
    }
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            enabled: true,
            max_body_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_per_connection_per_sec: 100,
        }
    }
}

impl super::Config {
    /// Checks `[auth]`, `[tls]` and `[publish]`; the key files themselves are read by `auth`.
    pub(super) fn validate_security(&self) -> Result<(), super::ConfigError> {
        let invalid = |key: &'static str, value: String, expected: &'static str| {
            Err(super::ConfigError::Invalid {
                key,
                value,
                expected,
            })
        };
        let auth = &self.auth;
        if auth.mode == AuthMode::Jwt && auth.keys.is_empty() {
            return invalid(
                "auth.keys",
                "[]".into(),
                "at least one verification key when auth.mode = \"jwt\" (the default); \
                 set auth.mode = \"none\" only for local development",
            );
        }
        for (i, key) in auth.keys.iter().enumerate() {
            let which = format!("(key #{})", i + 1);
            match (&key.key, &key.key_file) {
                (Some(_), Some(_)) | (None, None) => {
                    return invalid("auth.keys.key", which, "exactly one of key and key_file");
                }
                (Some(secret), None) if key.alg == KeyAlgorithm::HS256 && secret.len() < 32 => {
                    return invalid(
                        "auth.keys.key",
                        format!("{} bytes {which}", secret.len()),
                        "an HS256 secret of at least 32 bytes",
                    );
                }
                _ => {}
            }
        }
        if auth.query_param.is_empty() {
            return invalid("auth.query_param", "\"\"".into(), "a query parameter name");
        }
        for origin in &auth.allowed_origins {
            let ok = url::Url::parse(origin)
                .is_ok_and(|u| u.host().is_some() && u.path() == "/" && !origin.ends_with('/'));
            if !ok {
                return invalid(
                    "auth.allowed_origins",
                    format!("{origin:?}"),
                    "origins such as \"https://app.example.com\" (scheme, host, optional port)",
                );
            }
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return invalid(
                "tls.key_file",
                format!("{:?}", self.tls.key_file),
                "both tls.cert_file and tls.key_file, or neither",
            );
        }
        if self.publish.max_body_bytes == 0 || self.publish.max_body_bytes > 100 << 20 {
            return invalid(
                "publish.max_body_bytes",
                self.publish.max_body_bytes.to_string(),
                "from 1 to 104857600 (100 MiB)",
            );
        }
        if self.publish.max_json_depth == 0 {
            return invalid("publish.max_json_depth", "0".into(), "a positive integer");
        }
        if self.publish.max_per_connection_per_sec == 0 {
            return invalid(
                "publish.max_per_connection_per_sec",
                "0".into(),
                "a positive integer",
            );
        }
        Ok(())
    }
}
