//! A subscriber: its WebSocket connection during set-up ([`Ws`]: subscribe to one channel on each
//! server's protocol) and its hot loop ([`receive`]), which reads with kernel receive timestamps
//! into the shared buffer and counts and checks every delivery.

use std::io::{ErrorKind, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, RawFd};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::TcpStream;

use super::state::Shared;
use crate::fanout::wire::{self, Event, Kind};
use crate::load::control::MEASURE;
use crate::load::latency::realtime_ns;
use crate::ws::{
    self, Fragments, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, close_text, frames, mask, masked_frame,
    parse_server_frame, pong,
};

/// One non-blocking `recvmsg` into `buf`: the bytes read and the kernel's receive timestamp of
/// the last of them (`SCM_TIMESTAMPNS`, ns since the Unix epoch), if it gave one.
pub(super) fn recv_stamped(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<(usize, Option<u64>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)?;
    let mut stamp = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                stamp = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
            }
        }
    }
    Ok((msg.bytes, stamp))
}

/// The connection ended with a close frame.
#[derive(Debug)]
pub(super) struct Closed(pub(super) String);

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Closed {}

/// A WebSocket client connection during set-up.
pub(super) struct Ws {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
    frag: Fragments,
    sent: u64,
}

impl Ws {
    pub(super) async fn open(
        kind: Kind,
        source: Option<Ipv4Addr>,
        addr: SocketAddr,
        path: &str,
        seed: u64,
    ) -> Result<Self> {
        let mut stream = ws::connect(source, addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        // Kernel receive timestamps on every read (SO_TIMESTAMPNS): the latency is taken at the
        // data's arrival, not when this single-threaded loop gets to it.
        setsockopt(&stream, sockopt::ReceiveTimestampns, &true)
            .context("setting SO_TIMESTAMPNS")?;
        let buf = ws::handshake_with(&mut stream, addr, path, seed, kind.ws_headers()).await?;
        Ok(Self {
            stream,
            buf,
            frag: Fragments::default(),
            sent: 0,
        })
    }

    pub(super) async fn send_text(&mut self, text: &str) -> Result<()> {
        self.sent += 1;
        let frame = masked_frame(OP_TEXT, text.as_bytes(), mask(self.sent));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// The next data message; answers pings, fails on close.
    async fn next_message(&mut self) -> Result<Vec<u8>> {
        loop {
            let mut message = None;
            let mut reply = Vec::new();
            // One frame at a time, so what follows stays in the buffer.
            let used = match parse_server_frame(&self.buf)? {
                Some((_, used)) => {
                    let data = self.buf[..used].to_vec();
                    frames(&data, &mut self.frag, |op, payload| {
                        match op {
                            OP_CLOSE => return Err(Closed(close_text(payload)).into()),
                            OP_PING => reply = pong(payload),
                            OP_PONG => {}
                            _ => message = Some(payload.to_vec()),
                        }
                        Ok(())
                    })?
                }
                None => 0,
            };
            if used > 0 {
                self.buf.drain(..used);
                if !reply.is_empty() {
                    self.stream.write_all(&reply).await?;
                }
                if let Some(m) = message {
                    return Ok(m);
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            ensure!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The events of the next data message.
    async fn next_events(&mut self, kind: Kind) -> Result<Vec<Event>> {
        let message = self.next_message().await?;
        let mut out = vec![];
        wire::events(kind, &message, |e| out.push(e))?;
        Ok(out)
    }

    /// Socket.IO: waits for `Opened` (Engine.IO open, or the namespace connect answer).
    pub(super) async fn socketio_opened(&mut self) -> Result<()> {
        loop {
            for event in self.next_events(Kind::Socketio).await? {
                match event {
                    Event::Opened => return Ok(()),
                    Event::EnginePing => self.send_text("3").await?,
                    Event::Disconnect { text, .. } => bail!("Socket.IO refused: {text}"),
                    _ => {}
                }
            }
        }
    }

    /// switchboard: waits for the reply to command `id`; returns its offset.
    pub(super) async fn switchboard_reply(&mut self, id: u64) -> Result<Option<u64>> {
        loop {
            for event in self.next_events(Kind::Switchboard).await? {
                match event {
                    Event::Reply {
                        id: got,
                        ok,
                        offset,
                        text,
                    } if got == id => {
                        ensure!(ok, "command {id} failed: {text}");
                        return Ok(offset);
                    }
                    Event::Reply {
                        ok: false, text, ..
                    } => bail!("error reply: {text}"),
                    Event::Disconnect { text, .. } => bail!("disconnected: {text}"),
                    _ => {}
                }
            }
        }
    }
}

/// Opens a subscriber of channel `c` and subscribes it; returns the connection and the channel's
/// offset at subscription (switchboard).
pub(super) async fn open_subscriber(
    kind: Kind,
    addr: SocketAddr,
    source: Ipv4Addr,
    id: usize,
    c: usize,
) -> Result<(Ws, Option<u64>)> {
    let mut ws = Ws::open(kind, Some(source), addr, &kind.ws_path(c), id as u64).await?;
    let channel = kind.channel(c);
    let offset = match kind {
        // The upgrade's 101 is sent once the subscriber is registered.
        Kind::Nchan | Kind::Raw => None,
        Kind::Switchboard => {
            for m in wire::subscribe_messages(kind, &channel) {
                ws.send_text(&m).await?;
            }
            ws.switchboard_reply(1).await?;
            ws.switchboard_reply(2).await?
        }
        Kind::Socketio | Kind::SwitchboardSio => {
            ws.socketio_opened().await?;
            ws.send_text("40").await?;
            ws.socketio_opened().await?;
            for m in wire::subscribe_messages(kind, &channel) {
                ws.send_text(&m).await?;
            }
            'ack: loop {
                for event in ws.next_events(kind).await? {
                    match event {
                        Event::Reply { id: 0, .. } => break 'ack,
                        Event::EnginePing => ws.send_text("3").await?,
                        Event::Disconnect { text, .. } => bail!("disconnected: {text}"),
                        _ => {}
                    }
                }
            }
            None
        }
    };
    Ok((ws, offset))
}

/// The hot loop of subscriber `id`: read into the shared buffer, count and check every delivery,
/// answer pings. Returns (with the reason as error) when the connection ends.
pub(super) async fn receive(id: usize, ws: Ws, shared: &Shared) -> Result<()> {
    let Ws {
        mut stream,
        buf: mut pending,
        mut frag,
        ..
    } = ws;
    let kind = shared.kind;
    let sampled = id.is_multiple_of(shared.sample_every);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        if !first {
            stream.readable().await?;
        }
        let mut closed = None;
        {
            let mut scratch = shared.scratch.borrow_mut();
            let (n, stamp) = if first {
                (0, None)
            } else {
                let fd = stream.as_raw_fd();
                let read = stream.try_io(Interest::READABLE, || {
                    recv_stamped(fd, &mut scratch, &mut shared.cmsg.borrow_mut())
                });
                match read {
                    Ok((0, _)) => bail!("server closed the connection (EOF)"),
                    Ok(read) => read,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e).context("read"),
                }
            };
            first = false;
            let now_ns = realtime_ns();
            // When the kernel queued the last bytes of this read on the socket: the arrival of
            // the data, whatever this loop's own backlog.
            let arrived_ns = stamp.unwrap_or(now_ns);
            if stamp.is_some() {
                shared.stamped.set(shared.stamped.get() + 1);
            }
            let phase = shared.phase();
            let mut subs = shared.subs.borrow_mut();
            let state = &mut subs[id];
            let mut hist = shared.latency_us.borrow_mut();
            let mut read_hist = shared.read_latency_us.borrow_mut();
            let mut delivered = 0u64;
            let mut on_frame = |op: u8, payload: &[u8]| -> Result<()> {
                match op {
                    OP_CLOSE => {
                        closed.get_or_insert_with(|| close_text(payload));
                        Ok(())
                    }
                    OP_PING => {
                        out.extend_from_slice(&pong(payload));
                        Ok(())
                    }
                    OP_PONG => Ok(()),
                    _ => wire::events(kind, payload, |event| match event {
                        Event::Delivery(d) => {
                            delivered += 1;
                            if phase == MEASURE && sampled {
                                let us = arrived_ns.saturating_sub(d.t_ns) / 1000;
                                hist.saturating_record(us.max(1));
                                let us = now_ns.saturating_sub(d.t_ns) / 1000;
                                read_hist.saturating_record(us.max(1));
                            }
                            if let Err(e) = state.record(d) {
                                closed.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                        Event::EnginePing => {
                            out.extend_from_slice(&masked_frame(OP_TEXT, b"3", mask(now_ns)))
                        }
                        Event::Disconnect { text, .. } => {
                            closed.get_or_insert(text);
                        }
                        _ => {}
                    }),
                }
            };
            if pending.is_empty() {
                let used = frames(&scratch[..n], &mut frag, &mut on_frame)?;
                pending.extend_from_slice(&scratch[used..n]);
            } else {
                pending.extend_from_slice(&scratch[..n]);
                let used = frames(&pending, &mut frag, &mut on_frame)?;
                pending.drain(..used);
            }
            shared.deliveries.set(shared.deliveries.get() + delivered);
            if phase == MEASURE {
                shared
                    .deliveries_window
                    .set(shared.deliveries_window.get() + delivered);
            }
        }
        if pending.capacity() > 64 * 1024 && pending.len() < 1024 {
            pending.shrink_to(4096);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if let Some(reason) = closed {
            bail!(Closed(reason));
        }
    }
}
