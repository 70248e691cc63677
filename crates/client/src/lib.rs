//! An async (tokio) client of switchboard's JSON protocol over WebSocket (docs/protocol.md):
//! subscriptions that recover what they missed across reconnects, publish, presence, history, RPC.
//!
//! # Brief overview
//!
//! - [`Client`] holds one connection, shared by its clones. [`Client::builder`] sets the URL, token,
//!   name, [`Backoff`] and timeout; [`Client::connect`] connects; every command
//!   ([`publish`](Client::publish), [`presence`](Client::presence), [`history`](Client::history),
//!   [`rpc`](Client::rpc), ...) waits for its own reply, matched by id, up to the timeout.
//! - [`Subscription`] is a [`Stream`](futures_core::Stream) of [`Event`]s for one channel. It follows
//!   the channel's offsets and, after a reconnect, subscribes again with `recover`, so that every
//!   publication arrives exactly once and in order; when that is impossible it says so with
//!   [`Recovery::Lost`].
//! - [`Client::state`] is a `watch` of the connection's [`State`]. A lost connection is re-established
//!   after a jittered, growing delay, unless the server said not to (disconnect codes 3500 and above),
//!   which closes the client ([`State::Closed`]).
//!
//! # Example
//!
//! ```no_run
//! use serde_json::json;
//! use switchboard_client::{Client, Event};
//!
//! # async fn run() -> Result<(), switchboard_client::Error> {
//! let client = Client::builder("ws://127.0.0.1:8080/connection/websocket")
//!     .name("my-service")
//!     .build()?;
//! client.connect().await?;
//! let mut news = client.subscribe("news").await?;
//! client.publish("news", json!({"title": "hello"})).await?;
//! while let Some(event) = news.recv().await {
//!     if let Event::Publication(p) = event {
//!         println!("{}: {:?}", p.offset, p.data);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/subscribe.rs` is a complete program (`cargo run -p switchboard-client --example
//! subscribe`).
//!
//! # Transport
//!
//! The WebSocket client is tokio-tungstenite: switchboard's own codec (`switchboard-websocket`) is
//! the server's half only. `ws://` works as is; `wss://` needs the `rustls` feature.

mod backoff;
mod client;
mod driver;
mod error;
mod session;
mod types;
mod wire;

pub use backoff::Backoff;
pub use client::{Client, ClientBuilder, Subscription};
pub use error::{Error, ServerError};
pub use switchboard_protocol::{DisconnectCode, ErrorCode, StreamPosition, UnsubscribeCode};
pub use types::{
    ClientInfo, Closed, Data, Event, History, HistoryOptions, PresenceStats, Publication, Recovery,
    State, SubscribeOptions, Subscribed,
};
