//! The ways a client connects. Each transport turns its wire into messages for the application and
//! back; today that is WebSocket, with SSE and HTTP polling to follow.

pub mod websocket;
