//! `subscribe` and `unsubscribe`: who may join a channel (namespace, subscription token, subscribe
//! proxy, channel limit), joining it (hub, engine, the stream's position and what a recovering client
//! missed) and leaving it (hub, engine, presence). Connect's token channels and the server API's
//! orders join through the same [`Client::join`].

use std::collections::VecDeque;
use std::sync::Arc;

use switchboard_auth::TokenError;
use switchboard_engine::{HistoryQuery, PresenceEvent};
use switchboard_protocol::encode::{self, RawJson, SubscribeResult};
use switchboard_protocol::{ErrorCode, SubscribeRequest};

use super::proxying::raw_json;
use super::state::{Client, Flow, Membership, Replay};
use crate::hub::{Hub, Listening, text};
use crate::namespace::NamespaceOptions;
use crate::proxy::{self, ProxyEvent};

/// What [`Client::join`] did.
pub(super) struct Joined {
    /// The subscribe result (its `publications`: the recovered ones that fit in the reply).
    pub(super) result: SubscribeResult,
    /// Buffered live publications up to this offset were recovered already.
    pub(super) after: u64,
    /// The recovered publications that did not fit in the reply, to replay.
    pub(super) replay: Option<Replay>,
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

impl Client {
    /// `subscribe`: checks who grants it (subscription token, subscribe proxy, or the namespace
    /// alone), joins, and answers with the stream's position and, with `recover`, what was missed.
    pub(super) async fn subscribe(&mut self, id: u64, req: SubscribeRequest) -> Flow {
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

    /// `unsubscribe`: leaves the channel if subscribed; answers `{}` either way.
    pub(super) async fn unsubscribe(&mut self, id: u64, channel: &str) {
        if let Some(m) = self.subs.remove(channel) {
            self.leave(channel, m).await;
        }
        self.reply(id, "unsubscribe", &serde_json::Map::new());
    }

    /// Joins `channel`: registers with the hub (buffering live publications), reads the stream's
    /// position and, with `recover = Some((epoch, offset))`, what the client missed. Returns the
    /// subscribe result, the offset after which buffered publications are new and, when the
    /// recovered publications do not all fit in half the queue, the rest to replay; the caller then
    /// calls `complete_subscribe` (or `start_replay`) and `announce`.
    pub(super) async fn join(
        &mut self,
        channel: &str,
        ns: &NamespaceOptions,
        recover: Option<(Option<String>, u64)>,
    ) -> Result<Joined, (ErrorCode, String)> {
        let engine = &self.node.engine;
        self.session.begin_subscribe(channel);
        if self.node.hub.add(channel, Arc::clone(&self.session)) {
            // Should this task be dropped mid-subscribe, those waiting are told it failed.
            let mut outcome = ListeningGuard {
                hub: &self.node.hub,
                channel,
                state: Listening::Failed,
            };
            if let Err(e) = engine.subscribe(channel).await {
                drop(outcome);
                self.node.hub.remove(channel, self.session.key());
                self.session.abort_subscribe(channel);
                tracing::warn!(channel, "subscribe failed: {e}");
                return Err((ErrorCode::Internal, e.client_message().to_owned()));
            }
            outcome.state = Listening::Yes;
        } else if let Some(mut listening) = self.node.hub.listening(channel) {
            // Joined while the first subscriber is still subscribing the node: the position is read
            // only once the engine delivers the channel here.
            let state = match listening.wait_for(|s| *s != Listening::Pending).await {
                Ok(s) => *s,
                Err(_) => Listening::Failed,
            };
            if state == Listening::Failed {
                self.node.hub.remove(channel, self.session.key());
                self.session.abort_subscribe(channel);
                return Err((
                    ErrorCode::Internal,
                    "the channel could not be subscribed on this node; try again".to_owned(),
                ));
            }
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

    /// Presence and the join push for a channel just joined.
    pub(super) async fn announce(&self, channel: &str) {
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

    /// Leaves `channel` entirely: replay, session, hub, engine, presence and the leave push.
    pub(super) async fn leave(&mut self, channel: &str, m: Membership) {
        self.replays.remove(channel);
        self.session.forget(channel);
        self.unsubscribe_local(channel).await;
        self.leave_presence(channel, m).await;
    }

    /// Removes this client from the hub's subscribers of `channel`, and the node from the engine's
    /// when it was the last one.
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

    /// Removes this client from `channel`'s presence and pushes its leave, where the namespace keeps
    /// them.
    pub(super) async fn leave_presence(&self, channel: &str, m: Membership) {
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
}

/// Records the first subscriber's engine subscription outcome when dropped, whatever ends it.
struct ListeningGuard<'a> {
    hub: &'a Hub,
    channel: &'a str,
    state: Listening,
}

impl Drop for ListeningGuard<'_> {
    fn drop(&mut self) {
        self.hub.set_listening(self.channel, self.state);
    }
}
