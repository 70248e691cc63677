//! The cluster: server API calls that act on every node sharing the engine, and the list of live
//! nodes.
//!
//! A client is connected to one node, but a backend calls the API of whichever node its load
//! balancer picks. So the orders the API gives clients (`subscribe`, `unsubscribe`, `disconnect`,
//! `refresh`) and the `channels` listing are asked of every node through the engine's control plane
//! ([`Engine::broadcast_control`]); each node carries the order out on its own clients and answers
//! the asker alone ([`Engine::send_control`]), which adds the answers up:
//!
//! ```text
//! API --disconnect--> node B --ask{from:B,id:7,disconnect user=alice}--> every node (B too)
//!                     node B <--answer{from:A,id:7,clients:1}-- node A (alice is here)
//!                     node B <--answer{from:C,id:7,clients:0}-- node C
//!     <--{clients:1,nodes:3,unanswered:0}--
//! ```
//!
//! The asker waits until as many nodes answered as the broadcast reached (an engine that can count
//! receivers says how many, [`Reach::Nodes`]; otherwise the nodes known from announcements are
//! expected), or [`ClusterConfig::control_timeout`] passed: then it answers with what it has and how
//! many nodes did not answer. A node that did not answer got the order unless it was down, and may
//! have carried it out; every order is harmless to repeat.
//!
//! A node answers `subscribe` and `unsubscribe` once its clients' tasks carried them out (bounded by
//! half the control timeout), and counts only those: when the API answers, a publication sent next
//! reaches every client it counted, and none it unsubscribed.
//!
//! Every node also announces itself ([`Node::announce`], every
//! [`ClusterConfig::announce_interval`]) with its counts, and says goodbye when it stops
//! ([`Node::leave`]). `info` lists this node and every other one heard from within
//! [`MISSED_ANNOUNCEMENTS`] intervals. A node that hears a node for the first time announces itself
//! at once, so that a new node learns of the others without waiting a whole interval.
//!
//! The state these calls keep (peers, calls waiting for answers) and the messages' JSON live in
//! `cluster_state.rs`, which the node holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use switchboard_engine::{EngineError, Reach};
use switchboard_protocol::DisconnectCode;
use tokio::sync::mpsc;

use crate::cluster_state::{Answer, Ask, Cluster, NodeInfo, Peer, Wire};
pub use crate::cluster_state::{ClientTarget, ClusterConfig, MISSED_ANNOUNCEMENTS};
use crate::node::Node;
use crate::receipt::Receipts;

/// An order of the server API for clients, carried out on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOrder<'a> {
    /// Subscribe to the channel.
    Subscribe(&'a str),
    /// Leave the channel.
    Unsubscribe(&'a str),
    /// Disconnect with the code.
    Disconnect(DisconnectCode),
    /// Set when the connection expires (Unix seconds; `None`: never).
    Refresh(Option<u64>),
}

/// What a cluster-wide call gathered from the nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gathered<T> {
    /// The answers combined: clients acted on, summed; or channels with their subscribers, summed
    /// per channel.
    pub value: T,
    /// Nodes that answered in time.
    pub nodes: usize,
    /// Nodes that got the call but did not answer within the control timeout: they may or may not
    /// have carried it out, and their part is missing from `value`.
    pub unanswered: usize,
}

/// Why a cluster-wide call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The engine cannot carry the call to the nodes (Redis is unreachable): nothing was done
    /// anywhere. Retry once the engine is back (`/ready` says when).
    #[error("cannot reach the nodes: {0}")]
    Engine(#[from] EngineError),
    /// The call could not be written as a control message (a bug).
    #[error("cannot encode a control message: {0}")]
    Encode(String),
}

/// Forgets a call's entry however its wait ends.
struct Forget<'a> {
    cluster: &'a Cluster,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.cluster.waiting.lock().remove(&self.id);
    }
}

fn encode(wire: &Wire) -> Result<Bytes, ClusterError> {
    serde_json::to_vec(wire)
        .map(Bytes::from)
        .map_err(|e| ClusterError::Encode(e.to_string()))
}

/// A call carried out on this node's clients, and its answer: ready, or waiting for receipts.
enum Given {
    Done(Answer),
    Waiting(Receipts),
}

impl Given {
    /// The answer: for orders the clients' tasks carry out, once every receipt is settled or half
    /// the control timeout passed (the other half is left for the answer to reach the asker in
    /// time), counting the clients that carried it out.
    async fn answer(self, node: &Node) -> Answer {
        match self {
            Given::Done(answer) => answer,
            Given::Waiting(receipts) => Answer::Clients {
                n: receipts.wait(node.cluster.config.control_timeout / 2).await,
            },
        }
    }
}

impl Node {
    /// Carries `order` out on the clients `target` names on every node of the cluster. The clients
    /// acted on, over all nodes that answered within the control timeout.
    pub async fn order_clients(
        &self,
        target: &ClientTarget,
        order: ClientOrder<'_>,
    ) -> Result<Gathered<usize>, ClusterError> {
        let target = target.clone();
        let ask = match order {
            ClientOrder::Subscribe(channel) => Ask::Subscribe {
                target,
                channel: channel.to_owned(),
            },
            ClientOrder::Unsubscribe(channel) => Ask::Unsubscribe {
                target,
                channel: channel.to_owned(),
            },
            ClientOrder::Disconnect(code) => Ask::Disconnect {
                target,
                code: code.code(),
            },
            ClientOrder::Refresh(expire_at) => Ask::Refresh { target, expire_at },
        };
        let (answers, unanswered) = self.ask_all(ask).await?;
        let mut clients = 0;
        for (node, answer) in &answers {
            match answer {
                Answer::Clients { n } => clients += n,
                other => tracing::warn!(%node, ?other, "unexpected answer to a client order"),
            }
        }
        Ok(Gathered {
            value: clients,
            nodes: answers.len(),
            unanswered,
        })
    }

    /// Channels with subscribers on any node, matching `pattern` (`*` matches any run of
    /// characters), with their subscribers summed over the nodes that answered; sorted by name.
    pub async fn cluster_channels(
        &self,
        pattern: Option<&str>,
    ) -> Result<Gathered<Vec<(String, usize)>>, ClusterError> {
        let ask = Ask::Channels {
            pattern: pattern.map(str::to_owned),
        };
        let (answers, unanswered) = self.ask_all(ask).await?;
        let mut merged: BTreeMap<String, usize> = BTreeMap::new();
        for (node, answer) in &answers {
            match answer {
                Answer::Channels { channels } => {
                    for (name, n) in channels {
                        *merged.entry(name.clone()).or_default() += n;
                    }
                }
                other => tracing::warn!(%node, ?other, "unexpected answer to channels"),
            }
        }
        Ok(Gathered {
            value: merged.into_iter().collect(),
            nodes: answers.len(),
            unanswered,
        })
    }

    /// Every live node: this one (counted now) and the others as they last announced themselves
    /// (their uptime brought up to now), sorted by name and id. Asks the engine nothing, so it
    /// answers even while the engine is down (listing the nodes heard from recently enough).
    pub fn cluster_info(&self) -> Vec<NodeInfo> {
        let ttl = self.cluster.peer_ttl();
        let mut nodes = vec![self.info()];
        let mut peers = self.cluster.peers.lock();
        peers.retain(|_, p| p.seen.elapsed() < ttl);
        nodes.extend(peers.values().map(|p| {
            let mut info = p.info.clone();
            info.uptime += p.seen.elapsed().as_secs();
            info
        }));
        drop(peers);
        nodes.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        nodes
    }

    /// Tells every node this one is alive, with its counts; forgets nodes not heard from for
    /// [`MISSED_ANNOUNCEMENTS`] intervals. The server calls it every `announce_interval`.
    pub async fn announce(&self) -> Result<(), ClusterError> {
        let ttl = self.cluster.peer_ttl();
        self.cluster
            .peers
            .lock()
            .retain(|_, p| p.seen.elapsed() < ttl);
        let message = encode(&Wire::Announce { info: self.info() })?;
        self.engine.broadcast_control(message).await?;
        Ok(())
    }

    /// Tells every node this one stops, so that they drop it from `info` at once. The server calls
    /// it when shutting down, after its last announcement.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let message = encode(&Wire::Leave {
            node: self.node_id().to_owned(),
        })?;
        self.engine.broadcast_control(message).await?;
        Ok(())
    }

    /// Sends `ask` to every node and gathers the answers (by node) until all nodes reached have
    /// answered or the control timeout passed. Also how many did not answer.
    async fn ask_all(&self, ask: Ask) -> Result<(HashMap<String, Answer>, usize), ClusterError> {
        let cluster = &self.cluster;
        let id = cluster.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        cluster.waiting.lock().insert(id, tx);
        let _forget = Forget { cluster, id };
        let message = encode(&Wire::Ask {
            from: self.node_id().to_owned(),
            id,
            ask,
        })?;
        let expected = match self.engine.broadcast_control(message).await? {
            Reach::Nodes(n) => n,
            // This node and every other one heard from lately.
            Reach::Unknown => self.cluster_info().len(),
        };
        let deadline = tokio::time::Instant::now() + cluster.config.control_timeout;
        let mut answers = HashMap::new();
        while answers.len() < expected {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((node, answer))) => {
                    answers.insert(node, answer);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let unanswered = expected.saturating_sub(answers.len());
        if unanswered > 0 {
            tracing::warn!(
                unanswered,
                timeout = ?cluster.config.control_timeout,
                "nodes did not answer a cluster-wide API call in time; answering without them"
            );
        }
        Ok((answers, unanswered))
    }

    /// Carries out a call on this node's clients, at once, so that orders reach each client in the
    /// order the node received them. `subscribe` and `unsubscribe` are answered later, once the
    /// clients' tasks carried them out ([`Given::answer`]).
    fn run_ask(&self, ask: Ask) -> Given {
        let n = match ask {
            Ask::Subscribe { target, channel } => {
                let receipts = Receipts::default();
                let user = &target.user;
                let client = target.client.as_deref();
                self.subscribe_clients(user, client, &channel, &receipts.receipt());
                return Given::Waiting(receipts);
            }
            Ask::Unsubscribe { target, channel } => {
                let receipts = Receipts::default();
                let user = &target.user;
                let client = target.client.as_deref();
                self.unsubscribe_clients(user, client, &channel, &receipts.receipt());
                return Given::Waiting(receipts);
            }
            Ask::Disconnect { target, code } => {
                let Some(code) = DisconnectCode::ALL.into_iter().find(|c| c.code() == code) else {
                    return Given::Done(Answer::Refused {
                        reason: format!("unknown disconnect code {code}"),
                    });
                };
                self.disconnect_clients(&target.user, target.client.as_deref(), code)
            }
            Ask::Refresh { target, expire_at } => {
                self.refresh_clients(&target.user, target.client.as_deref(), expire_at)
            }
            Ask::Channels { pattern } => {
                return Given::Done(Answer::Channels {
                    channels: self.channels(pattern.as_deref()),
                });
            }
        };
        Given::Done(Answer::Clients { n })
    }

    /// Takes a control message from the engine. Never waits: what must be sent is sent from a task
    /// of its own.
    pub(crate) fn receive_control(self: &Arc<Self>, message: &[u8]) {
        let wire: Wire = match serde_json::from_slice(message) {
            Ok(w) => w,
            Err(e) => {
                // Another version's message, or a bug: the asker gets no answer from us and says so.
                tracing::warn!(error = %e, "unreadable control message from another node; ignored");
                return;
            }
        };
        match wire {
            Wire::Announce { info } => {
                if info.id == self.node_id() {
                    return;
                }
                let peer = Peer {
                    seen: Instant::now(),
                    info,
                };
                let new = (self.cluster.peers.lock())
                    .insert(peer.info.id.clone(), peer)
                    .is_none();
                if new && !self.cluster.announcing.swap(true, Ordering::AcqRel) {
                    // Let the newcomer know of us now rather than at our next announcement.
                    let node = Arc::clone(self);
                    spawn(async move {
                        if let Err(e) = node.announce().await {
                            tracing::debug!(error = %e, "announcing to a new node failed");
                        }
                        node.cluster.announcing.store(false, Ordering::Release);
                    });
                }
            }
            Wire::Leave { node } => {
                if self.cluster.peers.lock().remove(&node).is_some() {
                    tracing::info!(%node, "node left the cluster");
                }
            }
            Wire::Ask { from, id, ask } => {
                // Orders are given here, in the order received; the answer is sent from a task of
                // its own: a `subscribe`'s waits for the clients, and control messages behind it
                // (answers to this node's own calls among them) must not.
                let given = self.run_ask(ask);
                let node = Arc::clone(self);
                spawn(async move {
                    let answer = given.answer(&node).await;
                    let reply = Wire::Answer {
                        from: node.node_id().to_owned(),
                        id,
                        answer,
                    };
                    let message = match encode(&reply) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot answer a cluster call");
                            return;
                        }
                    };
                    if let Err(e) = node.engine.send_control(&from, message).await {
                        tracing::debug!(node = %from, error = %e, "answer to a cluster call not delivered");
                    }
                });
            }
            Wire::Answer { from, id, answer } => {
                if let Some(tx) = self.cluster.waiting.lock().get(&id) {
                    // The caller may have stopped waiting: then nobody needs it.
                    let _ = tx.send((from, answer));
                }
            }
        }
    }
}

/// Runs `task` on the current Tokio runtime; engines deliver from inside one. Without a runtime the
/// work is dropped, with a warning, rather than panicking on the engine's delivery path.
fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(task);
        }
        Err(_) => tracing::warn!("control message handled outside a Tokio runtime; dropped"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use switchboard_engine::{Engine, MemoryEngine};

    use super::*;
    use crate::client::Client;
    use crate::node::NodeConfig;
    use crate::session::Signal;
    use crate::testing::{self, TestEngine};

    fn node(engine: Arc<dyn Engine>, cluster: ClusterConfig) -> Arc<Node> {
        Node::new(
            engine,
            NodeConfig {
                cluster,
                ..Default::default()
            },
            None,
        )
    }

    async fn connected(node: &Arc<Node>) -> Client {
        let mut c = node.client("test");
        c.handle_frame(br#"{"id":1,"connect":{}}"#).await.unwrap();
        assert_eq!(drain(&c).1.len(), 1, "the connect reply");
        c
    }

    /// What the session holds: a signal, and the frames queued (as text).
    fn drain(c: &Client) -> (Option<Signal>, Vec<String>) {
        testing::drain(c.session())
    }

    fn one(value: usize) -> Gathered<usize> {
        Gathered {
            value,
            nodes: 1,
            unanswered: 0,
        }
    }

    fn target(client: Option<&str>) -> ClientTarget {
        ClientTarget {
            user: String::new(),
            client: client.map(str::to_owned),
        }
    }

    /// Gives `order` to `client` through the cluster, and carries it out as the client's task
    /// would, once it is signalled: the answer waits for it.
    async fn carried_out(
        node: &Arc<Node>,
        client: &ClientTarget,
        order: ClientOrder<'static>,
        task: &mut Client,
    ) -> Gathered<usize> {
        let (node, client) = (Arc::clone(node), client.clone());
        let call = tokio::spawn(async move { node.order_clients(&client, order).await.unwrap() });
        while drain(task).0 != Some(Signal::Control) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            !call.is_finished(),
            "answered before the client carried it out"
        );
        task.apply_controls().await;
        call.await.unwrap()
    }

    #[tokio::test]
    async fn every_order_reaches_the_clients_of_a_one_node_cluster() {
        let node = node(Arc::new(MemoryEngine::new()), ClusterConfig::default());
        let mut a = connected(&node).await;
        let b = connected(&node).await;
        let only_a = target(Some(a.id()));
        let only_b = target(Some(b.id()));

        let g = carried_out(&node, &only_a, ClientOrder::Subscribe("news"), &mut a).await;
        assert_eq!(g, one(1));
        let (_, pushed) = drain(&a);
        assert!(
            pushed
                .iter()
                .any(|t| t.contains(r#""subscribe":{"channel":"news""#)),
            "{pushed:?}"
        );
        assert_eq!(drain(&b), (None, Vec::new()), "b was not named");

        let channels = node.cluster_channels(Some("ne*")).await.unwrap();
        assert_eq!(
            (channels.value, channels.nodes, channels.unanswered),
            (vec![("news".to_owned(), 1)], 1, 0)
        );
        let none = node.cluster_channels(Some("other*")).await.unwrap();
        assert!(none.value.is_empty());

        let g = carried_out(&node, &only_a, ClientOrder::Unsubscribe("news"), &mut a).await;
        assert_eq!(g, one(1));
        let (_, pushed) = drain(&a);
        assert!(
            pushed
                .iter()
                .any(|t| t.contains(r#""unsubscribe":{"channel":"news","code":2000"#)),
            "{pushed:?}"
        );
        assert!(node.cluster_channels(None).await.unwrap().value.is_empty());

        let g = node
            .order_clients(&target(None), ClientOrder::Refresh(Some(100)))
            .await
            .unwrap();
        assert_eq!(g, one(2), "every anonymous connection");
        assert!(a.session().expired(100) && b.session().expired(100));
        assert!(!a.session().expired(99));

        let g = node
            .order_clients(&only_b, ClientOrder::Disconnect(DisconnectCode::Normal))
            .await
            .unwrap();
        assert_eq!(g, one(1));
        assert_eq!(
            drain(&b).0,
            Some(Signal::Disconnect(DisconnectCode::Normal))
        );
        assert_eq!(drain(&a).0, None);

        let ghost = ClientTarget {
            user: "ghost".into(),
            client: None,
        };
        let g = node
            .order_clients(
                &ghost,
                ClientOrder::Disconnect(DisconnectCode::ForceDisconnect),
            )
            .await
            .unwrap();
        assert_eq!(g, one(0));
    }

    fn other(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            name: "there:1".into(),
            version: "0.0.1".into(),
            uptime: 10,
            num_clients: 7,
            num_users: 3,
            num_channels: 2,
            num_subscriptions: 9,
        }
    }

    fn message(wire: &Wire) -> Bytes {
        encode(wire).unwrap()
    }

    #[tokio::test]
    async fn info_lists_the_nodes_heard_from_until_they_leave_or_fall_silent() {
        let interval = Duration::from_millis(50);
        let node = node(
            Arc::new(MemoryEngine::new()),
            ClusterConfig {
                name: "here:2".into(),
                announce_interval: interval,
                ..Default::default()
            },
        );
        node.announce().await.unwrap();
        let info = node.cluster_info();
        assert_eq!(info.len(), 1, "its own announcement is not another node");
        assert_eq!(
            (info[0].id.as_str(), info[0].name.as_str()),
            (node.node_id(), "here:2")
        );
        assert_eq!(info[0].version, env!("CARGO_PKG_VERSION"));

        node.receive_control(&message(&Wire::Announce {
            info: other("0badcafe"),
        }));
        let info = node.cluster_info();
        assert_eq!(info.len(), 2);
        let there = info.iter().find(|n| n.id == "0badcafe").unwrap();
        assert_eq!(
            (there.num_clients, there.num_subscriptions),
            (7, 9),
            "as announced"
        );
        assert!(there.uptime >= 10);

        node.receive_control(&message(&Wire::Leave {
            node: "0badcafe".into(),
        }));
        assert_eq!(node.cluster_info().len(), 1, "gone at once when it says so");

        node.receive_control(&message(&Wire::Announce {
            info: other("0badcafe"),
        }));
        assert_eq!(node.cluster_info().len(), 2);
        tokio::time::sleep(interval * (MISSED_ANNOUNCEMENTS + 1)).await;
        assert_eq!(
            node.cluster_info().len(),
            1,
            "gone after missing {MISSED_ANNOUNCEMENTS} announcements"
        );

        // Unreadable messages (another version's) are ignored.
        node.receive_control(b"{\"t\":\"dance\"}");
        node.receive_control(b"\xff");
        assert_eq!(node.cluster_info().len(), 1);
    }

    #[tokio::test]
    async fn without_a_count_the_known_nodes_are_expected_and_a_silent_one_is_reported() {
        let timeout = Duration::from_millis(200);
        let node = node(
            Arc::new(TestEngine::uncounted()),
            ClusterConfig {
                control_timeout: timeout,
                ..Default::default()
            },
        );
        let c = connected(&node).await;
        let everyone = target(None);
        // Alone: its own answer is all there is to wait for.
        let started = Instant::now();
        let g = node
            .order_clients(&everyone, ClientOrder::Refresh(None))
            .await
            .unwrap();
        assert_eq!(g, one(1));
        assert!(started.elapsed() < timeout, "no wait for nobody");
        // Another node announced itself but never answers: waited for, up to the timeout.
        node.receive_control(&message(&Wire::Announce {
            info: other("0badcafe"),
        }));
        let started = Instant::now();
        let g = node
            .order_clients(&everyone, ClientOrder::Disconnect(DisconnectCode::Normal))
            .await
            .unwrap();
        assert_eq!(
            g,
            Gathered {
                value: 1,
                nodes: 1,
                unanswered: 1
            }
        );
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        assert!(started.elapsed() < timeout * 5, "{:?}", started.elapsed());
        assert_eq!(
            drain(&c).0,
            Some(Signal::Disconnect(DisconnectCode::Normal)),
            "this node acted all the same"
        );
        // A late answer, after the caller gave up, goes nowhere.
        node.receive_control(&message(&Wire::Answer {
            from: "0badcafe".into(),
            id: 2,
            answer: Answer::Clients { n: 5 },
        }));
        assert!(node.cluster.waiting.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscribe_answers_when_the_client_is_in_the_channel_and_counts_only_those_in_time() {
        let engine = Arc::new(TestEngine::default());
        let node = node(
            Arc::clone(&engine) as Arc<dyn Engine>,
            ClusterConfig {
                control_timeout: Duration::from_secs(2),
                ..Default::default()
            },
        );
        let mut a = connected(&node).await;
        let mut b = connected(&node).await;
        // The broker is slow to subscribe: the answer waits for it, as the publish a backend sends
        // right after the answer must reach both clients.
        let held = engine.hold_subscribe.write().await;
        let call = {
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                node.order_clients(&target(None), ClientOrder::Subscribe("news"))
                    .await
                    .unwrap()
            })
        };
        tokio::task::yield_now().await;
        let (tasks, release) = (
            async {
                tokio::join!(a.apply_controls(), b.apply_controls());
            },
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(
                    !call.is_finished(),
                    "answered while the broker was subscribing"
                );
                drop(held);
            },
        );
        tokio::join!(tasks, release);
        assert_eq!(call.await.unwrap(), one(2));
        let data = switchboard_protocol::Payload::Json(Bytes::from_static(b"1"));
        node.publish("news", data).await.unwrap();
        for c in [&a, &b] {
            let (_, pushed) = drain(c);
            assert!(
                pushed
                    .iter()
                    .any(|t| t.contains(r#""pub":{"channel":"news""#)),
                "{pushed:?}"
            );
        }

        // A client whose task does not get to the order within half the control timeout is left
        // out of the count; the answer does not wait for it longer.
        let started = tokio::time::Instant::now();
        let g = node
            .order_clients(&target(Some(a.id())), ClientOrder::Unsubscribe("news"))
            .await
            .unwrap();
        assert_eq!(g, one(0));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // Clients being disconnected take no order: the answer does not wait for them.
        for c in [&a, &b] {
            c.session().disconnect(DisconnectCode::Normal);
        }
        let started = tokio::time::Instant::now();
        let g = node
            .order_clients(&target(None), ClientOrder::Subscribe("other"))
            .await;
        assert_eq!(g.unwrap(), one(0));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn an_ask_this_node_cannot_carry_out_is_refused_not_miscounted() {
        let node = node(Arc::new(MemoryEngine::new()), ClusterConfig::default());
        let ask = Ask::Disconnect {
            target: target(None),
            code: 4999,
        };
        assert!(matches!(
            node.run_ask(ask),
            Given::Done(Answer::Refused { .. })
        ));
    }
}
