//! switchboard: a real-time push server. It holds every client's connection and pushes to it, so that
//! application handlers (in any language that speaks HTTP) never have to.
//!
//! # Where things are
//!
//! - [`server`]: the TCP listener, the HTTP/1.1 layer (hyper), routing, and graceful shutdown.
//! - [`transport`]: one module per way a client connects; a connection enters the server there.
//!   [`transport::websocket`] upgrades a request and runs the connection's task;
//!   [`transport::fallback`] serves the HTTP fallbacks.
//! - [`limits`]: client connections in total, per address, and per second from one address.
//! - [`tls`]: rustls on the client listener, with the certificate reloaded on SIGHUP.
//! - [`config`]: every setting, from defaults, a TOML file, `SWITCHBOARD_*` variables and flags.
//! - [`cli`]: the `switchboard` command line; [`tools`] runs its client subcommands (`subscribe`,
//!   `publish`).
//! - [`admin`]: the operator's console at `/admin/` on the API listener (`[admin] enabled`).
//! - [`demo`]: the chat demo page at `/`, with the JavaScript client of `clients/js`.
//!
//! The WebSocket protocol itself (framing, compression, keepalive, close) is the
//! `switchboard-websocket` crate.

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod generate;
pub mod limits;
pub mod logging;
pub mod server;
pub mod tls;
pub mod tools;
pub mod transport;

pub use config::Config;
pub use server::{Server, ServerError, ShutdownHandle};
