//! The public handles: [`Client`] (cheap to clone, one connection behind it) and [`Subscription`].

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use switchboard_protocol::StreamPosition;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::backoff::Backoff;
use crate::driver::{Driver, Settings, ToDriver};
use crate::error::Error;
use crate::types::{
    ClientInfo, Data, Event, History, HistoryOptions, PresenceStats, State, SubscribeOptions,
};
use crate::wire::HistoryResult;

/// Builds a [`Client`]; from [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    settings: Settings,
    publish_attempts: u32,
}

/// How many times [`Client::publish`] tries by default.
const PUBLISH_ATTEMPTS: u32 = 3;

/// The first wait between two attempts of a publish; it doubles with each attempt, up to
/// [`PUBLISH_RETRY_MAX`].
const PUBLISH_RETRY_MIN: Duration = Duration::from_millis(200);

/// The longest wait between two attempts of a publish.
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(2);

impl ClientBuilder {
    /// The connection token (a JWT naming the user); without one the connection is anonymous, where
    /// the server allows it.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.settings.token = Some(token.into());
        self
    }

    /// The client's name, sent in `connect` (default: `switchboard-client`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// The client's version, sent in `connect` (default: this crate's).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.settings.version = version.into();
        self
    }

    /// Data for the application's connect handler (the connect proxy), sent in every `connect`.
    pub fn data(mut self, data: Value) -> Self {
        self.settings.data = Some(data);
        self
    }

    /// Reconnect delays: random between `min` and `min · 2^attempt`, at most `max` (default: 500 ms
    /// to 20 s). See [`Backoff`].
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.backoff = Backoff::new(min, max);
        self
    }

    /// How long a command (and a connect) may wait for its reply, a wait for a connection included
    /// (default: 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// How many times [`Client::publish`] tries before giving up (default: 3; at least 1). Every
    /// attempt carries the same idempotency key, so a publication whose first attempt was applied
    /// although its answer was lost (a timeout, a dropped connection, a Redis that paused) is not
    /// published twice.
    pub fn publish_attempts(mut self, attempts: u32) -> Self {
        self.publish_attempts = attempts.max(1);
        self
    }

    /// Checks the URL and makes the client. Nothing connects until [`Client::connect`].
    pub fn build(self) -> Result<Client, Error> {
        let url = &self.settings.url;
        let invalid = |reason| Error::InvalidUrl {
            url: url.clone(),
            reason,
        };
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(invalid(
                "use ws://HOST:PORT/connection/websocket (or wss:// for TLS)",
            ));
        }
        if cfg!(not(feature = "rustls")) && url.starts_with("wss://") {
            return Err(invalid(
                "wss:// needs the `rustls` feature of switchboard-client; use ws:// or enable it",
            ));
        }
        if url.as_str().into_client_request().is_err() {
            return Err(invalid("not a valid URL"));
        }
        let (state_tx, state) = watch::channel(State::Disconnected);
        let (tx, rx) = mpsc::unbounded_channel();
        let timeout = self.settings.timeout;
        Ok(Client {
            inner: Arc::new(Inner {
                tx,
                driver: Mutex::new(Some((Driver::new(self.settings, state_tx), rx))),
                state,
                timeout,
                generation: AtomicU64::new(1),
                publish_attempts: self.publish_attempts,
            }),
        })
    }
}

/// A client of one switchboard server: one WebSocket connection, shared by every clone.
///
/// Commands wait for their reply up to the client's timeout, and for a connection too while it
/// reconnects. When a connection is lost, the client reconnects with [`Backoff`] (unless the server
/// said not to, with a disconnect code of 3500 or above) and subscribes again, recovering what its
/// [`Subscription`]s missed. The connection closes when [`Client::close`] is called or when every
/// clone and every subscription is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::UnboundedSender<ToDriver>,
    /// The driver, until the first use spawns it (so that building needs no runtime).
    driver: Mutex<Option<(Driver, mpsc::UnboundedReceiver<ToDriver>)>>,
    state: watch::Receiver<State>,
    timeout: Duration,
    generation: AtomicU64,
    /// Tries per publish.
    publish_attempts: u32,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the server at `url`, e.g.
    /// `ws://127.0.0.1:8080/connection/websocket`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            settings: Settings {
                url: url.into(),
                token: None,
                name: "switchboard-client".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                data: None,
                backoff: Backoff::default(),
                timeout: Duration::from_secs(10),
            },
            publish_attempts: PUBLISH_ATTEMPTS,
        }
    }

    /// Connects, and waits until connected. The first connection is not retried: its failure (a
    /// refused token, nobody listening) is returned. Once connected, lost connections are
    /// re-established in the background. Calling it while connected does nothing.
    pub async fn connect(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(ToDriver::Connect(tx))?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The connection's state, to watch: `Connecting`, `Connected`, `Reconnecting`, `Closed`.
    pub fn state(&self) -> watch::Receiver<State> {
        self.inner.state.clone()
    }

    /// This connection's id on the server, while connected.
    pub fn client_id(&self) -> Option<String> {
        match &*self.inner.state.borrow() {
            State::Connected { client } => Some(client.clone()),
            _ => None,
        }
    }

    /// Subscribes to `channel` and waits for the server to accept.
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<Subscription, Error> {
        self.subscribe_with(channel, SubscribeOptions::default())
            .await
    }

    /// Subscribes with a subscription token or data for the application's subscribe handler.
    pub async fn subscribe_with(
        &self,
        channel: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        let channel = channel.into();
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (tx, rx) = oneshot::channel();
        self.send(ToDriver::Subscribe {
            channel: channel.clone(),
            generation,
            options,
            events: events_tx,
            tx,
        })?;
        // Made before the wait, so that a timeout or an error drops it, which unsubscribes.
        let sub = Subscription {
            channel,
            generation,
            events,
            client: self.clone(),
        };
        match tokio::time::timeout(self.inner.timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(sub),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                method: "subscribe",
                timeout: self.inner.timeout,
            }),
        }
    }

    /// Publishes `data` (JSON, or bytes as `b64data`) to `channel`; returns the publication's position
    /// (offset 0 and an empty epoch in namespaces without history).
    ///
    /// A publish whose answer does not come (a timeout, a lost connection) or that fails temporarily
    /// (error 100: Redis did not answer in time) has an unknown outcome: it may have been applied.
    /// So the publish carries an idempotency key, random and made once, and is tried again with the
    /// same key, up to [`ClientBuilder::publish_attempts`] times: the server publishes it at most
    /// once. The error is the last attempt's.
    pub async fn publish(
        &self,
        channel: &str,
        data: impl Into<Data>,
    ) -> Result<StreamPosition, Error> {
        let key = format!("{:032x}", fastrand::u128(..));
        self.publish_with_key(channel, data, &key).await
    }

    /// [`Client::publish`] with a key of the caller's (1 to 128 bytes), such as the id of what the
    /// publication announces: a second publish to `channel` with the same key, by the same user,
    /// within the server's idempotency window (`[api] idempotency_window`, 5 minutes by default) is
    /// not published again but answers the first one's position. Tried like [`Client::publish`].
    pub async fn publish_with_key(
        &self,
        channel: &str,
        data: impl Into<Data>,
        key: &str,
    ) -> Result<StreamPosition, Error> {
        let mut params = Map::new();
        params.insert("channel".into(), channel.into());
        params.insert("idempotency_key".into(), key.into());
        match data.into() {
            Data::Json(v) => params.insert("data".into(), v),
            Data::Binary(b) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(b);
                params.insert("b64data".into(), b64.into())
            }
        };
        #[derive(serde::Deserialize)]
        struct Published {
            #[serde(default)]
            offset: u64,
            #[serde(default)]
            epoch: String,
        }
        let params = Value::Object(params);
        let mut delay = PUBLISH_RETRY_MIN;
        let mut attempt = 1;
        loop {
            match self.call::<Published>("publish", params.clone()).await {
                Ok(p) => {
                    return Ok(StreamPosition {
                        offset: p.offset,
                        epoch: p.epoch,
                    });
                }
                Err(e) if attempt < self.inner.publish_attempts && outcome_unknown(&e) => {
                    tracing::debug!(channel, attempt, error = %e, "publish failed; trying again with its idempotency key");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(PUBLISH_RETRY_MAX);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Who is subscribed to `channel` (the client must be subscribed too): client id to info.
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, Error> {
        #[derive(serde::Deserialize)]
        struct Presence {
            #[serde(default)]
            presence: HashMap<String, ClientInfo>,
        }
        let p: Presence = self.call("presence", json!({ "channel": channel })).await?;
        Ok(p.presence)
    }

    /// How many connections and users are subscribed to `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, Error> {
        self.call("presence_stats", json!({ "channel": channel }))
            .await
    }

    /// The publications kept in `channel`'s history.
    pub async fn history(&self, channel: &str, options: HistoryOptions) -> Result<History, Error> {
        let mut params = Map::new();
        params.insert("channel".into(), channel.into());
        if let Some(limit) = options.limit {
            params.insert("limit".into(), limit.into());
        }
        if let Some(since) = options.since {
            params.insert(
                "since".into(),
                json!({"epoch": since.epoch, "offset": since.offset}),
            );
        }
        if options.reverse {
            params.insert("reverse".into(), true.into());
        }
        let h: HistoryResult = self.call("history", Value::Object(params)).await?;
        let publications = h
            .publications
            .into_iter()
            .map(|p| {
                p.into_publication()
                    .map_err(|u| Error::Protocol(format!("publication {}: {}", u.offset, u.error)))
            })
            .collect::<Result<_, _>>()?;
        Ok(History {
            publications,
            position: StreamPosition {
                offset: h.offset,
                epoch: h.epoch,
            },
        })
    }

    /// Calls `method` of the application's RPC handler with `data`; returns its answer. Without a
    /// handler configured the server answers error 108 ([`ErrorCode::NotAvailable`]).
    ///
    /// [`ErrorCode::NotAvailable`]: switchboard_protocol::ErrorCode::NotAvailable
    pub async fn rpc(&self, method: &str, data: Value) -> Result<Value, Error> {
        #[derive(serde::Deserialize)]
        struct Rpc {
            #[serde(default)]
            data: Value,
        }
        let r: Rpc = self
            .call("rpc", json!({ "method": method, "data": data }))
            .await?;
        Ok(r.data)
    }

    /// Extends the connection with a fresh token for the same user, also used for later reconnects.
    /// Returns the time left until the connection expires, or `None` when it never does.
    pub async fn refresh(&self, token: impl Into<String>) -> Result<Option<Duration>, Error> {
        let token = token.into();
        #[derive(serde::Deserialize)]
        struct Refreshed {
            #[serde(default)]
            expires: bool,
            #[serde(default)]
            ttl: u64,
        }
        let r: Refreshed = self
            .call("refresh", json!({ "token": token.as_str() }))
            .await?;
        self.send(ToDriver::SetToken(token))?;
        Ok(r.expires.then(|| Duration::from_secs(r.ttl)))
    }

    /// Closes the connection for good: subscriptions end and commands fail with [`Error::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(ToDriver::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn send(&self, message: ToDriver) -> Result<(), Error> {
        let spawn = self
            .inner
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some((driver, rx)) = spawn {
            tokio::spawn(driver.run(rx));
        }
        self.inner.tx.send(message).map_err(|_| Error::Closed)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: Value,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(ToDriver::Request { method, params, tx })?;
        let timeout = self.inner.timeout;
        let value = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => return Err(Error::Timeout { method, timeout }),
        };
        crate::wire::decode(&value).map_err(|e| Error::Protocol(format!("{method} result: {e}")))
    }
}

/// Whether a failed publish may have been applied, or may succeed if tried again: worth another
/// attempt with the same idempotency key.
fn outcome_unknown(e: &Error) -> bool {
    match e {
        Error::Timeout { .. } | Error::Disconnected { .. } => true,
        Error::Server(e) => e.temporary,
        _ => false,
    }
}

/// A subscription to one channel: a stream of [`Event`]s, from [`Client::subscribe`].
///
/// It lasts across reconnects: the client subscribes again and recovers what was missed, so that in a
/// recoverable namespace every publication arrives once, in order. Dropping it unsubscribes. Events
/// wait in an unbounded queue until read, so read them steadily.
pub struct Subscription {
    channel: String,
    generation: u64,
    events: mpsc::UnboundedReceiver<Event>,
    client: Client,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next event; `None` once the subscription has ended (after [`Event::Unsubscribed`], or when
    /// the client is closed).
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The client this subscription belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl futures_core::Stream for Subscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().events.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A closed client has nothing to unsubscribe from.
        let _ = self.client.inner.tx.send(ToDriver::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            generation: self.generation,
        });
    }
}
