//! The ways a client connects. Each transport turns its wire into messages for the application and
//! back: WebSocket, and the HTTP fallbacks (SSE, long polling, ajax polling) for where WebSocket does
//! not get through.

mod cors;
mod downstream;
pub mod http;
mod http_session;
mod poll;
mod relay;
mod sse;
pub mod websocket;
