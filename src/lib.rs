//! kgate: a durable event-streaming gateway from Kafka to WebSocket clients.
//!
//! The path of a record: [`kafka::ingest`] → [`codec`] → [`router`] →
//! [`session`] → [`connection`] → [`transport`].

pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod demo;
pub mod gateway;
pub mod kafka;
pub mod limits;
pub mod logging;
pub mod router;
pub mod session;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod transport;
