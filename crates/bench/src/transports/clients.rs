//! One client of each transport, doing what a browser client does (`clients/js/switchboard.mjs`
//! for switchboard's transports, socket.io-client's polling transport for Socket.IO): set up and
//! subscribe ([`open`]), then receive until the run ends ([`Client::run`]). Every delivery goes to
//! [`Shared::deliver`], which checks its sequence number.
//!
//! switchboard's HTTP fallbacks follow the protocol's seq/ack rules exactly (docs/protocol.md,
//! "HTTP fallback transports"): every poll carries `ack=` the highest batch `seq` received, a batch
//! whose `seq` is not above it is a resend and is skipped, and an SSE client acknowledges through
//! `send` at most once a second, as the JS client does.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout};

use super::http::{Counted, HttpConn};
use super::shared::{Shared, Transport};
use crate::fanout::wire::sent_ns;
use crate::load::control::EXIT;
use crate::ws::{
    self, Fragments, OP_CLOSE, OP_PING, OP_TEXT, close_text, find, mask, masked_frame, pong,
};

/// switchboard's HTTP fallback base path.
const HTTP_BASE: &str = "/connection/http";
/// Engine.IO's polling endpoint (protocol 4).
const EIO_BASE: &str = "/socket.io/?EIO=4&transport=polling";
/// Engine.IO's packet separator in a polling payload.
const RECORD_SEPARATOR: u8 = 0x1e;
/// Longest a downstream request may take: a long poll is held 25 s by both servers (switchboard's
/// `poll_timeout`, Engine.IO's ping interval), so anything much longer is a dead connection.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an SSE client waits after an event before acknowledging (the JS client's timer).
const SSE_ACK_DELAY: Duration = Duration::from_secs(1);

/// A set-up client, ready to receive.
pub enum Client {
    /// A WebSocket connection, the bytes read after the subscribe reply and a message being
    /// reassembled.
    Websocket {
        io: Counted,
        buf: Vec<u8>,
        partial: Fragments,
    },
    /// A fallback session polled for its downstream (long or ajax polling).
    Poll {
        conn: HttpConn,
        session: String,
        seq: u64,
        ajax: bool,
    },
    /// A fallback session with an event stream, and the connection that acknowledges.
    Sse {
        stream: HttpConn,
        upstream: HttpConn,
        session: String,
        reader: SseReader,
    },
    /// An Engine.IO polling session.
    Socketio { conn: HttpConn, sid: String, t: u64 },
}

/// The commands a switchboard client opens with: connect, then subscribe to the room (id 2).
fn opening_commands(channel: &str) -> String {
    format!(
        "{{\"id\":1,\"connect\":{{}}}}\n{{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\"}}}}"
    )
}

/// What one message from switchboard meant.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    Subscribed,
    Other,
}

/// Handles one switchboard message (a JSON line): deliveries are recorded; an error reply, a
/// `disconnect` or `unsubscribe` push ends the client.
fn switchboard_message(shared: &Shared, id: usize, message: &Value) -> Result<Said> {
    if let Some(publication) = message.get("pub") {
        let data = &publication["data"];
        let (Some(seq), Some(t)) = (data["seq"].as_u64(), data["t"].as_u64()) else {
            bail!("publication without seq and t: {message}");
        };
        shared.deliver(id, seq, sent_ns(t))?;
        return Ok(Said::Other);
    }
    if let Some(error) = message.get("error") {
        bail!("error reply: {error}");
    }
    if message.get("disconnect").is_some() || message.get("unsubscribe").is_some() {
        bail!("{message}");
    }
    if message["id"].as_u64() == Some(2) && message.get("subscribe").is_some() {
        return Ok(Said::Subscribed);
    }
    Ok(Said::Other)
}

/// [`switchboard_message`] for every line of `text`; whether the subscribe reply was among them.
fn switchboard_lines(shared: &Shared, id: usize, text: &[u8]) -> Result<bool> {
    let mut subscribed = false;
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let message: Value = serde_json::from_slice(line)
            .with_context(|| format!("bad JSON line {}", String::from_utf8_lossy(line)))?;
        subscribed |= switchboard_message(shared, id, &message)? == Said::Subscribed;
    }
    Ok(subscribed)
}

/// A poll answer.
#[derive(Deserialize)]
struct Batch {
    seq: u64,
    messages: Vec<Value>,
}

/// Sets client `id` up from `source` and subscribes it to the room.
pub async fn open(shared: &Shared, id: usize, source: Ipv4Addr) -> Result<Client> {
    match shared.transport {
        Transport::Websocket => open_websocket(shared, id, source).await,
        Transport::LongPoll | Transport::Poll => {
            let ajax = shared.transport == Transport::Poll;
            let mut conn = HttpConn::new(source, shared.addr, &shared.counters, shared.headers);
            let session = open_session(&mut conn, shared).await?;
            let mut client = Client::Poll {
                conn,
                session,
                seq: 0,
                ajax,
            };
            // The replies to the opening commands are queued already: the first poll has them.
            // An ajax client polls again at its interval if not.
            loop {
                if client.poll_once(shared, id).await? {
                    return Ok(client);
                }
                if ajax {
                    sleep(shared.poll_interval).await;
                }
            }
        }
        Transport::Sse => {
            let mut upstream = HttpConn::new(source, shared.addr, &shared.counters, shared.headers);
            let session = open_session(&mut upstream, shared).await?;
            let mut stream = HttpConn::new(source, shared.addr, &shared.counters, shared.headers);
            let status = stream
                .open_stream(
                    &format!("{HTTP_BASE}/sse?session={session}&ack=0"),
                    "Accept: text/event-stream\r\nCache-Control: no-cache\r\n",
                )
                .await?;
            ensure!(status == 200, "SSE answered {status}");
            let mut reader = SseReader::default();
            while !reader.next(&mut stream, shared, id).await? {}
            Ok(Client::Sse {
                stream,
                upstream,
                session,
                reader,
            })
        }
        Transport::SocketioPolling => open_socketio(shared, id, source).await,
    }
}

/// Opens a fallback session with the opening commands; returns its token.
async fn open_session(conn: &mut HttpConn, shared: &Shared) -> Result<String> {
    let mode = shared.transport.name();
    let body = opening_commands(&shared.channel);
    let r = conn
        .request(
            "POST",
            &format!("{HTTP_BASE}?transport={mode}"),
            body.as_bytes(),
            "",
        )
        .await?;
    ensure!(
        r.status == 200,
        "open answered {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let opened: Value = serde_json::from_slice(&r.body).context("open answer is not JSON")?;
    let session = opened["session"]
        .as_str()
        .context("open answer without a session")?;
    // The token goes into query strings unescaped: make sure it needs no escaping.
    ensure!(
        session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'),
        "unexpected session token {session:?}"
    );
    Ok(session.to_string())
}

async fn open_websocket(shared: &Shared, id: usize, source: Ipv4Addr) -> Result<Client> {
    let mut io = Counted::connect(source, shared.addr, &shared.counters).await?;
    let counters = &shared.counters;
    counters.requests.set(counters.requests.get() + 1);
    let headers = format!(
        "Sec-WebSocket-Protocol: switchboard.json\r\n{}",
        shared.headers
    );
    let path = "/connection/websocket";
    let mut buf = ws::handshake_with(&mut io, shared.addr, path, id as u64, &headers).await?;
    let frame = masked_frame(
        OP_TEXT,
        opening_commands(&shared.channel).as_bytes(),
        mask(id as u64),
    );
    io.write_all(&frame).await?;
    let mut partial = Fragments::default();
    loop {
        if websocket_frames(&mut io, &mut buf, &mut partial, shared, id).await? {
            return Ok(Client::Websocket { io, buf, partial });
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        ensure!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Handles the complete frames at the front of `buf` (answering pings); whether the subscribe
/// reply was among them.
async fn websocket_frames(
    io: &mut Counted,
    buf: &mut Vec<u8>,
    partial: &mut Fragments,
    shared: &Shared,
    id: usize,
) -> Result<bool> {
    let mut subscribed = false;
    let mut reply = Vec::new();
    let used = ws::frames(buf, partial, |op, payload| {
        match op {
            OP_TEXT => subscribed |= switchboard_lines(shared, id, payload)?,
            OP_PING => reply.extend_from_slice(&pong(payload)),
            OP_CLOSE => bail!("server closed the WebSocket: {}", close_text(payload)),
            _ => {}
        }
        Ok(())
    })?;
    buf.drain(..used);
    if !reply.is_empty() {
        io.write_all(&reply).await?;
    }
    Ok(subscribed)
}

impl Client {
    /// Receives until the connection ends (an error says why) or the run is over.
    pub async fn run(mut self, shared: &Shared, id: usize) -> Result<()> {
        match &mut self {
            Client::Websocket { io, buf, partial } => loop {
                let mut chunk = [0u8; 4096];
                let n = io.read(&mut chunk).await?;
                ensure!(n > 0, "server closed the connection");
                buf.extend_from_slice(&chunk[..n]);
                websocket_frames(io, buf, partial, shared, id).await?;
            },
            Client::Poll { ajax, .. } => {
                let ajax = *ajax;
                if ajax {
                    // Clients of a real population poll out of step: spread their phases over
                    // the interval, as their different start times would.
                    let phase = (id as f64 * 0.618_034).fract();
                    sleep(shared.poll_interval.mul_f64(phase)).await;
                }
                while shared.phase() < EXIT {
                    self.poll_once(shared, id).await?;
                    if ajax {
                        sleep(shared.poll_interval).await;
                    }
                }
                Ok(())
            }
            Client::Sse {
                stream,
                upstream,
                session,
                reader,
            } => {
                let notify = Notify::new();
                let seq = Cell::new(reader.seq);
                let read = async {
                    while shared.phase() < EXIT {
                        reader.next(stream, shared, id).await?;
                        seq.set(reader.seq);
                        notify.notify_one();
                    }
                    Ok::<(), anyhow::Error>(())
                };
                let ack = async {
                    let mut acked = 0;
                    while shared.phase() < EXIT {
                        notify.notified().await;
                        sleep(SSE_ACK_DELAY).await;
                        let now = seq.get();
                        if now <= acked {
                            continue;
                        }
                        let target = format!("{HTTP_BASE}/send?session={session}&ack={now}");
                        let r = upstream.request("POST", &target, b"", "").await?;
                        ensure!(r.status == 204, "ack answered {}", r.status);
                        acked = now;
                    }
                    Ok::<(), anyhow::Error>(())
                };
                tokio::try_join!(read, ack).map(|_| ())
            }
            Client::Socketio { .. } => loop {
                self.socketio_poll(shared, id).await?;
            },
        }
    }

    /// One poll of a fallback session: delivers a new batch; whether it held the subscribe reply.
    async fn poll_once(&mut self, shared: &Shared, id: usize) -> Result<bool> {
        let Client::Poll {
            conn,
            session,
            seq,
            ajax,
        } = self
        else {
            bail!("not a polling client");
        };
        let wait = if *ajax { "&wait=0" } else { "" };
        let target = format!("{HTTP_BASE}/poll?session={session}&ack={seq}{wait}");
        let r = timeout(DOWN_TIMEOUT, conn.request("GET", &target, b"", ""))
            .await
            .context("poll not answered")??;
        ensure!(
            r.status == 200,
            "poll answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let batch: Batch = serde_json::from_slice(&r.body).context("poll answer is not a batch")?;
        // With `ack` always the last seq received, a batch at or below it is a resend.
        if batch.seq <= *seq {
            return Ok(false);
        }
        *seq = batch.seq;
        let mut subscribed = false;
        for message in &batch.messages {
            subscribed |= switchboard_message(shared, id, message)? == Said::Subscribed;
        }
        Ok(subscribed)
    }

    /// One Engine.IO GET: delivers its `pub` events and answers a ping with a POSTed pong.
    async fn socketio_poll(&mut self, shared: &Shared, id: usize) -> Result<()> {
        let Client::Socketio { conn, sid, t } = self else {
            bail!("not a Socket.IO client");
        };
        let packets = socketio_get(conn, sid, t).await?;
        let mut pong = false;
        for packet in packets.split(|&b| b == RECORD_SEPARATOR) {
            match packet {
                b"2" => pong = true,
                [b'4', b'2', event @ ..] => {
                    let event: Value = serde_json::from_slice(event).context("bad event")?;
                    if event[0] == "pub" {
                        let (Some(seq), Some(t)) =
                            (event[1]["seq"].as_u64(), event[1]["t"].as_u64())
                        else {
                            bail!("publication without seq and t: {event}");
                        };
                        shared.deliver(id, seq, sent_ns(t))?;
                    }
                }
                [b'1', ..] | [b'4', b'1', ..] | [b'4', b'4', ..] => {
                    bail!("Socket.IO closed: {}", String::from_utf8_lossy(packet))
                }
                _ => {}
            }
        }
        if pong {
            socketio_post(conn, sid, t, b"3").await?;
        }
        Ok(())
    }
}

/// The next cache-busting `t=` of socket.io-client (a counter, base 36 like its yeast ids).
fn next_t(t: &mut u64) -> String {
    *t += 1;
    let mut n = *t;
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// An Engine.IO polling GET; the packets it answered.
async fn socketio_get(conn: &mut HttpConn, sid: &str, t: &mut u64) -> Result<Vec<u8>> {
    let target = format!("{EIO_BASE}&t={}&sid={sid}", next_t(t));
    let r = timeout(DOWN_TIMEOUT, conn.request("GET", &target, b"", ""))
        .await
        .context("poll not answered")??;
    ensure!(
        r.status == 200,
        "Engine.IO poll answered {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    Ok(r.body)
}

/// An Engine.IO polling POST of `packets`.
async fn socketio_post(conn: &mut HttpConn, sid: &str, t: &mut u64, packets: &[u8]) -> Result<()> {
    let target = format!("{EIO_BASE}&t={}&sid={sid}", next_t(t));
    let r = conn.request("POST", &target, packets, "").await?;
    ensure!(
        r.status == 200 && r.body == b"ok",
        "Engine.IO POST answered {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    Ok(())
}

/// The Engine.IO handshake, the namespace connect and the room's `sub` with its ack, as
/// socket.io-client does them over polling.
async fn open_socketio(shared: &Shared, id: usize, source: Ipv4Addr) -> Result<Client> {
    let mut conn = HttpConn::new(source, shared.addr, &shared.counters, shared.headers);
    let mut t = (id as u64) << 20;
    let target = format!("{EIO_BASE}&t={}", next_t(&mut t));
    let r = conn.request("GET", &target, b"", "").await?;
    ensure!(
        r.status == 200 && r.body.first() == Some(&b'0'),
        "Engine.IO handshake answered {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let open: Value = serde_json::from_slice(&r.body[1..]).context("bad open packet")?;
    let sid = open["sid"].as_str().context("open packet without sid")?;
    ensure!(
        sid.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "unexpected sid {sid:?}"
    );
    let sid = sid.to_string();
    socketio_post(&mut conn, &sid, &mut t, b"40").await?;
    let mut connected = false;
    while !connected {
        let packets = socketio_get(&mut conn, &sid, &mut t).await?;
        connected = packets
            .split(|&b| b == RECORD_SEPARATOR)
            .any(|p| p.starts_with(b"40"));
    }
    let sub = format!("420[\"sub\",\"{}\"]", shared.channel);
    socketio_post(&mut conn, &sid, &mut t, sub.as_bytes()).await?;
    loop {
        let packets = socketio_get(&mut conn, &sid, &mut t).await?;
        if packets
            .split(|&b| b == RECORD_SEPARATOR)
            .any(|p| p.starts_with(b"430"))
        {
            return Ok(Client::Socketio { conn, sid, t });
        }
    }
}

/// Reads an SSE stream: events as they complete, each `id:` a batch `seq`.
#[derive(Default)]
pub struct SseReader {
    text: Vec<u8>,
    /// The highest event id (batch seq) delivered.
    seq: u64,
}

impl SseReader {
    /// Reads until at least one event was handled; whether the subscribe reply was among them.
    async fn next(&mut self, conn: &mut HttpConn, shared: &Shared, id: usize) -> Result<bool> {
        loop {
            let mut subscribed = false;
            let mut handled = false;
            while let Some(end) = find(&self.text, b"\n\n") {
                let event: Vec<u8> = self.text.drain(..end + 2).collect();
                let mut event_id = None;
                let mut data = Vec::new();
                for line in event.split(|&b| b == b'\n') {
                    if let Some(v) = line.strip_prefix(b"id:") {
                        let v = std::str::from_utf8(v).context("bad event id")?.trim();
                        event_id = Some(v.parse::<u64>().context("bad event id")?);
                    } else if let Some(v) = line.strip_prefix(b"data:") {
                        data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
                        data.push(b'\n');
                    }
                }
                handled = true;
                // `retry:` and `: ping` carry no id; a resent batch has an old one.
                let Some(seq) = event_id else { continue };
                if seq <= self.seq {
                    continue;
                }
                self.seq = seq;
                subscribed |= switchboard_lines(shared, id, &data)?;
            }
            if handled {
                return Ok(subscribed);
            }
            ensure!(self.text.len() < 1024 * 1024, "SSE event over 1 MiB");
            if !conn.stream_next(&mut self.text).await? {
                bail!("event stream ended");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_counter() {
        let mut t = 0;
        assert_eq!(next_t(&mut t), "1");
        t = 35;
        assert_eq!(next_t(&mut t), "10");
    }

    #[test]
    fn opening_commands_are_two_lines() {
        let text = opening_commands("chat:bench");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["subscribe"]["channel"], "chat:bench");
    }
}
