//! `history`, `presence` and `presence_stats`: reads of a channel's stream and of who is in it,
//! answered from the engine once the namespace allows them.

use switchboard_engine::HistoryQuery;
use switchboard_protocol::encode::{
    self, HistoryResult, PresenceResult, PresenceStatsResult, RawJson,
};
use switchboard_protocol::{ErrorCode, HistoryRequest};

use super::state::Client;

impl Client {
    /// `history`: the channel's publications (`limit`, `since`, `reverse`) and current position,
    /// where the namespace keeps history and lets clients read it.
    pub(super) async fn history(&mut self, id: u64, req: HistoryRequest) {
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

    /// `presence`: who is subscribed to the channel, by client id.
    pub(super) async fn presence(&self, id: u64, channel: &str) {
        if self.presence_allowed(id, channel) {
            match self.node.engine.presence(channel).await {
                Ok(p) => self.reply(id, "presence", &PresenceResult { presence: &p }),
                Err(e) => self.engine_error(id, &e),
            }
        }
    }

    /// `presence_stats`: how many clients and distinct users are subscribed to the channel.
    pub(super) async fn presence_stats(&self, id: u64, channel: &str) {
        if self.presence_allowed(id, channel) {
            match self.node.engine.presence_stats(channel).await {
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

    /// Whether `channel`'s namespace keeps presence and this client is subscribed to it; otherwise
    /// answers the error (102, 108, 103) and returns `false`.
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
}
