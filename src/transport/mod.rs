//! Transports: HTTP routes and the WebSocket protocol.

pub mod access;
pub mod connection;
pub mod http;
pub mod link;
pub mod poll;
pub mod protocol;
pub mod publish;
pub mod reply;
pub mod resume;
pub mod server;
pub mod sse;
mod throttle;
pub mod ws;
