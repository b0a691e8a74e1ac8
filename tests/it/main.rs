//! Integration tests: a real broker (kgate's embedded tansu, in its own
//! process, over TCP), real gateway processes, real WebSocket clients.

mod browser;
mod cli;
mod cluster;
mod docker;
mod fuzz;
mod harness;
mod hostile;
mod http_transports;
mod observability;
mod payloads;
mod protection;
mod proxy;
mod security;
mod sessions;
mod streaming;
mod topology;
