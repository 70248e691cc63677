//! Presence as remote engines keep it: each node writes its own clients' entries into the store
//! with an expiry of `presence_ttl`, and rewrites them every third of it ([`refresh_interval`]), so
//! that the entries of a node that died vanish within `presence_ttl` with no cleanup by anyone, and
//! come back after the store lost them. [`LocalPresence`] is what a node rewrites.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_protocol::ClientInfo;

use crate::PresenceStats;
use crate::codec::{CodecError, decode_client_info};

/// Client id to client info, for one channel.
pub type Members = HashMap<String, Arc<ClientInfo>>;

/// The presence entries of this node's own clients, by channel: what the node writes into the
/// store again every [`refresh_interval`].
#[derive(Debug, Default)]
pub struct LocalPresence(Mutex<HashMap<String, Members>>);

impl LocalPresence {
    /// Records `info.client` as present in `channel`.
    pub fn add(&self, channel: &str, info: &Arc<ClientInfo>) {
        self.0
            .lock()
            .entry(channel.to_owned())
            .or_default()
            .insert(info.client.clone(), Arc::clone(info));
    }

    /// Forgets `client` in `channel` (and the channel, once nobody of this node is left in it).
    pub fn remove(&self, channel: &str, client: &str) {
        remove_member(&mut self.0.lock(), channel, client);
    }

    /// Every channel and its entries, copied out: the store is written without the lock held.
    pub fn snapshot(&self) -> Vec<(String, Vec<Arc<ClientInfo>>)> {
        self.0
            .lock()
            .iter()
            .map(|(c, m)| (c.clone(), m.values().cloned().collect()))
            .collect()
    }

    /// The engine's refresh task: every [`refresh_period`] of `presence_ttl` (the first at once),
    /// `write` is given each channel and its entries in turn, to write them into the store again.
    /// A write that fails is the engine's to log: the next round (after a reconnect) restores the
    /// entries. Runs until the engine stops it.
    pub async fn refresh<F, Fut>(&self, presence_ttl: Duration, mut write: F)
    where
        F: FnMut(String, Vec<Arc<ClientInfo>>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut every = refresh_interval(presence_ttl);
        loop {
            every.tick().await;
            for (channel, members) in self.snapshot() {
                write(channel, members).await;
            }
        }
    }
}

/// Removes `client` from `channel` in `presence`, and the channel once empty, so that a channel
/// nobody is in costs nothing.
pub fn remove_member(presence: &mut HashMap<String, Members>, channel: &str, client: &str) {
    if let Some(clients) = presence.get_mut(channel) {
        clients.remove(client);
        if clients.is_empty() {
            presence.remove(channel);
        }
    }
}

/// Adds a presence entry read from the store (`body`) to `members`, under `id`, or its client's id
/// when `None`. An entry that does not parse is left out and its error returned, for the engine to
/// log: one bad entry must not hide the others.
pub fn insert_entry(
    members: &mut Members,
    id: Option<String>,
    body: &[u8],
) -> Result<(), CodecError> {
    let info = decode_client_info(body)?;
    members.insert(id.unwrap_or_else(|| info.client.clone()), Arc::new(info));
    Ok(())
}

/// How often a node rewrites its entries: every third of `presence_ttl` (so that one lost write
/// does not make a client vanish), and not more than ten times a second.
pub fn refresh_period(presence_ttl: Duration) -> Duration {
    (presence_ttl / 3).max(Duration::from_millis(100))
}

/// An interval ticking every [`refresh_period`], the first tick at once. A round that takes long
/// (the store away) delays the next instead of bunching them up.
pub fn refresh_interval(presence_ttl: Duration) -> tokio::time::Interval {
    let mut every = tokio::time::interval(refresh_period(presence_ttl));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every
}

impl PresenceStats {
    /// The counts of `members`: connections, and the distinct users among them.
    pub fn of(members: &Members) -> Self {
        let users: HashSet<&str> = members.values().map(|c| c.user.as_str()).collect();
        Self {
            num_clients: members.len(),
            num_users: users.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(client: &str, user: &str) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            client: client.into(),
            user: user.into(),
            info: None,
        })
    }

    #[test]
    fn local_entries_are_added_removed_and_copied_out() {
        let local = LocalPresence::default();
        local.add("a", &info("c1", "u"));
        local.add("a", &info("c2", "u"));
        local.add("b", &info("c3", "v"));
        local.remove("b", "c3");
        local.remove("a", "c1");
        local.remove("nowhere", "c1");
        let snapshot = local.snapshot();
        assert_eq!(snapshot.len(), 1, "an empty channel is forgotten");
        assert_eq!(snapshot[0].0, "a");
        assert_eq!(
            snapshot[0]
                .1
                .iter()
                .map(|i| i.client.as_str())
                .collect::<Vec<_>>(),
            ["c2"]
        );
    }

    #[test]
    fn entries_read_are_kept_under_their_id_and_unreadable_ones_left_out() {
        let mut members = Members::new();
        let body = br#"{"client":"c1","user":"u"}"#;
        assert!(insert_entry(&mut members, None, body).is_ok());
        assert!(insert_entry(&mut members, Some("k".into()), body).is_ok());
        assert!(insert_entry(&mut members, Some("bad".into()), b"{").is_err());
        let mut ids: Vec<&str> = members.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["c1", "k"]);
    }

    #[test]
    fn stats_count_connections_and_distinct_users() {
        let members: Members = [info("c1", "u"), info("c2", "u"), info("c3", "")]
            .into_iter()
            .map(|i| (i.client.clone(), i))
            .collect();
        assert_eq!(
            PresenceStats::of(&members),
            PresenceStats {
                num_clients: 3,
                num_users: 2
            }
        );
        assert_eq!(PresenceStats::of(&Members::new()), PresenceStats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn the_refresh_task_writes_every_entry_every_period() {
        let local = LocalPresence::default();
        local.add("a", &info("c1", "u"));
        let writes = Mutex::new(Vec::new());
        let ttl = Duration::from_secs(3);
        let task = local.refresh(ttl, |channel, members| {
            writes.lock().push((channel, members.len()));
            async {}
        });
        // Paused time: the rounds at 0 s, 1 s and 2 s, not the one at 3 s.
        let _ = tokio::time::timeout(Duration::from_millis(2500), task).await;
        assert_eq!(*writes.lock(), vec![("a".to_owned(), 1); 3]);
    }

    #[test]
    fn entries_are_refreshed_every_third_of_their_ttl() {
        assert_eq!(
            refresh_period(Duration::from_secs(60)),
            Duration::from_secs(20)
        );
        assert_eq!(
            refresh_period(Duration::from_millis(30)),
            Duration::from_millis(100)
        );
    }
}
