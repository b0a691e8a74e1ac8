//! Integration tests: a real broker in its own process over TCP (kgate's embedded
//! tansu, or Apache Kafka with `KGATE_TEST_BROKER=kafka`), real gateway processes,
//! real WebSocket clients.

mod browser;
mod cli;
mod cluster;
mod deflate;
mod delta;
mod docker;
mod fuzz;
mod harness;
mod hostile;
mod http_transports;
mod mqtt;
mod observability;
mod payloads;
mod protection;
mod proxy;
mod sdk;
mod security;
mod sessions;
mod streaming;
mod topology;
