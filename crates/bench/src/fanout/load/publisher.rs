//! The publisher: `rate` publications per second round-robin over the channels, over WebSocket
//! (switchboard, Socket.IO), Nchan's HTTP POST or switchboard's HTTP API, pipelined; and the
//! reader of what the server answers it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::sleep;

use super::state::Control;
use super::subscriber::{Closed, Ws, recv_stamped};
use crate::fanout::wire::{self, Event, Kind};
use crate::load::control::{EXIT, MEASURE, STOP};
use crate::load::latency::realtime_ns;
use crate::ws::{
    self, Fragments, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, close_text, frames, mask, masked_frame,
    pong,
};

/// Most publications written in one tick of the publisher (1 ms).
const MAX_BATCH: u64 = 1_000;

/// Appends a pipelined `POST /api/publish` of publication `seq` of `channel` to `out`.
fn push_api_publish(out: &mut Vec<u8>, key: &str, channel: &str, t_ns: u64, seq: u64) {
    let body = format!(
        "{{\"channel\":\"{channel}\",\"data\":{}}}",
        wire::payload(t_ns, seq)
    );
    out.extend_from_slice(
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: bench\r\nAuthorization: apikey {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// The publisher: connects, then publishes `rate` publications per second round-robin over the
/// channels until the phase is `STOP`; keeps its connections open (and answers pings) until
/// `EXIT`, so nothing it sent is dropped with the connection.
pub(super) async fn publish(
    kind: Kind,
    addr: SocketAddr,
    api: Option<(SocketAddr, String)>,
    channels: usize,
    rate: f64,
    http_conns: usize,
    control: &Arc<Control>,
) -> Result<()> {
    let pongs: Rc<RefCell<Vec<u8>>> = Rc::default();
    let mut writers: Vec<OwnedWriteHalf> = Vec::new();
    // HTTP publishers (Nchan, switchboard's API) answer in order on each connection: the send
    // times queued here pair up with the responses.
    let http = matches!(kind, Kind::Nchan | Kind::Raw) || api.is_some();
    // Each request's send time (ns since the Unix epoch, the clock of the kernel's receive
    // timestamps), taken just before the write that carries it.
    let mut in_flight: Vec<Rc<RefCell<VecDeque<u64>>>> = Vec::new();
    let conns = if http {
        http_conns.clamp(1, channels)
    } else {
        1
    };
    for _ in 0..conns {
        let stream = match kind {
            _ if api.is_some() => {
                let (api_addr, _) = api.as_ref().context("no API address")?;
                ws::connect(None, *api_addr).await?
            }
            Kind::Nchan | Kind::Raw => ws::connect(None, addr).await?,
            Kind::Switchboard => {
                let mut ws = Ws::open(kind, None, addr, &kind.ws_path(0), u64::MAX).await?;
                ws.send_text("{\"id\":1,\"connect\":{}}").await?;
                ws.switchboard_reply(1).await?;
                ensure!(ws.buf.is_empty(), "unexpected data after the connect reply");
                ws.stream
            }
            Kind::Socketio | Kind::SwitchboardSio => {
                let mut ws = Ws::open(kind, None, addr, &kind.ws_path(0), u64::MAX).await?;
                ws.socketio_opened().await?;
                ws.send_text("40").await?;
                ws.socketio_opened().await?;
                ensure!(
                    ws.buf.is_empty(),
                    "unexpected data after the namespace connect"
                );
                ws.stream
            }
        };
        if http {
            // The answer's arrival is taken from the kernel (SO_TIMESTAMPNS), as the subscribers'
            // deliveries are: this thread shares its core with the subscribers' loop, and the
            // time it waits for that core is the load generator's, not the server's.
            setsockopt(&stream, sockopt::ReceiveTimestampns, &true)
                .context("setting SO_TIMESTAMPNS")?;
        }
        let (reader, writer) = stream.into_split();
        let (control, pongs) = (Arc::clone(control), Rc::clone(&pongs));
        let sent_at: Rc<RefCell<VecDeque<u64>>> = Rc::default();
        in_flight.push(Rc::clone(&sent_at));
        tokio::task::spawn_local(async move {
            if let Err(e) = publisher_replies(kind, http, reader, &control, &pongs, &sent_at).await
                && control.phase.load(Ordering::Relaxed) < EXIT
            {
                control.fail(format!("publisher connection: {e:#}"));
            }
        });
        writers.push(writer);
    }

    let names: Vec<String> = (0..channels).map(|c| kind.channel(c)).collect();
    let mut seq = vec![0u64; channels];
    let mut bufs = vec![Vec::<u8>::new(); conns];
    let mut requests = vec![0usize; conns];
    let start = Instant::now();
    let mut sent = 0u64;
    let tick = Duration::from_millis(1);
    let mut next = tokio::time::Instant::now();
    control.mark_started();
    loop {
        let phase = control.phase.load(Ordering::Acquire);
        if phase >= STOP {
            break;
        }
        if let Some(e) = control.error() {
            bail!("{e}");
        }
        let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
        let mut batch = 0;
        while sent < due && batch < MAX_BATCH {
            let c = (sent % channels as u64) as usize;
            seq[c] += 1;
            let scheduled = Duration::from_secs_f64(sent as f64 / rate);
            let late = start.elapsed().saturating_sub(scheduled).as_micros() as u64;
            control
                .counts
                .max_late_us
                .fetch_max(late, Ordering::Relaxed);
            let t_ns = realtime_ns();
            let out = &mut bufs[c % conns];
            if http {
                requests[c % conns] += 1;
            }
            match kind {
                _ if api.is_some() => {
                    let key = api.as_ref().map_or("", |(_, k)| k.as_str());
                    push_api_publish(out, key, &names[c], t_ns, seq[c]);
                }
                Kind::Nchan | Kind::Raw => wire::push_http_request(
                    out,
                    "POST",
                    &format!("/pub/{}", names[c]),
                    &wire::payload(t_ns, seq[c]),
                ),
                _ => wire::push_ws_publish(out, kind, sent + 2, &names[c], t_ns, seq[c]),
            }
            control.counts.published[c].fetch_add(1, Ordering::AcqRel);
            control.counts.sent.fetch_add(1, Ordering::Relaxed);
            if phase == MEASURE {
                control.counts.sent_window.fetch_add(1, Ordering::Relaxed);
            }
            sent += 1;
            batch += 1;
        }
        bufs[0].append(&mut pongs.borrow_mut());
        for (i, (writer, out)) in writers.iter_mut().zip(&mut bufs).enumerate() {
            if !out.is_empty() {
                let now = realtime_ns();
                in_flight[i]
                    .borrow_mut()
                    .extend(std::iter::repeat_n(now, std::mem::take(&mut requests[i])));
                writer.write_all(out).await?;
                out.clear();
            }
        }
        next += tick;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
    control.mark_stopped();
    while control.phase.load(Ordering::Acquire) < EXIT {
        let pending = std::mem::take(&mut *pongs.borrow_mut());
        if !pending.is_empty() {
            writers[0].write_all(&pending).await?;
        }
        sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Reads what the server answers the publisher: switchboard replies, Socket.IO pings, Nchan HTTP
/// responses. Counts errors; queues pongs for the writer.
async fn publisher_replies(
    kind: Kind,
    http: bool,
    mut reader: OwnedReadHalf,
    control: &Control,
    pongs: &RefCell<Vec<u8>>,
    sent_at: &RefCell<VecDeque<u64>>,
) -> Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut frag = Fragments::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let fd = reader.as_ref().as_raw_fd();
    loop {
        // HTTP answers carry the kernel's receive timestamp (of the read's last segment, so an
        // answer read together with a later one counts late, never early).
        let (n, stamp) = if http {
            loop {
                reader.as_ref().readable().await?;
                match reader.as_ref().try_io(Interest::READABLE, || {
                    recv_stamped(fd, &mut chunk, &mut cmsg)
                }) {
                    Ok(read) => break read,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            (reader.read(&mut chunk).await?, None)
        };
        ensure!(n > 0, "server closed the publisher's connection");
        buf.extend_from_slice(&chunk[..n]);
        if http {
            let arrived = stamp.unwrap_or_else(realtime_ns);
            let mut at = 0;
            while let Some((response, used)) = wire::parse_http_response(&buf[at..])? {
                if let Some(sent) = sent_at.borrow_mut().pop_front()
                    && let Ok(mut h) = control.counts.call_us.lock()
                {
                    h.saturating_record((arrived.saturating_sub(sent) / 1_000).max(1));
                }
                if matches!(response.status, 200..=202) {
                    control.counts.acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    control.counts.reply_errors.fetch_add(1, Ordering::Relaxed);
                    control.fail(format!(
                        "publish answered {}: {}",
                        response.status,
                        String::from_utf8_lossy(response.body)
                    ));
                }
                at += used;
            }
            buf.drain(..at);
            continue;
        }
        let used = frames(&buf, &mut frag, |op, payload| {
            match op {
                OP_CLOSE => bail!(Closed(close_text(payload))),
                OP_PING => pongs.borrow_mut().extend_from_slice(&pong(payload)),
                OP_PONG => {}
                _ => wire::events(kind, payload, |event| match event {
                    Event::Reply { ok: true, .. } => {
                        control.counts.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Reply {
                        ok: false, text, ..
                    } => {
                        control.counts.reply_errors.fetch_add(1, Ordering::Relaxed);
                        control.fail(format!("publish error: {text}"));
                    }
                    Event::EnginePing => {
                        pongs
                            .borrow_mut()
                            .extend_from_slice(&masked_frame(OP_TEXT, b"3", mask(0)))
                    }
                    Event::Disconnect { text, .. } => {
                        control.fail(format!("publisher disconnected: {text}"));
                    }
                    _ => {}
                })?,
            }
            Ok(())
        })?;
        buf.drain(..used);
    }
}
