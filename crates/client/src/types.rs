//! What the client hands out: publications, subscription events, results, and the connection's state.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_protocol::StreamPosition;

use crate::error::ServerError;

/// A publication's payload: JSON (`data` on the wire) or bytes (`b64data`). The server never converts
/// one into the other.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Any JSON value.
    Json(Value),
    /// Arbitrary bytes.
    Binary(Vec<u8>),
}

impl Data {
    /// The JSON value, unless the payload is binary.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Self::Json(v) => Some(v),
            Self::Binary(_) => None,
        }
    }

    /// The bytes, when the payload is binary.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Json(_) => None,
            Self::Binary(b) => Some(b),
        }
    }
}

impl From<Value> for Data {
    fn from(v: Value) -> Self {
        Self::Json(v)
    }
}

impl From<Vec<u8>> for Data {
    fn from(b: Vec<u8>) -> Self {
        Self::Binary(b)
    }
}

impl From<&[u8]> for Data {
    fn from(b: &[u8]) -> Self {
        Self::Binary(b.to_vec())
    }
}

/// Who a client is, as shown in presence, in join/leave events and as a publication's publisher.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientInfo {
    /// The connection's id.
    pub client: String,
    /// The user's id (empty for anonymous connections).
    pub user: String,
    /// Application data about the connection (the token's `info` claim).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
}

/// One message of a channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Publication {
    /// Position in the channel's stream (0 in namespaces without history).
    pub offset: u64,
    /// The payload.
    pub data: Data,
    /// The publishing client, when a client (not the server API) published it.
    pub info: Option<ClientInfo>,
    /// The application's tags.
    pub tags: Option<BTreeMap<String, String>>,
}

/// Serializes as the protocol's publication object: `{"offset":N,"data":...}` (or `b64data`), with
/// `info` and `tags` when present.
impl Serialize for Publication {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("offset", &self.offset)?;
        match &self.data {
            Data::Json(v) => m.serialize_entry("data", v)?,
            Data::Binary(b) => m.serialize_entry("b64data", &BASE64.encode(b))?,
        }
        if let Some(info) = &self.info {
            m.serialize_entry("info", info)?;
        }
        if let Some(tags) = &self.tags {
            m.serialize_entry("tags", tags)?;
        }
        m.end()
    }
}

/// What a [`Subscription`](crate::Subscription) yields.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The subscription is active: the first time, and again after every reconnect (or resubscribe
    /// the server asked for). [`Subscribed::recovery`] says whether anything may have been missed.
    Subscribed(Subscribed),
    /// A publication. Within a recoverable channel they come in offset order, each exactly once,
    /// across reconnects.
    Publication(Publication),
    /// A client subscribed (namespaces with `join_leave`).
    Join(ClientInfo),
    /// A client left (namespaces with `join_leave`).
    Leave(ClientInfo),
    /// A publication arrived that this client cannot decode: its `data` is not JSON that serde_json
    /// reads, or its `b64data` is not base64. A server that keeps docs/protocol.md's JSON rule refuses
    /// such data at publish, so this points at a peer or an older server that does not. It is reported
    /// in the publication's place (its offset counts as delivered) and the stream goes on.
    Undecodable {
        /// The publication's offset.
        offset: u64,
        /// What could not be decoded.
        error: String,
    },
    /// The subscription ended for good; the stream ends after this event. `code` is the server's
    /// unsubscribe code (2000), or the error code of a resubscribe the server refused (103, 109, ...).
    Unsubscribed {
        /// Why, as a code.
        code: u32,
        /// Why, in words.
        reason: String,
    },
}

/// A subscription that became active.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscribed {
    /// The channel stream's position when subscribed (its epoch and latest offset); `None` in
    /// namespaces without history.
    pub position: Option<StreamPosition>,
    /// The namespace keeps history and allows recovery.
    pub recoverable: bool,
    /// Whether publications were missed while the subscription was away.
    pub recovery: Recovery,
    /// From the application's subscribe handler, if any.
    pub data: Option<Value>,
}

/// What happened to the publications sent while a subscription was away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The first subscription: nothing could be missed yet.
    Fresh,
    /// Every missed publication follows, in order, before the new ones.
    Recovered,
    /// Publications may have been missed and could not be recovered (the stream was lost, they left
    /// the history, or the namespace keeps none): reload the channel's state from its source.
    Lost,
}

/// The connection's state, as watched through [`Client::state`](crate::Client::state).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum State {
    /// Not connected yet ([`Client::connect`](crate::Client::connect) was not called, or its attempt
    /// failed).
    Disconnected,
    /// Opening the WebSocket and sending `connect`.
    Connecting,
    /// Connected.
    Connected {
        /// This connection's id on the server.
        client: String,
    },
    /// The connection was lost; the next attempt starts after `delay`.
    Reconnecting {
        /// Attempts since the last successful connect (1 for the first).
        attempt: u32,
        /// How long until it starts.
        delay: Duration,
        /// Why the last connection ended or the last attempt failed.
        reason: String,
    },
    /// For good: no more connections.
    Closed(Closed),
}

/// Why a client is closed.
#[derive(Clone, Debug, PartialEq)]
pub enum Closed {
    /// [`Client::close`](crate::Client::close) was called, or every handle was dropped.
    ByClient,
    /// The server disconnected with a code that says not to reconnect (3500–3999).
    ByServer {
        /// The disconnect code.
        code: u16,
        /// The server's reason.
        reason: String,
    },
    /// A reconnect was refused with an error that would come again (a token that no longer
    /// verifies, say).
    Refused(ServerError),
}

/// Options of [`Client::subscribe_with`](crate::Client::subscribe_with).
#[derive(Clone, Debug, Default)]
pub struct SubscribeOptions {
    /// Subscription token, for channels of private namespaces.
    pub token: Option<String>,
    /// Data for the application's subscribe handler.
    pub data: Option<Value>,
}

/// Options of [`Client::history`](crate::Client::history).
#[derive(Clone, Debug, Default)]
pub struct HistoryOptions {
    /// At most this many publications (`Some(0)`: none, only the position; `None`: all kept).
    pub limit: Option<usize>,
    /// Only publications after this position.
    pub since: Option<StreamPosition>,
    /// Newest first.
    pub reverse: bool,
}

/// A channel's history.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// The publications asked for.
    pub publications: Vec<Publication>,
    /// The stream's current position.
    pub position: StreamPosition,
}

/// How many are subscribed to a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PresenceStats {
    /// Connections.
    pub num_clients: usize,
    /// Distinct users among them.
    pub num_users: usize,
}
