//! One client connection's protocol state: connect, subscriptions, and every command of
//! docs/protocol.md. Transport-neutral: a transport feeds it frames ([`Client::handle_frame`]) and
//! drains its [`Session`] for replies and pushes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_auth::TokenError;
use switchboard_engine::{EngineError, HistoryQuery, PresenceEvent, StreamOptions};
use switchboard_protocol::encode::{
    self, ConnectResult, HistoryResult, PresenceResult, PresenceStatsResult, PublishResult,
    RawJson, RefreshResult, SubscribeResult,
};
use switchboard_protocol::{
    ChannelRequest, ClientInfo, ConnectRequest, DecodeError, DisconnectCode, ErrorCode,
    HistoryRequest, Method, Payload, Publication, PublishRequest, RpcRequest, SubscribeRequest,
    UnsubscribeCode, decode_command, lines, single_line, single_line_raw,
};

use crate::hub::text;
use crate::namespace::NamespaceOptions;
use crate::node::Node;
use crate::proxy::{self, ForwardedHeaders, Proxy, ProxyEvent, Refusal};
use crate::session::{Control, Session};

/// Seconds before asking the refresh or sub_refresh proxy again when it gave no usable answer: a
/// backend outage must not disconnect everyone whose grant happens to expire during it.
const PROXY_RETRY_SECS: u64 = 10;

/// A client's protocol state, owned by its transport's task.
#[derive(Debug)]
pub struct Client {
    node: Arc<Node>,
    session: Arc<Session>,
    info: Arc<ClientInfo>,
    transport: &'static str,
    /// Handshake headers for proxy calls (only those the proxy configuration names).
    headers: Option<ForwardedHeaders>,
    connected: bool,
    subs: HashMap<String, Membership>,
    /// Recoveries too large for the queue, being replayed a piece at a time (see [`Replay`]).
    replays: HashMap<String, Replay>,
    /// Token bucket of `max_commands_per_second`: commands left, and when they were counted.
    budget: (f64, std::time::Instant),
}

/// What leaving a channel involves, and when the subscription expires.
#[derive(Debug, Clone, Copy)]
struct Membership {
    presence: bool,
    join_leave: bool,
    /// Unix seconds when the subscription expires (its token's `exp`, or the subscribe proxy's
    /// `expire_at`); 0: never.
    expires_at: u64,
    /// Granted by the subscribe proxy: at expiry the sub_refresh proxy decides.
    proxied: bool,
}

/// A recovery being replayed: the subscribe reply said `recovered: true` and carried the first missed
/// publications that fitted in half the queue; the rest go into the queue as `pub` pushes, in offset
/// order, each time the queue has drained to a quarter of its bound ([`Control::Replay`]). Live
/// publications of the channel are meanwhile not queued: when the backlog is spent, a catch-up read
/// of history brings them, until a read reaches the live stream. So recovery works whatever
/// `queue_bytes` is, and memory holds one history read at most, as a reply carrying it all did.
#[derive(Debug)]
struct Replay {
    /// The stream's epoch: a catch-up read in another epoch means the stream was lost meanwhile.
    epoch: String,
    /// The offset of the last publication queued for the client.
    last: u64,
    /// Publications read from history and not queued yet, oldest first.
    backlog: VecDeque<Arc<Publication>>,
    /// How the namespace keeps the stream (for catch-up reads).
    stream: StreamOptions,
}

/// What [`Client::join`] did.
struct Joined {
    /// The subscribe result (its `publications`: the recovered ones that fit in the reply).
    result: SubscribeResult,
    /// Buffered live publications up to this offset were recovered already.
    after: u64,
    /// The recovered publications that did not fit in the reply, to replay.
    replay: Option<Replay>,
}

/// The outcome of one command: keep going, or disconnect with a code.
type Flow = Result<(), DisconnectCode>;

impl Client {
    pub(crate) fn new(
        node: Arc<Node>,
        key: u64,
        transport: &'static str,
        headers: Option<ForwardedHeaders>,
    ) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let burst = f64::from(node.config.client.max_commands_per_second) * 2.0;
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
            headers,
            budget: (burst, std::time::Instant::now()),
            connected: false,
            subs: HashMap::new(),
            replays: HashMap::new(),
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
                        Ok(Joined { result, after, .. }) => {
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
                Control::Refresh => self.refresh_by_proxy().await,
                Control::SubscriptionsExpired => self.expire_subscriptions().await,
                Control::Replay => self.replay().await,
            }
        }
    }

    /// The user id (empty for anonymous connections).
    pub fn user(&self) -> &str {
        &self.info.user
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
            self.leave(&channel, m).await;
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
            Method::Connect(req) => return self.connect(id, req).await,
            Method::Subscribe(req) => return self.subscribe(id, req).await,
            Method::Unsubscribe(ChannelRequest { channel }) => {
                if let Some(m) = self.subs.remove(&channel) {
                    self.leave(&channel, m).await;
                }
                self.reply(id, "unsubscribe", &serde_json::Map::new());
            }
            Method::Publish(req) => return self.publish(id, req).await,
            Method::Presence(ChannelRequest { channel }) => {
                if self.presence_allowed(id, &channel) {
                    match self.node.engine.presence(&channel).await {
                        Ok(p) => self.reply(id, "presence", &PresenceResult { presence: &p }),
                        Err(e) => self.engine_error(id, &e),
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
                        Err(e) => self.engine_error(id, &e),
                    }
                }
            }
            Method::History(req) => self.history(id, req).await,
            Method::Rpc(req) => return self.rpc(id, req).await,
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
        let mut data = None;
        let by_proxy = match req.token {
            Some(_) => None,
            None => self.proxy_for(ProxyEvent::Connect),
        };
        if let Some(proxy) = by_proxy {
            let request = self.request(proxy::ConnectRequest {
                name: req.name.as_deref(),
                version: req.version.as_deref(),
                data: req.data.as_ref(),
            });
            let granted: proxy::ConnectResult = match proxy::call(
                &*proxy,
                ProxyEvent::Connect,
                &request,
                self.headers(),
                &self.node.metrics,
            )
            .await
            {
                Ok(r) => r,
                Err(refusal) => return self.refuse_connect(id, refusal),
            };
            self.info = Arc::new(ClientInfo {
                client: self.info.client.clone(),
                user: granted.user,
                info: granted.info.map(single_line_raw),
            });
            channels = granted.channels;
            expires_at = granted.expire_at;
            data = granted.data.as_deref().map(raw_json);
            self.session
                .set_refresh_by_proxy(self.proxy_for(ProxyEvent::Refresh).is_some());
        } else if let Some(claims) = self.verify_connect_token(id, req.token.as_deref())? {
            self.info = Arc::new(ClientInfo {
                client: self.info.client.clone(),
                user: claims.user,
                info: claims.info.map(single_line_raw),
            });
            channels = claims.channels;
            expires_at = claims.expires_at;
        }
        self.connected = true;
        self.node
            .metrics
            .connections
            .get_or_create(&vec![("transport", self.transport)])
            .inc();
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
                Ok(Joined { result, after, .. }) => {
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
                data,
            },
        );
        for (channel, after) in joined {
            self.session.complete_subscribe(&channel, None, after);
            self.announce(&channel).await;
        }
        Ok(())
    }

    /// Checks a connect's token (or its absence): `Ok(Some(claims))` for a verified token,
    /// `Ok(None)` for an allowed anonymous connection.
    fn verify_connect_token(
        &self,
        id: u64,
        token: Option<&str>,
    ) -> Result<Option<switchboard_auth::ConnectionClaims>, DisconnectCode> {
        match (token, self.node.auth.as_ref()) {
            (Some(token), Some(verifier)) => match verifier.connection(token) {
                Ok(claims)
                    if claims.user.is_empty() && !self.node.config.client.allow_anonymous =>
                {
                    self.error(
                        id,
                        ErrorCode::Unauthorized,
                        "the token names no user (its `sub` is missing or empty) and anonymous connections are not allowed",
                    );
                    Err(DisconnectCode::InvalidToken)
                }
                Ok(claims) => Ok(Some(claims)),
                Err(TokenError::Expired) => {
                    self.error(id, ErrorCode::TokenExpired, "connection token expired");
                    Err(DisconnectCode::Expired)
                }
                Err(e) => {
                    self.error(id, ErrorCode::Unauthorized, &e.to_string());
                    Err(DisconnectCode::InvalidToken)
                }
            },
            (Some(_), None) => {
                self.error(
                    id,
                    ErrorCode::Unauthorized,
                    "token verification is not configured",
                );
                Err(DisconnectCode::InvalidToken)
            }
            (None, _) if self.node.config.client.allow_anonymous => Ok(None),
            (None, _) => {
                self.error(id, ErrorCode::Unauthorized, "a token is required");
                Err(DisconnectCode::InvalidToken)
            }
        }
    }

    /// Answers a connect the connect proxy did not grant, and ends the connection: with 3503 when the
    /// application refused (do not retry), 3004 when it could not answer (retry later).
    fn refuse_connect(&self, id: u64, refusal: Refusal) -> Flow {
        match refusal {
            Refusal::Error { code, message } => {
                self.session
                    .push(text(encode::error_code(id, code, &message, false)));
                Err(DisconnectCode::ForceDisconnect)
            }
            Refusal::Disconnect { reconnect } => Err(disconnect_code(reconnect)),
            Refusal::Failed(code, message) => {
                self.error(id, code, &message);
                Err(DisconnectCode::Internal)
            }
        }
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

    async fn subscribe(&mut self, id: u64, req: SubscribeRequest) -> Flow {
        let channel = req.channel;
        let Some(ns) = self.namespace(id, &channel) else {
            return Ok(());
        };
        if self.subs.contains_key(&channel) {
            self.error(id, ErrorCode::AlreadySubscribed, "already subscribed");
            return Ok(());
        }
        if self.subs.len() >= self.node.config.client.max_channels {
            self.error(
                id,
                ErrorCode::LimitExceeded,
                "too many channels for one connection",
            );
            return Ok(());
        }
        // Who grants it: a subscription token where one is given for a private channel, else the
        // subscribe proxy where the namespace asks for it; private channels need one of the two.
        let mut grant = Grant::default();
        if ns.private && (req.token.is_some() || !ns.subscribe_proxy) {
            let checked = match (req.token.as_deref(), self.node.auth.as_ref()) {
                (Some(token), Some(v)) => v.subscription(token, &channel, &self.info.user),
                _ => {
                    self.error(
                        id,
                        ErrorCode::PermissionDenied,
                        "private channel: a subscription token is required",
                    );
                    return Ok(());
                }
            };
            match checked {
                Ok(claims) => grant.expires_at = claims.expires_at,
                Err(TokenError::Expired) => {
                    self.error(id, ErrorCode::TokenExpired, "subscription token expired");
                    return Ok(());
                }
                Err(e) => {
                    self.error(id, ErrorCode::PermissionDenied, &e.to_string());
                    return Ok(());
                }
            }
        } else if ns.subscribe_proxy {
            let Some(proxy) = self.proxy_for(ProxyEvent::Subscribe) else {
                self.error(
                    id,
                    ErrorCode::NotAvailable,
                    "no subscribe handler is configured",
                );
                return Ok(());
            };
            let request = self.request(proxy::ChannelRequest {
                channel: &channel,
                data: req.data.as_ref(),
            });
            match proxy::call::<_, proxy::SubscribeResult>(
                &*proxy,
                ProxyEvent::Subscribe,
                &request,
                self.headers(),
                &self.node.metrics,
            )
            .await
            {
                Ok(r) => {
                    grant = Grant {
                        expires_at: r.expire_at,
                        proxied: true,
                        data: r.data.as_deref().map(raw_json),
                    }
                }
                Err(refusal) => return self.refused(id, refusal),
            }
        }
        let recover = req.recover.then(|| (req.epoch, req.offset.unwrap_or(0)));
        match self.join(&channel, &ns, recover).await {
            Ok(Joined {
                mut result,
                after,
                replay,
            }) => {
                result.data = grant.data;
                if let Some(m) = self.subs.get_mut(&channel) {
                    m.expires_at = grant.expires_at.unwrap_or(0);
                    m.proxied = grant.proxied;
                }
                if grant.expires_at.is_some() {
                    self.note_subscription_expiry();
                }
                let reply = text(encode::reply(id, "subscribe", &result));
                match replay {
                    None => self
                        .session
                        .complete_subscribe(&channel, Some(reply), after),
                    Some(replay) => {
                        self.replays.insert(channel.clone(), replay);
                        self.session.start_replay(&channel, reply);
                    }
                }
                self.announce(&channel).await;
            }
            Err((code, message)) => self.error(id, code, &message),
        }
        Ok(())
    }

    /// Joins `channel`: registers with the hub (buffering live publications), reads the stream's
    /// position and, with `recover = Some((epoch, offset))`, what the client missed. Returns the
    /// subscribe result, the offset after which buffered publications are new and, when the
    /// recovered publications do not all fit in half the queue, the rest to replay; the caller then
    /// calls `complete_subscribe` (or `start_replay`) and `announce`.
    async fn join(
        &mut self,
        channel: &str,
        ns: &NamespaceOptions,
        recover: Option<(Option<String>, u64)>,
    ) -> Result<Joined, (ErrorCode, String)> {
        let engine = &self.node.engine;
        self.session.begin_subscribe(channel);
        if self.node.hub.add(channel, Arc::clone(&self.session))
            && let Err(e) = engine.subscribe(channel).await
        {
            self.node.hub.remove(channel, self.session.key());
            self.session.abort_subscribe(channel);
            tracing::warn!(channel, "subscribe failed: {e}");
            return Err((ErrorCode::Internal, e.client_message().to_owned()));
        }
        let mut result = SubscribeResult::default();
        let mut after = 0;
        let mut replay = None;
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
                    tracing::warn!(channel, "subscribe failed: {e}");
                    return Err((ErrorCode::Internal, e.client_message().to_owned()));
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
                    // The reply carries what fits in half the queue; the rest is replayed.
                    let mut room = self.session.replay_room();
                    let mut backlog: VecDeque<_> = history.publications.iter().cloned().collect();
                    while let Some(p) = backlog.front() {
                        let encoded = encode::publication(p);
                        if encoded.len() > room {
                            break;
                        }
                        room -= encoded.len();
                        result.publications.push(RawJson(encoded));
                        backlog.pop_front();
                    }
                    if let Some(next) = backlog.front() {
                        replay = Some(Replay {
                            epoch: pos.epoch.clone(),
                            last: next.offset.saturating_sub(1),
                            backlog,
                            stream: ns.stream(),
                        });
                    }
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
                expires_at: 0,
                proxied: false,
            },
        );
        Ok(Joined {
            result,
            after,
            replay,
        })
    }

    /// Carries out a [`Control::Replay`]: moves more of every replayed recovery into the queue.
    async fn replay(&mut self) {
        self.forget_dropped().await;
        let channels: Vec<String> = self.replays.keys().cloned().collect();
        for channel in channels {
            self.replay_step(&channel).await;
        }
        self.session.replay_wanted();
    }

    /// Queues `channel`'s backlog as `pub` pushes while it fits in [`Session::replay_room`] (at least
    /// one publication when there is any room, so that one larger than the room still goes); when
    /// the backlog is spent, reads what was published since from history (buffering live
    /// publications meanwhile) and goes on; when such a read reaches the live stream and all of it is
    /// queued, the replay ends and the buffered live publications past it follow. A read that cannot
    /// continue the stream (the epoch changed, or the publications needed have left the history)
    /// unsubscribes the client with 2500 (insufficient state): it resubscribes with `recover` and
    /// learns it lost them.
    async fn replay_step(&mut self, channel: &str) {
        let mut room = self.session.replay_room();
        let mut queued_any = false;
        // The position a catch-up read reached, while its live publications are buffered.
        let mut reached: Option<u64> = None;
        loop {
            let Some(r) = self.replays.get_mut(channel) else {
                return;
            };
            while let Some(p) = r.backlog.front() {
                let frame = text(encode::pub_push(channel, p));
                let len = frame.len();
                if len > room && (queued_any || room == 0) {
                    break;
                }
                room = room.saturating_sub(len);
                queued_any = true;
                r.last = p.offset;
                r.backlog.pop_front();
                self.session.push(frame);
            }
            if let Some(top) = reached.take() {
                if r.backlog.is_empty() && r.last >= top {
                    self.replays.remove(channel);
                    self.session.complete_subscribe(channel, None, top);
                    return;
                }
                self.session.resume_replay(channel);
            }
            if !r.backlog.is_empty() || room == 0 {
                return;
            }
            let query = HistoryQuery {
                since: Some(r.last),
                limit: None,
                reverse: false,
            };
            let (epoch, last, stream) = (r.epoch.clone(), r.last, r.stream.clone());
            self.session.begin_subscribe(channel);
            let read = self.node.engine.history(channel, &query, &stream).await;
            // The hub may have dropped the channel, or the client left it, meanwhile.
            self.forget_dropped().await;
            if !self.replays.contains_key(channel) {
                self.session.forget(channel);
                return;
            }
            let continues = |h: &switchboard_engine::History| {
                h.position.epoch == epoch
                    && match h.publications.first() {
                        Some(p) => p.offset == last + 1,
                        None => h.position.offset == last,
                    }
            };
            match read {
                Ok(h) if continues(&h) => {
                    reached = Some(h.position.offset);
                    if let Some(r) = self.replays.get_mut(channel) {
                        r.backlog = h.publications.into();
                    }
                }
                Ok(_) => {
                    tracing::info!(client = %self.info.client, channel, last, "publications to replay left the history; the client must recover again");
                    self.replay_failed(channel).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(client = %self.info.client, channel, error = %e, "replay: history read failed; the client must recover again");
                    self.replay_failed(channel).await;
                    return;
                }
            }
        }
    }

    /// A replay cannot go on: leaves the channel and tells the client with an `unsubscribe` push 2500
    /// (insufficient state), which asks it to resubscribe with `recover`.
    async fn replay_failed(&mut self, channel: &str) {
        if let Some(m) = self.subs.remove(channel) {
            self.leave(channel, m).await;
        }
        self.replays.remove(channel);
        self.session.forget(channel);
        self.session.push(text(encode::unsubscribe_push(
            channel,
            UnsubscribeCode::InsufficientState,
        )));
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

    async fn publish(&mut self, id: u64, req: PublishRequest) -> Flow {
        let Some(ns) = self.namespace(id, &req.channel) else {
            return Ok(());
        };
        let mut payload = req.payload;
        let mut stream = ns.stream();
        if ns.publish_proxy {
            let Some(proxy) = self.proxy_for(ProxyEvent::Publish) else {
                self.error(
                    id,
                    ErrorCode::NotAvailable,
                    "no publish handler is configured",
                );
                return Ok(());
            };
            let (data, b64data) = match &payload {
                Payload::Json(json) => (serde_json::from_slice::<&RawValue>(json).ok(), None),
                Payload::Binary(bytes) => (None, Some(BASE64.encode(bytes))),
            };
            let request = self.request(proxy::PublishRequest {
                channel: &req.channel,
                data,
                b64data,
            });
            match proxy::call::<_, proxy::PublishResult>(
                &*proxy,
                ProxyEvent::Publish,
                &request,
                self.headers(),
                &self.node.metrics,
            )
            .await
            {
                Ok(r) => {
                    if let Some(data) = r.data {
                        payload = Payload::Json(Bytes::from(single_line(data.get()).into_owned()));
                    } else if let Some(b64) = r.b64data {
                        match BASE64.decode(b64) {
                            Ok(bytes) => payload = Payload::Binary(Bytes::from(bytes)),
                            Err(e) => {
                                let message = format!(
                                    "the application's publish handler answered invalid b64data: {e}"
                                );
                                self.error(id, ErrorCode::Internal, &message);
                                return Ok(());
                            }
                        }
                    }
                    if r.skip_history {
                        stream = StreamOptions::NONE;
                    }
                }
                Err(refusal) => return self.refused(id, refusal),
            }
        } else if !ns.allow_publish {
            self.error(
                id,
                ErrorCode::PermissionDenied,
                "clients may not publish in this namespace",
            );
            return Ok(());
        }
        let mut publication = Publication::new(payload);
        publication.info = Some(Arc::clone(&self.info));
        // Per user: one user's keys never suppress another's publication, nor the server API's.
        let key = req
            .idempotency_key
            .map(|k| format!("client\u{0}{}\u{0}{k}", self.info.user));
        match self
            .node
            .publish_once(&req.channel, publication, &stream, key.as_deref())
            .await
        {
            Ok(pos) => self.reply(
                id,
                "publish",
                &PublishResult {
                    epoch: stream.keeps_history().then_some(pos.epoch),
                    offset: pos.offset,
                },
            ),
            Err(e) => self.engine_error(id, &e),
        }
        Ok(())
    }

    async fn rpc(&mut self, id: u64, req: RpcRequest) -> Flow {
        let Some(proxy) = self.proxy_for(ProxyEvent::Rpc) else {
            self.error(id, ErrorCode::NotAvailable, "no RPC handler is configured");
            return Ok(());
        };
        // The decoder checked `data` is JSON; `null` stands in should it ever not be.
        let null = RawValue::NULL;
        let data = serde_json::from_slice::<&RawValue>(&req.data).unwrap_or(null);
        let request = self.request(proxy::RpcRequest {
            method: &req.method,
            data,
        });
        match proxy::call::<_, proxy::RpcResult>(
            &*proxy,
            ProxyEvent::Rpc,
            &request,
            self.headers(),
            &self.node.metrics,
        )
        .await
        {
            Ok(r) => {
                let data = r
                    .data
                    .as_deref()
                    .map_or_else(|| RawJson(Bytes::from_static(b"null")), raw_json);
                self.reply(id, "rpc", &RpcReply { data });
                Ok(())
            }
            Err(refusal) => self.refused(id, refusal),
        }
    }

    /// The connection reached its expiry and was granted by the connect proxy: the refresh proxy
    /// says whether it goes on.
    async fn refresh_by_proxy(&mut self) {
        let Some(proxy) = self.proxy_for(ProxyEvent::Refresh) else {
            return self.session.disconnect(DisconnectCode::Expired);
        };
        let request = self.request(proxy::Empty {});
        match proxy::call::<_, proxy::RefreshResult>(
            &*proxy,
            ProxyEvent::Refresh,
            &request,
            self.headers(),
            &self.node.metrics,
        )
        .await
        {
            Ok(r) if r.expired => self.session.disconnect(DisconnectCode::Expired),
            Ok(r) => self.session.set_expires_at(r.expire_at),
            Err(Refusal::Error { .. }) => self.session.disconnect(DisconnectCode::Expired),
            Err(Refusal::Disconnect { reconnect }) => {
                self.session.disconnect(disconnect_code(reconnect))
            }
            Err(Refusal::Failed(..)) => self
                .session
                .set_expires_at(Some(switchboard_auth::now() + PROXY_RETRY_SECS)),
        }
    }

    /// Some subscription reached its expiry: those granted by the subscribe proxy ask the
    /// sub_refresh proxy; the others (subscription tokens) end with an `unsubscribe` push 2501, and
    /// the client resubscribes with a fresh token, recovering what it missed.
    async fn expire_subscriptions(&mut self) {
        let now = switchboard_auth::now();
        let expired: Vec<(String, Membership)> = self
            .subs
            .iter()
            .filter(|(_, m)| m.expires_at != 0 && m.expires_at <= now)
            .map(|(c, m)| (c.clone(), *m))
            .collect();
        for (channel, m) in expired {
            let renewed = match self.proxy_for(ProxyEvent::SubRefresh).filter(|_| m.proxied) {
                None => None,
                Some(proxy) => {
                    let request = self.request(proxy::ChannelRequest {
                        channel: &channel,
                        data: None,
                    });
                    match proxy::call::<_, proxy::RefreshResult>(
                        &*proxy,
                        ProxyEvent::SubRefresh,
                        &request,
                        self.headers(),
                        &self.node.metrics,
                    )
                    .await
                    {
                        Ok(r) if !r.expired => Some(r.expire_at.unwrap_or(0)),
                        Ok(_) | Err(Refusal::Error { .. }) => None,
                        Err(Refusal::Disconnect { reconnect }) => {
                            return self.session.disconnect(disconnect_code(reconnect));
                        }
                        Err(Refusal::Failed(..)) => Some(now + PROXY_RETRY_SECS),
                    }
                }
            };
            match renewed {
                Some(at) => {
                    if let Some(m) = self.subs.get_mut(&channel) {
                        m.expires_at = at;
                    }
                }
                None => {
                    self.subs.remove(&channel);
                    self.leave(&channel, m).await;
                    self.session.push(text(encode::unsubscribe_push(
                        &channel,
                        UnsubscribeCode::Expired,
                    )));
                }
            }
        }
        self.note_subscription_expiry();
    }

    /// Tells the session when the earliest subscription expires, for the node's expiry sweep.
    fn note_subscription_expiry(&self) {
        let earliest = self
            .subs
            .values()
            .map(|m| m.expires_at)
            .filter(|&at| at != 0)
            .min();
        self.session.set_subscriptions_expire_at(earliest);
    }

    /// Takes one command from the rate budget; `false` when it is spent.
    fn take_budget(&mut self) -> bool {
        let rate = f64::from(self.node.config.client.max_commands_per_second);
        if rate == 0.0 {
            return true;
        }
        let now = std::time::Instant::now();
        let (tokens, at) = &mut self.budget;
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate * 2.0);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// The proxy for `event`, when one is configured.
    fn proxy_for(&self, event: ProxyEvent) -> Option<Arc<dyn Proxy>> {
        self.node
            .proxy
            .as_ref()
            .filter(|p| p.handles(event))
            .map(Arc::clone)
    }

    /// A proxy request on behalf of this client.
    fn request<T: serde::Serialize>(&self, event: T) -> proxy::Request<'_, T> {
        proxy::Request {
            client: &self.info.client,
            transport: self.transport,
            protocol: "json",
            user: &self.info.user,
            event,
        }
    }

    fn headers(&self) -> &[(String, String)] {
        self.headers.as_deref().unwrap_or(&[])
    }

    /// Answers a command the backend did not let through.
    fn refused(&self, id: u64, refusal: Refusal) -> Flow {
        match refusal {
            Refusal::Error { code, message } => {
                self.session
                    .push(text(encode::error_code(id, code, &message, false)));
                Ok(())
            }
            Refusal::Disconnect { reconnect } => Err(disconnect_code(reconnect)),
            Refusal::Failed(code, message) => {
                self.error(id, code, &message);
                Ok(())
            }
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
            Err(e) => self.engine_error(id, &e),
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

    async fn leave(&mut self, channel: &str, m: Membership) {
        self.replays.remove(channel);
        self.session.forget(channel);
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

    /// An engine failure: the client gets error 100 with a short message it can act on, the log keeps
    /// the detail (the store's address and its own error), which is not the client's to see.
    fn engine_error(&self, id: u64, e: &EngineError) {
        tracing::warn!(id, "engine failure answered with error 100: {e}");
        self.error(id, ErrorCode::Internal, e.client_message());
    }
}

/// What granted a subscription, besides the namespace.
#[derive(Debug, Default)]
struct Grant {
    /// When it expires (`None`: never).
    expires_at: Option<u64>,
    /// Granted by the subscribe proxy.
    proxied: bool,
    /// Data from the subscribe proxy for the subscribe reply.
    data: Option<RawJson>,
}

/// The result of `rpc`.
#[derive(Debug, serde::Serialize)]
struct RpcReply {
    data: RawJson,
}

/// Raw JSON from the application's handlers, on one line (see [`single_line`]).
fn raw_json(raw: &RawValue) -> RawJson {
    RawJson(Bytes::from(single_line(raw.get()).into_owned()))
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

/// The disconnect a backend's `disconnect` answer asks for.
fn disconnect_code(reconnect: bool) -> DisconnectCode {
    if reconnect {
        DisconnectCode::Normal
    } else {
        DisconnectCode::ForceDisconnect
    }
}
