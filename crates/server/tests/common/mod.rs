//! Test support: a server started in-process on 127.0.0.1:0, and a raw WebSocket client that can
//! send anything, including what a real client never would.

#![allow(dead_code, clippy::unwrap_used)]

pub mod broker;
pub mod process;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::{Config, Server, ShutdownHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub api: SocketAddr,
    pub handle: ShutdownHandle,
    pub task: JoinHandle<()>,
}

/// Starts a server with `config` (listening on a free port), with the echo endpoint on.
pub async fn start(mut config: Config) -> TestServer {
    config.listen.0 = "127.0.0.1:0".parse().unwrap();
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    config.echo.enabled = true;
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addr();
    let api = server.api_addr();
    let handle = server.shutdown_handle();
    let task = tokio::spawn(server.run());
    TestServer {
        addr,
        api,
        handle,
        task,
    }
}

/// A namespace with everything on (history of 1,000 for 5 minutes with recovery, presence with
/// join/leave, client publications and history reads), as tests of several features want it.
pub fn chat_namespace() -> switchboard_hub::NamespaceOptions {
    switchboard_hub::NamespaceOptions::all_on(1000, Duration::from_secs(300))
}

/// A node of a several-node setup: the Redis engine at `addresses` under `prefix` (a test's own, so
/// that tests sharing a Redis do not meet), timeouts of seconds so that a Redis away fails a test
/// quickly, the API behind `key`, and the `chat` namespace. A test changes what its check is about.
pub fn redis_node_config(key: &str, prefix: &str, addresses: Vec<String>) -> Config {
    let mut c = Config::default();
    c.api.key = key.into();
    c.engine.kind = switchboard::config::EngineKind::Redis;
    c.engine.redis.addresses = addresses;
    c.engine.redis.prefix = prefix.into();
    c.engine.redis.connect_timeout = Duration::from_secs(2);
    c.engine.redis.command_timeout = Duration::from_secs(2);
    c.channels
        .namespaces
        .insert("chat".into(), chat_namespace());
    c
}

/// A node of a several-node setup on NATS: as [`redis_node_config`], with the NATS engine at
/// `servers` instead.
pub fn nats_node_config(key: &str, prefix: &str, servers: Vec<String>) -> Config {
    let mut c = redis_node_config(key, prefix, vec![]);
    c.engine.kind = switchboard::config::EngineKind::Nats;
    c.engine.redis = Default::default();
    c.engine.nats.servers = servers;
    c.engine.nats.prefix = prefix.into();
    c.engine.nats.connect_timeout = Duration::from_secs(2);
    c.engine.nats.command_timeout = Duration::from_secs(2);
    c
}

/// Starts `n` servers with `config`: the nodes of one cluster when it names a shared engine.
pub async fn start_nodes(n: usize, config: &Config) -> Vec<TestServer> {
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(start(config.clone()).await);
    }
    nodes
}

/// What `pointer` (`/data`, `/data/n`, `/offset`) names in each of the `publications` of a reply
/// (subscribe, history), in order; `null` where a publication has none.
pub fn publications_at(reply: &Value, pointer: &str) -> Vec<Value> {
    reply["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("no publications in {reply}"))
        .iter()
        .map(|p| p.pointer(pointer).cloned().unwrap_or(Value::Null))
        .collect()
}

/// An HTTP answer as tests check it: its status and its body as JSON (`null` when there is none or
/// it is not JSON, so that a test can still assert on the status).
pub async fn answer(resp: reqwest::Response) -> (reqwest::StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts that `answer` (a fallback request's JSON body) is the error of a session that is not
/// there (expired, closed, or never was): code 101, telling the client to open a new one.
pub fn assert_no_session(answer: &Value) {
    assert_eq!(answer["error"]["code"], 101, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("open a new one"), "{answer}");
}

/// One event of an SSE stream (the fallback's `/sse`).
#[derive(Debug)]
pub struct SseEvent {
    /// Its `id:` line, if it had one.
    pub id: Option<u64>,
    /// Its `data:` lines, each as JSON.
    pub data: Vec<Value>,
    /// Its comment lines (`: ping`), as they are.
    pub comments: Vec<String>,
}

/// Takes the complete SSE events at the front of `buf` (what a stream delivered so far), leaving an
/// incomplete one there. A line that is not `id`, `data`, a comment or `retry` fails the test.
pub fn take_sse_events(buf: &mut Vec<u8>) -> Vec<SseEvent> {
    let mut events = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let event = String::from_utf8(buf[..end].to_vec()).unwrap();
        buf.drain(..end + 2);
        let mut parsed = SseEvent {
            id: None,
            data: Vec::new(),
            comments: Vec::new(),
        };
        for line in event.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                parsed.id = Some(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("data: ") {
                parsed.data.push(serde_json::from_str(v).unwrap());
            } else if line.starts_with(':') {
                parsed.comments.push(line.to_owned());
            } else {
                assert!(line.starts_with("retry: "), "unexpected SSE line {line:?}");
            }
        }
        events.push(parsed);
    }
    events
}

/// A config whose echo endpoint has the real endpoints' default limits.
pub fn default_limits() -> Config {
    let mut c = Config::default();
    c.echo.max_frame_size = c.websocket.max_frame_size;
    c.echo.max_message_size = c.websocket.max_message_size;
    c.echo.max_fragments = c.websocket.max_fragments;
    c
}

/// A received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// The server's answer to a handshake.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A hand-rolled client.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends a raw HTTP request and reads the response head (and body, if a length is given).
pub async fn request(addr: SocketAddr, raw: &str) -> (RawClient, Response) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut client = RawClient {
        stream,
        buf: Vec::new(),
    };
    let resp = client.read_response().await;
    (client, resp)
}

/// Opens a WebSocket connection to `path` with extra header lines.
pub async fn handshake(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (RawClient, Response) {
    let mut raw = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    request(addr, &raw).await
}

/// Opens an echo connection and checks it was accepted.
pub async fn connect(addr: SocketAddr) -> RawClient {
    let (client, resp) = handshake(addr, "/echo", &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    client
}

impl RawClient {
    async fn fill(&mut self) -> bool {
        self.buf.reserve(64 << 10);
        match tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(_)) => true,
            Err(_) => panic!("timed out waiting for the server"),
        }
    }

    async fn read_response(&mut self) -> Response {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill().await,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        while self.buf.len() < len {
            assert!(self.fill().await);
        }
        let body = String::from_utf8_lossy(&self.buf[..len]).into_owned();
        self.buf.drain(..len);
        Response {
            status,
            headers,
            body,
        }
    }

    /// Sends one frame; `mask: false` sends it unmasked (a protocol violation from a client).
    pub async fn send_frame(
        &mut self,
        fin: bool,
        rsv1: bool,
        opcode: u8,
        payload: &[u8],
        mask: bool,
    ) {
        self.stream
            .write_all(&encode(fin, rsv1, opcode, payload, mask))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(true, false, 1, text.as_bytes(), true).await;
    }

    /// The next frame, or `None` when the server closed the TCP connection.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = decode(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads frames until a close frame and returns its code; asserts the TCP connection then ends.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.read_frame().await {
                Some(f) if f.opcode == 8 => {
                    let code = f.close_code().unwrap_or(1005);
                    // The server closes the TCP connection after its close frame.
                    while let Some(f) = self.read_frame().await {
                        assert_ne!(f.opcode, 1, "data after close: {f:?}");
                    }
                    return code;
                }
                Some(_) => continue,
                None => panic!("connection dropped without a close frame"),
            }
        }
    }

    /// Sends a text message and checks the echo.
    pub async fn echo_ok(&mut self, text: &str) {
        self.send_text(text).await;
        loop {
            let f = self.read_frame().await.expect("echo");
            if f.opcode == 9 {
                continue;
            }
            assert_eq!((f.opcode, f.payload.as_slice()), (1, text.as_bytes()));
            return;
        }
    }
}

/// Encodes a client frame (masked with a fixed key unless `mask` is false).
pub fn encode(fin: bool, rsv1: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x5a, 0x17, 0xc3, 0x9e];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Decodes a server frame from the front of `buf`: the frame and the bytes it took.
pub fn decode(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, hlen) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(hlen..hlen + len)?.to_vec();
    Some((
        Frame {
            fin: buf[0] & 0x80 != 0,
            rsv1: buf[0] & 0x40 != 0,
            opcode: buf[0] & 0x0f,
            payload,
        },
        hlen + len,
    ))
}

/// POSTs `body` to the server API's `method` with `key` (if any); the status and the JSON answer.
pub async fn api_call(
    api: SocketAddr,
    key: Option<&str>,
    method: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = key
        .map(|k| format!("Authorization: apikey {k}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: {api}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (_, resp) = request(api, &raw).await;
    let json = serde_json::from_str(&resp.body).unwrap_or(serde_json::Value::Null);
    (resp.status, json)
}

/// Calls the server API `method` on the API listener `api` with `key`; the answer's `result`, the
/// test failing unless the status is 200.
pub async fn api_result(api: SocketAddr, key: &str, method: &str, body: Value) -> Value {
    let (status, v) = api_call(api, Some(key), method, &body.to_string()).await;
    assert_eq!(status, 200, "{method}: {v}");
    v["result"].clone()
}

/// The status of `GET path` on an API listener (`/ready`, `/health`).
pub async fn get_status(api: SocketAddr, path: &str) -> u16 {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    request(api, &raw).await.1.status
}

/// Waits until every node's `/ready` answers `status` (nodes of one engine follow its outages each
/// on its own clock); how long it took.
pub async fn ready_everywhere(nodes: &[TestServer], status: u16) -> Duration {
    let started = tokio::time::Instant::now();
    for n in nodes {
        while get_status(n.api, "/ready").await != status {
            assert!(
                started.elapsed() < WAIT,
                "/ready of {} never answered {status}",
                n.api
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    started.elapsed()
}

/// A client of the JSON protocol over any transport, as tests read it: the messages it kept while
/// waiting for a reply, and the next one from the server. Pushes are then read the same way over
/// WebSocket ([`JsonClient`]) and the HTTP fallbacks.
#[allow(async_fn_in_trait)]
pub trait ProtocolReader {
    /// Messages received while waiting for a reply, not yet read.
    fn kept(&mut self) -> &mut VecDeque<Value>;

    /// The next message from the server, or `None` once the connection (session) is over.
    async fn next_message(&mut self) -> Option<Value>;

    /// The next message kept, else the next from the server.
    async fn next_unread(&mut self) -> Option<Value> {
        match self.kept().pop_front() {
            Some(v) => Some(v),
            None => self.next_message().await,
        }
    }

    /// The next push of `kind`, skipping other kinds; the test fails if the connection ends first.
    async fn next_push(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_unread().await.expect("push");
            if let Some(body) = v.get(kind) {
                return body.clone();
            }
        }
    }
}

impl ProtocolReader for JsonClient {
    fn kept(&mut self) -> &mut VecDeque<Value> {
        &mut self.pushes
    }

    async fn next_message(&mut self) -> Option<Value> {
        self.next().await
    }
}

/// A client of the JSON protocol (docs/protocol.md) over the raw WebSocket client. Like a browser, it
/// answers pings and close frames.
pub struct JsonClient {
    pub ws: RawClient,
    next_id: u64,
    /// Pushes received while waiting for a reply.
    pub pushes: VecDeque<Value>,
    /// The client id the server gave.
    pub id: String,
}

impl JsonClient {
    /// Opens `/connection/websocket` (offering `switchboard.json`) without connecting.
    pub async fn open(addr: SocketAddr) -> Self {
        Self::open_with(addr, &[]).await
    }

    /// Opens with extra handshake headers (cookies, say).
    pub async fn open_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Self {
        let mut all = vec![("Sec-WebSocket-Protocol", "switchboard.json")];
        all.extend_from_slice(headers);
        let (ws, resp) = handshake(addr, "/connection/websocket", &all).await;
        assert_eq!(resp.status, 101);
        assert_eq!(
            resp.header("sec-websocket-protocol"),
            Some("switchboard.json")
        );
        Self {
            ws,
            next_id: 0,
            pushes: VecDeque::new(),
            id: String::new(),
        }
    }

    /// Opens and sends `connect` with no token.
    pub async fn connected(addr: SocketAddr) -> Self {
        Self::connect_with(addr, json!({"name": "test", "version": "1"})).await
    }

    /// Opens and sends `connect` with `params`; panics unless it succeeds.
    pub async fn connect_with(addr: SocketAddr, params: Value) -> Self {
        let mut c = Self::open(addr).await;
        let r = c.call("connect", params).await;
        c.id = r["connect"]["client"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        c
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send_text(text).await;
    }

    /// The next JSON object from the server (a reply or a push), or `None` when the connection ends.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let f = self.ws.read_frame().await?;
            // Like a browser: answer pings, and answer a close so the server can finish at once.
            match f.opcode {
                1 => return Some(serde_json::from_slice(&f.payload).unwrap()),
                8 => {
                    self.ws.send_frame(true, false, 8, &f.payload, true).await;
                    return Some(json!({"close": f.close_code()}));
                }
                9 => self.ws.send_frame(true, false, 10, &f.payload, true).await,
                _ => continue,
            }
        }
    }

    /// Sends a command and returns its reply; pushes seen meanwhile are kept.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send_raw(&json!({"id": id, method: params}).to_string())
            .await;
        loop {
            let v = self.next().await.expect("reply");
            if v["id"] == id {
                return v;
            }
            assert!(v.get("id").is_none(), "reply to another command: {v}");
            self.pushes.push_back(v);
        }
    }

    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params).await;
        assert!(r.get("error").is_none(), "{method}: {r}");
        r[method].clone()
    }

    pub async fn error(&mut self, method: &str, params: Value) -> u64 {
        let r = self.call(method, params).await;
        r["error"]["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{method}: expected an error, got {r}"))
    }

    /// The next push (of a kind, skipping others' kinds).
    pub async fn push(&mut self, kind: &str) -> Value {
        self.next_push(kind).await
    }

    /// Reads until the connection ends; returns the disconnect push's code and the close code.
    pub async fn disconnected(&mut self) -> (Option<u64>, Option<u64>) {
        let (mut push, mut close) = (None, None);
        while let Some(v) = self.next_unread().await {
            if let Some(d) = v.get("disconnect") {
                push = d["code"].as_u64();
            }
            if let Some(c) = v.get("close") {
                close = c.as_u64();
            }
        }
        (push, close)
    }
}
