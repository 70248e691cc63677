//! Orders that reach the client between its frames, through its session: the server API's
//! `subscribe` and `unsubscribe`, and the session's requests to refresh by proxy, to expire
//! subscriptions and to go on with a replay. Only the client's own task owns its state, so the
//! transport calls [`Client::apply_controls`] when the session signals them.

use switchboard_protocol::UnsubscribeCode;
use switchboard_protocol::encode;

use super::state::Client;
use super::subscribe::Joined;
use crate::hub::text;
use crate::session::Control;

impl Client {
    /// Carries out the orders the server API queued on this client's session (see [`Control`]).
    pub async fn apply_controls(&mut self) {
        // Boxed: inline, this future would be part of every connection's task for its whole life.
        Box::pin(self.apply_orders()).await;
    }

    async fn apply_orders(&mut self) {
        for order in self.session.take_controls() {
            match order {
                Control::Subscribe(channel, receipt) => {
                    if self.subs.contains_key(&channel) {
                        receipt.sign();
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
                            // In the channel from here on: the API may answer, and what is
                            // published after its answer reaches this client. The join push
                            // below need not be waited for.
                            receipt.sign();
                            self.announce(&channel).await;
                        }
                        Err((code, message)) => {
                            tracing::warn!(client = %self.info.client, %channel, code = code.code(), %message, "server-side subscribe failed")
                        }
                    }
                }
                Control::Unsubscribe(channel, receipt) => {
                    if let Some(m) = self.subs.remove(&channel) {
                        self.leave(&channel, m).await;
                        self.session.push(text(encode::unsubscribe_push(
                            &channel,
                            UnsubscribeCode::Server,
                        )));
                    }
                    receipt.sign();
                }
                Control::Refresh => self.refresh_by_proxy().await,
                Control::SubscriptionsExpired => self.expire_subscriptions().await,
                Control::Replay => self.replay().await,
            }
        }
    }
}
