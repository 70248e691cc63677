//! One client connection's protocol state: connect, subscriptions, and every command of
//! docs/protocol.md. Transport-neutral: a transport feeds it frames ([`Client::handle_frame`]) and
//! drains its [`Session`] for replies and pushes.
//!
//! This file reads frames and hands each command to the file that owns it; each of those is an
//! `impl Client` for one concern, so that a change to one command is read and tested alone:
//!
//! - `state.rs`: what a connection holds, and how commands answer (below every other file);
//! - `connect.rs`: `connect` (token, anonymous, connect proxy) and the token `refresh`;
//! - `subscribe.rs`: `subscribe` and `unsubscribe`, joining and leaving a channel, presence;
//! - `recovery.rs`: replaying a recovery too large for one reply;
//! - `publish.rs`: `publish` (through `Node::publish_as`, the server API's road too) and `rpc`;
//! - `queries.rs`: `history`, `presence`, `presence_stats`;
//! - `expiry.rs`: connection and subscription expiry, and the command rate limit;
//! - `orders.rs`: the server API's orders and the session's requests, carried out between frames;
//! - `proxying.rs`: calling the application's backend on the client's behalf.
//!
//! The unit tests (`tests/`) drive a [`Client`] on a [`Node`] over the memory engine with command
//! frames, and read what it queues: every command and code of docs/protocol.md, no socket.

mod connect;
mod expiry;
mod orders;
mod proxying;
mod publish;
mod queries;
mod recovery;
mod state;
mod subscribe;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use switchboard_protocol::{
    ChannelRequest, DecodeError, DisconnectCode, ErrorCode, Method, decode_command, lines,
};

pub use self::state::Client;
use self::state::Flow;
use crate::node::Node;
use crate::proxy::ForwardedHeaders;
#[cfg(doc)]
use crate::session::Session;

impl Node {
    /// A new client session for a connection arriving over `transport`.
    pub fn client(self: &Arc<Self>, transport: &'static str) -> Client {
        self.client_with(transport, None)
    }

    /// A new client session, with the handshake headers proxy calls forward (see
    /// [`Node::forwarded_headers`]).
    pub fn client_with(
        self: &Arc<Self>,
        transport: &'static str,
        headers: Option<ForwardedHeaders>,
    ) -> Client {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        Client::new(Arc::clone(self), key, transport, headers)
    }
}

impl Client {
    /// Handles one frame (one or more commands separated by newlines). Replies and pushes go to the
    /// session. `Err(code)`: disconnect the client with `code`.
    pub async fn handle_frame(&mut self, frame: &[u8]) -> Flow {
        for line in lines(frame) {
            // Boxed: a command's future (proxy calls, engine reads) is large, and inline it would be
            // part of every connection's task for the connection's whole life, idle or not.
            Box::pin(self.handle_line(line)).await?;
        }
        Ok(())
    }

    /// Leaves every channel (presence, leave pushes); call when the connection is gone, with the
    /// code it was disconnected with (`None`: it went away by itself).
    pub async fn close(mut self, code: Option<DisconnectCode>) {
        if let Some(code) = code {
            self.node
                .metrics
                .disconnects
                .get_or_create(&vec![("code", code.label())])
                .inc();
        }
        if self.connected {
            self.node
                .metrics
                .connections
                .get_or_create(&vec![("transport", self.transport)])
                .dec();
        }
        self.node.unregister(&self.session);
        for (channel, m) in std::mem::take(&mut self.subs) {
            // Boxed for the same reason as commands: kept out of every connection's task.
            Box::pin(self.leave(&channel, m)).await;
        }
    }

    /// One command: decoded, counted, held to the rate, to connect-first and to the private-channel
    /// rule, then handed to the file that owns it.
    async fn handle_line(&mut self, line: &[u8]) -> Flow {
        self.forget_dropped().await;
        let cmd = match decode_command(line) {
            Ok(cmd) => cmd,
            Err(DecodeError::Frame(reason)) => {
                tracing::debug!(client = %self.info.client, %reason, "unparsable command");
                return Err(DisconnectCode::BadRequest);
            }
            Err(DecodeError::Command { id, message, .. }) if !self.connected => {
                // Before connect every command but a valid connect ends the connection, whatever is
                // wrong with it (docs/protocol.md): an unknown method must not leave it unconnected.
                self.error(
                    id,
                    ErrorCode::Unauthorized,
                    &format!("connect first (and {message})"),
                );
                return Err(DisconnectCode::BadRequest);
            }
            Err(DecodeError::Command { id, code, message }) => {
                self.error(id, code, &message);
                return Ok(());
            }
        };
        let id = cmd.id;
        self.node
            .metrics
            .commands
            .get_or_create(&vec![("method", cmd.method.name())])
            .inc();
        if !self.take_budget() {
            let rate = self.node.config.client.max_commands_per_second;
            self.error(
                id,
                ErrorCode::TooManyRequests,
                &format!("over {rate} commands per second; slow down"),
            );
            return Ok(());
        }
        if !self.connected && !matches!(cmd.method, Method::Connect(_)) {
            self.error(id, ErrorCode::Unauthorized, "connect first");
            return Err(DisconnectCode::BadRequest);
        }
        if let Some(channel) = channel_used(&cmd.method)
            && !self.may_use(id, channel)
        {
            return Ok(());
        }
        match cmd.method {
            Method::Connect(req) => self.connect(id, req).await,
            Method::Subscribe(req) => self.subscribe(id, req).await,
            Method::Unsubscribe(ChannelRequest { channel }) => {
                self.unsubscribe(id, &channel).await;
                Ok(())
            }
            Method::Publish(req) => self.publish(id, req).await,
            Method::Presence(ChannelRequest { channel }) => {
                self.presence(id, &channel).await;
                Ok(())
            }
            Method::PresenceStats(ChannelRequest { channel }) => {
                self.presence_stats(id, &channel).await;
                Ok(())
            }
            Method::History(req) => {
                self.history(id, req).await;
                Ok(())
            }
            Method::Rpc(req) => self.rpc(id, req).await,
            Method::Refresh(req) => self.refresh(id, &req.token),
        }
    }

    /// Forgets the channels the hub dropped this client from (a gap it could not fill).
    async fn forget_dropped(&mut self) {
        for channel in self.session.take_dropped() {
            self.replays.remove(&channel);
            // The hub already removed us; only presence is left to clean up.
            if let Some(m) = self.subs.remove(&channel) {
                self.leave_presence(&channel, m).await;
            }
        }
    }

    /// The one check of private channels, for every command that reads or writes a channel (see
    /// [`channel_used`]): in a `private` namespace only a live subscription of this client, which
    /// itself needed a subscription token, the connection token's `channels` claim, the subscribe
    /// proxy's grant or the server API, lets a command through. Otherwise answers 103 and returns
    /// `false`. A channel of no namespace passes here; the command itself answers 102.
    fn may_use(&self, id: u64, channel: &str) -> bool {
        let private = self
            .node
            .config
            .channels
            .resolve(channel)
            .is_ok_and(|ns| ns.private);
        if private && !self.subs.contains_key(channel) {
            self.error(
                id,
                ErrorCode::PermissionDenied,
                "private channel: subscribe to it (with a subscription token) first",
            );
            return false;
        }
        true
    }
}

/// The channel a command reads or writes, which [`Client::may_use`] checks before the command runs.
/// `None` for commands that touch no channel's content: `subscribe` is what grants access (it checks
/// its own token or proxy), `unsubscribe` only gives it up. The match is exhaustive on purpose: a new
/// command does not compile until it is placed on one side or the other.
fn channel_used(method: &Method) -> Option<&str> {
    match method {
        Method::Publish(r) => Some(&r.channel),
        Method::Presence(r) | Method::PresenceStats(r) => Some(&r.channel),
        Method::History(r) => Some(&r.channel),
        Method::Connect(_)
        | Method::Subscribe(_)
        | Method::Unsubscribe(_)
        | Method::Rpc(_)
        | Method::Refresh(_) => None,
    }
}
