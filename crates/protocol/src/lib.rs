//! switchboard's client protocol, independent of any transport: the data model (publications,
//! positions, client info), the commands clients send, the replies and pushes the server sends, the
//! error and disconnect codes, and the JSON wire format of all of it. docs/protocol.md is its
//! specification.
//!
//! # Brief overview
//!
//! - [`decode_command`] turns one line of a frame into a [`Command`] or a [`DecodeError`] that says
//!   what to answer.
//! - [`json`] is the one rule for JSON switchboard accepts and forwards, wherever it comes from.
//! - [`encode`] builds replies and pushes; pushes are written by hand because a publication is
//!   encoded once and sent to every subscriber.
//! - [`Frame`] is one encoded reply or push as the hub queues it, shared by every subscriber of a
//!   publication, with a cache slot per wire type so that each transport wraps it once.
//! - [`proxy`] is the proxy contract of docs/proxy.md (events, replies, the `Proxy` trait), shared
//!   by the hub that calls proxies and the crate that carries the calls over HTTP.
//! - [`ErrorCode`], [`DisconnectCode`] and [`UnsubscribeCode`] are the codes of docs/protocol.md.

mod codes;
mod command;
pub mod encode;
mod frame;
pub mod json;
pub mod proxy;
mod types;

pub use codes::{DisconnectCode, ErrorCode, UnsubscribeCode};
pub use command::{
    ChannelRequest, Command, ConnectRequest, DecodeError, HistoryRequest, MAX_ID, Method,
    PublishRequest, RefreshRequest, RpcRequest, SubscribeRequest, decode_command, lines,
};
pub use frame::Frame;
pub use types::{ClientInfo, Payload, Publication, StreamPosition, single_line, single_line_raw};

/// The WebSocket subprotocol name of this protocol.
pub const SUBPROTOCOL: &str = "switchboard.json";
