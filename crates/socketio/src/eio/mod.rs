//! Engine.IO v4: the transport layer under Socket.IO (handshake, heartbeat, HTTP long-polling,
//! WebSocket, and the upgrade from one to the other).

mod packet;
mod request;
mod session;

pub use packet::{
    Data, Frame, PROBE, Packet, PacketError, SEPARATOR, SharedText, decode_payload, encode_payload,
};
pub use request::{BadRequest, Method, Request, RequestError, Transport, verify};
pub use session::{
    CloseReason, Config, Handshake, Poll, SendError, Session, Sid, WsError, WsOutcome,
};

#[cfg(test)]
mod session_tests;
