//! `switchboard-bench fanout-raw`: the physical limit the fan-out figures are divided by. One
//! thread per publication writes the very bytes switchboard would send each subscriber (a
//! WebSocket text frame holding a `pub` push) to every subscriber's plain TCP socket with
//! non-blocking write(2): no WebSocket state, no queue, no task, no lock per subscriber. What
//! remains is what the kernel costs, which no server can avoid.
//!
//! It speaks Nchan's interface, so the load generator needs nothing new: subscribers open a
//! WebSocket on `/sub/CHANNEL` (the handshake is answered once, outside the measured path), the
//! publisher POSTs the payload to `/pub/CHANNEL` and is answered once the loop wrote it to every
//! subscriber, and `GET /pub/CHANNEL` answers `{"subscribers": N}`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::ws;

/// Most bytes one subscriber may lag behind before it is dropped (switchboard's default
/// `queue_bytes`), so a stuck subscriber cannot make the reference grow without bound.
const MAX_BACKLOG: usize = 1 << 20;

/// Arguments of `switchboard-bench fanout-raw`.
#[derive(Args, Debug)]
pub struct RawArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
}

/// One subscriber's socket and the bytes the kernel did not take yet.
struct Subscriber {
    stream: TcpStream,
    backlog: Vec<u8>,
}

impl Subscriber {
    /// Writes `frame` after what waits; false when the subscriber is gone or lags too far.
    fn write(&mut self, frame: &[u8]) -> bool {
        if !self.backlog.is_empty() {
            match self.stream.write(&self.backlog) {
                Ok(n) => drop(self.backlog.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
        if self.backlog.is_empty() {
            match self.stream.write(frame) {
                Ok(n) => self.backlog.extend_from_slice(&frame[n..]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.backlog.extend_from_slice(frame)
                }
                Err(_) => return false,
            }
        } else {
            self.backlog.extend_from_slice(frame);
        }
        self.backlog.len() <= MAX_BACKLOG
    }
}

/// Channels by name; each channel's subscribers behind their own lock: a channel's publications
/// are written one at a time, on one thread.
type Channels = Arc<Mutex<HashMap<String, Arc<Mutex<Vec<Subscriber>>>>>>;

/// Runs the reference server until killed.
pub fn main(args: &RawArgs) -> Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let channels: Channels = Arc::default();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let channels = Arc::clone(&channels);
        std::thread::spawn(move || {
            if let Err(e) = serve(stream, &channels) {
                eprintln!("fanout-raw: connection: {e:#}");
            }
        });
    }
    Ok(())
}

fn channel(channels: &Channels, name: &str) -> Arc<Mutex<Vec<Subscriber>>> {
    Arc::clone(lock(channels).entry(name.to_owned()).or_default())
}

/// A lock whose holder panicked is still good here: nothing it guards is left half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection: a subscriber's handshake, or a publisher's requests until it closes.
fn serve(mut stream: TcpStream, channels: &Channels) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = ws::find(&buf, b"\r\n\r\n").map(|p| p + 4) else {
            let mut tmp = [0u8; 16 * 1024];
            let n = stream.read(&mut tmp)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
            continue;
        };
        let head = std::str::from_utf8(&buf[..head_end])?.to_owned();
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        if let Some(name) = path.strip_prefix("/sub/") {
            let key = header("sec-websocket-key").context("no Sec-WebSocket-Key")?;
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                ws::accept_key(&key)
            );
            // Under the channel's lock: the answer goes before any publication, and a count asked
            // after the answer includes this subscriber.
            let subscribers = channel(channels, name);
            let mut subs = lock(&subscribers);
            stream.write_all(response.as_bytes())?;
            stream.set_nonblocking(true)?;
            subs.push(Subscriber {
                stream,
                backlog: Vec::new(),
            });
            return Ok(());
        }
        let Some(name) = path.strip_prefix("/pub/") else {
            bail!("unexpected request {method} {path}");
        };
        let length: usize = header("content-length")
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut tmp = [0u8; 16 * 1024];
            let n = stream.read(&mut tmp)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        let subscribers = channel(channels, name);
        let answer = if method == "POST" {
            let mut subs = lock(&subscribers);
            publish(&mut subs, name, &body);
            String::new()
        } else {
            format!("{{\"subscribers\": {}}}", lock(&subscribers).len())
        };
        stream.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        )?;
    }
}

/// The loop measured: the frame switchboard would send, built once, written to every subscriber.
fn publish(subs: &mut Vec<Subscriber>, channel: &str, data: &[u8]) {
    let frame = frame(channel, data);
    subs.retain_mut(|s| s.write(&frame));
}

/// A `pub` push of `data` as switchboard frames it (same length to the byte for the bench's
/// channel names and offsets of the same width).
fn frame(channel: &str, data: &[u8]) -> Vec<u8> {
    let mut text =
        format!("{{\"pub\":{{\"channel\":\"{channel}\",\"offset\":1,\"data\":").into_bytes();
    text.extend_from_slice(data);
    text.extend_from_slice(b"}}");
    let mut frame = Vec::with_capacity(text.len() + 10);
    frame.push(0x80 | ws::OP_TEXT);
    match (u8::try_from(text.len()), u16::try_from(text.len())) {
        (Ok(short), _) if short < 126 => frame.push(short),
        (_, Ok(medium)) => {
            frame.push(126);
            frame.extend_from_slice(&medium.to_be_bytes());
        }
        _ => {
            frame.push(127);
            frame.extend_from_slice(&(text.len() as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&text);
    frame
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::time::Duration;

    use super::*;
    use crate::fanout::wire;

    #[test]
    fn every_subscriber_gets_the_frame_and_the_publisher_its_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        std::thread::spawn(move || main(&RawArgs { listen: addr }));
        let connect = || {
            for _ in 0..100 {
                if let Ok(s) = TcpStream::connect(addr) {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("fanout-raw did not listen");
        };
        let mut subs: Vec<TcpStream> = (0..3)
            .map(|_| {
                let mut s = connect();
                s.write_all(
                    b"GET /sub/bench-0 HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                )
                .unwrap();
                let mut head = [0u8; 129];
                s.read_exact(&mut head).unwrap();
                let head = String::from_utf8_lossy(&head);
                assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
                s
            })
            .collect();
        let mut publisher = connect();
        let mut req = Vec::new();
        wire::push_http_request(&mut req, "GET", "/pub/bench-0", "");
        wire::push_http_request(&mut req, "POST", "/pub/bench-0", &wire::payload(5_000, 7));
        publisher.write_all(&req).unwrap();
        let mut answers = Vec::new();
        while wire::parse_http_response(&answers)
            .unwrap()
            .is_none_or(|(_, used)| {
                wire::parse_http_response(&answers[used..])
                    .unwrap()
                    .is_none()
            })
        {
            let mut tmp = [0u8; 1024];
            let n = publisher.read(&mut tmp).unwrap();
            answers.extend_from_slice(&tmp[..n]);
        }
        let (count, _) = wire::parse_http_response(&answers).unwrap().unwrap();
        assert_eq!(count.body, b"{\"subscribers\": 3}");
        let want = frame("bench-0", wire::payload(5_000, 7).as_bytes());
        for s in &mut subs {
            let mut got = vec![0u8; want.len()];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, want);
        }
    }
}
