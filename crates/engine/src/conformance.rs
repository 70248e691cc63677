//! The engine conformance suite: what every [`Engine`] must do, written once and run against each
//! engine. An engine exists when it passes it.
//!
//! An engine crate runs the suite from one test file:
//!
//! ```ignore
//! switchboard_engine::engine_conformance!(my_crate_tests::Backend::start());
//! ```
//!
//! The macro expands to one `#[tokio::test]` per check below, each with a fresh backend made by the
//! expression (a new `redis-server`, say), so the checks are independent and run in parallel. A check
//! that needs several nodes, or a backend that can be interrupted, passes without asserting on engines
//! that cannot (the memory engine is one node in one process): [`Backend::shared`] and
//! [`Backend::interrupt`] say what the backend can do.
//!
//! Times are real (engines with a remote store cannot follow a paused clock), kept short: the suite
//! takes a few seconds per engine.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::{ClientInfo, Payload, Publication, StreamPosition};

use crate::{
    Engine, EngineError, EngineHandler, HistoryQuery, PresenceEvent, Reach, StreamOptions,
};

/// How long any single wait of a check may take before the check fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long presence outlives its node on a [`OneServer`]: short, so that the check of expiry is.
pub const PRESENCE_TTL: Duration = Duration::from_secs(1);

/// A store that engines connect to, for one check.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A new node on this backend, without a handler yet (the suite sets its own). Each call is
    /// another node; engines that are one node only ([`Backend::shared`] false) are called once.
    async fn node(&self) -> Arc<dyn Engine>;

    /// Whether several nodes can share this backend (and see each other's publications, presence
    /// and idempotency keys).
    fn shared(&self) -> bool;

    /// How long a presence entry outlives the node that stopped refreshing it; `None` for engines
    /// whose presence lives in the node's own process.
    fn presence_ttl(&self) -> Option<Duration> {
        None
    }

    /// Makes the backend lose its connections and its data (a restart of the store without its
    /// files), and waits until it serves again. False when this backend cannot be interrupted: the
    /// checks of recovery from an outage then pass without asserting.
    async fn interrupt(&self) -> bool {
        false
    }
}

/// A throwaway store server that nodes reach by URL and that can be restarted without its data
/// (`redis-server`, `nats-server -js`), for a [`OneServer`] backend.
pub trait Server: Send {
    /// Its address as a URL for an engine's configuration.
    fn url(&self) -> String;

    /// Kills it and starts it again on the same port without its data (every stream lost), and
    /// waits until it listens.
    fn restart_empty(&mut self);
}

/// A new node on a [`OneServer`], connecting.
pub type Connecting = Pin<Box<dyn Future<Output = Arc<dyn Engine>> + Send>>;

/// How a [`OneServer`] connects a node: given the server's URL and the presence ttl to use.
type Connect = dyn Fn(String, Duration) -> Connecting + Send + Sync;

/// A backend of one [`Server`] of the check's own that every node shares: presence expires
/// [`PRESENCE_TTL`] after its node stops, and an outage is a restart of the server without its
/// data. What the Redis and NATS engines' suites run on.
pub struct OneServer<S> {
    server: Mutex<S>,
    connect: Box<Connect>,
}

impl<S: Server> OneServer<S> {
    /// A backend of `server`, whose nodes `connect` makes (from the URL and the presence ttl).
    pub fn new(
        server: S,
        connect: impl Fn(String, Duration) -> Connecting + Send + Sync + 'static,
    ) -> Self {
        Self {
            server: Mutex::new(server),
            connect: Box::new(connect),
        }
    }
}

#[async_trait]
impl<S: Server> Backend for OneServer<S> {
    async fn node(&self) -> Arc<dyn Engine> {
        let url = self.server.lock().url();
        (self.connect)(url, PRESENCE_TTL).await
    }

    fn shared(&self) -> bool {
        true
    }

    fn presence_ttl(&self) -> Option<Duration> {
        Some(PRESENCE_TTL)
    }

    async fn interrupt(&self) -> bool {
        self.server.lock().restart_empty();
        true
    }
}

/// A handler that records what an engine delivers, for the checks.
#[derive(Default)]
pub struct Recorder {
    /// `(channel, offset, epoch)` of every publication, in delivery order.
    pub pubs: Mutex<Vec<(String, u64, String)>>,
    /// `(channel, event, client)` of every presence event.
    pub presence: Mutex<Vec<(String, PresenceEvent, String)>>,
    /// Channels reported as having a gap.
    pub gaps: Mutex<Vec<String>>,
    /// Node messages received.
    pub node_messages: Mutex<Vec<Bytes>>,
    /// Control messages received (broadcast or sent to this node).
    pub controls: Mutex<Vec<Bytes>>,
}

impl EngineHandler for Recorder {
    fn on_publication(&self, channel: &str, p: Arc<Publication>, epoch: &str) {
        self.pubs
            .lock()
            .push((channel.to_owned(), p.offset, epoch.to_owned()));
    }
    fn on_presence(&self, channel: &str, event: PresenceEvent, info: Arc<ClientInfo>) {
        self.presence
            .lock()
            .push((channel.to_owned(), event, info.client.clone()));
    }
    fn on_stream_gap(&self, channel: &str) {
        self.gaps.lock().push(channel.to_owned());
    }
    fn on_node_message(&self, message: Bytes) {
        self.node_messages.lock().push(message);
    }
    fn on_control(&self, message: Bytes) {
        self.controls.lock().push(message);
    }
}

impl Recorder {
    /// A recorder set as `engine`'s handler: every test that watches an engine starts so, and the
    /// recorder must be the one handler, or deliveries would be split between two.
    pub fn attach(engine: &dyn Engine) -> Arc<Self> {
        let recorder = Arc::new(Self::default());
        engine.set_handler(recorder.clone());
        recorder
    }

    /// Offsets delivered in `channel`, in delivery order.
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        self.pubs
            .lock()
            .iter()
            .filter(|(c, _, _)| c == channel)
            .map(|(_, o, _)| *o)
            .collect()
    }
}

/// Waits until `f` holds, or fails the check.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to `limit`) until `f` holds, or fails the check; how long it took, for checks of how
/// quickly an engine notices.
pub async fn time_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Checks that `channel`'s stream (read with `opts`) holds the [`publication`] of `n` once, and that
/// `pos` is the stream's latest position: what a publish of unknown outcome (its answer lost in an
/// outage) and its retry with the same idempotency key must leave, whether the first attempt was
/// applied or not.
pub async fn assert_published_once(
    e: &dyn Engine,
    channel: &str,
    n: u64,
    pos: &StreamPosition,
    opts: &StreamOptions,
) {
    let h = e
        .history(channel, &HistoryQuery::default(), opts)
        .await
        .unwrap_or_else(|e| panic!("history: {e}"));
    let payload = publication(n).payload;
    let copies = h
        .publications
        .iter()
        .filter(|p| p.payload == payload)
        .count();
    assert_eq!(copies, 1, "{:?}", h.publications);
    assert_eq!(
        pos.offset, h.position.offset,
        "the retry's position is the latest"
    );
}

/// Waits until `from` is told at once that node `gone` is unknown, or fails the check: a node that
/// stopped may go on being reached for as long as its store takes to notice, but not for ever.
pub async fn until_node_gone(from: &dyn Engine, gone: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while from.send_to_node(gone, Bytes::new()).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a stopped node still listens"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn node(backend: &dyn Backend) -> (Arc<dyn Engine>, Arc<Recorder>) {
    let engine = backend.node().await;
    let recorder = Recorder::attach(&*engine);
    (engine, recorder)
}

/// A second node on `backend`, or `first` itself when the backend cannot be shared: a check that
/// writes on one node and reads on another then runs on one.
async fn second_node(
    backend: &dyn Backend,
    first: &(Arc<dyn Engine>, Arc<Recorder>),
) -> (Arc<dyn Engine>, Arc<Recorder>) {
    if backend.shared() {
        node(backend).await
    } else {
        first.clone()
    }
}

/// Stream options keeping `size` publications for `ttl`, the stream itself ten times as long.
pub fn opts(size: usize, ttl: Duration) -> StreamOptions {
    StreamOptions {
        history_size: size,
        history_ttl: ttl,
        history_meta_ttl: ttl * 10,
    }
}

/// A publication whose data is the number `n`.
pub fn publication(n: u64) -> Publication {
    Publication::new(Payload::Json(Bytes::from(n.to_string())))
}

/// Presence info of `client`, connected as `user`, with no info of its own.
pub fn client(client: &str, user: &str) -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        client: client.into(),
        user: user.into(),
        info: None,
    })
}

fn offsets(h: &crate::History) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset).collect()
}

/// Offsets start at 1 and follow each other within one epoch; history keeps the newest
/// `history_size`; queries by `since`, `limit` and `reverse` select as documented; a channel
/// without history delivers with offset 0 and keeps nothing.
pub async fn offsets_follow_each_other_and_history_is_bounded_by_size(backend: &dyn Backend) {
    let (e, rec) = node(backend).await;
    e.subscribe("c").await.unwrap_or_else(|e| panic!("{e}"));
    let o = opts(3, Duration::from_secs(60));
    let mut epoch = String::new();
    for i in 1..=5 {
        let pos = e.publish("c", publication(i), &o).await.expect("publish");
        assert_eq!(pos.offset, i);
        assert!(!pos.epoch.is_empty(), "a stream has an epoch");
        if i > 1 {
            assert_eq!(pos.epoch, epoch, "one stream, one epoch");
        }
        epoch = pos.epoch;
    }
    let h = e
        .history("c", &HistoryQuery::default(), &o)
        .await
        .expect("history");
    assert_eq!(offsets(&h), [3, 4, 5]);
    assert_eq!(h.publications[0].payload, publication(3).payload);
    assert_eq!(
        (h.position.offset, h.position.epoch.as_str()),
        (5, epoch.as_str())
    );
    let query = |since, limit, reverse| HistoryQuery {
        since,
        limit,
        reverse,
    };
    let h = e
        .history("c", &query(Some(3), None, false), &o)
        .await
        .expect("history");
    assert_eq!(offsets(&h), [4, 5], "since is exclusive");
    let h = e
        .history("c", &query(None, Some(2), false), &o)
        .await
        .expect("history");
    assert_eq!(offsets(&h), [3, 4], "limit keeps the oldest");
    let h = e
        .history("c", &query(None, Some(2), true), &o)
        .await
        .expect("history");
    assert_eq!(offsets(&h), [5, 4], "reverse: newest first");
    let h = e
        .history("c", &query(Some(5), None, false), &o)
        .await
        .expect("history");
    assert!(h.publications.is_empty(), "nothing after the newest");
    until("5 deliveries", || rec.offsets("c").len() == 5).await;
    assert_eq!(rec.offsets("c"), [1, 2, 3, 4, 5]);
    assert!(
        rec.pubs.lock().iter().all(|(_, _, ep)| *ep == epoch),
        "delivered with the epoch"
    );
    let pos = e
        .publish("c", publication(6), &StreamOptions::NONE)
        .await
        .expect("publish");
    assert_eq!(pos.offset, 0, "no history, no offset");
    until("the one without history", || rec.offsets("c").len() == 6).await;
    assert_eq!(rec.offsets("c")[5], 0);
}

/// Channels that share a store (one stream per history setting, say) and trim their histories in
/// turn leave holes between each other's publications: a history read, which is what recovery
/// replays, must still return every kept publication of its channel, in order.
pub async fn histories_of_interleaved_channels_are_whole(backend: &dyn Backend) {
    let (e, _) = node(backend).await;
    let o = opts(5, Duration::from_secs(60));
    let channels = ["i:a", "i:b", "i:c"];
    for round in 1..=40u64 {
        for (k, channel) in channels.iter().enumerate() {
            // The channels publish at different paces, so the holes fall everywhere.
            if round % (k as u64 + 1) == 0 {
                e.publish(channel, publication(round), &o)
                    .await
                    .expect("publish");
            }
        }
        for (k, channel) in channels.iter().enumerate() {
            let published = round / (k as u64 + 1);
            let h = e
                .history(channel, &HistoryQuery::default(), &o)
                .await
                .expect("history");
            let want: Vec<u64> = (published.saturating_sub(4).max(1)..=published).collect();
            assert_eq!(offsets(&h), want, "{channel} after round {round}");
            let since = HistoryQuery {
                since: Some(published.saturating_sub(2)),
                ..HistoryQuery::default()
            };
            let h = e.history(channel, &since, &o).await.expect("history");
            let want: Vec<u64> = (published.saturating_sub(2) + 1..=published).collect();
            assert_eq!(offsets(&h), want, "{channel} since, after round {round}");
        }
    }
}

/// Publications expire one by one after `history_ttl`; the stream (epoch and offset) outlives them
/// until `history_meta_ttl`, then is lost: a new epoch. A read creates the stream, so a
/// subscriber's position stays meaningful; `remove_history` loses the stream.
pub async fn history_expires_by_ttl_and_the_epoch_changes_when_the_stream_is_lost(
    backend: &dyn Backend,
) {
    let (e, _) = node(backend).await;
    // Margins of half a second and more: CI machines stall. Where a stall still broke the timing a
    // check relies on, that check is skipped rather than failed (the clock says so).
    let o = StreamOptions {
        history_size: 10,
        history_ttl: Duration::from_millis(1500),
        history_meta_ttl: Duration::from_millis(4000),
    };
    let first = e.publish("c", publication(1), &o).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    e.publish("c", publication(2), &o).await.expect("publish");
    let second_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let h = e
        .history("c", &HistoryQuery::default(), &o)
        .await
        .expect("history");
    if second_at.elapsed() < o.history_ttl {
        assert_eq!(
            offsets(&h),
            [2],
            "the first is older than the ttl, the second is not"
        );
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let h = e
        .history("c", &HistoryQuery::default(), &o)
        .await
        .expect("history");
    assert!(h.publications.is_empty(), "both expired");
    assert_eq!(
        (h.position.offset, &h.position.epoch),
        (2, &first.epoch),
        "same stream"
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let h = e
        .history("c", &HistoryQuery::default(), &o)
        .await
        .expect("history");
    assert_ne!(h.position.epoch, first.epoch, "stream lost: new epoch");
    assert_eq!(h.position.offset, 0);
    let next = e.publish("c", publication(3), &o).await.expect("publish");
    assert_eq!(
        (next.offset, &next.epoch),
        (1, &h.position.epoch),
        "the read created it"
    );
    e.remove_history("c").await.expect("remove_history");
    let after = e.publish("c", publication(4), &o).await.expect("publish");
    assert_eq!(after.offset, 1);
    assert_ne!(after.epoch, next.epoch, "removed: new epoch");
}

/// Publications of one channel from concurrent publishers get distinct offsets and are delivered
/// in offset order, each once, to every subscribed node; channels do not mix; after `unsubscribe`
/// nothing more arrives.
pub async fn concurrent_publishers_are_ordered_and_delivered_once_to_every_node(
    backend: &dyn Backend,
) {
    let first = node(backend).await;
    let (b, rec_b) = second_node(backend, &first).await;
    let (a, rec_a) = first;
    a.subscribe("c").await.expect("subscribe");
    a.subscribe("other").await.expect("subscribe");
    if backend.shared() {
        b.subscribe("c").await.expect("subscribe");
    }
    let o = opts(1000, Duration::from_secs(60));
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        let e = if i % 2 == 0 { a.clone() } else { b.clone() };
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                e.publish("c", publication(i * 100 + n), &o)
                    .await
                    .expect("publish");
            }
        }));
    }
    a.publish("other", publication(0), &o)
        .await
        .expect("publish");
    for t in tasks {
        t.await.expect("publisher");
    }
    let all: Vec<u64> = (1..=200).collect();
    until("200 on node a", || rec_a.offsets("c").len() >= 200).await;
    until("200 on node b", || rec_b.offsets("c").len() >= 200).await;
    assert_eq!(rec_a.offsets("c"), all);
    assert_eq!(rec_b.offsets("c"), all);
    until("the other channel", || rec_a.offsets("other") == [1]).await;
    a.publish_presence_event("c", PresenceEvent::Join, client("x", "u"))
        .await
        .expect("presence event");
    until("join on b", || rec_b.presence.lock().len() == 1).await;
    if backend.shared() {
        b.unsubscribe("c").await.expect("unsubscribe");
        a.publish("c", publication(0), &o).await.expect("publish");
        until("201 on node a", || rec_a.offsets("c").len() == 201).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rec_b.offsets("c").len(), 200, "b unsubscribed");
    }
}

/// Presence: added, listed with its info, counted by clients and distinct users, removed; shared
/// between nodes; an entry of a node that stopped goes within the presence ttl, while a living
/// node's entries stay.
pub async fn presence_is_listed_counted_and_expires_with_its_node(backend: &dyn Backend) {
    let (a, _) = node(backend).await;
    for (c, u) in [("a1", "u1"), ("a2", "u1")] {
        a.add_presence("room", client(c, u))
            .await
            .expect("add_presence");
    }
    let with_info = Arc::new(ClientInfo {
        client: "a3".into(),
        user: "u2".into(),
        info: serde_json::value::RawValue::from_string(r#"{"n":1}"#.into()).ok(),
    });
    a.add_presence("room", with_info.clone())
        .await
        .expect("add_presence");
    let stats = a.presence_stats("room").await.expect("stats");
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));
    assert_eq!(a.presence("room").await.expect("presence")["a3"], with_info);
    a.remove_presence("room", "a2")
        .await
        .expect("remove_presence");
    let here: BTreeSet<String> = a
        .presence("room")
        .await
        .expect("presence")
        .into_keys()
        .collect();
    assert_eq!(here, BTreeSet::from(["a1".to_owned(), "a3".to_owned()]));
    assert!(a.presence("empty").await.expect("presence").is_empty());
    let (true, Some(ttl)) = (backend.shared(), backend.presence_ttl()) else {
        return;
    };
    let (b, _) = node(backend).await;
    b.add_presence("room", client("b1", "u3"))
        .await
        .expect("add_presence");
    assert_eq!(
        a.presence("room").await.expect("presence").len(),
        3,
        "shared"
    );
    tokio::time::sleep(ttl + ttl / 2).await;
    assert_eq!(
        b.presence("room").await.expect("presence").len(),
        3,
        "refreshed while alive"
    );
    drop(a);
    tokio::time::sleep(ttl + ttl / 2).await;
    let left: Vec<String> = b
        .presence("room")
        .await
        .expect("presence")
        .into_keys()
        .collect();
    assert_eq!(left, ["b1"], "the stopped node's entries expired");
}

/// Presence rewritten over and over (every node refreshes its entries, and a client that
/// resubscribes writes its entry again) still lists everyone at every read: a store that keeps one
/// entry per client and leaves holes where the old ones were must not skip an entry behind a hole.
/// (A `LastPerSubject` consumer of nats-server releases older than mid-2025 does skip; CI caught a
/// presence of 3 read as 2.)
pub async fn presence_reads_list_everyone_while_entries_are_rewritten(backend: &dyn Backend) {
    let first = node(backend).await;
    let (b, _) = second_node(backend, &first).await;
    let (a, _) = first;
    let ids = ["r1", "r2", "r3", "r4", "r5"];
    for id in ids {
        a.add_presence("busy", client(id, id))
            .await
            .expect("add_presence");
    }
    let all: BTreeSet<String> = ids.iter().map(|&id| id.to_owned()).collect();
    for round in 0..60 {
        // A few rewrites in an order that moves every round, so holes land everywhere.
        for k in 0..3 {
            let id = ids[(round * 7 + k * 3) % ids.len()];
            a.add_presence("busy", client(id, id))
                .await
                .expect("add_presence");
        }
        let listed: BTreeSet<String> = b
            .presence("busy")
            .await
            .expect("presence")
            .into_keys()
            .collect();
        assert_eq!(listed, all, "round {round}");
        let stats = b.presence_stats("busy").await.expect("stats");
        assert_eq!(
            (stats.num_clients, stats.num_users),
            (5, 5),
            "round {round}"
        );
    }
}

/// An engine that remembers idempotency keys answers a repeated key within the window with the
/// first publish's position and publishes nothing, on any node; keys are per channel; after the
/// window the key publishes again.
pub async fn idempotency_keys_publish_once_within_their_window(backend: &dyn Backend) {
    let first = node(backend).await;
    if !first.0.remembers_idempotency_keys() {
        // The node remembers them (switchboard-hub's own tests cover it).
        return;
    }
    let (b, _) = second_node(backend, &first).await;
    let (a, rec) = first;
    a.subscribe("c").await.expect("subscribe");
    let o = opts(10, Duration::from_secs(60));
    let w = Duration::from_millis(600);
    let first = a
        .publish_idempotent("c", publication(1), &o, "k", w)
        .await
        .expect("publish");
    let again = b
        .publish_idempotent("c", publication(1), &o, "k", w)
        .await
        .expect("publish");
    assert_eq!(first, again, "the same key: the first position");
    let other = b
        .publish_idempotent("d", publication(1), &o, "k", w)
        .await
        .expect("publish");
    assert_eq!(other.offset, 1, "keys are per channel");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let later = b
        .publish_idempotent("c", publication(1), &o, "k", w)
        .await
        .expect("publish");
    assert_eq!(later.offset, 2, "the window passed");
    until("two deliveries", || rec.offsets("c").len() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rec.offsets("c"), [1, 2], "the repeat was not delivered");
}

/// Node messages reach the node named and no other; a node nobody knows is an error at once.
pub async fn node_messages_reach_their_node_only(backend: &dyn Backend) {
    let (a, rec_a) = node(backend).await;
    assert!(!a.node_id().is_empty());
    let unknown = a.send_to_node("no-such-node", Bytes::new()).await;
    assert_eq!(
        unknown,
        Err(EngineError::UnknownNode("no-such-node".into()))
    );
    if !backend.shared() {
        return;
    }
    let (b, rec_b) = node(backend).await;
    let (c, rec_c) = node(backend).await;
    assert!(a.node_id() != b.node_id() && b.node_id() != c.node_id());
    let message = Bytes::from_static(b"Q{\"x\":1}\n\x00\xff");
    a.send_to_node(b.node_id(), message.clone())
        .await
        .expect("send");
    b.send_to_node(a.node_id(), Bytes::from_static(b"back"))
        .await
        .expect("send");
    until("b's message", || rec_b.node_messages.lock().len() == 1).await;
    until("a's answer", || rec_a.node_messages.lock().len() == 1).await;
    assert_eq!(*rec_b.node_messages.lock(), [message], "bytes as they were");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rec_c.node_messages.lock().is_empty(), "only the node named");
    let gone = c.node_id().to_owned();
    drop(c);
    until_node_gone(&*a, &gone).await;
}

/// Control messages: a broadcast reaches every node, the sender included, and says how many (or
/// that the engine cannot tell); a control message sent to one node reaches it alone; a node nobody
/// knows is an error at once; a node that stopped is no longer reached nor counted. Neither kind is
/// mistaken for a node message.
pub async fn control_messages_reach_every_node_or_the_one_named(backend: &dyn Backend) {
    let (a, rec_a) = node(backend).await;
    let reach = a
        .broadcast_control(Bytes::from_static(b"one"))
        .await
        .expect("broadcast");
    assert!(
        matches!(reach, Reach::Nodes(1) | Reach::Unknown),
        "{reach:?}"
    );
    until("the broadcast, back to its sender", || {
        rec_a.controls.lock().len() == 1
    })
    .await;
    a.send_control(a.node_id(), Bytes::from_static(b"self"))
        .await
        .expect("send_control");
    until("to itself", || rec_a.controls.lock().len() == 2).await;
    assert_eq!(
        rec_a.controls.lock()[..],
        [Bytes::from_static(b"one"), Bytes::from_static(b"self")][..]
    );
    assert_eq!(
        a.send_control("no-such-node", Bytes::new()).await,
        Err(EngineError::UnknownNode("no-such-node".into()))
    );
    assert!(rec_a.node_messages.lock().is_empty(), "not node messages");
    if !backend.shared() {
        return;
    }
    let (b, rec_b) = node(backend).await;
    let (c, rec_c) = node(backend).await;
    let all = Bytes::from_static(b"{\"all\":true}\n\x00\xff");
    let reach = b.broadcast_control(all.clone()).await.expect("broadcast");
    assert!(
        matches!(reach, Reach::Nodes(3) | Reach::Unknown),
        "{reach:?}"
    );
    for (name, rec, n) in [("a", &rec_a, 3), ("b", &rec_b, 1), ("c", &rec_c, 1)] {
        until(name, || rec.controls.lock().len() == n).await;
        assert_eq!(
            rec.controls.lock()[n - 1],
            all,
            "{name}: bytes as they were"
        );
    }
    c.send_control(a.node_id(), Bytes::from_static(b"answer"))
        .await
        .expect("send_control");
    until("the answer", || rec_a.controls.lock().len() == 4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        (rec_b.controls.lock().len(), rec_c.controls.lock().len()),
        (1, 1),
        "only the node named"
    );
    let gone = c.node_id().to_owned();
    drop(c);
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.send_control(&gone, Bytes::new()).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a stopped node still listens"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reach = a
        .broadcast_control(Bytes::from_static(b"two left"))
        .await
        .expect("broadcast");
    assert!(
        matches!(reach, Reach::Nodes(2) | Reach::Unknown),
        "{reach:?}"
    );
    until("the last broadcast", || rec_b.controls.lock().len() == 2).await;
}

/// After the store is interrupted, control messages flow again: the node listens anew for
/// broadcasts and for messages to itself.
pub async fn control_messages_flow_again_after_an_outage(backend: &dyn Backend) {
    let (a, rec_a) = node(backend).await;
    a.broadcast_control(Bytes::from_static(b"before"))
        .await
        .expect("broadcast");
    until("before", || rec_a.controls.lock().len() == 1).await;
    if !backend.interrupt().await {
        return;
    }
    until("ready again", || a.ready()).await;
    // Listening again follows the reconnect closely: retry until a broadcast arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sent = a.broadcast_control(Bytes::from_static(b"after")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if sent.is_ok() && rec_a.controls.lock().len() > 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no broadcast arrives after the outage: {sent:?}"
        );
    }
    let before = rec_a.controls.lock().len();
    a.send_control(a.node_id(), Bytes::from_static(b"to itself"))
        .await
        .expect("send_control after the outage");
    until("to itself after the outage", || {
        rec_a.controls.lock().len() == before + 1
    })
    .await;
}

/// After the store is interrupted (restarted without its data), the engine is not ready while it is
/// away, reports a gap on every channel it was subscribed to once it is back (its subscribers must
/// recover), delivers live publications again, and starts a new epoch (the stream was lost): a
/// position from before never recovers as if nothing happened.
pub async fn after_an_outage_every_channel_reports_a_gap_and_a_new_epoch(backend: &dyn Backend) {
    let (e, rec) = node(backend).await;
    let o = opts(10, Duration::from_secs(60));
    e.subscribe("a").await.expect("subscribe");
    e.subscribe("b").await.expect("subscribe");
    let before = e.publish("a", publication(1), &o).await.expect("publish");
    until("first", || rec.offsets("a").len() == 1).await;
    assert!(e.ready());
    if !backend.interrupt().await {
        return;
    }
    until("ready again", || e.ready()).await;
    until("gaps on both channels", || {
        let gaps: BTreeSet<String> = rec.gaps.lock().iter().cloned().collect();
        gaps.contains("a") && gaps.contains("b")
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        match e.publish("a", publication(2), &o).await {
            Ok(pos) => break pos,
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publish after the outage: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_ne!(
        after.epoch, before.epoch,
        "the stream was lost: a new epoch"
    );
    until("live after the outage", || rec.offsets("a").len() == 2).await;
}

/// One `#[tokio::test]` per check of the suite, each with a fresh backend from `$backend` (an
/// expression of a type that implements [`Backend`]).
#[macro_export]
macro_rules! engine_conformance {
    ($backend:expr) => {
        $crate::engine_conformance!(@tests $backend;
            offsets_follow_each_other_and_history_is_bounded_by_size,
            histories_of_interleaved_channels_are_whole,
            history_expires_by_ttl_and_the_epoch_changes_when_the_stream_is_lost,
            concurrent_publishers_are_ordered_and_delivered_once_to_every_node,
            presence_is_listed_counted_and_expires_with_its_node,
            presence_reads_list_everyone_while_entries_are_rewritten,
            idempotency_keys_publish_once_within_their_window,
            node_messages_reach_their_node_only,
            control_messages_reach_every_node_or_the_one_named,
            control_messages_flow_again_after_an_outage,
            after_an_outage_every_channel_reports_a_gap_and_a_new_epoch,
        );
    };
    (@tests $backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let backend = $backend;
                $crate::conformance::$check(&backend).await;
            }
        )*
    };
}
