//! One client connection's protocol state: connect, subscriptions, and every command of
//! docs/protocol.md. Transport-neutral: a transport feeds it frames ([`Client::handle_frame`]) and
//! drains its [`Session`] for replies and pushes.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_auth::TokenError;
use switchboard_engine::{HistoryQuery, PresenceEvent};
use switchboard_protocol::encode::{
    self, ConnectResult, HistoryResult, PresenceResult, PresenceStatsResult, PublishResult,
    RawJson, RefreshResult, SubscribeResult,
};
use switchboard_protocol::{
    ChannelRequest, ClientInfo, ConnectRequest, DecodeError, DisconnectCode, ErrorCode,
    HistoryRequest, Method, Publication, PublishRequest, SubscribeRequest, UnsubscribeCode,
    decode_command, lines,
};

use crate::hub::text;
use crate::namespace::NamespaceOptions;
use crate::node::Node;
use crate::session::{Control, Session};

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

    /// Carries out the orders the server API queued on this client's session (see [`Control`]).
    pub async fn apply_controls(&mut self) {
        for order in self.session.take_controls() {
            match order {
                Control::Subscribe(channel) => {
                    if self.subs.contains_key(&channel) {
                        continue;
                    }
                    let Ok(ns) = self.node.config.channels.resolve(&channel).cloned() else {
                        continue;
                    };
                    match self.join(&channel, &ns, None).await {
                        Ok((result, after)) => {
                            self.session
                                .push(text(encode::subscribe_push(&channel, &result)));
                            self.session.complete_subscribe(&channel, None, after);
                            self.announce(&channel).await;
                        }
                        Err((code, message)) => {
                            tracing::warn!(client = %self.info.client, %channel, code = code.code(), %message, "server-side subscribe failed")
                        }
                    }
                }
                Control::Unsubscribe(channel) => {
                    if let Some(m) = self.subs.remove(&channel) {
                        self.leave(&channel, m).await;
                        self.session.push(text(encode::unsubscribe_push(
                            &channel,
                            UnsubscribeCode::Server,
                        )));
                    }
                }
            }
        }
    }

    /// The user id (empty for anonymous connections).
    pub fn user(&self) -> &str {
        &self.info.user
    }

    /// Leaves every channel (presence, leave pushes); call when the connection is gone.
    pub async fn close(mut self) {
        self.node.unregister(&self.session);
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
            Method::Connect(req) => return self.connect(id, req).await,
            Method::Subscribe(req) => self.subscribe(id, req).await,
            Method::Unsubscribe(ChannelRequest { channel }) => {
                if let Some(m) = self.subs.remove(&channel) {
                    self.leave(&channel, m).await;
                }
                self.reply(id, "unsubscribe", &serde_json::Map::new());
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
            Method::Refresh(req) => return self.refresh(id, &req.token),
        }
        Ok(())
    }

    async fn connect(&mut self, id: u64, req: ConnectRequest) -> Flow {
        if self.connected {
            self.error(id, ErrorCode::BadRequest, "already connected");
            return Err(DisconnectCode::BadRequest);
        }
        let mut channels = Vec::new();
        let mut expires_at = None;
        match (req.token.as_deref(), self.node.auth.as_ref()) {
            (Some(token), Some(verifier)) => match verifier.connection(token) {
                Ok(claims) => {
                    self.info = Arc::new(ClientInfo {
                        client: self.info.client.clone(),
                        user: claims.user,
                        info: claims.info,
                    });
                    channels = claims.channels;
                    expires_at = claims.expires_at;
                }
                Err(TokenError::Expired) => {
                    self.error(id, ErrorCode::TokenExpired, "connection token expired");
                    return Err(DisconnectCode::Expired);
                }
                Err(e) => {
                    self.error(id, ErrorCode::Unauthorized, &e.to_string());
                    return Err(DisconnectCode::InvalidToken);
                }
            },
            (Some(_), None) => {
                self.error(
                    id,
                    ErrorCode::Unauthorized,
                    "token verification is not configured",
                );
                return Err(DisconnectCode::InvalidToken);
            }
            (None, _) if self.node.config.client.allow_anonymous => {}
            (None, _) => {
                self.error(id, ErrorCode::Unauthorized, "a token is required");
                return Err(DisconnectCode::InvalidToken);
            }
        }
        self.connected = true;
        self.session.set_expires_at(expires_at);
        self.node.register(&self.session, &self.info.user);
        tracing::debug!(client = %self.info.client, user = %self.info.user, transport = self.transport, name = ?req.name, version = ?req.version, "client connected");
        // Server-side subscriptions from the token: joined before the reply, answered inside it; the
        // publications that arrive meanwhile wait and follow the reply.
        let mut subs = std::collections::BTreeMap::new();
        let mut joined = Vec::new();
        for channel in channels {
            let Ok(ns) = self.node.config.channels.resolve(&channel).cloned() else {
                tracing::warn!(client = %self.info.client, %channel, "token names a channel of no namespace; skipped");
                continue;
            };
            if self.subs.contains_key(&channel)
                || self.subs.len() >= self.node.config.client.max_channels
            {
                continue;
            }
            match self.join(&channel, &ns, None).await {
                Ok((result, after)) => {
                    subs.insert(channel.clone(), result);
                    joined.push((channel, after));
                }
                Err((code, message)) => {
                    tracing::warn!(client = %self.info.client, %channel, code = code.code(), %message, "server-side subscription failed")
                }
            }
        }
        let now = switchboard_auth::now();
        self.reply(
            id,
            "connect",
            &ConnectResult {
                client: self.info.client.clone(),
                version: env!("CARGO_PKG_VERSION"),
                ping: self.node.config.ping_interval_secs,
                subs,
                expires: expires_at.is_some(),
                ttl: expires_at.map(|at| at.saturating_sub(now)),
            },
        );
        for (channel, after) in joined {
            self.session.complete_subscribe(&channel, None, after);
            self.announce(&channel).await;
        }
        Ok(())
    }

    fn refresh(&mut self, id: u64, token: &str) -> Flow {
        let Some(verifier) = self.node.auth.as_ref() else {
            // Nothing to refresh: connections without a verified token never expire.
            self.reply(
                id,
                "refresh",
                &RefreshResult {
                    expires: false,
                    ttl: None,
                },
            );
            return Ok(());
        };
        match verifier.connection(token) {
            Ok(claims) if claims.user == self.info.user => {
                self.session.set_expires_at(claims.expires_at);
                let now = switchboard_auth::now();
                self.reply(
                    id,
                    "refresh",
                    &RefreshResult {
                        expires: claims.expires_at.is_some(),
                        ttl: claims.expires_at.map(|at| at.saturating_sub(now)),
                    },
                );
                Ok(())
            }
            Ok(_) => {
                self.error(
                    id,
                    ErrorCode::Unauthorized,
                    "the new token is for another user",
                );
                Err(DisconnectCode::InvalidToken)
            }
            Err(TokenError::Expired) => {
                self.error(id, ErrorCode::TokenExpired, "the new token has expired too");
                Ok(())
            }
            Err(e) => {
                self.error(id, ErrorCode::Unauthorized, &e.to_string());
                Err(DisconnectCode::InvalidToken)
            }
        }
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
            let checked = match (req.token.as_deref(), self.node.auth.as_ref()) {
                (Some(token), Some(v)) => v.subscription(token, &channel, &self.info.user),
                _ => {
                    return self.error(
                        id,
                        ErrorCode::PermissionDenied,
                        "private channel: a subscription token is required",
                    );
                }
            };
            match checked {
                Ok(_) => {}
                Err(TokenError::Expired) => {
                    return self.error(id, ErrorCode::TokenExpired, "subscription token expired");
                }
                Err(e) => return self.error(id, ErrorCode::PermissionDenied, &e.to_string()),
            }
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
        let recover = req.recover.then(|| (req.epoch, req.offset.unwrap_or(0)));
        match self.join(&channel, &ns, recover).await {
            Ok((result, after)) => {
                self.session.complete_subscribe(
                    &channel,
                    Some(text(encode::reply(id, "subscribe", &result))),
                    after,
                );
                self.announce(&channel).await;
            }
            Err((code, message)) => self.error(id, code, &message),
        }
    }

    /// Joins `channel`: registers with the hub (buffering live publications), reads the stream's
    /// position and, with `recover = Some((epoch, offset))`, what the client missed. Returns the
    /// subscribe result and the offset after which buffered publications are new; the caller then
    /// calls `complete_subscribe` and `announce`.
    async fn join(
        &mut self,
        channel: &str,
        ns: &NamespaceOptions,
        recover: Option<(Option<String>, u64)>,
    ) -> Result<(SubscribeResult, u64), (ErrorCode, String)> {
        let engine = &self.node.engine;
        self.session.begin_subscribe(channel);
        if self.node.hub.add(channel, Arc::clone(&self.session))
            && let Err(e) = engine.subscribe(channel).await
        {
            self.node.hub.remove(channel, self.session.key());
            self.session.abort_subscribe(channel);
            return Err((ErrorCode::Internal, e.to_string()));
        }
        let mut result = SubscribeResult::default();
        let mut after = 0;
        if ns.keeps_history() {
            let since = recover
                .as_ref()
                .filter(|(epoch, _)| ns.recover && epoch.is_some())
                .map(|(_, o)| *o);
            let query = HistoryQuery {
                since,
                limit: if since.is_some() { None } else { Some(0) },
                reverse: false,
            };
            let history = match engine.history(channel, &query, &ns.stream()).await {
                Ok(h) => h,
                Err(e) => {
                    self.unsubscribe_local(channel).await;
                    self.session.abort_subscribe(channel);
                    return Err((ErrorCode::Internal, e.to_string()));
                }
            };
            let pos = history.position;
            if let Some((epoch, _)) = &recover {
                let pubs = &history.publications;
                let complete = since.is_some_and(|since| {
                    epoch.as_deref() == Some(pos.epoch.as_str())
                        && since <= pos.offset
                        && (since == pos.offset
                            || (pubs.first().is_some_and(|p| p.offset == since + 1)
                                && pubs.last().is_some_and(|p| p.offset == pos.offset)))
                });
                result.recovered = Some(complete);
                if complete {
                    result.publications = pubs
                        .iter()
                        .map(|p| RawJson(encode::publication(p)))
                        .collect();
                }
            }
            self.node.hub.note_position(channel, &pos.epoch, pos.offset);
            after = pos.offset;
            result.recoverable = ns.recover;
            result.epoch = Some(pos.epoch);
            result.offset = Some(pos.offset);
        } else if recover.is_some() {
            result.recovered = Some(false);
        }
        self.subs.insert(
            channel.to_owned(),
            Membership {
                presence: ns.presence,
                join_leave: ns.join_leave,
            },
        );
        Ok((result, after))
    }

    /// Presence and the join push for a channel just joined.
    async fn announce(&self, channel: &str) {
        let Some(m) = self.subs.get(channel).copied() else {
            return;
        };
        if m.presence {
            let engine = &self.node.engine;
            let _ = engine.add_presence(channel, Arc::clone(&self.info)).await;
            if m.join_leave {
                let _ = engine
                    .publish_presence_event(channel, PresenceEvent::Join, Arc::clone(&self.info))
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
            let engine = &self.node.engine;
            let _ = engine.unsubscribe(channel).await;
            // Another client may have subscribed meanwhile, its engine subscribe racing ours: make
            // sure the node still receives the channel. (A publication lost in between shows as a gap,
            // which its subscribers recover from.)
            if self.node.hub.subscriber_count(channel) > 0 {
                let _ = engine.subscribe(channel).await;
            }
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
