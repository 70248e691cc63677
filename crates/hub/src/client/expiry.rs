//! Limits in time: the connection's expiry (a token's `exp` without a `refresh`, or the refresh
//! proxy's say), each subscription's expiry (a subscription token's `exp`, or the sub_refresh
//! proxy's), and the per-connection command rate. The node's sweep and the session tell the client
//! when; this file decides what follows.

use std::time::Instant;

use switchboard_protocol::encode;
use switchboard_protocol::{DisconnectCode, UnsubscribeCode};

use super::proxying::disconnect_code;
use super::state::{Client, Membership};
use crate::hub::text;
use crate::proxy::{self, ProxyEvent, Refusal};

/// Seconds before asking the refresh or sub_refresh proxy again when it gave no usable answer: a
/// backend outage must not disconnect everyone whose grant happens to expire during it.
const PROXY_RETRY_SECS: u64 = 10;

impl Client {
    /// The connection reached its expiry and was granted by the connect proxy: the refresh proxy
    /// says whether it goes on.
    pub(super) async fn refresh_by_proxy(&mut self) {
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
    pub(super) async fn expire_subscriptions(&mut self) {
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
    pub(super) fn note_subscription_expiry(&self) {
        let earliest = self
            .subs
            .values()
            .map(|m| m.expires_at)
            .filter(|&at| at != 0)
            .min();
        self.session.set_subscriptions_expire_at(earliest);
    }

    /// Takes one command from the rate budget; `false` when it is spent.
    pub(super) fn take_budget(&mut self) -> bool {
        let rate = f64::from(self.node.config.client.max_commands_per_second);
        if rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let (tokens, at) = &mut self.budget;
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate * 2.0);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}
