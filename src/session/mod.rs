//! Per-client state: subscriptions with a position per partition, and the
//! bounded outbox the router fills.

pub mod attachments;
pub mod outbox;
pub mod replication;
pub mod store;
pub mod subscription;
