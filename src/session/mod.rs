//! Per-client state: subscriptions with a position per partition, and which
//! connection holds each durable session (stored in [`crate::store`]).

pub mod attachments;
pub mod subscription;
