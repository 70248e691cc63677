//! Unit tests of the client protocol: a [`Client`] on a [`Node`] over the memory engine, fed command
//! frames as docs/protocol.md writes them, its [`Session`] read for what it answers and pushes. No
//! socket: wire concerns (framing over WebSocket and HTTP, keepalive, shutdown) stay in
//! `crates/server/tests`.
//!
//! One file per concern of `client/`, as the code is split; this one holds the harness: the node's
//! namespaces, tokens signed with a test secret, a connection that sends commands and reads its
//! queue, and a scripted proxy.

#![allow(clippy::unwrap_used)]

mod connect;
mod frames;
mod proxied;
mod publish;
mod queries;
mod subscribe;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use switchboard_auth::{AuthConfig, Verifier};
use switchboard_engine::{Engine, MemoryEngine};
use switchboard_protocol::{DisconnectCode, StreamPosition};

use super::Client;
use crate::namespace::NamespaceOptions;
use crate::node::{Node, NodeConfig};
use crate::proxy::{ForwardedHeaders, Proxy, ProxyError, ProxyEvent, ProxyReply};
use crate::session::{Session, Signal};
use crate::testing::{self, TestEngine};

/// The HMAC secret tokens are signed with.
const SECRET: &str = "client-unit-tests-secret-long-enough";

/// Namespaces for every rule the tests touch; the default namespace allows nothing.
fn config() -> NodeConfig {
    let history = NamespaceOptions {
        history_size: 100,
        history_ttl: Duration::from_secs(300),
        ..Default::default()
    };
    let mut config = NodeConfig::default();
    let ns = &mut config.channels.namespaces;
    // Everything a client may do.
    ns.insert(
        "chat".into(),
        NamespaceOptions::all_on(history.history_size, history.history_ttl),
    );
    // Publications without history: offsets stay 0.
    ns.insert(
        "live".into(),
        NamespaceOptions {
            allow_publish: true,
            ..Default::default()
        },
    );
    // History kept for the server's publishes, not readable nor writable by clients; no recovery.
    ns.insert("closed".into(), history.clone());
    // Only with a subscription token (or another grant).
    ns.insert(
        "secret".into(),
        NamespaceOptions {
            private: true,
            presence: true,
            allow_publish: true,
            allow_history: true,
            recover: true,
            ..history.clone()
        },
    );
    // A tiny history, for recoveries whose publications have left it.
    ns.insert(
        "short".into(),
        NamespaceOptions {
            history_size: 2,
            recover: true,
            allow_publish: true,
            ..history.clone()
        },
    );
    // Decided by the application's handlers.
    ns.insert(
        "app".into(),
        NamespaceOptions {
            subscribe_proxy: true,
            publish_proxy: true,
            ..history
        },
    );
    config
}

/// A node on the memory engine, with `config`, verifying tokens signed with [`SECRET`].
fn node_with(config: NodeConfig) -> Arc<Node> {
    Node::new(Arc::new(MemoryEngine::new()), config, Some(verifier()))
}

/// A node with the test namespaces and token verification; anonymous connections allowed.
fn node() -> Arc<Node> {
    node_with(config())
}

fn verifier() -> Verifier {
    Verifier::new(&AuthConfig {
        hmac_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap()
}

/// A token with `claims`, signed with [`SECRET`].
fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Unix seconds now, plus `secs` (negative: in the past).
fn at(secs: i64) -> u64 {
    switchboard_auth::now().saturating_add_signed(secs)
}

/// A connection under test: its client, and the next command id.
struct Conn {
    client: Client,
    next: u64,
    /// How the last command sent left the connection.
    last_flow: Option<Result<(), DisconnectCode>>,
}

impl Conn {
    /// A client not connected yet.
    fn new(node: &Arc<Node>) -> Self {
        Self {
            client: node.client("test"),
            next: 1,
            last_flow: None,
        }
    }

    /// A client connected with `params` (`{}`: anonymously); panics unless the connect succeeds.
    async fn connected(node: &Arc<Node>, params: Value) -> Self {
        let mut c = Self::new(node);
        let reply = c.ok("connect", params).await;
        assert!(reply["client"].is_string(), "{reply}");
        c
    }

    /// An anonymous connected client.
    async fn anonymous(node: &Arc<Node>) -> Self {
        Self::connected(node, json!({})).await
    }

    /// Sends one frame as it is; what the client answers with: keep going, or disconnect.
    async fn frame(&mut self, frame: &str) -> Result<(), DisconnectCode> {
        self.client.handle_frame(frame.as_bytes()).await
    }

    /// Sends `{"id":N,"<method>":params}`, then reads the queue: the reply to it (by id) and whether
    /// the client must be disconnected. Pushes queued meanwhile are dropped; use [`Conn::send`]
    /// and [`Conn::drain`] to see them.
    async fn call(&mut self, method: &str, params: Value) -> (Value, Result<(), DisconnectCode>) {
        let id = self.send(method, params).await;
        let flow = self.last_flow.take().unwrap_or(Ok(()));
        let replies = self.drain();
        let reply = replies
            .into_iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no reply to {method} {id}"));
        (reply, flow)
    }

    /// The result of a command that must succeed and keep the connection.
    async fn ok(&mut self, method: &str, params: Value) -> Value {
        let (reply, flow) = self.call(method, params).await;
        assert_eq!(flow, Ok(()), "{reply}");
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply[method].clone()
    }

    /// The error code a command is answered with, and how the connection goes on.
    async fn err(&mut self, method: &str, params: Value) -> (u64, Result<(), DisconnectCode>) {
        let (reply, flow) = self.call(method, params).await;
        let code = reply["error"]["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{method}: not an error: {reply}"));
        (code, flow)
    }

    /// Sends a command; its id.
    async fn send(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next;
        self.next += 1;
        let line = json!({ "id": id, method: params }).to_string();
        self.last_flow = Some(self.frame(&line).await);
        id
    }

    /// Everything queued, as JSON, one value a message.
    fn drain(&self) -> Vec<Value> {
        drain(self.client.session()).1
    }

    /// What the session signals besides its queue (a disconnect, orders), after draining it.
    fn signal(&self) -> Option<Signal> {
        drain(self.client.session()).0
    }

    /// Carries out the orders the session holds (as the transport does on [`Signal::Control`]).
    async fn apply(&mut self) {
        self.client.apply_controls().await;
    }
}

/// Reads `session` as a transport does: its signal, and every message queued, parsed (a message
/// of several lines gives one value a line).
fn drain(session: &Session) -> (Option<Signal>, Vec<Value>) {
    let (signal, texts) = testing::drain(session);
    let values = texts
        .iter()
        .flat_map(|t| t.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (signal, values)
}

/// The pushes among `messages` (no `id`) of kind `kind` (`pub`, `join`, `unsubscribe`...).
fn pushes<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m.get("id").is_none())
        .filter_map(|m| m.get(kind))
        .collect()
}

/// Publishes `data` to `channel` through the server's road; the offset.
async fn server_publish(node: &Node, channel: &str, data: Value) -> StreamPosition {
    node.publish(
        channel,
        switchboard_protocol::Payload::Json(Bytes::from(data.to_string())),
    )
    .await
    .unwrap()
}

/// The application's backend, scripted: each event answers the replies queued for it, in order
/// (none queued: an empty result), and every call is recorded with its body.
#[derive(Debug, Default)]
struct Script {
    /// The events a handler is configured for.
    events: Vec<ProxyEvent>,
    replies: Mutex<HashMap<ProxyEvent, VecDeque<Result<ProxyReply, ProxyError>>>>,
    calls: Mutex<Vec<(ProxyEvent, Value)>>,
}

impl Script {
    /// Queues a `{"result": ...}` answer to `event`.
    fn result(&self, event: ProxyEvent, result: Value) {
        let raw = serde_json::value::RawValue::from_string(result.to_string()).unwrap();
        self.answer(event, Ok(ProxyReply::Result(raw)));
    }

    /// Queues any answer (an error, a disconnect, a failure) to `event`.
    fn answer(&self, event: ProxyEvent, reply: Result<ProxyReply, ProxyError>) {
        self.replies
            .lock()
            .entry(event)
            .or_default()
            .push_back(reply);
    }

    /// The bodies the backend received for `event`.
    fn calls(&self, event: ProxyEvent) -> Vec<Value> {
        let calls = self.calls.lock();
        calls
            .iter()
            .filter(|(e, _)| *e == event)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

#[async_trait]
impl Proxy for Script {
    fn handles(&self, event: ProxyEvent) -> bool {
        self.events.contains(&event)
    }

    async fn call(
        &self,
        event: ProxyEvent,
        body: Bytes,
        _headers: &[(String, String)],
    ) -> Result<ProxyReply, ProxyError> {
        let body = serde_json::from_slice(&body).unwrap();
        self.calls.lock().push((event, body));
        let next = self
            .replies
            .lock()
            .get_mut(&event)
            .and_then(VecDeque::pop_front);
        next.unwrap_or_else(|| {
            let empty = serde_json::value::RawValue::from_string("{}".into()).unwrap();
            Ok(ProxyReply::Result(empty))
        })
    }

    fn forward(&self, _headers: &mut dyn Iterator<Item = (&str, &str)>) -> ForwardedHeaders {
        Arc::from(Vec::new())
    }
}

/// A node whose proxy handles `events`, answered by the returned script.
fn proxied_node(events: &[ProxyEvent]) -> (Arc<Node>, Arc<Script>) {
    let script = Arc::new(Script {
        events: events.to_vec(),
        ..Script::default()
    });
    let node = Node::with_proxy(
        Arc::new(MemoryEngine::new()),
        config(),
        Some(verifier()),
        Some(Arc::clone(&script) as Arc<dyn Proxy>),
    );
    (node, script)
}

/// A node on an engine the test can make fail.
fn faulty_node() -> (Arc<Node>, Arc<TestEngine>) {
    let engine = Arc::new(TestEngine::default());
    let node = Node::new(
        Arc::clone(&engine) as Arc<dyn Engine>,
        config(),
        Some(verifier()),
    );
    (node, engine)
}
