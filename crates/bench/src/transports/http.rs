//! The transports load generator's wire: a TCP stream wrapped in a counting adapter (every byte read
//! and written, HTTP heads included, lands in one [`Counters`]), and a minimal HTTP/1.1 keep-alive
//! client on top of it. It parses only what the benchmark's servers answer (`Content-Length` or
//! chunked bodies) and reconnects once when a kept-alive connection turns out closed, as a browser
//! does, so an idle timeout of the server never looks like a lost message.

use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use crate::ws::{self, find};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted (poll answers are a few KiB at most here).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// What a browser's `fetch` adds to every request besides what the protocol needs: the request
/// patterns measured are a browser's, so their bytes are too. (Cookies, which a real site would
/// add on top, are left out.)
pub const BROWSER_HEADERS: &str = "User-Agent: Mozilla/5.0 (X11; Linux x86_64) \
AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Accept: */*\r\nAccept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n";

/// Bytes and requests of one load generator, all connections together. Single-threaded: the
/// clients run on one thread, so plain cells do.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from every socket.
    pub read: Cell<u64>,
    /// Bytes written to every socket.
    pub written: Cell<u64>,
    /// HTTP requests started (WebSocket upgrades included).
    pub requests: Cell<u64>,
    /// TCP connections opened.
    pub connections: Cell<u64>,
}

impl Counters {
    /// The counts now: `(read, written, requests)`.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (self.read.get(), self.written.get(), self.requests.get())
    }

    fn add(cell: &Cell<u64>, n: usize) {
        cell.set(cell.get() + n as u64);
    }
}

/// A TCP stream that adds every byte it reads and writes to [`Counters`].
pub struct Counted {
    stream: TcpStream,
    counters: Rc<Counters>,
}

impl Counted {
    /// Connects from `source` (127.0.0.x, so many clients do not run out of ports) to `addr`.
    pub async fn connect(
        source: Ipv4Addr,
        addr: SocketAddr,
        counters: &Rc<Counters>,
    ) -> Result<Self> {
        let stream = ws::connect(Some(source), addr)
            .await
            .with_context(|| format!("connecting to {addr} from {source}"))?;
        Counters::add(&counters.connections, 1);
        Ok(Self {
            stream,
            counters: Rc::clone(counters),
        })
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            Counters::add(&self.counters.read, buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            Counters::add(&self.counters.written, n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// No length: the body runs until the server closes (HTTP/1.1 without keep-alive).
    Close,
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: u16,
    framing: Framing,
}

/// Parses the head at the front of `buf`: the head and its length, or `None` until it is all there.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>> {
    let Some(end) = find(buf, b"\r\n\r\n").map(|p| p + 4) else {
        ensure!(
            buf.len() < MAX_HEAD,
            "HTTP response head over {MAX_HEAD} bytes"
        );
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).context("HTTP response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line `{status_line}`"))?;
    let mut framing = Framing::Close;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value.trim().parse().context("bad Content-Length")?;
                ensure!(n <= MAX_BODY, "response body of {n} bytes is too large");
                framing = Framing::Length(n);
            }
            "transfer-encoding" if value.to_ascii_lowercase().contains("chunked") => {
                framing = Framing::Chunked;
            }
            _ => {}
        }
    }
    // 1xx, 204 and 304 have no body whatever the headers say.
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some((Head { status, framing }, end)))
}

/// Takes one complete chunk off the front of `buf` into `out`: `Some(true)` for the last
/// (zero-size) chunk, `Some(false)` for a data chunk, `None` until the chunk is all there.
fn take_chunk(buf: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Option<bool>> {
    let Some(line_end) = find(buf, b"\r\n") else {
        ensure!(buf.len() < 64, "chunk size line too long");
        return Ok(None);
    };
    let size_text = std::str::from_utf8(&buf[..line_end]).context("chunk size is not text")?;
    let size_hex = size_text.split(';').next().unwrap_or("").trim();
    let size = usize::from_str_radix(size_hex, 16)
        .with_context(|| format!("bad chunk size `{size_text}`"))?;
    ensure!(size <= MAX_BODY, "chunk of {size} bytes is too large");
    let data = line_end + 2;
    if size == 0 {
        // The last chunk, then trailers (none expected) and an empty line.
        let Some(end) = find(&buf[line_end..], b"\r\n\r\n") else {
            return Ok(None);
        };
        buf.drain(..line_end + end + 4);
        return Ok(Some(true));
    }
    if buf.len() < data + size + 2 {
        return Ok(None);
    }
    ensure!(
        &buf[data + size..data + size + 2] == b"\r\n",
        "chunk not followed by CRLF"
    );
    out.extend_from_slice(&buf[data..data + size]);
    buf.drain(..data + size + 2);
    Ok(Some(false))
}

/// An HTTP/1.1 keep-alive connection to one server, reopened when the server closed it.
pub struct HttpConn {
    io: Option<Counted>,
    buf: Vec<u8>,
    source: Ipv4Addr,
    addr: SocketAddr,
    counters: Rc<Counters>,
    headers: &'static str,
    /// The body framing of the streamed response in progress ([`HttpConn::open_stream`]).
    streaming: Option<Framing>,
}

impl HttpConn {
    /// A connection from `source` to `addr`, opened at the first request; `headers` (lines ending
    /// in CRLF) go with every request.
    pub fn new(
        source: Ipv4Addr,
        addr: SocketAddr,
        counters: &Rc<Counters>,
        headers: &'static str,
    ) -> Self {
        Self {
            io: None,
            buf: Vec::new(),
            source,
            addr,
            counters: Rc::clone(counters),
            headers,
            streaming: None,
        }
    }

    /// The request's bytes.
    fn request_bytes(&self, method: &str, target: &str, body: &[u8], extra: &str) -> Vec<u8> {
        let mut out = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\n{}{extra}",
            self.addr, self.headers
        );
        if method == "POST" {
            out.push_str("Content-Type: text/plain;charset=UTF-8\r\n");
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends the request and reads its head. A connection the server closed meanwhile (EOF or
    /// reset before any answer) is reopened and the request sent once more: the protocols measured
    /// make that safe (upstream POSTs are numbered, polls carry their ack).
    async fn send_and_read_head(&mut self, request: &[u8]) -> Result<Head> {
        for attempt in 0..2 {
            let reused = self.io.is_some();
            if self.io.is_none() {
                self.io = Some(Counted::connect(self.source, self.addr, &self.counters).await?);
                self.buf.clear();
            }
            Counters::add(&self.counters.requests, 1);
            match self.try_head(request).await {
                Ok(head) => return Ok(head),
                Err(e) if reused && attempt == 0 && is_closed(&e) => {
                    self.io = None;
                }
                Err(e) => {
                    self.io = None;
                    return Err(e);
                }
            }
        }
        bail!("connection closed twice")
    }

    async fn try_head(&mut self, request: &[u8]) -> Result<Head> {
        let io = self.io.as_mut().context("not connected")?;
        io.write_all(request).await?;
        loop {
            if let Some((head, used)) = parse_head(&self.buf)? {
                self.buf.drain(..used);
                return Ok(head);
            }
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                bail!(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads more bytes into the buffer; false at EOF.
    async fn fill(&mut self) -> Result<bool> {
        let io = self.io.as_mut().context("not connected")?;
        let mut chunk = [0u8; 16 * 1024];
        let n = io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// One request and its whole response. `extra` are more header lines (CRLF-terminated).
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
        extra: &str,
    ) -> Result<Response> {
        ensure!(
            self.streaming.is_none(),
            "a streamed response is in progress"
        );
        let request = self.request_bytes(method, target, body, extra);
        let head = self.send_and_read_head(&request).await?;
        let mut out = Vec::new();
        match head.framing {
            Framing::Length(n) => {
                while self.buf.len() < n {
                    ensure!(
                        self.fill().await?,
                        "connection closed inside a response body"
                    );
                }
                out.extend(self.buf.drain(..n));
            }
            Framing::Chunked => loop {
                match take_chunk(&mut self.buf, &mut out)? {
                    Some(true) => break,
                    Some(false) => ensure!(out.len() <= MAX_BODY, "response body too large"),
                    None => ensure!(
                        self.fill().await?,
                        "connection closed inside a chunked body"
                    ),
                }
            },
            Framing::Close => {
                while self.fill().await? {
                    ensure!(self.buf.len() <= MAX_BODY, "response body too large");
                }
                out = std::mem::take(&mut self.buf);
                self.io = None;
            }
        }
        Ok(Response {
            status: head.status,
            body: out,
        })
    }

    /// Sends a request whose response body is a stream (SSE) and returns its status; then read
    /// the body with [`HttpConn::stream_next`].
    pub async fn open_stream(&mut self, target: &str, extra: &str) -> Result<u16> {
        let request = self.request_bytes("GET", target, b"", extra);
        let head = self.send_and_read_head(&request).await?;
        self.streaming = Some(head.framing);
        Ok(head.status)
    }

    /// Appends the next bytes of the streamed body to `out`; false when the stream ended.
    pub async fn stream_next(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        let framing = self.streaming.context("no streamed response")?;
        loop {
            match framing {
                Framing::Chunked => match take_chunk(&mut self.buf, out)? {
                    Some(true) => {
                        self.streaming = None;
                        return Ok(false);
                    }
                    Some(false) => return Ok(true),
                    None => {}
                },
                Framing::Length(_) | Framing::Close => {
                    if !self.buf.is_empty() {
                        out.append(&mut self.buf);
                        return Ok(true);
                    }
                }
            }
            if !self.fill().await? {
                self.streaming = None;
                self.io = None;
                return Ok(false);
            }
        }
    }
}

/// Whether `e` says the peer closed the connection (so a retry on a new one is in order).
fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let (head, used) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.status, head.framing, used),
            (200, Framing::Length(5), 38)
        );
        let (head, _) = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        let (head, _) = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Length(0));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn takes_chunks_one_at_a_time() {
        let mut buf = b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\nrest".to_vec();
        let mut out = Vec::new();
        assert_eq!(take_chunk(&mut buf, &mut out).unwrap(), Some(false));
        assert_eq!(out, b"hello");
        assert_eq!(take_chunk(&mut buf, &mut out).unwrap(), Some(false));
        assert_eq!(out, b"helloabc");
        assert_eq!(take_chunk(&mut buf, &mut out).unwrap(), Some(true));
        assert_eq!(buf, b"rest");
        let mut partial = b"5\r\nhel".to_vec();
        assert_eq!(take_chunk(&mut partial, &mut out).unwrap(), None);
        assert!(take_chunk(&mut b"zz\r\n".to_vec(), &mut out).is_err());
    }
}
