//! One Engine.IO session as a state machine without I/O: the server feeds it requests, frames and
//! the time, and takes from it what to answer, what to send, and when to wake it next.
//!
//! The rules are those of `PROTOCOL.md` and, where it is silent, of the reference server
//! (`engine.io` v6 `socket.ts` and `transports/polling.ts`):
//!
//! - Heartbeat: `pingInterval` after the handshake (and after each pong) the server sends a ping;
//!   the session closes (`ping timeout`) when nothing arrives within `pingTimeout` of a ping, or
//!   within `pingInterval + pingTimeout` of the last packet.
//! - Polling: one GET and one POST at a time; a second of either closes the session. A GET is
//!   answered at once when packets wait, held otherwise. A client `close` packet closes the
//!   session and answers a held GET with `noop`; a server-side close answers it with `close`.
//! - Upgrade: a WebSocket with the session's `sid` probes (`2probe` → `3probe`); from then on a held
//!   or new GET is answered with `noop`, so the client can pause polling; `5` moves the session to
//!   the WebSocket. Any other packet, or `upgradeTimeout`, abandons the probe (the session goes on
//!   polling).
//! - Any packet that cannot be read, and a client `ping` (v4 pings come from the server), closes the
//!   session.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use thiserror::Error;

use super::packet::{Data, Frame, PROBE, Packet, SEPARATOR, decode_payload, encode_payload};
use super::request::{BadRequest, RequestError, Transport};

/// A session id: 20 URL-safe characters from 15 random bytes (120 bits, as the reference's
/// `base64id`), so that nobody can guess another client's session; optionally after the name of
/// the server holding it ([`Sid::on_node`]). Clients take any string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(String);

impl Sid {
    /// Makes an id from random bytes; the caller brings them from the operating system's generator
    /// (this crate does no I/O).
    pub fn from_random(bytes: [u8; 15]) -> Self {
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// An id that names the server holding the session, `<node>-<random>`, so that a request landing
    /// on another server of a cluster can be sent on to it. `node` must hold no `-`: the first one
    /// ends it (the random part may hold some).
    pub fn on_node(node: &str, bytes: [u8; 15]) -> Self {
        Self(format!("{node}-{}", Self::from_random(bytes).0))
    }

    /// The id as sent in the handshake and in `sid=`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The settings a session announces in its handshake and keeps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How often the server pings (`pingInterval`).
    pub ping_interval: Duration,
    /// How long the client has to answer a ping (`pingTimeout`).
    pub ping_timeout: Duration,
    /// The largest POST body or WebSocket message the server reads, in bytes (`maxPayload`); the
    /// transport enforces it, the handshake announces it.
    pub max_payload: usize,
    /// How long a WebSocket may take from opening to `5` before the probe is abandoned.
    pub upgrade_timeout: Duration,
    /// Whether polling sessions are offered the upgrade to WebSocket.
    pub allow_upgrades: bool,
    /// How long a server-side close waits for the next poll to deliver the `close` packet.
    pub close_timeout: Duration,
    /// Most bytes of messages queued for a client that does not poll or read (a slow consumer):
    /// [`Session::send`] refuses more.
    pub max_buffered: usize,
}

impl Default for Config {
    /// The reference server's defaults.
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            upgrade_timeout: Duration::from_millis(10_000),
            allow_upgrades: true,
            close_timeout: Duration::from_millis(30_000),
            max_buffered: 16 << 20,
        }
    }
}

/// The JSON of the `open` packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    /// The session id.
    pub sid: String,
    /// The transports the client may upgrade to: `["websocket"]` for polling, `[]` for WebSocket.
    pub upgrades: Vec<&'static str>,
    /// Milliseconds between pings.
    pub ping_interval: u64,
    /// Milliseconds the client has to answer.
    pub ping_timeout: u64,
    /// The largest payload the server reads, in bytes.
    pub max_payload: usize,
}

/// Why a session ended (the reference server's reasons, which Socket.IO shows to applications).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CloseReason {
    /// No packet in time after a ping.
    #[error("ping timeout")]
    PingTimeout,
    /// The client sent bytes that are no Engine.IO packet.
    #[error("parse error")]
    ParseError,
    /// The client broke a transport rule (two polls, a client ping, a dropped poll or POST).
    #[error("transport error: {0}")]
    TransportError(&'static str),
    /// The client closed the session (a `close` packet, or its WebSocket went away).
    #[error("transport close")]
    TransportClose,
    /// The server closed it ([`Session::close`]).
    #[error("forced close")]
    ForcedClose,
}

/// What to do with a poll (GET) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Answer now with this body (`text/plain; charset=UTF-8`).
    Respond(String),
    /// Hold the request; answer it with [`Session::take_poll_response`] once that returns a body.
    Hold,
}

/// What a WebSocket frame led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOutcome {
    /// Application data for the layer above (Socket.IO).
    Message(Data),
    /// Send this frame on the same WebSocket now (`3probe`, before the session is upgraded).
    Reply(Frame),
    /// The session now uses this WebSocket: send it [`Session::take_outgoing`] from now on, and
    /// answer a held poll with [`Session::take_poll_response`].
    Upgraded,
    /// Nothing to do (a pong, a noop).
    Nothing,
}

/// Why a WebSocket frame or event ends the WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WsError {
    /// The probing WebSocket broke the upgrade sequence or timed out: close it; the session goes
    /// on polling.
    #[error("WebSocket upgrade abandoned: {0}")]
    ProbeFailed(&'static str),
    /// The session is closed: close the WebSocket and forget the session.
    #[error("Engine.IO session closed: {0}")]
    Closed(CloseReason),
}

/// Why [`Session::send`] refused data.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// The session is closing or closed.
    #[error("the Engine.IO session is closed")]
    Closed,
    /// More than `max_buffered` bytes wait for a client that does not read.
    #[error("more than {0} bytes are queued for an Engine.IO client that does not read them")]
    Full(usize),
    /// Text with `\x1e` cannot travel in a polling payload.
    #[error("text containing the record separator \\x1e cannot be sent over Engine.IO polling")]
    RecordSeparator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A server-side close waits for the outbox (ending in `close`) to reach the client.
    Closing {
        deadline: Instant,
    },
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    None,
    /// A WebSocket with this sid is open; `2probe` not yet seen.
    Opened {
        deadline: Instant,
    },
    /// `3probe` sent; waiting for `5`.
    Probed {
        deadline: Instant,
    },
}

/// One Engine.IO session.
#[derive(Debug)]
pub struct Session {
    sid: Sid,
    /// Shared by the endpoint's sessions (one pointer each, not a copy).
    config: Arc<Config>,
    transport: Transport,
    state: State,
    reason: Option<CloseReason>,
    upgrade: Upgrade,
    /// Packets for the client, in order, on whatever transport is current.
    outbox: VecDeque<Packet>,
    /// Bytes of the messages in `outbox`.
    buffered: usize,
    poll_held: bool,
    /// The body a held poll gets once the session has closed (`1` or `6`).
    last_poll: Option<char>,
    post_in_flight: bool,
    next_ping: Option<Instant>,
    /// The session closes with `ping timeout` when this passes without a packet.
    liveness: Instant,
    /// Whether the probe WebSocket must be closed by the caller (set by a timeout).
    probe_abandoned: bool,
    /// After a client's `close` over polling with no poll held: until then, one poll sent together
    /// with the `close` (that lost the race to the server) still gets the `noop` a held poll gets.
    linger: Option<Instant>,
}

/// How long a session closed by its client over polling waits for a poll that raced the `close`.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

impl Session {
    /// Opens a session on `transport` at `now`; its `open` packet is the first of the outbox (the
    /// answer to the handshake GET, or the first WebSocket frame).
    pub fn open(
        sid: Sid,
        transport: Transport,
        config: impl Into<Arc<Config>>,
        now: Instant,
    ) -> Self {
        let config = config.into();
        let mut session = Self {
            sid,
            transport,
            state: State::Open,
            reason: None,
            upgrade: Upgrade::None,
            outbox: VecDeque::new(),
            buffered: 0,
            poll_held: false,
            last_poll: None,
            post_in_flight: false,
            next_ping: Some(now + config.ping_interval),
            liveness: now + config.ping_interval + config.ping_timeout,
            probe_abandoned: false,
            linger: None,
            config,
        };
        let open = serde_json::to_string(&session.handshake()).unwrap_or_default();
        session.outbox.push_back(Packet::Open(open));
        session
    }

    /// The handshake this session announces.
    pub fn handshake(&self) -> Handshake {
        let upgrades = match self.transport {
            Transport::Polling if self.config.allow_upgrades => vec![Transport::WebSocket.name()],
            _ => Vec::new(),
        };
        Handshake {
            sid: self.sid.0.clone(),
            upgrades,
            ping_interval: millis(self.config.ping_interval),
            ping_timeout: millis(self.config.ping_timeout),
            max_payload: self.config.max_payload,
        }
    }

    /// Bytes of the messages waiting for the client (no poll, no WebSocket frame took them yet):
    /// what a server counts against its bound for a slow client.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The session id.
    pub fn sid(&self) -> &Sid {
        &self.sid
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The transport packets currently travel on.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether the session is over: it takes no more data, and a held poll gets its last answer
    /// from [`Session::take_poll_response`].
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the caller may forget the session (a later request with its sid then gets `Session
    /// ID unknown`): closed, and no longer lingering for a poll that raced the client's `close`.
    pub fn is_finished(&self) -> bool {
        self.state == State::Closed && self.linger.is_none()
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.reason.as_ref()
    }

    /// Whether a WebSocket is probing this session (opened, not yet upgraded).
    pub fn is_upgrading(&self) -> bool {
        self.upgrade != Upgrade::None
    }

    /// Queues application data for the client.
    pub fn send(&mut self, data: Data) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        let text = match &data {
            Data::Text(t) => Some(t.as_str()),
            Data::Shared(s) => Some(s.text()),
            Data::Binary(_) => None,
        };
        if let Some(t) = text
            && self.transport == Transport::Polling
            && t.contains(SEPARATOR)
        {
            return Err(SendError::RecordSeparator);
        }
        if self.buffered + data.len() > self.config.max_buffered {
            return Err(SendError::Full(self.config.max_buffered));
        }
        self.buffered += data.len();
        self.outbox.push_back(Packet::Message(data));
        Ok(())
    }

    /// Closes the session from the server side: what is queued is still delivered, then a `close`
    /// packet; the session is closed once that has gone out (or after `close_timeout` on a polling
    /// session whose client does not poll again).
    pub fn close(&mut self, now: Instant) {
        if self.state != State::Open {
            return;
        }
        self.outbox.push_back(Packet::Close);
        self.next_ping = None;
        self.state = State::Closing {
            deadline: now + self.config.close_timeout,
        };
        self.reason = Some(CloseReason::ForcedClose);
    }

    // ---- HTTP long-polling ----

    /// A GET with this session's sid.
    pub fn poll(&mut self, now: Instant) -> Result<Poll, RequestError> {
        self.catch_up(now);
        if self.state == State::Closed && self.linger.take().is_some() {
            return Ok(Poll::Respond("6".to_owned()));
        }
        self.check_polling()?;
        if self.poll_held {
            self.close_now(CloseReason::TransportError("overlap from client"), '1');
            return Err(BadRequest::PollOverlap.into());
        }
        self.poll_held = true;
        Ok(match self.take_poll_response() {
            Some(body) => Poll::Respond(body),
            None => Poll::Hold,
        })
    }

    /// The body for the held poll, if it should be answered now; the poll is then no longer held.
    /// Call it after every event that may queue packets (a timer, [`Session::send`], a POST, a
    /// WebSocket frame, [`Session::close`]).
    pub fn take_poll_response(&mut self) -> Option<String> {
        if !self.poll_held {
            return None;
        }
        let body = if self.state == State::Closed {
            self.last_poll?.to_string()
        } else if self.transport == Transport::Polling && !self.outbox.is_empty() {
            let body = encode_payload(&self.outbox);
            if self.outbox.back() == Some(&Packet::Close) {
                self.finish_close();
            }
            self.outbox.clear();
            self.release_outbox();
            self.buffered = 0;
            body
        } else if matches!(self.upgrade, Upgrade::Probed { .. })
            || self.transport != Transport::Polling
        {
            // The client pauses polling during an upgrade: end its poll so it can send `5`.
            "6".to_owned()
        } else {
            return None;
        };
        self.poll_held = false;
        Some(body)
    }

    /// The held GET's connection went away before it was answered: the reference server closes the
    /// session.
    pub fn poll_aborted(&mut self) {
        if self.poll_held {
            self.poll_held = false;
            if self.state != State::Closed {
                self.close_now(
                    CloseReason::TransportError("poll connection closed prematurely"),
                    '1',
                );
            }
        }
    }

    /// A POST with this session's sid starts; `binary` says whether its `Content-Type` is
    /// `application/octet-stream`. Read the body (at most `max_payload` bytes), then call
    /// [`Session::post_body`], or [`Session::post_aborted`] if it cannot be read.
    pub fn post_begin(&mut self, binary: bool) -> Result<(), RequestError> {
        self.check_polling()?;
        if self.post_in_flight {
            self.close_now(
                CloseReason::TransportError("data request overlap from client"),
                '1',
            );
            return Err(BadRequest::PostOverlap.into());
        }
        if binary {
            self.close_now(CloseReason::TransportError("invalid content"), '1');
            return Err(BadRequest::BinaryBody.into());
        }
        self.post_in_flight = true;
        Ok(())
    }

    /// The body of the POST started by [`Session::post_begin`]: the messages it carried, for the
    /// layer above. Answer `ok` (`text/html`) on success, the error's status and body otherwise.
    pub fn post_body(&mut self, body: &[u8], now: Instant) -> Result<Vec<Data>, RequestError> {
        self.post_in_flight = false;
        self.catch_up(now);
        if self.state == State::Closed {
            return Err(RequestError::UnknownSid(self.sid.0.clone()));
        }
        if body.len() > self.config.max_payload {
            self.close_now(CloseReason::TransportError("payload too large"), '1');
            return Err(RequestError::PayloadTooLarge(self.config.max_payload));
        }
        let packets = match decode_payload(body) {
            Ok(p) => p,
            Err(e) => {
                self.close_now(CloseReason::ParseError, '1');
                return Err(BadRequest::Packet(e).into());
            }
        };
        let mut messages = Vec::new();
        for packet in packets {
            if self.state == State::Closed {
                break;
            }
            if let Some(data) = self.receive(packet, now) {
                messages.push(data);
            }
        }
        Ok(messages)
    }

    /// The POST body could not be read (the client went away, or it was larger than
    /// `max_payload`): the session closes.
    pub fn post_aborted(&mut self) {
        self.post_in_flight = false;
        if self.state != State::Closed {
            self.close_now(
                CloseReason::TransportError("data request connection closed prematurely"),
                '1',
            );
        }
    }

    fn check_polling(&self) -> Result<(), RequestError> {
        if self.state == State::Closed {
            return Err(RequestError::UnknownSid(self.sid.0.clone()));
        }
        if self.transport != Transport::Polling {
            return Err(BadRequest::TransportMismatch {
                current: self.transport.name(),
                requested: Transport::Polling.name(),
            }
            .into());
        }
        Ok(())
    }

    // ---- WebSocket ----

    /// A WebSocket upgrade request with this session's sid: allowed for a polling session that is
    /// not already probing. The caller then upgrades the connection and feeds its frames to
    /// [`Session::ws_frame`].
    pub fn ws_begin(&mut self, now: Instant) -> Result<(), RequestError> {
        self.catch_up(now);
        if self.state == State::Closed {
            return Err(RequestError::UnknownSid(self.sid.0.clone()));
        }
        if self.transport != Transport::Polling
            || self.upgrade != Upgrade::None
            || !self.config.allow_upgrades
        {
            return Err(BadRequest::AlreadyUpgraded.into());
        }
        self.upgrade = Upgrade::Opened {
            deadline: now + self.config.upgrade_timeout,
        };
        Ok(())
    }

    /// A frame on the session's WebSocket (the one it was opened on, or the one probing it).
    pub fn ws_frame(&mut self, frame: Frame, now: Instant) -> Result<WsOutcome, WsError> {
        self.catch_up(now);
        if self.state == State::Closed {
            return Err(self.closed_error());
        }
        let packet = frame.decode();
        if self.transport == Transport::WebSocket {
            let packet = match packet {
                Ok(p) => p,
                Err(_) => {
                    self.close_now(CloseReason::ParseError, '1');
                    return Err(self.closed_error());
                }
            };
            let data = self.receive(packet, now);
            if self.state == State::Closed {
                return Err(self.closed_error());
            }
            return Ok(data.map_or(WsOutcome::Nothing, WsOutcome::Message));
        }
        // A probe: only `2probe` then `5` are allowed.
        match (self.upgrade, packet) {
            (Upgrade::Opened { deadline }, Ok(Packet::Ping(p))) if p == PROBE => {
                self.upgrade = Upgrade::Probed { deadline };
                Ok(WsOutcome::Reply(Packet::Pong(PROBE.to_owned()).to_frame()))
            }
            (Upgrade::Opened { .. } | Upgrade::Probed { .. }, Ok(Packet::Upgrade)) => {
                self.upgrade = Upgrade::None;
                self.transport = Transport::WebSocket;
                self.touch(now);
                Ok(WsOutcome::Upgraded)
            }
            (Upgrade::None, _) => Err(WsError::ProbeFailed("no upgrade in progress")),
            _ => {
                self.upgrade = Upgrade::None;
                Err(WsError::ProbeFailed("expected 2probe then 5"))
            }
        }
    }

    /// The session's WebSocket closed: the session closes if it was its transport; an unfinished
    /// probe is abandoned and the session goes on polling.
    pub fn ws_closed(&mut self) {
        if self.transport == Transport::WebSocket {
            if self.state != State::Closed {
                self.close_now(CloseReason::TransportClose, '6');
            }
        } else {
            self.upgrade = Upgrade::None;
        }
    }

    /// The packets to send on the session's WebSocket, one frame each, once it is the session's
    /// transport; empty otherwise. When [`Session::is_closed`] turns true afterwards, close the
    /// WebSocket after sending them.
    pub fn take_outgoing(&mut self) -> Vec<Frame> {
        if self.transport != Transport::WebSocket || self.state == State::Closed {
            return Vec::new();
        }
        let frames: Vec<Frame> = self.outbox.drain(..).map(|p| p.to_frame()).collect();
        self.release_outbox();
        self.buffered = 0;
        if matches!(self.state, State::Closing { .. }) {
            self.finish_close();
        }
        frames
    }

    /// Whether a timeout abandoned the WebSocket probe since the last call: the caller closes that
    /// WebSocket.
    pub fn take_probe_abandoned(&mut self) -> bool {
        std::mem::take(&mut self.probe_abandoned)
    }

    // ---- time ----

    /// When [`Session::on_timer`] must run next (`None` once closed).
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = match self.state {
            State::Closed => return self.linger,
            State::Closing { deadline } => deadline.min(self.liveness),
            State::Open => self.liveness,
        };
        if let Some(ping) = self.next_ping {
            next = next.min(ping);
        }
        if let Upgrade::Opened { deadline } | Upgrade::Probed { deadline } = self.upgrade {
            next = next.min(deadline);
        }
        Some(next)
    }

    /// Runs what is due at `now`: a ping, the ping timeout, the upgrade timeout, the end of a
    /// server-side close. Then answer a held poll, flush the WebSocket, and close a probe as
    /// [`Session::take_poll_response`], [`Session::take_outgoing`] and
    /// [`Session::take_probe_abandoned`] say.
    pub fn on_timer(&mut self, now: Instant) {
        if self.state == State::Closed {
            if self.linger.is_some_and(|l| now >= l) {
                self.linger = None;
            }
            return;
        }
        if now >= self.liveness {
            self.close_now(CloseReason::PingTimeout, '1');
            return;
        }
        if let State::Closing { deadline } = self.state
            && now >= deadline
        {
            self.finish_close();
            self.last_poll = Some('1');
            return;
        }
        if let Upgrade::Opened { deadline } | Upgrade::Probed { deadline } = self.upgrade
            && now >= deadline
        {
            self.upgrade = Upgrade::None;
            self.probe_abandoned = true;
        }
        if let Some(ping) = self.next_ping
            && now >= ping
        {
            self.next_ping = None;
            self.outbox.push_back(Packet::Ping(String::new()));
            // From when the ping was due, not from when this timer ran: a late timer (a busy
            // server) must not extend the deadline the client was given.
            self.liveness = ping + self.config.ping_timeout;
            if now >= self.liveness {
                self.close_now(CloseReason::PingTimeout, '1');
            }
        }
    }

    // ---- internals ----

    /// Runs the timers that are due before an input is handled: a request that arrives after the
    /// ping timeout finds the session closed, however late the caller's own timer fires.
    fn catch_up(&mut self, now: Instant) {
        if self.next_deadline().is_some_and(|d| d <= now) {
            self.on_timer(now);
        }
    }

    /// A packet from the client on the session's transport: the data of a message, if any.
    fn receive(&mut self, packet: Packet, now: Instant) -> Option<Data> {
        self.touch(now);
        match packet {
            Packet::Message(data) => return Some(data),
            Packet::Pong(_) => self.next_ping = Some(now + self.config.ping_interval),
            Packet::Ping(_) => self.close_now(
                CloseReason::TransportError("invalid heartbeat direction"),
                '1',
            ),
            Packet::Close => {
                self.close_now(CloseReason::TransportClose, '6');
                if self.transport == Transport::Polling && !self.poll_held {
                    self.linger = Some(now + CLOSE_LINGER);
                }
            }
            Packet::Open(_) | Packet::Upgrade | Packet::Noop => {}
        }
        None
    }

    /// Any packet is a sign of life: the reference server then allows `pingInterval +
    /// pingTimeout` for the next one.
    fn touch(&mut self, now: Instant) {
        self.liveness = now + self.config.ping_interval + self.config.ping_timeout;
    }

    fn close_now(&mut self, reason: CloseReason, last_poll: char) {
        self.state = State::Closed;
        self.reason.get_or_insert(reason);
        self.last_poll = Some(last_poll);
        self.outbox.clear();
        self.buffered = 0;
        self.upgrade = Upgrade::None;
        self.next_ping = None;
    }

    /// Gives back the room of the emptied outbox: an idle session keeps none (thousands of
    /// sessions sit idle between publications; one allocation per delivery costs less than the
    /// room all of them would keep).
    fn release_outbox(&mut self) {
        if self.outbox.is_empty() {
            self.outbox = VecDeque::new();
        }
    }

    fn finish_close(&mut self) {
        self.state = State::Closed;
        self.reason.get_or_insert(CloseReason::ForcedClose);
        self.upgrade = Upgrade::None;
        self.next_ping = None;
    }

    fn closed_error(&self) -> WsError {
        WsError::Closed(self.reason.clone().unwrap_or(CloseReason::TransportClose))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
