//! Replaying a recovery too large for the subscribe reply: the rest of the missed publications go
//! into the queue a piece at a time as the client reads, then catch-up reads of history until the
//! replay meets the live stream (see [`Replay`]).

use switchboard_engine::HistoryQuery;
use switchboard_protocol::UnsubscribeCode;
use switchboard_protocol::encode;

use super::state::Client;
#[cfg(doc)]
use super::state::Replay;
use crate::hub::text;
#[cfg(doc)]
use crate::session::{Control, Session};

impl Client {
    /// Carries out a [`Control::Replay`]: moves more of every replayed recovery into the queue.
    pub(super) async fn replay(&mut self) {
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
}
