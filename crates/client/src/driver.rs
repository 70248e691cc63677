//! The connection task: one per [`Client`](crate::Client), spawned on first use. It owns the WebSocket
//! and the [`Session`], connects and reconnects with backoff, and turns what arrives into replies and
//! events. Handles talk to it through a channel of [`ToDriver`] messages.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use switchboard_protocol::SUBPROTOCOL;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::backoff::Backoff;
use crate::error::Error;
use crate::session::{ReplyTx, Session};
use crate::types::{Closed, Event, State, SubscribeOptions};
use crate::wire::{ConnectResult, Incoming, command, parse_line};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Established = Result<(Box<Ws>, ConnectResult, Vec<String>), Error>;
type Connecting = Pin<Box<dyn Future<Output = Established> + Send>>;

/// The client's settings, from the builder.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) token: Option<String>,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) data: Option<Value>,
    pub(crate) backoff: Backoff,
    pub(crate) timeout: Duration,
}

/// What a handle asks of the driver.
pub(crate) enum ToDriver {
    Connect(oneshot::Sender<Result<(), Error>>),
    Request {
        method: &'static str,
        params: Value,
        tx: ReplyTx,
    },
    Subscribe {
        channel: String,
        generation: u64,
        options: SubscribeOptions,
        events: mpsc::UnboundedSender<Event>,
        tx: oneshot::Sender<Result<(), Error>>,
    },
    Unsubscribe {
        channel: String,
        generation: u64,
    },
    /// The token for the next connects (after a `refresh`).
    SetToken(String),
    Close(oneshot::Sender<()>),
}

enum Phase {
    /// Never connected (or the first attempt failed): wait for `connect`.
    Idle,
    Connecting(Connecting),
    Connected(Box<Ws>),
    /// Waiting out the backoff delay before the next attempt.
    Waiting(Pin<Box<tokio::time::Sleep>>),
}

enum Wake {
    Command(Option<ToDriver>),
    Established(Established),
    Message(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Retry,
}

impl Phase {
    /// What happens next in this phase. Cancel-safe: the futures live in the phase, not here.
    async fn wait(&mut self) -> Wake {
        match self {
            Self::Idle => std::future::pending().await,
            Self::Connecting(f) => Wake::Established(f.as_mut().await),
            Self::Connected(ws) => Wake::Message(ws.next().await),
            Self::Waiting(sleep) => {
                sleep.as_mut().await;
                Wake::Retry
            }
        }
    }
}

/// The connection task.
pub(crate) struct Driver {
    settings: Settings,
    session: Session,
    state: watch::Sender<State>,
    phase: Phase,
    /// Failed attempts since the last connect.
    attempt: u32,
    /// Callers of `connect` waiting for the current attempt.
    waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    /// The close frame of the current connection, if one came.
    close_frame: Option<(u16, String)>,
    /// Whether a connect ever succeeded: from then on, failures are retried.
    connected_once: bool,
}

impl Driver {
    pub(crate) fn new(settings: Settings, state: watch::Sender<State>) -> Self {
        Self {
            settings,
            session: Session::default(),
            state,
            phase: Phase::Idle,
            attempt: 0,
            waiters: Vec::new(),
            close_frame: None,
            connected_once: false,
        }
    }

    /// Runs until the client is closed, by a handle or for good by the server.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ToDriver>) {
        loop {
            let wake = tokio::select! {
                cmd = rx.recv() => Wake::Command(cmd),
                wake = self.phase.wait() => wake,
            };
            let go_on = match wake {
                Wake::Command(Some(cmd)) => self.on_command(cmd).await,
                Wake::Command(None) => {
                    // Every handle is gone: nobody can use the connection any more.
                    self.close(Closed::ByClient).await;
                    false
                }
                Wake::Established(r) => self.on_established(r),
                Wake::Message(m) => self.on_message(m),
                Wake::Retry => {
                    self.start_connect();
                    true
                }
            };
            if !go_on {
                return;
            }
            self.flush().await;
        }
    }

    async fn on_command(&mut self, cmd: ToDriver) -> bool {
        let idle = matches!(self.phase, Phase::Idle);
        match cmd {
            ToDriver::Connect(tx) => match self.phase {
                Phase::Connected(_) => {
                    let _ = tx.send(Ok(()));
                }
                Phase::Idle => {
                    self.waiters.push(tx);
                    self.start_connect();
                }
                Phase::Connecting(_) | Phase::Waiting(_) => self.waiters.push(tx),
            },
            ToDriver::Request { tx, .. } if idle => {
                let _ = tx.send(Err(Error::NotConnected));
            }
            ToDriver::Request { method, params, tx } => self.session.request(method, params, tx),
            ToDriver::Subscribe { tx, .. } if idle => {
                let _ = tx.send(Err(Error::NotConnected));
            }
            ToDriver::Subscribe {
                channel,
                generation,
                options,
                events,
                tx,
            } => self
                .session
                .subscribe(channel, generation, options, events, tx),
            ToDriver::Unsubscribe {
                channel,
                generation,
            } => self.session.unsubscribe(&channel, generation),
            ToDriver::SetToken(token) => self.settings.token = Some(token),
            ToDriver::Close(tx) => {
                self.close(Closed::ByClient).await;
                let _ = tx.send(());
                return false;
            }
        }
        true
    }

    fn start_connect(&mut self) {
        self.state.send_replace(State::Connecting);
        let s = &self.settings;
        let mut params = Map::new();
        if let Some(token) = &s.token {
            params.insert("token".into(), token.as_str().into());
        }
        params.insert("name".into(), s.name.as_str().into());
        params.insert("version".into(), s.version.as_str().into());
        if let Some(data) = &s.data {
            params.insert("data".into(), data.clone());
        }
        let id = self.session.connect_id();
        self.phase = Phase::Connecting(Box::pin(establish(
            s.url.clone(),
            id,
            Value::Object(params),
            s.timeout,
        )));
    }

    fn on_established(&mut self, result: Established) -> bool {
        match result {
            Ok((ws, connect, rest)) => {
                tracing::debug!(client = %connect.client, url = %self.settings.url, "connected");
                self.phase = Phase::Connected(ws);
                self.attempt = 0;
                self.connected_once = true;
                self.close_frame = None;
                self.state.send_replace(State::Connected {
                    client: connect.client,
                });
                self.session.on_connected();
                for line in rest {
                    self.session.on_text(&line);
                }
                for w in self.waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                true
            }
            Err(e) if !self.connected_once => {
                // Before the first connection, `connect` reports the failure and nothing retries:
                // a wrong URL or token should surface at once, not as an endless reconnect loop.
                self.phase = Phase::Idle;
                self.state.send_replace(State::Disconnected);
                for w in self.waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
                true
            }
            Err(Error::Server(e)) if !e.temporary => {
                // The same connect would be refused again (a token that no longer verifies).
                tracing::warn!(url = %self.settings.url, "reconnect refused: {e}");
                self.finish(Closed::Refused(e));
                false
            }
            Err(e) => {
                self.retry_later(e.to_string(), Duration::ZERO);
                true
            }
        }
    }

    fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> bool {
        match message {
            Some(Ok(Message::Text(text))) => self.session.on_text(text.as_str()),
            Some(Ok(Message::Close(frame))) => {
                // tungstenite answers the close; the stream ends right after.
                self.close_frame = frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
            }
            // Pings are answered inside tungstenite; binary frames are not part of this protocol.
            Some(Ok(_)) => {}
            Some(Err(e)) => return self.on_lost(e.to_string()),
            None => return self.on_lost("the connection closed".into()),
        }
        true
    }

    /// The connection ended: reconnect, unless the server said not to.
    fn on_lost(&mut self, why: String) -> bool {
        self.session.on_disconnected();
        let told = self
            .session
            .disconnect_push()
            .or_else(|| self.close_frame.take());
        if let Some((code, reason)) = told {
            if (3500..4000).contains(&code) {
                tracing::warn!(code, reason, "disconnected for good by the server");
                self.finish(Closed::ByServer { code, reason });
                return false;
            }
            let at_least = self.session.reconnect_delay().unwrap_or_default();
            self.retry_later(
                format!("disconnected by the server: {code} {reason}"),
                at_least,
            );
        } else {
            self.retry_later(why, Duration::ZERO);
        }
        true
    }

    /// Schedules a reconnect after the backoff delay, and not before `at_least` (the server's advice).
    fn retry_later(&mut self, reason: String, at_least: Duration) {
        self.attempt = self.attempt.saturating_add(1);
        let delay = self.settings.backoff.delay(self.attempt).max(at_least);
        tracing::debug!(attempt = self.attempt, ?delay, reason, "reconnecting");
        self.state.send_replace(State::Reconnecting {
            attempt: self.attempt,
            delay,
            reason,
        });
        self.phase = Phase::Waiting(Box::pin(tokio::time::sleep(delay)));
    }

    /// Closes the connection (with close 1000, briefly waiting for the server's answer), then ends.
    async fn close(&mut self, reason: Closed) {
        if let Phase::Connected(ws) = &mut self.phase {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                if WebSocketStream::close(ws.as_mut(), Some(frame))
                    .await
                    .is_ok()
                {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
            .await;
        }
        self.finish(reason);
    }

    /// Ends everything: waiting callers get [`Error::Closed`], subscription streams end.
    fn finish(&mut self, reason: Closed) {
        self.phase = Phase::Idle;
        self.session.shut_down(&Error::Closed);
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(Error::Closed));
        }
        self.state.send_replace(State::Closed(reason));
    }

    /// Writes what the session queued.
    async fn flush(&mut self) {
        let Phase::Connected(ws) = &mut self.phase else {
            return;
        };
        let mut fed = false;
        while let Some(frame) = self.session.next_frame() {
            if let Err(e) = ws.feed(Message::text(frame)).await {
                // The read side sees the broken connection next and reconnects.
                tracing::debug!("write failed: {e}");
                return;
            }
            fed = true;
        }
        if fed && let Err(e) = ws.flush().await {
            tracing::debug!("write failed: {e}");
        }
    }
}

/// Opens the WebSocket and sends `connect`, within `timeout`. Returns the connection, the connect
/// result, and whatever else came in the reply's frame.
async fn establish(url: String, id: u64, params: Value, timeout: Duration) -> Established {
    match tokio::time::timeout(timeout, handshake(&url, id, params)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            method: "connect",
            timeout,
        }),
    }
}

async fn handshake(url: &str, id: u64, params: Value) -> Established {
    let fail = |e: tokio_tungstenite::tungstenite::Error| Error::transport(url, e);
    let mut request = url.into_client_request().map_err(fail)?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(fail)?;
    ws.send(Message::text(command(id, "connect", params)))
        .await
        .map_err(fail)?;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map_or_else(
                    || "closed without a code".to_owned(),
                    |f| format!("closed with {} {}", u16::from(f.code), f.reason.as_str()),
                );
                return Err(Error::transport(url, closed(why)));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(fail(e)),
            None => return Err(Error::transport(url, closed("closed".into()))),
        };
        let mut lines = text.as_str().split('\n').filter(|l| !l.trim().is_empty());
        while let Some(line) = lines.next() {
            // Pushes cannot come before the connect reply; anything else is skipped.
            if let Ok(Incoming::Reply { id: got, result }) = parse_line(line)
                && got == id
            {
                let connect: ConnectResult = crate::wire::decode(&result?)
                    .map_err(|e| Error::Protocol(format!("connect result: {e}")))?;
                let rest = lines.map(str::to_owned).collect();
                return Ok((Box::new(ws), connect, rest));
            }
        }
    }
}

fn closed(why: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("the server ended the connection before answering connect ({why})"),
    )
}
