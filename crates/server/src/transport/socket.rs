//! The socket under a WebSocket connection, and the [`Lane`] that lets the fan-out write to it.
//!
//! hyper hands an upgraded connection over as a boxed stream. For plain TCP, [`Io::from_upgraded`]
//! takes the `TcpStream` back out and splits it: the connection's task reads its half alone, and the
//! write half sits behind a lock shared with the client's lane (the [`Writer`] itself, once the
//! client's wire opens it with [`Writer::open_lane`]). While the connection's task
//! has nothing of its own to write (its [`Writer`] is *idle*), the hub's fan-out may put a
//! publication on the socket itself, one `send(2)` like a plain loop over sockets, with no
//! wake-up of the task (see [`switchboard_hub::Lane`] for why). TLS streams stay as hyper gave them.
//!
//! The rules that keep the byte stream whole, each enforced under the writer's lock:
//! - the lane writes only while idle, and only whole frames; what a short write leaves is kept in
//!   the writer and goes out before any other byte;
//! - every write of the connection's task makes the writer busy, as does the client's wire before
//!   it queues a frame ([`Writer::busy`]); only the wire makes it idle again, when everything it
//!   queued is written and the connection is still open ([`Writer::idle`]);
//! - the connection's keepalive ping, while the connection offers it ([`PingCarrier`]), goes out
//!   right after one of the lane's whole frames, in the same `sendmsg(2)`, so that a ping costs no
//!   write of its own while publications flow.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use nix::sys::socket::{MsgFlags, send, sendmsg};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use switchboard_hub::{Lane, Sent};
use switchboard_protocol::Frame;
use switchboard_websocket::{Message, PING_FRAME, PingCarrier, SharedFraming, SharedMessage};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// The stream a WebSocket connection runs over once hyper has handed it over.
#[derive(Debug)]
pub enum Io {
    /// Plain TCP, split so that its [`Writer`] can be the client's lane.
    Tcp(TcpIo),
    /// Anything else (TLS), as hyper handed it over.
    Upgraded(TokioIo<Upgraded>),
}

/// A plain TCP connection taken back from hyper.
#[derive(Debug)]
pub struct TcpIo {
    /// Bytes hyper read past the handshake (a client that sent frames at once): read first.
    prefix: Bytes,
    read: OwnedReadHalf,
    writer: Arc<Writer>,
}

/// The write half of a connection, shared by its task and its lane.
#[derive(Debug)]
pub struct Writer {
    state: Mutex<WriterState>,
}

#[derive(Debug)]
struct WriterState {
    half: OwnedWriteHalf,
    /// `half`'s socket, valid as long as `half` is (beside it, under the same lock).
    fd: RawFd,
    /// The lane may write: the connection's task has nothing queued or partly written.
    idle: bool,
    /// What a short write of the lane left of its frame: written before anything else.
    rest: Bytes,
    /// The connection's keepalive ping, which the lane carries on its next frame when offered.
    ping: CarriedPing,
    /// How the lane frames publications and counts them; `None` until the wire opens the lane.
    /// Inline, not boxed: the fan-out's cost per subscriber is mostly cache misses, and a delivery
    /// should touch one allocation of the connection's.
    lane: Option<LaneSettings>,
}

/// Where the ping the connection offered to the lane is (see [`switchboard_websocket::keepalive`]).
/// Eight bytes, not an `Instant`'s sixteen: beside `fd` and `idle` they keep the writer in
/// jemalloc's 128-byte class, where an `Instant` took every connection to the 160-byte one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CarriedPing {
    /// Not on offer.
    No,
    /// On offer: the lane appends it to its next frame.
    Offered,
    /// Written by the lane at this time ([`millis`]), not yet taken back by the connection.
    Sent(u32),
}

/// Milliseconds on a process-wide clock, wrapping every 49 days: a carried ping is taken back
/// within a fifth of `ping_interval` of its write, so the wrapped difference is exact.
fn millis() -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Truncated on purpose: the clock wraps.
    epoch.elapsed().as_millis() as u32
}

/// What the lane needs besides the socket.
#[derive(Debug)]
struct LaneSettings {
    framing: SharedFraming,
    /// The transport's counters, as the client's task counts what it writes.
    messages_out: Counter,
    bytes_out: Counter,
}

impl Io {
    /// The connection hyper upgraded: plain TCP split for a lane, anything else as is.
    pub fn from_upgraded(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            // Copied: even empty, hyper's `read_buf` is a view of its whole read buffer (KiBs),
            // which every connection would keep for its life.
            Ok(parts) => Self::tcp(
                parts.io.into_inner(),
                Bytes::copy_from_slice(&parts.read_buf),
            ),
            Err(upgraded) => Self::Upgraded(TokioIo::new(upgraded)),
        }
    }

    /// A plain TCP connection of which `prefix` was read already.
    fn tcp(stream: TcpStream, prefix: Bytes) -> Self {
        let (read, half) = stream.into_split();
        Self::Tcp(TcpIo {
            prefix,
            read,
            writer: Arc::new(Writer {
                state: Mutex::new(WriterState {
                    fd: half.as_ref().as_raw_fd(),
                    half,
                    idle: false,
                    rest: Bytes::new(),
                    ping: CarriedPing::No,
                    lane: None,
                }),
            }),
        })
    }

    /// The shared write half, for plain TCP.
    pub fn writer(&self) -> Option<&Arc<Writer>> {
        match self {
            Self::Tcp(tcp) => Some(&tcp.writer),
            Self::Upgraded(_) => None,
        }
    }
}

impl Writer {
    /// Opens the lane: from now on the writer takes publications framed as `framing` while idle,
    /// and counts them in the transport's counters.
    pub fn open_lane(&self, framing: SharedFraming, messages_out: Counter, bytes_out: Counter) {
        self.state.lock().lane = Some(LaneSettings {
            framing,
            messages_out,
            bytes_out,
        });
    }

    /// The connection's task is about to queue a frame: the lane must not write ahead of it.
    pub fn busy(&self) {
        self.state.lock().idle = false;
    }

    /// Everything the connection's task queued is written and the connection is open: the lane
    /// may write, once nothing of its own last frame is left.
    pub fn idle(&self) {
        let mut state = self.state.lock();
        if state.rest.is_empty() {
            state.idle = true;
        }
    }

    /// Writes what is left of the lane's last frame. `Ready(Ok)` once nothing is.
    pub fn poll_rest(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.state.lock();
        state.poll_rest(cx)
    }

    /// Every write of the connection's task goes through here: the lane stops, the rest of its
    /// last frame goes first, then `write` on the socket's write half.
    fn poll_task_write<T>(
        &self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut OwnedWriteHalf>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let mut state = self.state.lock();
        state.idle = false;
        ready!(state.poll_rest(cx))?;
        write(Pin::new(&mut state.half), cx)
    }
}

impl WriterState {
    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.rest.is_empty() {
            let n = ready!(Pin::new(&mut self.half).poll_write(cx, &self.rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.rest.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(tcp) => {
                if !tcp.prefix.is_empty() {
                    let n = tcp.prefix.len().min(buf.remaining());
                    buf.put_slice(&tcp.prefix[..n]);
                    tcp.prefix.advance(n);
                    if tcp.prefix.is_empty() {
                        tcp.prefix = Bytes::new();
                    }
                    return Poll::Ready(Ok(()));
                }
                Pin::new(&mut tcp.read).poll_read(cx, buf)
            }
            Self::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(tcp) => tcp
                .writer
                .poll_task_write(cx, |half, cx| half.poll_write(cx, buf)),
            Self::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(tcp) => tcp
                .writer
                .poll_task_write(cx, |half, cx| half.poll_write_vectored(cx, bufs)),
            Self::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(_) => true,
            Self::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(tcp) => tcp.writer.poll_rest(cx),
            Self::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(tcp) => tcp
                .writer
                .poll_task_write(cx, |half, cx| half.poll_shutdown(cx)),
            Self::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// The lane of a plain TCP connection: publications written by the fan-out while the connection's
/// task has nothing to write, framed as the connection frames broadcasts.
impl Lane for Writer {
    fn try_send(&self, frame: &Frame) -> Sent {
        // Frames for one client are framed by its own connection; publications are shared.
        if !frame.is_shared() {
            return Sent::Not;
        }
        // Held by the connection's task (which is writing, or about to): it writes this one too.
        let Some(mut state) = self.state.try_lock() else {
            return Sent::Not;
        };
        let WriterState {
            fd,
            idle,
            rest,
            ping,
            lane,
            ..
        } = &mut *state;
        let Some(lane) = lane.as_ref().filter(|_| *idle) else {
            return Sent::Not;
        };
        let msg = frame.encoded(|text| SharedMessage::new(Message::Text(text.clone())));
        let bytes = lane.framing.frame(&msg);
        // `send(2)` on the descriptor rather than tokio's `try_write`: that one first reads the
        // socket's readiness in the runtime's registration, one more cache line per subscriber
        // (a tenth of the server's CPU per delivery with the rest of the lane, in the one-channel
        // profile; docs/benchmarks.md). tokio's readiness stays right: it is only ever cleared
        // by the connection's own writes, which retry after a `WouldBlock` and wait for the
        // next edge, and the epoll edges still reach tokio whoever wrote.
        let carry = *ping == CarriedPing::Offered;
        let sent = if carry {
            send_with_ping(*fd, bytes, rest)
        } else {
            match send(*fd, bytes, FLAGS) {
                Ok(n) if n == bytes.len() => Sent::Whole,
                Ok(n) if n > 0 => {
                    *rest = bytes.slice(n..);
                    Sent::Part
                }
                // Full (or failed: the task finds out when it writes or reads): queued, and the
                // task writes it when the socket takes more.
                _ => Sent::Not,
            }
        };
        if carry && sent != Sent::Not {
            *ping = CarriedPing::Sent(millis());
        }
        if sent != Sent::Not {
            lane.messages_out.inc();
            lane.bytes_out.inc_by(frame.len() as u64);
        }
        if sent != Sent::Whole {
            *idle = false;
        }
        sent
    }

    fn prefetch(&self) {
        switchboard_hub::prefetch::prefetch(&self.state);
    }
}

/// How the lane calls `send(2)`: never blocking (the socket is tokio's, non-blocking anyway), and
/// a peer gone is an error, not a `SIGPIPE`.
const FLAGS: MsgFlags = MsgFlags::MSG_NOSIGNAL.union(MsgFlags::MSG_DONTWAIT);

/// Writes a publication's `bytes` and the keepalive ping after them, in one `sendmsg(2)`: the
/// connection's ping costs no system call of its own. What the socket does not take goes to
/// `rest`, as for a publication alone.
fn send_with_ping(fd: RawFd, bytes: &Bytes, rest: &mut Bytes) -> Sent {
    let parts = [IoSlice::new(bytes), IoSlice::new(&PING_FRAME)];
    let total = bytes.len() + PING_FRAME.len();
    match sendmsg::<()>(fd, &parts, &[], FLAGS, None) {
        Ok(n) if n == total => Sent::Whole,
        Ok(n) if n > 0 => {
            *rest = if n < bytes.len() {
                let mut left = Vec::with_capacity(total - n);
                left.extend_from_slice(&bytes[n..]);
                left.extend_from_slice(&PING_FRAME);
                Bytes::from(left)
            } else {
                Bytes::from_static(&PING_FRAME[n - bytes.len()..])
            };
            Sent::Part
        }
        _ => Sent::Not,
    }
}

/// The lane carries the connection's keepalive ping on its next publication while it is offered.
impl PingCarrier for Writer {
    fn offer_ping(&self) {
        self.state.lock().ping = CarriedPing::Offered;
    }

    fn withdraw_ping(&self) -> Option<Instant> {
        match std::mem::replace(&mut self.state.lock().ping, CarriedPing::No) {
            CarriedPing::Sent(at) => {
                let ago = Duration::from_millis(u64::from(millis().wrapping_sub(at)));
                let now = Instant::now();
                Some(now.checked_sub(ago).unwrap_or(now))
            }
            CarriedPing::No | CarriedPing::Offered => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server-side `Io` over a real loopback connection, its lane, and the client's end.
    async fn pair(prefix: &'static [u8]) -> (Io, Arc<Writer>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let io = Io::tcp(server, Bytes::from_static(prefix));
        let lane = Arc::clone(io.writer().unwrap());
        (io, lane, client)
    }

    fn publication(text: Vec<u8>) -> (Frame, Bytes) {
        let frame = Frame::shared(Bytes::from(text));
        let msg = SharedMessage::new(Message::Text(frame.text().clone()));
        let framed = SharedFraming::PLAIN.frame(&msg).clone();
        (frame, framed)
    }

    /// The `seq`-th of a run of 60,000-byte publications: the socket's room almost never ends on
    /// such a frame's boundary.
    fn big_publication(seq: u32) -> (Frame, Bytes) {
        let mut text = format!("{seq:08}").into_bytes();
        text.resize(60_000, b'x');
        publication(text)
    }

    /// Reads everything the server side writes, until it closes.
    fn read_all(mut client: TcpStream) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        })
    }

    /// The connection's task writes bytes of its own and closes: the client must have read
    /// `expected` (whatever the lane wrote), then those bytes, in that order.
    async fn the_tasks_bytes_come_last(
        mut io: Io,
        lane: Arc<Writer>,
        reader: tokio::task::JoinHandle<Vec<u8>>,
        mut expected: Vec<u8>,
    ) {
        io.write_all(b"after").await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        drop(lane);
        expected.extend_from_slice(b"after");
        let got = reader.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes out of order");
    }

    #[tokio::test]
    async fn the_lane_writes_only_while_the_connection_is_idle() {
        let (mut io, lane, mut client) = pair(b"early").await;
        // What hyper read past the handshake comes first.
        let mut early = [0u8; 5];
        io.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"early");

        let (frame, framed) = publication(b"{\"pub\":1}".to_vec());
        lane.idle();
        assert_eq!(
            lane.try_send(&frame),
            Sent::Not,
            "closed until the wire opens it"
        );
        let messages_out = Counter::default();
        lane.open_lane(
            SharedFraming::PLAIN,
            messages_out.clone(),
            Counter::default(),
        );
        lane.busy();
        assert_eq!(
            lane.try_send(&frame),
            Sent::Not,
            "busy until the wire says idle"
        );
        lane.idle();
        assert_eq!(lane.try_send(&frame), Sent::Whole);
        // One for one client alone is framed by its connection, never by the lane.
        assert_eq!(
            lane.try_send(&Frame::new(Bytes::from_static(b"{}"))),
            Sent::Not
        );
        lane.busy();
        assert_eq!(lane.try_send(&frame), Sent::Not);
        // The task's own write makes it busy too, even after idle.
        lane.idle();
        io.write_all(b"task").await.unwrap();
        assert_eq!(lane.try_send(&frame), Sent::Not);
        assert_eq!(messages_out.get(), 1);

        let mut got = vec![0u8; framed.len() + 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..framed.len()], &framed[..]);
        assert_eq!(&got[framed.len()..], b"task");
    }

    /// A frame the socket takes only in part: its rest goes out before anything else, and the lane
    /// writes nothing more, even once the socket has room, until the connection is idle again.
    #[tokio::test]
    async fn the_rest_of_a_short_write_goes_first() {
        let (io, lane, client) = pair(b"").await;
        lane.open_lane(SharedFraming::PLAIN, Counter::default(), Counter::default());
        lane.idle();
        let mut expected = Vec::new();
        let mut seq = 0u32;
        let outcome = loop {
            seq += 1;
            let (frame, framed) = big_publication(seq);
            let sent = lane.try_send(&frame);
            if sent != Sent::Not {
                expected.extend_from_slice(&framed);
            }
            if sent != Sent::Whole {
                break sent;
            }
            assert!(seq < 10_000, "the socket never filled");
        };
        assert_eq!(
            outcome,
            Sent::Part,
            "the socket filled on a frame's boundary"
        );
        // The client reads everything: the socket has room again.
        let reader = read_all(client);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let more = publication(b"more".to_vec()).0;
        assert_eq!(
            lane.try_send(&more),
            Sent::Not,
            "the rest is not written yet"
        );
        lane.idle();
        assert_eq!(
            lane.try_send(&more),
            Sent::Not,
            "idle only once the rest is written"
        );
        // The connection's task writes its own bytes: the rest first.
        the_tasks_bytes_come_last(io, lane, reader, expected).await;
    }

    /// The writer is an `Arc` allocation per connection: it stays in jemalloc's 128-byte class
    /// (16 bytes of counts and the writer).
    #[test]
    fn the_writer_stays_in_its_allocation_class() {
        assert!(
            size_of::<Writer>() + 16 <= 128,
            "{} bytes",
            size_of::<Writer>()
        );
    }

    /// An offered ping rides on the lane's next frame, once, and the connection learns it went;
    /// it rides on the rest of a short write too, after the frame.
    #[tokio::test]
    async fn the_lane_carries_an_offered_ping_after_its_frame() {
        let (io, lane, client) = pair(b"").await;
        lane.open_lane(SharedFraming::PLAIN, Counter::default(), Counter::default());
        lane.idle();
        assert_eq!(lane.withdraw_ping(), None, "nothing offered");
        let mut expected = Vec::new();
        let (frame, framed) = publication(b"{\"pub\":1}".to_vec());
        lane.offer_ping();
        assert_eq!(lane.try_send(&frame), Sent::Whole);
        expected.extend_from_slice(&framed);
        expected.extend_from_slice(&PING_FRAME);
        assert_eq!(lane.try_send(&frame), Sent::Whole, "the ping went once");
        expected.extend_from_slice(&framed);
        assert!(
            lane.withdraw_ping().is_some(),
            "the connection learns it went"
        );
        assert_eq!(lane.withdraw_ping(), None);
        // Offered before every frame until the socket is full: the frame cut short carries it in
        // its rest.
        let mut seq = 0u32;
        loop {
            seq += 1;
            let (frame, framed) = big_publication(seq);
            lane.offer_ping();
            let sent = lane.try_send(&frame);
            match sent {
                Sent::Not => {
                    assert_eq!(lane.withdraw_ping(), None, "not written, not carried");
                    break;
                }
                Sent::Whole | Sent::Part => {
                    assert!(lane.withdraw_ping().is_some());
                    expected.extend_from_slice(&framed);
                    expected.extend_from_slice(&PING_FRAME);
                }
            }
            if sent == Sent::Part {
                break;
            }
            assert!(seq < 10_000, "the socket never filled");
        }
        let reader = read_all(client);
        the_tasks_bytes_come_last(io, lane, reader, expected).await;
    }
}
