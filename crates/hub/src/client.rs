//! One client connection's protocol state: connect, subscriptions, and every command of
//! docs/protocol.md. Transport-neutral: a transport feeds it frames ([`Client::handle_frame`]) and
//! drains its [`Session`] for replies and pushes.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_engine::{HistoryQuery, PresenceEvent};
use switchboard_protocol::encode::{
    self, ConnectResult, HistoryResult, PresenceResult, PresenceStatsResult, PublishResult,
    RawJson, RefreshResult, SubscribeResult,
};
use switchboard_protocol::{
    ChannelRequest, ClientInfo, ConnectRequest, DecodeError, DisconnectCode, ErrorCode,
    HistoryRequest, Method, Publication, PublishRequest, SubscribeRequest, decode_command, lines,
};

use crate::hub::text;
use crate::namespace::NamespaceOptions;
use crate::node::Node;
use crate::session::Session;

/// A client's protocol state, owned by its transport's task.
#[derive(Debug)]
pub struct Client {
    node: Arc<Node>,
    session: Arc<Session>,
    info: Arc<ClientInfo>,
    transport: &'static str,
    connected: bool,
    subs: HashMap<String, Membership>,
}

/// What leaving a channel involves.
#[derive(Debug, Clone, Copy)]
struct Membership {
    presence: bool,
    join_leave: bool,
}

/// The outcome of one command: keep going, or disconnect with a code.
type Flow = Result<(), DisconnectCode>;

impl Client {
    pub(crate) fn new(node: Arc<Node>, key: u64, transport: &'static str) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let session = Arc::new(Session::new(
            key,
            id.clone(),
            node.config.client.queue_bytes,
        ));
        Self {
            node,
            session,
            info: Arc::new(ClientInfo {
                client: id,
                user: String::new(),
                info: None,
            }),
            transport,
            connected: false,
            subs: HashMap::new(),
        }
    }

    /// The outgoing queue the transport drains.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// This connection's id.
    pub fn id(&self) -> &str {
        &self.info.client
    }

    /// Handles one frame (one or more commands separated by newlines). Replies and pushes go to the
    /// session. `Err(code)`: disconnect the client with `code`.
    pub async fn handle_frame(&mut self, frame: &[u8]) -> Flow {
        for line in lines(frame) {
            self.handle_line(line).await?;
        }
        Ok(())
    }

    /// Leaves every channel (presence, leave pushes); call when the connection is gone.
    pub async fn close(mut self) {
        for (channel, m) in std::mem::take(&mut self.subs) {
            self.leave(&channel, m).await;
        }
    }

    async fn handle_line(&mut self, line: &[u8]) -> Flow {
        for channel in self.session.take_dropped() {
            // The hub already removed us; only presence is left to clean up.
            if let Some(m) = self.subs.remove(&channel) {
                self.leave_presence(&channel, m).await;
            }
        }
        let cmd = match decode_command(line) {
            Ok(cmd) => cmd,
            Err(DecodeError::Frame(reason)) => {
                tracing::debug!(client = %self.info.client, %reason, "unparsable command");
                return Err(DisconnectCode::BadRequest);
            }
            Err(DecodeError::Command { id, code, message }) => {
                self.error(id, code, &message);
                return Ok(());
            }
        };
        let id = cmd.id;
        if !self.connected && !matches!(cmd.method, Method::Connect(_)) {
            self.error(id, ErrorCode::Unauthorized, "connect first");
            return Err(DisconnectCode::BadRequest);
        }
        match cmd.method {
            Method::Connect(req) => return self.connect(id, req),
            Method::Subscribe(req) => self.subscribe(id, req).await,
            Method::Unsubscribe(ChannelRequest { channel }) => {
                if let Some(m) = self.subs.remove(&channel) {
                    self.leave(&channel, m).await;
                }
                self.reply(id, "unsubscribe", &serde_json_empty());
            }
            Method::Publish(req) => self.publish(id, req).await,
            Method::Presence(ChannelRequest { channel }) => {
                if self.presence_allowed(id, &channel) {
                    match self.node.engine.presence(&channel).await {
                        Ok(p) => self.reply(id, "presence", &PresenceResult { presence: &p }),
                        Err(e) => self.error(id, ErrorCode::Internal, &e.to_string()),
                    }
                }
            }
            Method::PresenceStats(ChannelRequest { channel }) => {
                if self.presence_allowed(id, &channel) {
                    match self.node.engine.presence_stats(&channel).await {
                        Ok(s) => self.reply(
                            id,
                            "presence_stats",
                            &PresenceStatsResult {
                                num_clients: s.num_clients,
                                num_users: s.num_users,
                            },
                        ),
                        Err(e) => self.error(id, ErrorCode::Internal, &e.to_string()),
                    }
                }
            }
            Method::History(req) => self.history(id, req).await,
            Method::Rpc(_) => {
                self.error(id, ErrorCode::NotAvailable, "no RPC handler is configured")
            }
            Method::Refresh(_) => self.reply(
                id,
                "refresh",
                &RefreshResult {
                    expires: false,
                    ttl: None,
                },
            ),
        }
        Ok(())
    }

    fn connect(&mut self, id: u64, req: ConnectRequest) -> Flow {
        if self.connected {
            self.error(id, ErrorCode::BadRequest, "already connected");
            return Err(DisconnectCode::BadRequest);
        }
        if req.token.is_some() {
            // Tokens are verified by the auth layer; without one configured, no token can be trusted.
            self.error(
                id,
                ErrorCode::Unauthorized,
                "token verification is not configured",
            );
            return Err(DisconnectCode::InvalidToken);
        }
        if !self.node.config.client.allow_anonymous {
            self.error(id, ErrorCode::Unauthorized, "a token is required");
            return Err(DisconnectCode::InvalidToken);
        }
        self.connected = true;
        tracing::debug!(client = %self.info.client, transport = self.transport, name = ?req.name, version = ?req.version, "client connected");
        self.reply(
            id,
            "connect",
            &ConnectResult {
                client: self.info.client.clone(),
                version: env!("CARGO_PKG_VERSION"),
                ping: self.node.config.ping_interval_secs,
                subs: Default::default(),
            },
        );
        Ok(())
    }

    fn namespace(&self, id: u64, channel: &str) -> Option<NamespaceOptions> {
        match self.node.config.channels.resolve(channel) {
            Ok(ns) => Some(ns.clone()),
            Err(code) => {
                self.error(id, code, code.message());
                None
            }
        }
    }

    async fn subscribe(&mut self, id: u64, req: SubscribeRequest) {
        let channel = req.channel;
        let Some(ns) = self.namespace(id, &channel) else {
            return;
        };
        if ns.private {
            return self.error(
                id,
                ErrorCode::PermissionDenied,
                "private channel: a subscription token is required",
            );
        }
        if self.subs.contains_key(&channel) {
            return self.error(id, ErrorCode::AlreadySubscribed, "already subscribed");
        }
        if self.subs.len() >= self.node.config.client.max_channels {
            return self.error(
                id,
                ErrorCode::LimitExceeded,
                "too many channels for one connection",
            );
        }
        let engine = &self.node.engine;
        self.session.begin_subscribe(&channel);
        if self.node.hub.add(&channel, Arc::clone(&self.session))
            && let Err(e) = engine.subscribe(&channel).await
        {
            self.node.hub.remove(&channel, self.session.key());
            self.session.abort_subscribe(&channel);
            return self.error(id, ErrorCode::Internal, &e.to_string());
        }
        let mut result = SubscribeResult::default();
        let mut after = 0;
        if ns.keeps_history() {
            let recovering = req.recover && ns.recover && req.epoch.is_some();
            let since = req.offset.unwrap_or(0);
            let query = HistoryQuery {
                since: recovering.then_some(since),
                limit: if recovering { None } else { Some(0) },
                reverse: false,
            };
            let history = match engine.history(&channel, &query, &ns.stream()).await {
                Ok(h) => h,
                Err(e) => {
                    self.unsubscribe_local(&channel).await;
                    self.session.abort_subscribe(&channel);
                    return self.error(id, ErrorCode::Internal, &e.to_string());
                }
            };
            let pos = history.position;
            if req.recover {
                let pubs = &history.publications;
                let complete = recovering
                    && req.epoch.as_deref() == Some(pos.epoch.as_str())
                    && since <= pos.offset
                    && (since == pos.offset
                        || (pubs.first().is_some_and(|p| p.offset == since + 1)
                            && pubs.last().is_some_and(|p| p.offset == pos.offset)));
                result.recovered = Some(complete);
                if complete {
                    result.publications = pubs
                        .iter()
                        .map(|p| RawJson(encode::publication(p)))
                        .collect();
                }
            }
            self.node
                .hub
                .note_position(&channel, &pos.epoch, pos.offset);
            after = pos.offset;
            result.recoverable = ns.recover;
            result.epoch = Some(pos.epoch);
            result.offset = Some(pos.offset);
        } else if req.recover {
            result.recovered = Some(false);
        }
        let membership = Membership {
            presence: ns.presence,
            join_leave: ns.join_leave,
        };
        self.subs.insert(channel.clone(), membership);
        self.session.complete_subscribe(
            &channel,
            text(encode::reply(id, "subscribe", &result)),
            after,
        );
        if ns.presence {
            let _ = engine.add_presence(&channel, Arc::clone(&self.info)).await;
            if ns.join_leave {
                let _ = engine
                    .publish_presence_event(&channel, PresenceEvent::Join, Arc::clone(&self.info))
                    .await;
            }
        }
    }

    async fn publish(&mut self, id: u64, req: PublishRequest) {
        let Some(ns) = self.namespace(id, &req.channel) else {
            return;
        };
        if !ns.allow_publish {
            return self.error(
                id,
                ErrorCode::PermissionDenied,
                "clients may not publish in this namespace",
            );
        }
        let mut publication = Publication::new(req.payload);
        publication.info = Some(Arc::clone(&self.info));
        match self
            .node
            .engine
            .publish(&req.channel, publication, &ns.stream())
            .await
        {
            Ok(pos) => self.reply(
                id,
                "publish",
                &PublishResult {
                    epoch: ns.keeps_history().then_some(pos.epoch),
                    offset: pos.offset,
                },
            ),
            Err(e) => self.error(id, ErrorCode::Internal, &e.to_string()),
        }
    }

    async fn history(&mut self, id: u64, req: HistoryRequest) {
        let Some(ns) = self.namespace(id, &req.channel) else {
            return;
        };
        if !ns.keeps_history() {
            return self.error(
                id,
                ErrorCode::NotAvailable,
                "this namespace keeps no history",
            );
        }
        if !ns.allow_history {
            return self.error(
                id,
                ErrorCode::PermissionDenied,
                "clients may not read history in this namespace",
            );
        }
        let query = HistoryQuery {
            since: req.since.as_ref().map(|s| s.offset),
            limit: req.limit,
            reverse: req.reverse,
        };
        match self
            .node
            .engine
            .history(&req.channel, &query, &ns.stream())
            .await
        {
            Ok(h)
                if req
                    .since
                    .as_ref()
                    .is_some_and(|s| s.epoch != h.position.epoch) =>
            {
                self.error(
                    id,
                    ErrorCode::UnrecoverablePosition,
                    "the stream's epoch changed",
                )
            }
            Ok(h) => self.reply(
                id,
                "history",
                &HistoryResult {
                    publications: h
                        .publications
                        .iter()
                        .map(|p| RawJson(encode::publication(p)))
                        .collect(),
                    epoch: h.position.epoch,
                    offset: h.position.offset,
                },
            ),
            Err(e) => self.error(id, ErrorCode::Internal, &e.to_string()),
        }
    }

    fn presence_allowed(&self, id: u64, channel: &str) -> bool {
        let Some(ns) = self.namespace(id, channel) else {
            return false;
        };
        if !ns.presence {
            self.error(
                id,
                ErrorCode::NotAvailable,
                "this namespace keeps no presence",
            );
            return false;
        }
        if !self.subs.contains_key(channel) {
            self.error(
                id,
                ErrorCode::PermissionDenied,
                "subscribe to the channel first",
            );
            return false;
        }
        true
    }

    async fn leave(&self, channel: &str, m: Membership) {
        self.unsubscribe_local(channel).await;
        self.leave_presence(channel, m).await;
    }

    async fn unsubscribe_local(&self, channel: &str) {
        if self.node.hub.remove(channel, self.session.key()) {
            let _ = self.node.engine.unsubscribe(channel).await;
        }
    }

    async fn leave_presence(&self, channel: &str, m: Membership) {
        if m.presence {
            let engine = &self.node.engine;
            let _ = engine.remove_presence(channel, &self.info.client).await;
            if m.join_leave {
                let _ = engine
                    .publish_presence_event(channel, PresenceEvent::Leave, Arc::clone(&self.info))
                    .await;
            }
        }
    }

    fn reply<T: serde::Serialize>(&self, id: u64, method: &str, result: &T) {
        self.session.push(text(encode::reply(id, method, result)));
    }

    fn error(&self, id: u64, code: ErrorCode, message: &str) {
        self.session.push(text(encode::error(id, code, message)));
    }
}

/// `{}` as a reply body.
fn serde_json_empty() -> std::collections::BTreeMap<String, u8> {
    std::collections::BTreeMap::new()
}
