//! `connect` and `refresh`: who the connection is and until when. A token's claims (or the connect
//! proxy's grant, or the anonymous rule) name the user, its presence info, its server-side channels
//! and its expiry; `refresh` moves the expiry with a new token for the same user. What happens at the
//! expiry itself is `expiry.rs`'s.

use std::sync::Arc;

use switchboard_auth::TokenError;
use switchboard_protocol::encode::{self, ConnectResult, RefreshResult};
use switchboard_protocol::{
    ClientInfo, ConnectRequest, DisconnectCode, ErrorCode, single_line_raw,
};

use super::proxying::{disconnect_code, raw_json};
use super::state::{Client, Flow};
use super::subscribe::Joined;
use crate::hub::text;
use crate::proxy::{self, ProxyEvent, Refusal};

impl Client {
    /// `connect`: establishes who the connection is (token, connect proxy, or anonymous), joins the
    /// token's or handler's channels, and answers with them in `subs`. Only once per connection.
    pub(super) async fn connect(&mut self, id: u64, req: ConnectRequest) -> Flow {
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

    /// `refresh`: a new token for the same user moves the connection's expiry; another user's, or
    /// one that does not verify, ends the connection (3500).
    pub(super) fn refresh(&mut self, id: u64, token: &str) -> Flow {
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
}
