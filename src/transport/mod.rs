//! Transports: HTTP routes and the WebSocket protocol.

pub mod http;
pub mod protocol;
pub mod ws;
