//! The NATS engine: several switchboard nodes share channels, history, presence and idempotency keys
//! through a NATS server (or cluster) with JetStream, so a client on one node receives what is
//! published through another, and recovers on any node what it missed.
//!
//! # Brief overview
//!
//! - [`NatsEngine`] implements [`switchboard_engine::Engine`]; [`NatsConfig`] is its `[engine.nats]`
//!   section. `subjects.rs` lays out subjects and streams; `codec.rs` says how publications travel.
//! - `history.rs`: channel streams on JetStream, and why offsets stay contiguous per channel (see
//!   below).
//! - `broker.rs`: live delivery. A node subscribes (core NATS) to a channel's live subject only
//!   while it has subscribers there; JetStream republishes every stored publication to that
//!   subject, in stream order. Each subscription checks that offsets follow each other and reports
//!   a gap to the node otherwise (its subscribers then recover, push 2500). Also messages from node
//!   to node and control messages (requests answered at once, so that a node nobody listens as is
//!   known at once from NATS's "no responders").
//! - `presence.rs`: who is in a channel, in a stream whose maximum age is `presence_ttl`; each node
//!   rewrites its clients' entries every third of it.
//! - `health.rs`: readiness, measured by a round trip to the server at least every second, and what
//!   happens after a reconnect: every channel is reported as a possible gap.
//! - The client's connection task runs on a thread of its own ([`switchboard_engine::io_thread`]), so
//!   that a JetStream acknowledgement is read when it arrives, not after the tasks a big fan-out
//!   woke on the node's runtime.
//!
//! # History: one stream per history setting, offsets by compare-and-set
//!
//! JetStream's sequence is per stream, not per channel, and its limits (`max_msgs_per_subject`,
//! `max_age`) are settings of a stream. So the engine keeps one stream per distinct history
//! setting (`P_H_<size>_<ttl>_<meta ttl>`: as many as there are distinct namespace settings, not
//! one per channel, which would cost a stream, with its Raft group in a cluster, per channel), each
//! channel one subject in it, limited to `history_size` messages. Each message carries its channel
//! offset and epoch in headers. A publish reads the channel subject's last message (its stream
//! sequence `S`, offset `N`, epoch `E`) and publishes offset `N + 1` in epoch `E` with
//! `Nats-Expected-Last-Subject-Sequence: S`: JetStream stores it only if the subject's last message
//! is still `S`, so two publishers never get the same offset, and the offsets of a subject follow
//! each other in stream order; a loser reads again and retries. Publishes of one node to one
//! channel take turns (a lock per channel), and the node remembers the last position it wrote for a
//! second, so that a busy channel costs one round trip per publication, not two.
//!
//! A channel without messages starts a new epoch (random) at offset 1, guarded by an expected last
//! sequence of 0. So does a channel whose stream was lost: after `kill -9` JetStream may forget a
//! stream, or the server may come back without its store; its subjects are then empty, the next
//! publication starts a new epoch, and a client recovering from the old one is told `recovered:
//! false`, never handed a silent gap. A read of a channel without messages writes an epoch marker
//! (offset 0), so that a subscriber's position stays meaningful (the conformance suite's "a read
//! creates the stream").
//!
//! Costs: the stream's `max_age` is `history_meta_ttl` (the epoch and offset must outlive the
//! publications by that much, and they live in the last message), so publications stay stored up
//! to `history_meta_ttl`, at most `history_size` per channel; reads leave out those older than
//! `history_ttl` (the server's time of each message). A read of history creates a short-lived
//! consumer (deleted after the read), a few round trips. A node makes sure of each stream once per
//! connection before it reads it (a lookup, and a publication the stream refuses): nats-server 2.9
//! dies of a read that reaches a stream another node is still making (`history::Known`). Changing a namespace's history settings
//! moves its channels to another stream: a new epoch. JetStream keeping a stream but losing its
//! last few messages (unsynced writes at `kill -9`) is caught by nodes that remember a later
//! position of that epoch (they start a new epoch); a node that never saw those messages cannot
//! tell. Run JetStream with several replicas (`replicas = 3`) where that matters.
//!
//! Idempotency keys are JetStream's deduplication (`Nats-Msg-Id`, the stream's `duplicate_window`
//! set to the key's window), checked before the expected sequence: a retry that reaches any node
//! within the window publishes nothing and answers the first publication's position.

mod broker;
mod codec;
mod health;
mod history;
mod presence;
mod subjects;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard_engine::health::{Health, settle_time};
use switchboard_engine::io_thread::IoThread;
use switchboard_engine::presence::LocalPresence;
use switchboard_engine::{
    Engine, EngineError, EngineHandler, History, HistoryQuery, PresenceEvent, Reach, ShardState,
    StreamOptions,
};
use switchboard_protocol::{ClientInfo, Publication, StreamPosition};
use tokio::task::AbortHandle;

pub use codec::DecodeError;

/// Where JetStream keeps the engine's streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsStorage {
    /// On disk: history survives a restart of the NATS server.
    #[default]
    File,
    /// In memory: faster, lost when the NATS server restarts (epochs then change, clients recover
    /// with `recovered: false`).
    Memory,
}

/// The `[engine.nats]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS servers (`nats://[user:password@]host:port`, or `host:port`), of one server or one
    /// cluster; the client connects to one and fails over to the others. JetStream must be enabled.
    pub servers: Vec<String>,
    /// Token authentication, when the server asks for a token.
    pub token: Option<String>,
    /// User name, with `password`, when the server asks for them.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// A `.creds` file (JWT and NKey seed), for servers in operator mode.
    pub credentials_file: Option<PathBuf>,
    /// A file holding an NKey seed (`SU...`), for servers that authenticate users by NKey: the
    /// seed stays in a file readable by the server alone, not in the configuration.
    pub nkey_seed_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for the servers' certificates, when they
    /// are not signed by a public one.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, with `tls_key_file`, for servers that verify clients (mutual TLS).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to a server without TLS (`tls://` addresses require it too): without it, a
    /// server that does not offer TLS gets plain text, credentials included.
    pub tls_required: bool,
    /// JetStream domain, when JetStream is reached through a leaf node or another domain than the
    /// server's own (`$JS.<domain>.API`): letters, digits, `-` and `_`.
    pub jetstream_domain: Option<String>,
    /// Prefix of every subject and stream name, so that several deployments can share NATS:
    /// letters, digits, `-` and `_`.
    pub prefix: String,
    /// Where JetStream keeps the streams: `file` or `memory`.
    pub storage: NatsStorage,
    /// Replicas of each stream in a JetStream cluster (1 to 5; 1 on a single server).
    pub replicas: usize,
    /// A client's presence entry expires this long after its node last wrote it (nodes rewrite
    /// every third of it): presence of a node that died vanishes within this time.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// How long to wait for NATS at start; the server does not start without it.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one request to NATS (a JetStream publish, a read) may take before it fails. Also how
    /// long a server that stopped answering takes to make the node not ready: it is asked at least
    /// every second.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            token: None,
            user: None,
            password: None,
            credentials_file: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            jetstream_domain: None,
            prefix: "switchboard".into(),
            storage: NatsStorage::File,
            replicas: 1,
            presence_ttl: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        }
    }
}

impl NatsConfig {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), NatsError> {
        let bad = |m: String| Err(NatsError::Config(m));
        if self.servers.is_empty() {
            return bad("servers: at least one NATS server is needed".into());
        }
        for s in &self.servers {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| NatsError::Config(format!("servers: {:?}: {e}", redact(s))))?;
        }
        if self.prefix.is_empty()
            || !self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(format!(
                "prefix: {:?} must be non-empty, of letters, digits, '-' and '_' (it names subjects and streams)",
                self.prefix
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return bad(format!(
                "replicas: {} is not between 1 and 5",
                self.replicas
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return bad("user and password go together".into());
        }
        let ways = [
            ("token", self.token.is_some()),
            ("user", self.user.is_some()),
            ("credentials_file", self.credentials_file.is_some()),
            ("nkey_seed_file", self.nkey_seed_file.is_some()),
        ];
        let chosen: Vec<&str> = ways.iter().filter(|w| w.1).map(|w| w.0).collect();
        if chosen.len() > 1 {
            return bad(format!(
                "{} are different ways to authenticate: choose one",
                chosen.join(" and ")
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad("tls_cert_file and tls_key_file go together".into());
        }
        let files = [
            ("credentials_file", &self.credentials_file),
            ("nkey_seed_file", &self.nkey_seed_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        for (key, path) in files {
            if let Some(path) = path
                && !path.is_file()
            {
                return bad(format!("{key}: {} is not a readable file", path.display()));
            }
        }
        if let Some(domain) = &self.jetstream_domain
            && (domain.is_empty()
                || !domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return bad(format!(
                "jetstream_domain: {domain:?} must be non-empty, of letters, digits, '-' and '_'"
            ));
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return bad("presence_ttl: at least 1s".into());
        }
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return bad("connect_timeout and command_timeout must be above 0".into());
        }
        Ok(())
    }

    /// `host:port` of each server, without credentials: safe for `/health`, metrics and logs.
    pub fn display_name(&self) -> String {
        self.servers
            .iter()
            .map(|s| match s.parse::<async_nats::ServerAddr>() {
                Ok(a) => format!("{}:{}", a.host(), a.port()),
                Err(_) => "?".into(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A server address for error messages: without what could be a password.
fn redact(server: &str) -> String {
    match server.split_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => server.to_owned(),
    }
}

/// Why the NATS engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A setting of `[engine.nats]` is wrong.
    #[error("[engine.nats] {0}")]
    Config(String),
    /// NATS did not answer at start, or JetStream is not enabled.
    #[error(
        "cannot connect to NATS at {servers} within {timeout:?}: {reason}; check [engine.nats] servers, credentials, and that nats-server runs with JetStream (-js)"
    )]
    Connect {
        /// The servers tried, without credentials.
        servers: String,
        /// How long we waited.
        timeout: Duration,
        /// What failed.
        reason: String,
    },
    /// The thread of the connection (see [`switchboard_engine::io_thread`]) could not start.
    #[error("cannot start the thread of the NATS connection: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the engine's background tasks share with it.
pub(crate) struct Inner {
    pub(crate) config: NatsConfig,
    pub(crate) subjects: subjects::Subjects,
    /// `host:port` of the servers, for health, logs and errors.
    pub(crate) name: String,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    /// The subject of JetStream's account info (in the configured domain): the round trip.
    pub(crate) js_info: String,
    pub(crate) handler: OnceLock<Arc<dyn EngineHandler>>,
    /// This node's id ([`Engine::node_id`]).
    pub(crate) node_id: String,
    /// Readiness, measured.
    pub(crate) health: Health,
    /// True while the subscriptions are being confirmed after a reconnect.
    pub(crate) resyncing: AtomicBool,
    /// Channels this node is subscribed to, and the task delivering each.
    pub(crate) live: Mutex<HashMap<String, AbortHandle>>,
    /// Streams this node has made sure exist and serve, by name, and on which connection.
    pub(crate) streams: Mutex<HashMap<String, history::Known>>,
    /// Per channel: publishes of this node take turns, and the last position written.
    pub(crate) lasts: history::Lasts,
    /// Presence entries of this node's clients, rewritten periodically.
    pub(crate) local_presence: LocalPresence,
}

impl Inner {
    pub(crate) fn handler(&self) -> Option<&Arc<dyn EngineHandler>> {
        self.handler.get()
    }

    /// Fails at once while the connection is down, instead of queueing behind the reconnect: the
    /// caller gets a temporary error it can retry.
    pub(crate) fn connected(&self) -> Result<(), EngineError> {
        if self.client.connection_state() == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(EngineError::Unavailable(format!(
                "NATS at {} is not connected",
                self.name
            )))
        }
    }

    /// How many times the client connected (the first time included): which connection requests
    /// go out on now.
    pub(crate) fn connection(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// A NATS failure as an engine error.
    pub(crate) fn error(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::Unavailable(format!("NATS at {}: {what}: {e}", self.name))
    }
}

/// The NATS engine. Dropping it closes its connection and stops its tasks.
pub struct NatsEngine {
    inner: Arc<Inner>,
    tasks: Vec<AbortHandle>,
    /// Where the client's connection task runs (see [`switchboard_engine::io_thread`]): stopped
    /// after the tasks, once the connection is drained.
    connection: IoThread,
}

impl std::fmt::Debug for NatsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEngine")
            .field("servers", &self.inner.name)
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for NatsEngine {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, t) in self.inner.live.lock().drain() {
            t.abort();
        }
        // Drain the connection on its own thread, then stop that thread: what is still buffered is
        // sent, and NATS drops this node's subscriptions at once, so other nodes see it gone ("no
        // responders") rather than waiting for a timeout.
        let client = self.inner.client.clone();
        self.connection.stop_after(async move {
            let _ = client.drain().await;
        });
    }
}

impl NatsEngine {
    /// Connects to NATS (failing if it does not answer within `connect_timeout`, or has no
    /// JetStream), and starts the tasks that receive messages, watch the connection and refresh
    /// presence. Must run inside a Tokio runtime.
    pub async fn connect(config: NatsConfig) -> Result<Self, NatsError> {
        config.validate()?;
        let name = config.display_name();
        let connect_timeout = config.connect_timeout;
        let connect_error = |reason: String| NatsError::Connect {
            servers: name.clone(),
            timeout: connect_timeout,
            reason,
        };
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut options = async_nats::ConnectOptions::new()
            .name("switchboard")
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.command_timeout))
            .ping_interval(Duration::from_secs(5))
            .max_reconnects(None)
            .reconnect_delay_callback(health::reconnect_delay)
            .event_callback(move |event| {
                let events = events_tx.clone();
                async move {
                    let _ = events.send(event);
                }
            });
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(path) = &config.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| {
                NatsError::Config(format!("credentials_file: {}: {e}", path.display()))
            })?;
        }
        if let Some(path) = &config.nkey_seed_file {
            let seed = tokio::fs::read_to_string(path).await.map_err(|e| {
                NatsError::Config(format!("nkey_seed_file: {}: {e}", path.display()))
            })?;
            let seed = seed.trim();
            // A seed is checked here: the client would only fail at the server's challenge, with a
            // message that does not name the file.
            if !seed.starts_with('S') || nkeys::KeyPair::from_seed(seed).is_err() {
                return Err(NatsError::Config(format!(
                    "nkey_seed_file: {} does not hold an NKey seed (a line starting with 'S', as `nsc` or `nk -gen user` writes)",
                    path.display()
                )));
            }
            options = options.nkey(seed.to_owned());
        }
        if let Some(path) = &config.tls_ca_file {
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if config.tls_required {
            options = options.require_tls(true);
        }
        // The client's connection task runs on a thread of its own: async-nats spawns it on the
        // runtime that connects. The engine's own tasks stay on this one.
        let connection = IoThread::start("nats-connection").map_err(NatsError::Thread)?;
        let servers = config.servers.clone();
        let client = tokio::time::timeout(
            config.connect_timeout * 2,
            connection.run(async move { options.connect(servers).await }),
        )
        .await
        .map_err(|_| connect_error("timed out".into()))?
        .map_err(|e| connect_error(format!("the connection's thread stopped: {e}")))?
        .map_err(|e| connect_error(e.to_string()))?;
        let builder = jetstream::ContextBuilder::new();
        let js = match &config.jetstream_domain {
            Some(domain) => builder.domain(domain.clone()),
            None => builder.api_prefix("$JS.API"),
        }
        .timeout(config.command_timeout)
        .backpressure_on_inflight(true)
        .build(client.clone());
        let js_info = health::js_info_subject(config.jetstream_domain.as_deref());
        // No JetStream, no history: fail now with a clear message rather than at the first publish.
        // (The raw answer: the typed account info of newer clients does not parse from older
        // servers, and only whether JetStream answers matters here.)
        let info = tokio::time::timeout(
            config.connect_timeout,
            client.request(js_info.clone(), Bytes::new()),
        )
        .await
        .map_err(|_| connect_error("JetStream did not answer".into()))?
        .map_err(|e| connect_error(format!("JetStream (is it enabled?): {e}")))?;
        let info: serde_json::Value = serde_json::from_slice(&info.payload)
            .map_err(|e| connect_error(format!("JetStream: unreadable answer: {e}")))?;
        if let Some(error) = info.get("error") {
            return Err(connect_error(format!("JetStream: {error}")));
        }
        let node_id = broker::free_node_id(&client, &config)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let inner = Arc::new(Inner {
            subjects: subjects::Subjects::new(&config.prefix),
            name: name.clone(),
            js_info,
            config,
            client,
            js,
            handler: OnceLock::new(),
            node_id,
            health: Health::new(),
            resyncing: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            lasts: history::Lasts::default(),
            local_presence: LocalPresence::default(),
        });
        let mut tasks = Vec::new();
        // Listening before anyone can learn the id: from the first session on, others reach us.
        match broker::listen_own(&inner).await {
            Ok(handle) => tasks.push(handle),
            Err(e) => return Err(connect_error(e.to_string())),
        }
        tasks.push(
            tokio::spawn(health::follow_events(Arc::clone(&inner), events_rx)).abort_handle(),
        );
        tasks.push(tokio::spawn(health::watch(Arc::clone(&inner))).abort_handle());
        tasks.push(tokio::spawn(presence::refresh(Arc::clone(&inner))).abort_handle());
        Ok(Self {
            inner,
            tasks,
            connection,
        })
    }
}

#[async_trait]
impl Engine for NatsEngine {
    fn set_handler(&self, handler: Arc<dyn EngineHandler>) {
        // A second call is a wiring bug; keeping the first handler is the safe answer.
        let _ = self.inner.handler.set(handler);
    }

    fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    async fn send_to_node(&self, node: &str, message: Bytes) -> Result<(), EngineError> {
        let subject = self.inner.subjects.node(node);
        broker::request(&self.inner, node, subject, message).await
    }

    async fn broadcast_control(&self, message: Bytes) -> Result<Reach, EngineError> {
        broker::broadcast_control(&self.inner, message).await
    }

    async fn send_control(&self, node: &str, message: Bytes) -> Result<(), EngineError> {
        let subject = self.inner.subjects.node_control(node);
        broker::request(&self.inner, node, subject, message).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        broker::subscribe(&self.inner, channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        broker::unsubscribe(&self.inner, channel);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &StreamOptions,
    ) -> Result<StreamPosition, EngineError> {
        history::publish(&self.inner, channel, &publication, opts, None).await
    }

    async fn publish_presence_event(
        &self,
        channel: &str,
        event: PresenceEvent,
        info: Arc<ClientInfo>,
    ) -> Result<(), EngineError> {
        broker::publish_presence_event(&self.inner, channel, event, &info).await
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        opts: &StreamOptions,
    ) -> Result<History, EngineError> {
        history::read(&self.inner, channel, query, opts).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        history::remove(&self.inner, channel).await
    }

    async fn add_presence(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), EngineError> {
        presence::add(&self.inner, channel, info).await
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        presence::remove(&self.inner, channel, client).await
    }

    async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError> {
        presence::get(&self.inner, channel).await
    }

    fn ready(&self) -> bool {
        self.inner.ready()
    }

    fn shards(&self) -> Vec<ShardState> {
        let (ready, since) = self.inner.observe();
        vec![ShardState {
            name: self.inner.name.clone(),
            ready,
            since,
        }]
    }

    fn node_messages_uncertain(&self, _node: &str, since: Instant) -> bool {
        // One connection carries both the request and its answer.
        let settle = settle_time(self.inner.config.command_timeout);
        self.inner
            .health
            .uncertain_since(self.inner.ready(), since, settle)
    }

    fn remembers_idempotency_keys(&self) -> bool {
        true
    }

    async fn publish_idempotent(
        &self,
        channel: &str,
        publication: Publication,
        opts: &StreamOptions,
        key: &str,
        window: Duration,
    ) -> Result<StreamPosition, EngineError> {
        history::publish(
            &self.inner,
            channel,
            &publication,
            opts,
            Some((key, window)),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_settings_name_their_key() {
        assert!(NatsConfig::default().validate().is_ok());
        let bad = |c: NatsConfig| {
            c.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let d = NatsConfig::default;
        assert!(
            bad(NatsConfig {
                servers: vec![],
                ..d()
            })
            .contains("servers")
        );
        assert!(
            bad(NatsConfig {
                prefix: "a.b".into(),
                ..d()
            })
            .contains("prefix")
        );
        assert!(
            bad(NatsConfig {
                prefix: String::new(),
                ..d()
            })
            .contains("prefix")
        );
        assert!(bad(NatsConfig { replicas: 0, ..d() }).contains("replicas"));
        assert!(
            bad(NatsConfig {
                user: Some("u".into()),
                ..d()
            })
            .contains("password")
        );
        assert!(
            bad(NatsConfig {
                presence_ttl: Duration::from_millis(10),
                ..d()
            })
            .contains("presence_ttl")
        );
    }

    #[test]
    fn one_way_to_authenticate_tls_pairs_files_and_domains_are_checked() {
        let bad = |c: NatsConfig| {
            c.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let d = NatsConfig::default;
        // Any file that exists will do for the file settings: this one.
        let existing = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs"));
        let two = bad(NatsConfig {
            token: Some("t".into()),
            nkey_seed_file: Some(existing.clone()),
            ..d()
        });
        assert!(
            two.contains("token and nkey_seed_file") && two.contains("choose one"),
            "{two}"
        );
        assert!(
            bad(NatsConfig {
                tls_cert_file: Some(existing.clone()),
                ..d()
            })
            .contains("tls_key_file")
        );
        let missing = bad(NatsConfig {
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..d()
        });
        assert!(
            missing.contains("tls_ca_file") && missing.contains("/nonexistent/ca.pem"),
            "{missing}"
        );
        assert!(
            bad(NatsConfig {
                jetstream_domain: Some("a.b".into()),
                ..d()
            })
            .contains("jetstream_domain")
        );
        assert!(
            NatsConfig {
                nkey_seed_file: Some(existing.clone()),
                tls_ca_file: Some(existing.clone()),
                tls_cert_file: Some(existing.clone()),
                tls_key_file: Some(existing),
                tls_required: true,
                jetstream_domain: Some("hub-1".into()),
                ..d()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn the_display_name_carries_no_credentials() {
        let c = NatsConfig {
            servers: vec![
                "nats://u:secret@10.0.0.1:4222".into(),
                "10.0.0.2:4223".into(),
            ],
            ..NatsConfig::default()
        };
        assert!(c.validate().is_ok());
        assert_eq!(c.display_name(), "10.0.0.1:4222,10.0.0.2:4223");
        assert_eq!(redact("nats://u:secret@h:1"), "***@h:1");
    }
}
