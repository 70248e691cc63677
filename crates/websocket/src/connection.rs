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
    armed: Option<Instant>,
    last_read: Instant,
    ping_sent: Option<Instant>,
    partial_since: Option<Instant>,
    stalled_since: Option<Instant>,
    close_deadline: Option<Instant>,
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
            armed: None,
            last_read: Instant::now(),
            ping_sent: None,
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
                        Poll::Ready(Ok(_)) => self.last_read = Instant::now(),
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
            self.armed = None;
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
            if self.ping_sent.is_some_and(|t| self.last_read > t) {
                self.ping_sent = None;
            }
            match self.ping_sent {
                Some(t) if t + cfg.pong_timeout <= now => {
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
                None if self.last_read + cfg.ping_interval <= now && self.is_open() => {
                    self.out.push_frame(OpCode::Ping, false, &Bytes::new());
                    self.ping_sent = Some(now);
                }
                _ => {}
            }
        }
        None
    }

    /// The earliest instant at which some timer has something to check.
    fn next_deadline(&self) -> Option<Instant> {
        let cfg = &self.config;
        let keepalive = (!cfg.ping_interval.is_zero()).then(|| match self.ping_sent {
            Some(t) => t + cfg.pong_timeout,
            None => self.last_read + cfg.ping_interval,
        });
        let idle = (!cfg.idle_timeout.is_zero()).then(|| self.last_read + cfg.idle_timeout);
        [
            keepalive,
            idle,
            self.close_deadline,
            self.partial_since.map(|t| t + cfg.message_timeout),
            self.stalled_since.map(|t| t + cfg.write_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Sets the timer to the next deadline. Reads move deadlines later without touching the timer
    /// (resetting it on every read would cost a timer-wheel update each time); when it fires early,
    /// `on_deadline` finds nothing due and this sets it again.
    fn rearm(&mut self) {
        match self.next_deadline() {
            Some(d) => self.set_timer(d),
            None => {
                self.timer = None;
                self.armed = None;
            }
        }
    }

    /// Makes sure the timer fires no later than `deadline`.
    fn arm(&mut self, deadline: Instant) {
        if self.armed.is_none_or(|a| deadline < a) {
            self.set_timer(deadline);
        }
    }

    fn set_timer(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(sleep_until(deadline))),
        }
        self.armed = Some(deadline);
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
}
