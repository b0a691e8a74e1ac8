//! Publish: records a client sends over its connection, produced to Kafka and
//! answered with `published` once Kafka acknowledged them, or with an error
//! naming why not. The produce runs on a task of its own, so the connection goes
//! on streaming while Kafka acknowledges.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use tokio::sync::mpsc;

use super::protocol::ErrorCode;
use super::{Connection, ServerFrame};
use crate::kafka::producer::Delivered;
use crate::publish::{self, Publication, PublishError};

/// A publish's outcome, addressed to its request.
pub(super) type Produced = (Option<Value>, String, Result<Delivered, PublishError>);

/// The connection's publishing state, made at its first `publish`.
pub(super) struct Publishing {
    limiter: DefaultDirectRateLimiter,
    tx: mpsc::Sender<Produced>,
    rx: mpsc::Receiver<Produced>,
}

/// The next acknowledged (or failed) publish, or never while none was sent.
pub(super) async fn next_produced(publishing: Option<&mut Publishing>) -> Option<Produced> {
    match publishing {
        Some(p) => p.rx.recv().await,
        None => std::future::pending().await,
    }
}

impl PublishError {
    /// The protocol's code for this error.
    fn error_code(&self) -> ErrorCode {
        match self {
            PublishError::Disabled => ErrorCode::PublishDisabled,
            PublishError::Forbidden(_) => ErrorCode::Forbidden,
            PublishError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            PublishError::TooLarge { .. } | PublishError::RecordTooLarge(_) => {
                ErrorCode::RecordTooLarge
            }
            PublishError::InvalidJson(_) | PublishError::TooDeep(_) => ErrorCode::InvalidJson,
            PublishError::Kafka { .. } => ErrorCode::KafkaUnavailable,
            PublishError::RateLimited(_) => ErrorCode::RateLimited,
        }
    }
}

impl Connection {
    /// A client's `publish`: checked, then produced on a task of its own.
    pub(super) fn publish(&mut self, id: Option<Value>, publication: Publication) {
        if let Err(e) = self.start_publish(&id, publication) {
            self.error(id.as_ref(), e.error_code(), e.to_string());
        }
    }

    fn start_publish(
        &mut self,
        id: &Option<Value>,
        publication: Publication,
    ) -> Result<(), PublishError> {
        let services = &self.services;
        let producer = services.producer.clone().ok_or(PublishError::Disabled)?;
        publish::check_topic(
            &self.identity.permissions,
            &services.router,
            &publication.topic,
        )?;
        publish::check_value(
            &services.config.publish,
            &publication.value,
            publication.json,
        )?;
        let per_sec = services.config.publish.max_per_connection_per_sec;
        let publishing = self.publishing.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(64);
            let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
            Box::new(Publishing {
                limiter: RateLimiter::direct(Quota::per_second(rate)),
                tx,
                rx,
            })
        });
        if publishing.limiter.check().is_err() {
            return Err(PublishError::RateLimited(per_sec));
        }
        let (tx, id) = (publishing.tx.clone(), id.clone());
        tokio::spawn(async move {
            let result = publish::produce(&producer, &publication).await;
            // The connection may have ended meanwhile; the record was produced all the same.
            let _ = tx.send((id, publication.topic, result)).await;
        });
        Ok(())
    }

    /// Answers a publish once Kafka acknowledged it or refused it.
    pub(super) fn on_produced(&mut self, (id, topic, result): Produced) {
        match result {
            Ok(delivered) => self.push(ServerFrame::Published {
                id,
                topic,
                partition: delivered.partition,
                offset: delivered.offset,
            }),
            Err(e) => self.error(id.as_ref(), e.error_code(), e.to_string()),
        }
    }
}
