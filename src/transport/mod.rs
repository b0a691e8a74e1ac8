//! Transports: HTTP routes, and the WebSocket, SSE and long-poll links that carry
//! the connection engine's frames.

pub mod access;
pub mod http;
pub mod metrics;
pub mod poll;
pub mod publish;
pub mod reply;
pub mod resume;
pub mod server;
pub mod sse;
pub mod ws;
