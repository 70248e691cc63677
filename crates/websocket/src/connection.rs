//! A server-side WebSocket connection after the handshake: one struct that reads, writes, keeps the
//! peer honest and closes, driven by [`WebSocket::poll_recv`].
//!
//! There is no reader task and writer task: one task per connection polls `poll_recv`, which decodes
//! what is buffered, flushes what is queued, runs the timers and reads more, in that order. That keeps
//! an idle connection small (no read or write buffer is held while nothing moves: a read first lands
//! on the stack and is only copied to the heap when a frame is incomplete) and lets every message
//! decoded from one read be answered in one write.
//!
//! # Example
//!
//! ```no_run
//! # async fn echo(io: tokio::net::TcpStream, accepted: switchboard_websocket::Accepted) {
//! use std::sync::Arc;
//! use switchboard_websocket::{Config, WebSocket};
//!
//! let mut ws = WebSocket::new(io, Arc::new(Config::default()), accepted.deflate);
//! while let Some(Ok(msg)) = ws.recv().await {
//!     if ws.send(msg).is_err() {
//!         break;
//!     }
//! }
//! # }
//! ```

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until};

use crate::close::{CloseCode, encode_close_payload};
use crate::config::Config;
use crate::deflate::{self, DeflateParams};
use crate::error::{Error, ProtocolError};
use crate::frame::OpCode;
use crate::incoming::{Event, Incoming};
use crate::keepalive::{self, PingCarrier};
use crate::message::{Message, MessageRef, SharedFraming, SharedMessage};
use crate::write_queue::WriteQueue;

/// Bytes read per `read` call. Reads land on the stack first, so this costs no memory while idle.
const READ_CHUNK: usize = 8192;

/// One server-side WebSocket connection over any byte stream (TCP, TLS, a hyper upgrade).
pub struct WebSocket<S> {
    io: S,
    config: Arc<Config>,
    read_buf: BytesMut,
    incoming: Incoming,
    out: WriteQueue,
    deflate: Option<Box<SendDeflate>>,
    state: State,
    timer: Option<Pin<Box<Sleep>>>,
    last_read: Instant,
    ping: Ping,
    /// Writes the keepalive ping for us when it writes something anyway (see [`crate::keepalive`]).
    carrier: Option<Arc<dyn PingCarrier>>,
    partial_since: Option<Instant>,
    stalled_since: Option<Instant>,
    close_deadline: Option<Instant>,
}

/// Where the keepalive ping is. One field, not an `Option<Instant>` and a flag: the connection's
/// size is what every idle client costs (16 bytes, as the instant alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    /// None out: the next is due `ping_interval` after the last read.
    Idle,
    /// On offer to the carrier, which may write it with its next frame.
    Offered,
    /// Written at this instant (by us or the carrier); the peer has `pong_timeout` to answer.
    Sent(Instant),
}

/// Where the connection is in its life (RFC 6455 §7).
#[derive(Debug)]
enum State {
    Open,
    /// We sent a close frame and wait for the peer's.
    CloseSent,
    /// The last frame (a close) is queued: write it, then shut the write side down.
    Finishing(Option<Error>),
    /// Our side is shut down: read and discard until the peer closes too, so that unread bytes do not
    /// turn our orderly close into a TCP reset that could destroy the close frame in flight.
    Draining(Option<Error>),
    Closed,
}

/// Sending side of permessage-deflate.
struct SendDeflate {
    level: u32,
    threshold: usize,
    window_bits: u8,
    /// Only with context takeover: created on first use, lives as long as the connection.
    context: Option<Option<Compress>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wraps an upgraded stream. `deflate` is what the handshake agreed ([`crate::Accepted::deflate`]).
    pub fn new(io: S, config: Arc<Config>, deflate: Option<DeflateParams>) -> Self {
        let incoming = Incoming::new(&config, deflate.as_ref());
        let deflate = deflate.map(|p| {
            Box::new(SendDeflate {
                level: config.compression.level,
                threshold: config.compression.threshold,
                window_bits: p.server_max_window_bits,
                context: (!p.server_no_context_takeover).then_some(None),
            })
        });
        let mut ws = Self {
            io,
            config,
            read_buf: BytesMut::new(),
            incoming,
            out: WriteQueue::default(),
            deflate,
            state: State::Open,
            timer: None,
            last_read: Instant::now(),
            ping: Ping::Idle,
            carrier: None,
            partial_since: None,
            stalled_since: None,
            close_deadline: None,
        };
        ws.rearm();
        ws
    }

    /// Waits for the next message. Meanwhile writes what is queued, answers pings, sends keepalive
    /// pings and enforces the timeouts.
    ///
    /// `None` after a clean close handshake; `Some(Err(_))` once when the connection failed (the peer
    /// was sent the matching close code where that was still possible), then `None`. Cancel-safe:
    /// all state lives in `self`, so it can sit in a `select!` beside the application's own queue.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Queues a message. It is written by the next `poll_recv`/`flush`, together with whatever else is
    /// queued by then.
    pub fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.ensure_open()?;
        if !self.send_compressed(msg.opcode(), msg.payload()) {
            // Large payloads are queued as they are, without a copy.
            self.out.push_frame(msg.opcode(), false, msg.payload());
        }
        Ok(())
    }

    /// Queues a borrowed message (copied into the write queue): what a handler of
    /// [`WebSocket::poll_each`] answers with, an echo for instance.
    pub fn send_ref(&mut self, msg: MessageRef<'_>) -> Result<(), Error> {
        self.ensure_open()?;
        if !self.send_compressed(msg.opcode(), msg.payload()) {
            self.out
                .push_frame_slice(msg.opcode(), false, msg.payload());
        }
        Ok(())
    }

    /// Queues `payload` compressed when the connection compresses and it pays; false when it
    /// queued nothing and the plain frame is the caller's to queue.
    fn send_compressed(&mut self, opcode: OpCode, payload: &[u8]) -> bool {
        if let Some(d) = self
            .deflate
            .as_deref_mut()
            .filter(|d| payload.len() >= d.threshold)
        {
            match &mut d.context {
                // With context takeover the compressor's history now includes this message, so the
                // compressed form must be sent even when it is not smaller.
                Some(ctx) => {
                    let c = ctx.get_or_insert_with(|| {
                        Compress::new_with_window_bits(
                            Compression::new(d.level),
                            false,
                            d.window_bits,
                        )
                    });
                    if let Some(z) = deflate::compress_with(c, payload) {
                        self.out.push_frame(opcode, true, &z);
                        return true;
                    }
                    // A compressor error leaves its state unknown; fall back to plain frames for good.
                    d.threshold = usize::MAX;
                }
                None => {
                    if let Some(z) = deflate::compress_standalone(payload, d.level, d.window_bits)
                        .filter(|z| z.len() < payload.len())
                    {
                        self.out.push_frame(opcode, true, &z);
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Queues a broadcast message, reusing its shared encoding (and compressed form) when this
    /// connection's parameters allow.
    pub fn send_shared(&mut self, msg: &SharedMessage) -> Result<(), Error> {
        self.ensure_open()?;
        match self.shared_framing() {
            Some(framing) => self.out.push_shared(framing.frame(msg)),
            // Context takeover: the connection's own compressor must see every message.
            None => return self.send(msg.message().clone()),
        }
        Ok(())
    }

    /// How this connection frames broadcast messages, as a value that can leave it: for a writer
    /// that puts [`SharedMessage`]s on the connection's socket itself while its queue is empty.
    /// `None` with compression context takeover, where only the connection's compressor can
    /// encode its next message.
    pub fn shared_framing(&self) -> Option<SharedFraming> {
        match self.deflate.as_deref() {
            None => Some(SharedFraming::PLAIN),
            Some(d) if d.context.is_none() => Some(SharedFraming {
                deflate: Some((d.level, d.threshold, d.window_bits)),
            }),
            Some(_) => None,
        }
    }

    /// Lets `carrier`, another writer of whole frames to this connection's socket, carry the
    /// keepalive ping on its own writes (see [`crate::keepalive`]); the connection still writes
    /// the ping itself when the carrier had nothing to write by the time it is due.
    pub fn set_ping_carrier(&mut self, carrier: Arc<dyn PingCarrier>) {
        self.withdraw_ping();
        self.carrier = Some(carrier);
        self.rearm();
    }

    /// The stream the connection runs over.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Bytes queued and not yet written: what the application's slow-consumer policy looks at.
    pub fn queued_bytes(&self) -> usize {
        self.out.len()
    }

    /// True until a close frame was sent or received, or the connection failed.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Starts the close handshake. `recv` then yields `None` once the peer answers (or an error if it
    /// does not within the close timeout). Does nothing if closing has already begun.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.is_open() {
            self.out
                .push_frame(OpCode::Close, false, &encode_close_payload(code, reason));
            self.state = State::CloseSent;
            self.start_close_timer();
        }
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// The poll form of [`WebSocket::flush`]: for an application that stops receiving for a while
    /// (its own queue is full) and must still let what it queued go out.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.out.poll_write(&mut self.io, cx).map_err(Error::from)
    }

    /// The poll form of [`WebSocket::recv`].
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        self.poll_next::<fn(&mut Self, MessageRef<'_>)>(cx, None)
    }

    /// Hands every message that arrives to `on_message`, borrowed, until the socket has nothing more
    /// for now (`Pending`) or the connection ends: `Ready(Ok(()))` after a clean close handshake,
    /// `Ready(Err(_))` when it failed. Meanwhile it does all that [`WebSocket::recv`] does.
    ///
    /// For a handler that does not keep the message, this receives without allocating: whole
    /// messages are unmasked and handed out where the read put them (on the stack), and only an
    /// incomplete frame is copied to the heap. Fragmented and compressed messages are assembled as
    /// for `recv` and handed out borrowed from that. `on_message` gets the connection too, so it can
    /// answer at once ([`WebSocket::send_ref`]); what it queues from one read goes out in one write.
    /// Cancel-safe like `recv`.
    pub fn poll_each<F>(
        &mut self,
        cx: &mut Context<'_>,
        mut on_message: F,
    ) -> Poll<Result<(), Error>>
    where
        F: FnMut(&mut Self, MessageRef<'_>),
    {
        loop {
            match ready!(self.poll_next(cx, Some(&mut on_message))) {
                Some(Ok(msg)) => on_message(self, msg.as_ref()),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }

    /// `poll_recv`, with the messages of a read that lands on an empty buffer handed to `direct`
    /// in place when there is one.
    fn poll_next<F>(
        &mut self,
        cx: &mut Context<'_>,
        mut direct: Option<&mut F>,
    ) -> Poll<Option<Result<Message, Error>>>
    where
        F: FnMut(&mut Self, MessageRef<'_>),
    {
        loop {
            match self.state {
                State::Closed => return Poll::Ready(None),
                State::Open | State::CloseSent => {
                    let before = self.read_buf.len();
                    match self.incoming.decode(&mut self.read_buf) {
                        Ok(Some(event)) => {
                            if let Some(msg) = self.on_event(event) {
                                // Released now, not at the next poll: the application may hold the
                                // connection unpolled for as long as the message takes to handle.
                                if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
                                    self.read_buf = BytesMut::new();
                                }
                                return Poll::Ready(Some(Ok(msg)));
                            }
                            continue;
                        }
                        Ok(None) if self.read_buf.len() != before => continue,
                        Ok(None) => self.track_partial(),
                        Err(e) => {
                            self.fail(e);
                            continue;
                        }
                    }
                    // Timers first: a deadline may queue a ping or fail the connection, and what it
                    // queues must go out with the write below.
                    if let Some(result) = self.poll_timer(cx) {
                        return result;
                    }
                    if !matches!(self.state, State::Open | State::CloseSent) {
                        continue;
                    }
                    if let Err(e) = self.poll_write(cx) {
                        return self.abort(e);
                    }
                    if self.out.len() >= self.config.write_high_water {
                        // Backpressure: the write above is pending and will wake us.
                        return Poll::Pending;
                    }
                    match self.poll_read(cx, direct.as_deref_mut()) {
                        Poll::Ready(Ok(0)) => return self.abort(Error::Eof),
                        Poll::Ready(Ok(_)) => {
                            self.last_read = Instant::now();
                            if self.ping != Ping::Idle {
                                self.heard();
                            }
                        }
                        Poll::Ready(Err(e)) => return self.abort(e.into()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Finishing(_) => {
                    let done = match self.out.poll_write(&mut self.io, cx) {
                        Poll::Ready(Ok(())) => Pin::new(&mut self.io).poll_shutdown(cx),
                        other => other,
                    };
                    match done {
                        Poll::Ready(result) => {
                            let err = match &mut self.state {
                                State::Finishing(e) => e.take(),
                                _ => None,
                            };
                            self.state = State::Closed;
                            if let Err(e) = result {
                                return Poll::Ready(Some(Err(err.unwrap_or(e.into()))));
                            }
                            self.state = State::Draining(err);
                        }
                        Poll::Pending => {
                            return match self.poll_timer(cx) {
                                Some(result) => result,
                                None => Poll::Pending,
                            };
                        }
                    }
                }
                State::Draining(_) => {
                    let mut scratch = [0u8; 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                        Poll::Ready(_) => return self.finish(),
                        Poll::Pending => {
                            return match self.poll_timer(cx) {
                                Some(result) => result,
                                None => Poll::Pending,
                            };
                        }
                    }
                }
            }
        }
    }

    fn ensure_open(&self) -> Result<(), Error> {
        if self.is_open() {
            Ok(())
        } else {
            Err(Error::Closing)
        }
    }

    /// Handles a decoded frame; returns the message to hand to the application, if any.
    fn on_event(&mut self, event: Event) -> Option<Message> {
        match event {
            Event::Message(msg) => self.is_open().then_some(msg),
            Event::Ping(payload) => {
                if self.is_open() {
                    self.out.push_frame(OpCode::Pong, false, &payload);
                }
                None
            }
            Event::Pong(_) => None,
            Event::Close(frame) => {
                if self.is_open() {
                    // Echo the peer's code (RFC 6455 §5.5.1); an empty close gets an empty answer.
                    let payload = frame
                        .code
                        .map_or_else(Bytes::new, |c| encode_close_payload(c, ""));
                    self.out.push_frame(OpCode::Close, false, &payload);
                }
                self.state = State::Finishing(None);
                self.start_close_timer();
                None
            }
        }
    }

    /// Fails the connection (RFC 6455 §7.1.7): a close frame with the error's code, then shutdown.
    fn fail(&mut self, e: ProtocolError) {
        if self.is_open() {
            let code = e.close_code();
            self.out.push_frame(
                OpCode::Close,
                false,
                &encode_close_payload(code, &e.to_string()),
            );
        }
        tracing::debug!(error = %e, "failing WebSocket connection");
        self.state = State::Finishing(Some(e.into()));
        self.start_close_timer();
    }

    /// Ends at once, without a close handshake (socket errors, dead peers).
    fn abort<T>(&mut self, e: Error) -> Poll<Option<Result<T, Error>>> {
        self.state = State::Closed;
        self.timer = None;
        Poll::Ready(Some(Err(e)))
    }

    fn finish<T>(&mut self) -> Poll<Option<Result<T, Error>>> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        self.timer = None;
        match state {
            State::Finishing(Some(e)) | State::Draining(Some(e)) => Poll::Ready(Some(Err(e))),
            _ => Poll::Ready(None),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let before = self.out.len();
        if let Poll::Ready(result) = self.out.poll_write(&mut self.io, cx) {
            result?;
        }
        if self.out.is_empty() {
            self.stalled_since = None;
        } else if self.out.len() < before || self.stalled_since.is_none() {
            let now = Instant::now();
            self.stalled_since = Some(now);
            self.arm(now + self.config.write_timeout);
        }
        Ok(())
    }

    /// Reads more. With `direct`, the whole messages at the front of a read onto the stack are
    /// handed to it there; only what follows them is copied to the read buffer.
    fn poll_read<F>(
        &mut self,
        cx: &mut Context<'_>,
        direct: Option<&mut F>,
    ) -> Poll<std::io::Result<usize>>
    where
        F: FnMut(&mut Self, MessageRef<'_>),
    {
        if self.read_buf.is_empty() {
            // Nothing partial is buffered: read onto the stack so an idle connection holds no buffer.
            // Left uninitialised: zeroing 8 KiB before every read showed in profiles of the echo
            // benchmark (about 1 % of the server's CPU), for bytes the read overwrites anyway.
            let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            let read = buf.filled_mut();
            let mut at = 0;
            if let Some(direct) = direct {
                // Stops at the first frame the fast path does not take, or when the handler closed
                // the connection (data after our close is not handed out, as in `on_event`).
                while self.is_open() {
                    match self.incoming.decode_in_place(&mut read[at..]) {
                        Ok(Some((used, msg))) => {
                            at += used;
                            direct(self, msg);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // The frame was unmasked in place, so `decode` cannot have it: fail
                            // here, as `poll_next` does with decode's errors. The rest is dropped.
                            self.fail(e);
                            at = n;
                            break;
                        }
                    }
                }
            }
            if at < n {
                self.read_buf = BytesMut::from(&read[at..]);
            }
            return Poll::Ready(Ok(n));
        }
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf)
    }

    /// Remembers when an incomplete frame or message started, for the message timeout; releases the
    /// read buffer when nothing is left in it.
    fn track_partial(&mut self) {
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
            if !self.incoming.in_message() {
                self.partial_since = None;
                return;
            }
        }
        if self.partial_since.is_none() {
            let now = Instant::now();
            self.partial_since = Some(now);
            self.arm(now + self.config.message_timeout);
        }
    }

    fn start_close_timer(&mut self) {
        if self.close_deadline.is_none() {
            let deadline = Instant::now() + self.config.close_timeout;
            self.close_deadline = Some(deadline);
            self.arm(deadline);
        }
    }

    /// Polls the timer; when it fired, acts on every deadline that passed and returns what `poll_recv`
    /// should return if the connection ended.
    fn poll_timer<T>(&mut self, cx: &mut Context<'_>) -> Option<Poll<Option<Result<T, Error>>>> {
        loop {
            let timer = self.timer.as_mut()?;
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            if let Some(end) = self.on_deadline(Instant::now()) {
                return Some(end);
            }
            self.rearm();
        }
    }

    fn on_deadline<T>(&mut self, now: Instant) -> Option<Poll<Option<Result<T, Error>>>> {
        let cfg = Arc::clone(&self.config);
        let passed = |since: Option<Instant>, after: std::time::Duration| {
            since.is_some_and(|t| t + after <= now)
        };
        if passed(self.close_deadline, std::time::Duration::ZERO) {
            return Some(match std::mem::replace(&mut self.state, State::Closed) {
                State::Finishing(Some(e)) | State::Draining(Some(e)) => self.abort(e),
                _ => self.abort(Error::CloseTimeout),
            });
        }
        if passed(self.stalled_since, cfg.write_timeout) {
            return Some(self.abort(Error::WriteTimeout));
        }
        if !matches!(self.state, State::Open | State::CloseSent) {
            return None;
        }
        if passed(self.partial_since, cfg.message_timeout) {
            self.fail(ProtocolError::MessageTimeout);
            return None;
        }
        if !cfg.idle_timeout.is_zero() && self.last_read + cfg.idle_timeout <= now {
            if self.is_open() {
                self.out.push_frame(
                    OpCode::Close,
                    false,
                    &encode_close_payload(CloseCode::GOING_AWAY, "idle timeout"),
                );
            }
            self.state = State::Finishing(Some(Error::IdleTimeout));
            self.start_close_timer();
            return None;
        }
        if !cfg.ping_interval.is_zero() {
            // A read since the ping made it `Idle` already (`heard`).
            match self.ping {
                Ping::Sent(t) if t + cfg.pong_timeout <= now => {
                    if !self.is_open() {
                        // Our close is already out: nothing more to say.
                        return Some(self.abort(Error::PongTimeout));
                    }
                    // Say why before hanging up, then wait for the peer's close at most
                    // close_timeout, as for the idle timeout.
                    self.out.push_frame(
                        OpCode::Close,
                        false,
                        &encode_close_payload(cfg.pong_timeout_close, "no pong"),
                    );
                    self.state = State::Finishing(Some(Error::PongTimeout));
                    self.start_close_timer();
                    return None;
                }
                Ping::Sent(_) => {}
                Ping::Idle | Ping::Offered => {
                    let due = self.last_read + cfg.ping_interval;
                    if due <= now {
                        // The carrier's ping, if it wrote one, counts from when it went out.
                        if let Some(at) = self.withdraw_ping() {
                            self.ping = Ping::Sent(at);
                        } else if self.is_open() {
                            self.out.push_frame(OpCode::Ping, false, &Bytes::new());
                            self.ping = Ping::Sent(now);
                        }
                    } else if let Some(carrier) = &self.carrier
                        && self.ping == Ping::Idle
                        && self.is_open()
                        && due - keepalive::offer_lead(cfg.ping_interval) <= now
                    {
                        carrier.offer_ping();
                        self.ping = Ping::Offered;
                    }
                }
            }
        }
        None
    }

    /// The earliest instant at which some timer has something to check.
    fn next_deadline(&self) -> Option<Instant> {
        let cfg = &self.config;
        // Only the deadlines `on_deadline` acts on in the present state: one it would not act on
        // would fire again at once, a busy loop inside one poll (it was, for `close_timeout`,
        // on every unanswered ping: the pong deadline outlived the close it caused).
        let (open, reading) = match self.state {
            State::Open => (true, true),
            State::CloseSent => (false, true),
            _ => (false, false),
        };
        let keepalive = if cfg.ping_interval.is_zero() || !reading {
            None
        } else {
            match self.ping {
                Ping::Sent(t) => Some(t + cfg.pong_timeout),
                // No ping to send once our close is out.
                _ if !open => None,
                // First the instant to offer the ping to the carrier, then the one to write it.
                Ping::Idle if self.carrier.is_some() => Some(
                    self.last_read + (cfg.ping_interval - keepalive::offer_lead(cfg.ping_interval)),
                ),
                Ping::Idle | Ping::Offered => Some(self.last_read + cfg.ping_interval),
            }
        };
        let idle =
            (reading && !cfg.idle_timeout.is_zero()).then(|| self.last_read + cfg.idle_timeout);
        [
            keepalive,
            idle,
            self.close_deadline,
            self.partial_since
                .filter(|_| reading)
                .map(|t| t + cfg.message_timeout),
            self.stalled_since.map(|t| t + cfg.write_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The peer spoke after a ping or while one was on offer: it is alive, so the next ping is
    /// a whole interval away. The timer is set to that at once: left as it was, it would fire for
    /// the pong deadline or the offer and find nothing due, one more wake-up per ping for nothing.
    fn heard(&mut self) {
        self.withdraw_ping();
        self.ping = Ping::Idle;
        self.rearm();
    }

    /// Takes a ping offer back from the carrier, if one is out; returns when it wrote the ping.
    fn withdraw_ping(&mut self) -> Option<Instant> {
        if self.ping != Ping::Offered {
            return None;
        }
        self.ping = Ping::Idle;
        self.carrier.as_ref()?.withdraw_ping()
    }

    /// Sets the timer to the next deadline. Reads move deadlines later without touching the timer
    /// (resetting it on every read would cost a timer-wheel update each time; only the read that
    /// answers a ping does, in `heard`); when it fires early, `on_deadline` finds nothing due and
    /// this sets it again.
    fn rearm(&mut self) {
        match self.next_deadline() {
            Some(d) => self.set_timer(d),
            None => {
                self.timer = None;
            }
        }
    }

    /// Makes sure the timer fires no later than `deadline`.
    fn arm(&mut self, deadline: Instant) {
        // The timer's own deadline, even if it fired and is not yet polled: a later one must not
        // replace it, or what was due would wait.
        if self.timer.as_ref().is_none_or(|t| deadline < t.deadline()) {
            self.set_timer(deadline);
        }
    }

    fn set_timer(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(sleep_until(deadline))),
        }
    }
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("state", &self.state)
            .field("queued", &self.out.len())
            .field("buffered", &self.read_buf.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// A masked client text frame carrying `payload` (< 126 bytes).
    fn client_text(payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// What an idle connection holds: no read buffer and no write queue between messages, whether the
    /// last message came whole or split over several reads (when the buffer grows, then goes).
    #[tokio::test]
    async fn an_idle_connection_holds_no_buffers_and_they_regrow_for_a_split_frame() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut ws = WebSocket::new(server, Arc::new(Config::default()), None);

        client.write_all(&client_text(b"whole")).await.unwrap();
        let msg = ws.recv().await.unwrap().unwrap();
        assert_eq!(msg.payload().as_ref(), b"whole");
        assert_eq!(ws.read_buf.capacity(), 0, "a whole frame leaves no buffer");

        let frame = client_text(b"split across two reads");
        client.write_all(&frame[..7]).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(50), ws.recv()).await;
        assert!(early.is_err(), "half a frame is not a message");
        assert_eq!(ws.read_buf.len(), 7, "the partial frame is kept");
        client.write_all(&frame[7..]).await.unwrap();
        let msg = ws.recv().await.unwrap().unwrap();
        assert_eq!(msg.payload().as_ref(), b"split across two reads");
        assert_eq!(
            ws.read_buf.capacity(),
            0,
            "released once the frame is whole"
        );

        ws.send(Message::Text(Bytes::from_static(b"reply")))
            .unwrap();
        assert!(ws.queued_bytes() > 0);
        let early = tokio::time::timeout(Duration::from_millis(50), ws.recv()).await;
        assert!(early.is_err(), "no message from the client");
        assert_eq!(ws.queued_bytes(), 0, "written while waiting");
        assert_eq!(ws.read_buf.capacity(), 0);
    }

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = client_text(payload);
        frame[0] = (u8::from(fin) << 7) | opcode;
        frame
    }

    /// Reads the server's frames off the client side until `n` have come: (opcode bits, payload).
    async fn server_frames(client: &mut tokio::io::DuplexStream, n: usize) -> Vec<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt as _;
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        while frames.len() < n {
            let mut chunk = [0u8; 1024];
            let got = client.read(&mut chunk).await.unwrap();
            assert!(got > 0, "the server hung up after {frames:?}");
            bytes.extend_from_slice(&chunk[..got]);
            while let Some(h) = crate::frame::parse_header(&bytes).unwrap() {
                let end = h.header_len + h.payload_len as usize;
                if bytes.len() < end {
                    break;
                }
                frames.push((h.opcode.bits(), bytes[h.header_len..end].to_vec()));
                bytes.drain(..end);
            }
        }
        frames
    }

    /// `poll_each` hands out every message in order, whether it came whole in a read (in place),
    /// after a ping, in fragments or split over reads; its echoes and the pong go out; and nothing
    /// is left buffered.
    #[tokio::test]
    async fn poll_each_hands_out_every_message_in_order_and_echoes_them() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut ws = WebSocket::new(server, Arc::new(Config::default()), None);
        let split = client_text(b"split over two reads");
        let first = [
            client_text(b"one"),
            client_frame(true, 2, b"two"),
            client_frame(true, 9, b"ping"),
            client_text(b"three"),
            client_frame(false, 1, b"fo"),
            client_frame(true, 0, b"ur"),
            client_text(b"five"),
            split[..9].to_vec(),
        ]
        .concat();
        client.write_all(&first).await.unwrap();

        let mut got: Vec<Message> = Vec::new();
        let mut each = |ws: &mut WebSocket<_>, msg: MessageRef<'_>| {
            got.push(msg.to_message());
            ws.send_ref(msg).unwrap();
        };
        let pending = std::future::poll_fn(|cx| Poll::Ready(ws.poll_each(cx, &mut each))).await;
        assert!(pending.is_pending(), "the split frame waits for its rest");
        client.write_all(&split[9..]).await.unwrap();
        let pending = std::future::poll_fn(|cx| Poll::Ready(ws.poll_each(cx, &mut each))).await;
        assert!(pending.is_pending());
        assert_eq!(
            got,
            vec![
                Message::text("one"),
                Message::binary(&b"two"[..]),
                Message::text("three"),
                Message::text("four"),
                Message::text("five"),
                Message::text("split over two reads"),
            ]
        );
        let echoed = server_frames(&mut client, 7).await;
        let expect: Vec<(u8, Vec<u8>)> = [
            (1, &b"one"[..]),
            (2, b"two"),
            (10, b"ping"),
            (1, b"three"),
            (1, b"four"),
            (1, b"five"),
            (1, b"split over two reads"),
        ]
        .iter()
        .map(|(op, p)| (*op, p.to_vec()))
        .collect();
        assert_eq!(
            echoed, expect,
            "echoes in order, the pong where the ping was"
        );
        assert_eq!(ws.read_buf.capacity(), 0, "nothing left buffered");
    }

    /// Invalid UTF-8 in a message the fast path takes fails the connection as `recv` would: close
    /// code 1007, then the error.
    #[tokio::test]
    async fn poll_each_fails_invalid_text_taken_in_place() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut ws = WebSocket::new(server, Arc::new(Config::default()), None);
        let bytes = [
            client_text(b"fine"),
            client_text(b"\xff"),
            client_text(b"never"),
        ]
        .concat();
        client.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        let ending = tokio::spawn(async move {
            std::future::poll_fn(|cx| {
                ws.poll_each(cx, |_, msg: MessageRef<'_>| got.push(msg.to_message()))
            })
            .await
            .map(|()| got)
        });
        let frames = server_frames(&mut client, 1).await;
        assert_eq!(frames[0].0, 8, "a close frame");
        assert_eq!(frames[0].1[..2], 1007u16.to_be_bytes());
        drop(client);
        let ending = ending.await.unwrap();
        assert!(
            matches!(ending, Err(Error::Protocol(ProtocolError::InvalidUtf8))),
            "{ending:?}"
        );
    }

    /// A handler that closes the connection gets no more messages, as with `recv`.
    #[tokio::test]
    async fn poll_each_stops_handing_out_after_the_handler_closes() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut ws = WebSocket::new(server, Arc::new(Config::default()), None);
        let bytes = [client_text(b"bye"), client_text(b"ignored")].concat();
        client.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        let pending = std::future::poll_fn(|cx| {
            Poll::Ready(
                ws.poll_each(cx, |ws: &mut WebSocket<_>, msg: MessageRef<'_>| {
                    got.push(msg.to_message());
                    ws.close(CloseCode::NORMAL, "done");
                }),
            )
        })
        .await;
        assert!(pending.is_pending(), "waits for the peer's close");
        assert_eq!(got, vec![Message::text("bye")]);
    }

    /// A carrier that records what the connection asks of it; `carry` plays its next write.
    #[derive(Default)]
    struct FakeCarrier {
        offered: std::sync::Mutex<bool>,
        offers: std::sync::atomic::AtomicU32,
        withdrawals: std::sync::atomic::AtomicU32,
        sent: std::sync::Mutex<Option<Instant>>,
    }

    impl FakeCarrier {
        fn offers(&self) -> u32 {
            self.offers.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn withdrawals(&self) -> u32 {
            self.withdrawals.load(std::sync::atomic::Ordering::Relaxed)
        }
        /// Writes a frame of its own now: the ping rides on it if it is on offer.
        fn carry(&self) -> bool {
            let on_offer = std::mem::take(&mut *self.offered.lock().unwrap());
            if on_offer {
                *self.sent.lock().unwrap() = Some(Instant::now());
            }
            on_offer
        }
    }

    impl PingCarrier for FakeCarrier {
        fn offer_ping(&self) {
            self.offers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *self.offered.lock().unwrap() = true;
        }
        fn withdraw_ping(&self) -> Option<Instant> {
            self.withdrawals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *self.offered.lock().unwrap() = false;
            self.sent.lock().unwrap().take()
        }
    }

    /// A connection pinging every 10 s (pong timeout 4 s) with a carrier, the carrier, and the
    /// client's end of the stream.
    fn carried() -> (
        WebSocket<tokio::io::DuplexStream>,
        Arc<FakeCarrier>,
        tokio::io::DuplexStream,
    ) {
        let (server, client) = tokio::io::duplex(4096);
        let config = Config {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(4),
            ..Config::default()
        };
        let mut ws = WebSocket::new(server, Arc::new(config), None);
        let carrier = Arc::new(FakeCarrier::default());
        ws.set_ping_carrier(Arc::clone(&carrier) as Arc<dyn PingCarrier>);
        (ws, carrier, client)
    }

    /// Polls the connection until `at` (time since `start`); panics if it ends or yields a message.
    async fn run_until(ws: &mut WebSocket<tokio::io::DuplexStream>, start: Instant, at: f64) {
        let until = start + Duration::from_secs_f64(at);
        if let Ok(got) = tokio::time::timeout_at(until, ws.recv()).await {
            panic!("the connection yielded {got:?} at {:?}", start.elapsed());
        }
    }

    /// Bytes the server wrote that the client has not read yet.
    async fn written(client: &mut tokio::io::DuplexStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut got = Vec::new();
        let mut chunk = [0u8; 256];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, client.read(&mut chunk)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    /// The ping is offered to the carrier in the interval's last fifth; once the carrier wrote it,
    /// the connection does not write one of its own, and the pong timeout counts from the
    /// carrier's write: no answer closes the connection 4 s after it, with "no pong".
    #[tokio::test(start_paused = true)]
    async fn a_carried_ping_is_not_written_again_and_its_pong_is_awaited() {
        let start = Instant::now();
        let (mut ws, carrier, mut client) = carried();
        run_until(&mut ws, start, 7.9).await;
        assert_eq!(carrier.offers(), 0, "not before 8 s");
        run_until(&mut ws, start, 8.5).await;
        assert_eq!(carrier.offers(), 1, "offered at 8 s");
        assert!(carrier.carry(), "the carrier takes it");
        run_until(&mut ws, start, 12.0).await;
        assert_eq!(
            written(&mut client).await,
            b"",
            "no ping of the connection's own"
        );
        assert_eq!(carrier.withdrawals(), 1, "taken back at 10 s");
        run_until(&mut ws, start, 12.49).await;
        assert_eq!(
            written(&mut client).await,
            b"",
            "the pong may come until 12.5 s"
        );
        run_until(&mut ws, start, 12.6).await;
        let close = written(&mut client).await;
        assert_eq!(close[0], 0x88, "a close at 12.5 s: {close:?}");
        assert!(close.ends_with(b"no pong"), "{close:?}");
        // The peer does not answer the close either: dropped after `close_timeout` (5 s).
        let end = tokio::time::timeout(Duration::from_secs(10), ws.recv()).await;
        assert!(matches!(end, Ok(Some(Err(Error::PongTimeout)))), "{end:?}");
        let elapsed = start.elapsed().as_secs_f64();
        assert!((17.5..17.6).contains(&elapsed), "dropped at {elapsed} s");
    }

    /// Once a deadline has closed the connection, the timer is set only to what still matters in
    /// the closing state (the close timeout): before, an unanswered ping's deadline stayed, in the
    /// past, and the timer fired again and again inside one poll for as long as the close took.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_closed_the_connection_is_not_set_again() {
        for timeout in ["pong", "idle", "message"] {
            let (server, _client) = tokio::io::duplex(4096);
            let config = Config {
                ping_interval: Duration::from_secs(10),
                pong_timeout: Duration::from_secs(4),
                idle_timeout: Duration::from_secs(60),
                ..Config::default()
            };
            let mut ws = WebSocket::new(server, Arc::new(config), None);
            tokio::time::advance(Duration::from_secs(100)).await;
            let now = Instant::now();
            match timeout {
                "pong" => {
                    ws.last_read = now - Duration::from_secs(15);
                    ws.ping = Ping::Sent(now - Duration::from_secs(5));
                }
                "idle" => ws.last_read = now - Duration::from_secs(61),
                _ => {
                    ws.last_read = now;
                    ws.partial_since = Some(now - Duration::from_secs(31));
                }
            }
            assert!(ws.on_deadline::<Message>(now).is_none());
            assert!(matches!(ws.state, State::Finishing(Some(_))), "{timeout}");
            let next = ws.next_deadline().expect("the close timeout");
            assert!(next > now, "{timeout}: the timer is set to the past");
        }
        // Our close is out and the peer is silent: no ping, no ping deadline.
        let (server, _client) = tokio::io::duplex(4096);
        let config = Config {
            close_timeout: Duration::from_secs(60),
            ..Config::default()
        };
        let mut ws = WebSocket::new(server, Arc::new(config), None);
        ws.close(CloseCode::NORMAL, "bye");
        tokio::time::advance(Duration::from_secs(26)).await;
        let now = Instant::now();
        assert!(ws.on_deadline::<Message>(now).is_none());
        assert!(matches!(ws.state, State::CloseSent));
        assert!(ws.next_deadline().is_none_or(|d| d > now));
    }

    /// With nothing for the carrier to write, the connection writes its ping when it is due; the
    /// pong takes the offer's place for the next round, a whole interval later.
    #[tokio::test(start_paused = true)]
    async fn an_uncarried_ping_is_written_when_due_and_the_pong_starts_the_next_round() {
        let start = Instant::now();
        let (mut ws, carrier, mut client) = carried();
        run_until(&mut ws, start, 9.9).await;
        assert_eq!(carrier.offers(), 1);
        assert_eq!(written(&mut client).await, b"", "not yet due");
        run_until(&mut ws, start, 10.1).await;
        assert_eq!(written(&mut client).await, crate::PING_FRAME, "due at 10 s");
        assert_eq!(carrier.withdrawals(), 1);
        client
            .write_all(&client_frame(true, 10, b""))
            .await
            .unwrap();
        run_until(&mut ws, start, 18.0).await;
        assert_eq!(carrier.offers(), 1, "the next offer is 8 s after the pong");
        run_until(&mut ws, start, 18.2).await;
        assert_eq!(carrier.offers(), 2);
        run_until(&mut ws, start, 20.5).await;
        assert_eq!(
            written(&mut client).await,
            crate::PING_FRAME,
            "the second ping, at 20.1 s"
        );
    }

    /// The peer speaking while the ping is on offer takes the offer back: no ping goes out until
    /// a whole interval after it spoke.
    #[tokio::test(start_paused = true)]
    async fn a_message_during_the_offer_takes_it_back() {
        let start = Instant::now();
        let (mut ws, carrier, mut client) = carried();
        run_until(&mut ws, start, 9.0).await;
        assert_eq!(carrier.offers(), 1);
        client.write_all(&client_text(b"hi")).await.unwrap();
        let msg = ws.recv().await.unwrap().unwrap();
        assert_eq!(msg.payload().as_ref(), b"hi");
        assert_eq!(carrier.withdrawals(), 1, "taken back");
        assert!(!carrier.carry(), "nothing on offer");
        run_until(&mut ws, start, 16.9).await;
        assert_eq!(carrier.offers(), 1);
        run_until(&mut ws, start, 18.9).await;
        assert_eq!(
            written(&mut client).await,
            b"",
            "the ping is 10 s after 9 s"
        );
        assert_eq!(carrier.offers(), 2, "offered again at 17 s");
    }
}
