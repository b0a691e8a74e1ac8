//! Writer schemas by id for Confluent-framed topics: a local directory of
//! `<id>.avsc` files (air-gapped use), then a Confluent-compatible schema
//! registry over HTTP. Found schemas are cached for the process's life (an id
//! never changes meaning); failed lookups are remembered for a short while so a
//! stream of poison records does not hammer the registry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::avro::AvroSchema;
use super::payload::DecodeError;
use crate::config::SchemaRegistryConfig;

/// Resolves and caches writer schemas by id.
pub struct Registry {
    url: Option<String>,
    authorization: Option<String>,
    local_dir: Option<PathBuf>,
    agent: ureq::Agent,
    found: RwLock<HashMap<u32, Arc<AvroSchema>>>,
    failed: Mutex<HashMap<u32, (Instant, String)>>,
    retry_after: Duration,
}

#[derive(serde::Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

impl Registry {
    /// A registry client for the configured URL and local directory.
    pub fn new(config: &SchemaRegistryConfig) -> Registry {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
            .http_status_as_error(false)
            .build()
            .into();
        Registry {
            url: (!config.url.is_empty()).then(|| config.url.trim_end_matches('/').to_string()),
            authorization: config.basic_auth.as_ref().map(|credentials| {
                use base64::Engine;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(credentials)
                )
            }),
            local_dir: config.local_dir.clone(),
            agent,
            found: RwLock::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            retry_after: Duration::from_millis(config.retry_after_ms),
        }
    }

    /// The writer schema with this id.
    pub fn schema(&self, id: u32) -> Result<Arc<AvroSchema>, DecodeError> {
        if let Some(schema) = self.found.read().get(&id) {
            return Ok(schema.clone());
        }
        let fail = |reason: String| DecodeError::Schema { id, reason };
        if let Some((at, reason)) = self.failed.lock().get(&id) {
            if at.elapsed() < self.retry_after {
                return Err(fail(reason.clone()));
            }
        }
        match self.lookup(id) {
            Ok(schema) => {
                let schema = Arc::new(schema);
                self.found.write().insert(id, schema.clone());
                self.failed.lock().remove(&id);
                tracing::info!(schema_id = id, "schema registry: schema cached");
                Ok(schema)
            }
            Err(reason) => {
                tracing::warn!(schema_id = id, %reason, "schema registry: lookup failed");
                self.failed
                    .lock()
                    .insert(id, (Instant::now(), reason.clone()));
                Err(fail(reason))
            }
        }
    }

    fn lookup(&self, id: u32) -> Result<AvroSchema, String> {
        if let Some(dir) = &self.local_dir {
            let path = dir.join(format!("{id}.avsc"));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    return AvroSchema::parse(&text)
                        .map_err(|e| format!("{}: {e}", path.display()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        let Some(url) = &self.url else {
            return Err(
                "not in schema_registry.local_dir and no schema_registry.url is set".into(),
            );
        };
        let address = format!("{url}/schemas/ids/{id}");
        let mut request = self.agent.get(&address).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = request.call().map_err(|e| format!("GET {address}: {e}"))?;
        let status = response.status();
        if status != 200 {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            return Err(format!("GET {address}: HTTP {status} {}", body.trim()));
        }
        let answer: SchemaById = response
            .body_mut()
            .read_json()
            .map_err(|e| format!("GET {address}: not a schema answer: {e}"))?;
        if let Some(kind) = answer.schema_type.filter(|k| k != "AVRO") {
            return Err(format!("schema type {kind}; kgate decodes AVRO only"));
        }
        AvroSchema::parse(&answer.schema).map_err(|e| format!("GET {address}: {e}"))
    }
}
