//! Transports: HTTP routes and the WebSocket protocol.

pub mod access;
pub mod http;
pub mod protocol;
pub mod publish;
pub mod reply;
pub mod server;
pub mod ws;
