//! Socket.IO sockets as switchboard clients: the main namespace of an Engine.IO session is one
//! client of the hub, run by [`switchboard_hub::drive`] over a [`SioWire`] inside the session's
//! task (the application polls it; they hand each other packets through a [`Pipe`]).
//!
//! The mapping (docs/socketio.md has the whole of it):
//!
//! - `CONNECT` to `/` is the protocol's `connect`, with `auth.token` as the connection token (JWT);
//!   without one, the connect proxy or anonymous access decides. Success answers
//!   `40{"sid":"<client id>"}` (plus `"pid"` with `[socketio] recovery`), refusal
//!   `44{"message":"...","data":{"code":N}}`. Other namespaces are refused (`Invalid namespace`).
//! - Events from the client: `subscribe` (channel[, data]), `unsubscribe` (channel), `publish`
//!   (channel, data or one binary argument as `b64data`) become those commands; any other event
//!   goes to the application's RPC handler (method = event name, data = the arguments), never
//!   executed by switchboard. With an ack id, the reply comes back as the ack: `[null]` (`[null,
//!   data]` for RPC) on success, `[{"code":N,"message":"..."}]` on error.
//! - Publications in the socket's channels (rooms) arrive as events: a publication
//!   `{"event":"chat","args":[...]}` as `42["chat",...]`, any other as
//!   `42["publication","<channel>",<data>]`, a binary one with its bytes attached.
//! - Connection state recovery: the offset string the client keeps is the list of its rooms'
//!   positions (`[["channel",offset,"epoch"],...]`), so any node can serve a reconnect from the
//!   channels' history; no session record is kept anywhere.
//! - The server's `disconnect` ends the socket with `DISCONNECT` and closes the Engine.IO session.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{Value, json};
use switchboard_hub::{End, Node, Upstream, Wire};
use switchboard_protocol::{DisconnectCode, Frame};
use switchboard_socketio::eio::{Data, SharedText};
use switchboard_socketio::sio::{self, Connection, Decoder, Incoming, MAIN_NAMESPACE, Packet};

use super::engine::{App, AppFactory};

/// What a socket's [`SioWire`] and the session's application hand each other. Both sides run in the
/// session's task, which polls the socket's hub client after every event: no channel and no
/// wake-up between them.
#[derive(Default)]
struct Pipe(parking_lot::Mutex<PipeState>);

#[derive(Default)]
struct PipeState {
    /// Packets of the socket's namespace for its hub client (`CONNECT` first).
    up: VecDeque<Packet>,
    /// What the hub client has for the session.
    down: Vec<ToSession>,
    /// The socket left its namespace, or the session ended: the hub client ends.
    closed: bool,
    /// The server shuts down: the hub client ends with [`DisconnectCode::Shutdown`] (the
    /// endpoint tells its sessions, and they their sockets: no watch per socket).
    shutdown: bool,
}

impl Pipe {
    /// Everything the hub client had for the session.
    fn take_down(&self) -> Vec<ToSession> {
        std::mem::take(&mut self.0.lock().down)
    }

    fn close(&self) {
        self.0.lock().closed = true;
    }
}

/// What a socket's hub client tells the session. The rare variants are boxed.
#[derive(Debug)]
enum ToSession {
    /// The hub accepted the connection: the socket id, and the pid when recovery is on.
    Accepted(Box<Accepted>),
    /// The hub refused it.
    Refused(Box<Refused>),
    /// Packets for the client.
    Packets(Vec<Packet>),
    /// A packet already encoded (a publication, encoded once for all its subscribers and shared).
    Encoded(SharedText),
    /// The hub ended the client for good (after its `DISCONNECT`): the socket leaves its namespace.
    Leave,
    /// The hub ended the client and asks it back: close the Engine.IO session (the client
    /// reconnects, and recovers).
    Close,
}

/// The hub accepted a socket's connection.
#[derive(Debug)]
struct Accepted {
    /// The socket id.
    sid: String,
    /// The pid, when recovery is on.
    pid: Option<String>,
}

/// The hub refused a socket's connection.
#[derive(Debug)]
struct Refused {
    message: String,
    code: u32,
}

/// Packets a socket's hub client may leave unread. Over WebSocket the session stops reading from its
/// client at this bound until the hub client takes some (`accepts_input`); a polling client's POST
/// that brings more closes the session as too slow.
const QUEUE: usize = 1024;

/// A socket's hub client: [`switchboard_hub::drive`] over its [`SioWire`].
type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the hub application needs from the server.
#[derive(Clone)]
pub struct Env {
    /// The node clients join.
    pub node: Arc<Node>,
    /// How clients are told to come back after a shutdown.
    pub restart: crate::config::ShutdownConfig,
}

/// How the endpoint maps Socket.IO onto the hub.
#[derive(Clone, Debug)]
pub struct Mapping {
    /// The Socket.IO parser.
    pub parser: sio::Parser,
    /// `connectTimeout`.
    pub connect_timeout: Duration,
    /// Connection state recovery.
    pub recovery: bool,
    /// Socket.IO namespaces served, each with the channel prefix of its rooms.
    pub namespaces: Arc<BTreeMap<String, String>>,
}

/// What every session of the endpoint shares: one pointer per session, not a copy.
struct Shared {
    env: Env,
    parser: sio::Parser,
    connect_timeout: Duration,
    recovery: bool,
    /// The namespaces served (`/` included), as their sockets share them (built from
    /// [`Mapping::namespaces`], which is not kept beside them).
    served: Vec<Arc<Namespace>>,
}

/// A namespace served: its name and its rooms' channel prefix, one record shared by its sockets
/// (two strings in every socket's wire would take it past an allocator size class).
#[derive(Debug)]
struct Namespace {
    name: String,
    /// Empty: rooms are channel names as they are.
    prefix: String,
}

impl Namespace {
    /// `/`, whose rooms are channels as named.
    fn main() -> Arc<Self> {
        Arc::new(Self {
            name: MAIN_NAMESPACE.to_owned(),
            prefix: String::new(),
        })
    }
}

/// Socket.IO on switchboard's hub.
pub fn app(env: Env, mapping: Mapping) -> AppFactory {
    let mut served: Vec<Arc<Namespace>> = mapping
        .namespaces
        .iter()
        .map(|(name, prefix)| {
            Arc::new(Namespace {
                name: name.clone(),
                prefix: prefix.clone(),
            })
        })
        .collect();
    if !served.iter().any(|n| n.name == MAIN_NAMESPACE) {
        served.push(Namespace::main());
    }
    let shared = Arc::new(Shared {
        env,
        parser: mapping.parser,
        connect_timeout: mapping.connect_timeout,
        recovery: mapping.recovery,
        served,
    });
    Arc::new(move |now| {
        let decoder = Decoder::with_parser(shared.parser, sio::DEFAULT_MAX_ATTACHMENTS);
        Box::new(HubApp {
            connection: Connection::new(decoder, shared.connect_timeout, now),
            shared: Arc::clone(&shared),
            sockets: Vec::new(),
            ending: Vec::new(),
            failed: None,
        })
    })
}

/// One joined (or joining) namespace: a hub client of its own, run in the session's task.
struct Socket {
    namespace: Arc<Namespace>,
    pipe: Arc<Pipe>,
    /// The hub client's queue, told what the Engine.IO session holds.
    hub_session: Arc<switchboard_hub::Session>,
    /// The hub client's life; `None` once it ended.
    driver: Option<Driver>,
}

struct HubApp {
    shared: Arc<Shared>,
    connection: Connection,
    /// Usually one (the main namespace).
    sockets: Vec<Socket>,
    /// The hub clients of sockets that left, running to their end (leaving their channels).
    ending: Vec<Driver>,
    /// Why the session must close, once what came before it was handed over.
    failed: Option<String>,
}

/// What one message of a socket's hub client does.
enum Step {
    /// Messages for the client.
    Send(Vec<Data>),
    /// The connection was refused (its answer): the socket is gone.
    Refused(Vec<Data>),
    /// The socket leaves its namespace (its `DISCONNECT` went out already); the session closes
    /// with its last socket.
    Leave,
}

impl HubApp {
    /// Starts the hub client of a namespace's socket, on its `CONNECT`.
    fn start_client(&mut self, namespace: Arc<Namespace>) {
        self.remove(&namespace.name);
        let pipe = Arc::new(Pipe::default());
        let Shared {
            env,
            parser,
            recovery,
            ..
        } = &*self.shared;
        let client = env.node.client_with("socketio", None);
        let hub_session = Arc::clone(client.session());
        let wire = SioWire::new(
            Arc::clone(&pipe),
            *parser,
            *recovery,
            Arc::clone(&namespace),
        );
        let shared = Arc::clone(&self.shared);
        // No shutdown watch: the session's `on_shutdown` ends its sockets.
        let driver: Driver = Box::pin(switchboard_hub::drive(client, wire, None, move || {
            shared.env.restart.reconnect_delay_ms()
        }));
        if self.sockets.is_empty() {
            // Room for the one socket most sessions have, not the default four.
            self.sockets.reserve_exact(1);
        }
        self.sockets.push(Socket {
            namespace,
            pipe,
            hub_session,
            driver: Some(driver),
        });
    }

    /// The socket of `namespace` leaves: its hub client ends (in this task, see `ending`).
    fn remove(&mut self, namespace: &str) {
        if let Some(i) = self
            .sockets
            .iter()
            .position(|s| s.namespace.name == namespace)
        {
            self.end_socket(i);
        }
    }

    fn end_socket(&mut self, i: usize) {
        let socket = self.sockets.remove(i);
        socket.pipe.close();
        self.ending.extend(socket.driver);
    }

    fn forward(&mut self, packet: Packet) -> Result<(), String> {
        let Some(socket) = self
            .sockets
            .iter()
            .find(|s| s.namespace.name == packet.namespace)
        else {
            return Err("no client for a packet".into());
        };
        let mut pipe = socket.pipe.0.lock();
        if pipe.up.len() >= QUEUE {
            return Err("the client does not keep up with its socket's packets".to_owned());
        }
        pipe.up.push_back(packet);
        Ok(())
    }
}

/// One message of a namespace's hub client, as Engine.IO messages.
fn output(
    connection: &mut Connection,
    parser: sio::Parser,
    namespace: &str,
    msg: ToSession,
) -> Result<Step, String> {
    Ok(match msg {
        ToSession::Accepted(accepted) => {
            let Accepted { sid, pid } = *accepted;
            let mut accepted = connection.accept(namespace, &sid);
            if let (Some(pid), Some(Value::Object(data))) = (pid, &mut accepted.data) {
                data.insert("pid".into(), Value::String(pid));
            }
            Step::Send(parser.encode(&accepted))
        }
        ToSession::Refused(refused) => {
            let Refused { message, code } = *refused;
            let p = connection.refuse(namespace, &message, Some(json!({ "code": code })));
            Step::Refused(parser.encode(&p))
        }
        ToSession::Packets(packets) => {
            Step::Send(packets.iter().flat_map(|p| parser.encode(p)).collect())
        }
        ToSession::Encoded(text) => Step::Send(vec![Data::Shared(text)]),
        ToSession::Leave => {
            // Its DISCONNECT went out already.
            let _ = connection.disconnect(namespace);
            Step::Leave
        }
        ToSession::Close => return Err("disconnected by the server".into()),
    })
}

impl App for HubApp {
    fn on_message(&mut self, data: Data, _now: Instant) -> Result<Vec<Data>, String> {
        let incoming = match self.connection.receive(data) {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        match incoming {
            Incoming::Connect { namespace, auth } => {
                let served = self.shared.served.iter().find(|n| n.name == namespace);
                let Some(served) = served.map(Arc::clone) else {
                    let refusal = self
                        .connection
                        .refuse(&namespace, "Invalid namespace", None);
                    return Ok(self.shared.parser.encode(&refusal));
                };
                self.start_client(served);
                self.forward(Packet {
                    kind: sio::PacketType::Connect,
                    namespace,
                    id: None,
                    data: auth,
                    attachments: Vec::new(),
                })?;
                Ok(Vec::new())
            }
            Incoming::Packet(p) => {
                self.forward(p)?;
                Ok(Vec::new())
            }
            // The client left a namespace: its hub client ends with it.
            Incoming::Disconnect { namespace } => {
                self.remove(&namespace);
                Ok(Vec::new())
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.connection.next_deadline()
    }

    fn accepts_input(&self) -> bool {
        // One message forwards at most one packet, so reading stops before `forward` would find
        // a queue full. (Polling clients' POSTs are not held back: their bound stays a refusal.)
        self.sockets
            .iter()
            .all(|s| s.pipe.0.lock().up.len() < QUEUE)
    }

    fn on_buffered(&mut self, bytes: usize) {
        // What the Engine.IO session holds (no poll took it yet) counts as held by each socket's
        // wire: the slow-consumer rule (3008) is the same as on every transport.
        for socket in &self.sockets {
            socket.hub_session.set_transport_queued(bytes);
        }
    }

    fn on_timer(&mut self, now: Instant) -> Result<Vec<Data>, String> {
        self.connection.on_timer(now).map_err(|e| e.to_string())?;
        Ok(Vec::new())
    }

    fn on_shutdown(&mut self) {
        for socket in &self.sockets {
            socket.pipe.0.lock().shutdown = true;
        }
    }

    /// Runs every socket's hub client (it takes the packets forwarded since, and moves its queue
    /// onto its wire), and hands what they had for the client to the session.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<Data>, String>> {
        if let Some(why) = self.failed.take() {
            return Poll::Ready(Err(why));
        }
        self.ending
            .retain_mut(|driver| driver.as_mut().poll(cx).is_pending());
        let parser = self.shared.parser;
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.sockets.len() {
            let socket = &mut self.sockets[i];
            if let Some(driver) = &mut socket.driver
                && driver.as_mut().poll(cx).is_ready()
            {
                socket.driver = None;
            }
            let mut leave = None;
            for msg in socket.pipe.take_down() {
                match output(&mut self.connection, parser, &socket.namespace.name, msg) {
                    Ok(Step::Send(data)) => out.extend(data),
                    Ok(Step::Refused(data)) => {
                        out.extend(data);
                        leave = Some(false);
                        break;
                    }
                    Ok(Step::Leave) => {
                        leave = Some(true);
                        break;
                    }
                    Err(why) => {
                        self.failed = Some(why);
                        break;
                    }
                }
            }
            if self.failed.is_some() {
                break;
            }
            if let Some(last_closes) = leave {
                self.end_socket(i);
                if last_closes && self.sockets.is_empty() {
                    self.failed = Some("disconnected by the server".into());
                }
                continue;
            }
            if socket.driver.is_none() {
                self.end_socket(i);
                self.failed = Some("the hub client ended".into());
                break;
            }
            i += 1;
        }
        if !out.is_empty() {
            return Poll::Ready(Ok(out));
        }
        match self.failed.take() {
            Some(why) => Poll::Ready(Err(why)),
            None => Poll::Pending,
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.sockets.is_empty() {
            self.end_socket(0);
        }
        self.ending
            .retain_mut(|driver| driver.as_mut().poll(cx).is_pending());
        if self.ending.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// What a command id stands for, until its reply.
enum Pending {
    Connect,
    /// A `subscribe` with `recover`, part of a reconnect's recovery.
    Recover(String),
    /// A subscription asked for by an event (a room joined).
    Subscribe(String, Option<u64>),
    /// An unsubscription asked for by an event, or made by a failed recovery (no ack).
    Unsubscribe(String, Option<u64>),
    /// An event sent to the application's RPC handler, with its ack id.
    Rpc(u64),
    /// A client event with an ack id.
    Ack(u64),
    /// A client event without one: the reply is dropped.
    Quiet,
}

/// A channel's position as the socket last saw it: its offset and epoch (empty when the channel
/// keeps no history, so it cannot be recovered).
type Positions = BTreeMap<String, (u64, String)>;

/// The Socket.IO offset string of a set of positions: `[["channel",offset,"epoch"],...]`.
fn offset_string(positions: &Positions) -> String {
    let list: Vec<Value> = positions
        .iter()
        .map(|(ch, (offset, epoch))| json!([ch, offset, epoch]))
        .collect();
    Value::Array(list).to_string()
}

/// The positions an offset string names; `None` when it is not one (the client sent something
/// else: nothing to recover).
fn parse_offset(text: &str) -> Option<Positions> {
    let list: Vec<(String, u64, String)> = serde_json::from_str(text).ok()?;
    Some(list.into_iter().map(|(c, o, e)| (c, (o, e))).collect())
}

/// A reconnect's recovery in progress: the `CONNECT` answer waits until every channel answered.
struct Recovering {
    /// The pid the client sent: answered back when the recovery is complete.
    pid: String,
    /// Replies still awaited (the connect and each channel's subscribe).
    waiting: usize,
    /// Every channel recovered so far.
    complete: bool,
    /// The connect's socket id, once accepted.
    sid: Option<String>,
    /// Channels resubscribed by the recovery (unsubscribed again when it is incomplete).
    channels: Vec<String>,
    /// The positions the client sent.
    wanted: Positions,
    /// Channels the connect itself subscribed (the token's) at the position the client had.
    unchanged: HashSet<String>,
    /// What arrived meanwhile (recovered publications first), with the channel it belongs to.
    held: Vec<(Option<String>, ToSession)>,
}

/// The event that tells the client its rooms' positions when they change without a publication
/// (a room joined or left): its last argument is the offset string the client keeps.
pub const POSITION_EVENT: &str = "switchboard:position";

/// The client's side: Socket.IO packets in, protocol frames out.
struct SioWire {
    /// Packets in, messages for the session out.
    pipe: Arc<Pipe>,
    /// The endpoint's parser: publications are encoded once per publication for the default one.
    parser: sio::Parser,
    /// Commands awaiting their reply: a few at a time, in id order (a list: a map's table would
    /// double what an idle socket holds here).
    pending: Vec<(u64, Pending)>,
    /// The next command id. 32 bits: the wire's ids are its own (the hub echoes them), a socket
    /// never has four billion commands outstanding, and the four bytes keep the socket's driver in
    /// a smaller allocator size class.
    next_id: u32,
    open: bool,
    /// Connection state recovery is on: pids, offsets on events, recovery on reconnect.
    recovery: bool,
    /// The socket's rooms and their positions (kept with recovery on).
    positions: Positions,
    /// A reconnect's recovery in progress (boxed: rare, and large beside the rest).
    recovering: Option<Box<Recovering>>,
    /// What a failed recovery left to do (boxed: rare, and every idle socket would carry its
    /// room).
    left: Option<Box<Left>>,
    /// Wakes the driver for the outbox.
    waker: Option<Waker>,
    /// The socket's Socket.IO namespace and its rooms' channel prefix.
    ns: Arc<Namespace>,
}

/// What a failed recovery left to do.
#[derive(Default)]
struct Left {
    /// Commands the wire issues itself (the unsubscribes).
    outbox: Vec<Value>,
    /// Channels whose publications are dropped: a few at most.
    dropped: Vec<String>,
}

impl Left {
    fn is_empty(&self) -> bool {
        self.outbox.is_empty() && self.dropped.is_empty()
    }
}

impl SioWire {
    /// Frees what a failed recovery left once nothing of it remains: an idle socket keeps no box.
    fn tidy_left(&mut self) {
        if self.left.as_ref().is_some_and(|l| l.is_empty()) {
            self.left = None;
        }
    }

    /// Whether `channel`'s publications are dropped (left after a failed recovery).
    fn is_dropped(&self, channel: &str) -> bool {
        self.left
            .as_ref()
            .is_some_and(|l| l.dropped.iter().any(|c| c == channel))
    }

    /// `channel` was joined again: its publications go out again.
    fn undrop(&mut self, channel: &str) {
        if let Some(left) = &mut self.left {
            left.dropped.retain(|c| c != channel);
        }
        self.tidy_left();
    }

    fn new(pipe: Arc<Pipe>, parser: sio::Parser, recovery: bool, ns: Arc<Namespace>) -> Self {
        Self {
            pipe,
            parser,
            pending: Vec::new(),
            next_id: 1,
            open: true,
            recovery,
            positions: Positions::new(),
            recovering: None,
            left: None,
            waker: None,
            ns,
        }
    }

    /// One command with a fresh id.
    fn cmd(&mut self, mut body: Value, pending: Pending) -> Value {
        let id = u64::from(self.next_id);
        // Past the last id, 1 again (0 is not a command id).
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        if let Value::Object(map) = &mut body {
            map.insert("id".into(), json!(id));
        }
        self.pending.push((id, pending));
        body
    }

    /// Answers an event's ack locally (the event had no command).
    fn refuse_ack(&mut self, ack: Option<u64>, code: u32, message: &str) {
        if let Some(ack) = ack {
            let err = json!({ "code": code, "message": message });
            self.deliver(
                None,
                ToSession::Packets(vec![Packet::ack(&self.ns.name, ack, vec![err])]),
            );
        }
    }

    /// The protocol commands of a Socket.IO packet, newline-separated, if it has any.
    fn command(&mut self, packet: &Packet) -> Option<Bytes> {
        let commands = match packet.kind {
            sio::PacketType::Connect => self.connect(packet.data.as_ref()),
            sio::PacketType::Event => self.event(packet, None),
            sio::PacketType::BinaryEvent => {
                // The one binary payload switchboard carries: a publication's bytes (`b64data`).
                let args = packet.args();
                match (
                    packet.event_name().as_deref(),
                    args,
                    packet.attachments.as_slice(),
                ) {
                    (Some("publish"), [Value::String(_), p], [bytes]) if is_placeholder(p, 0) => {
                        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                        self.event(packet, Some(b64))
                    }
                    _ => {
                        self.refuse_ack(
                            packet.id,
                            415,
                            "binary arguments are only carried by publish(channel, bytes): \
                             switchboard's payloads are JSON or one binary blob",
                        );
                        Vec::new()
                    }
                }
            }
            // Acks from the client: the server asks for none.
            _ => Vec::new(),
        };
        lines(commands)
    }

    fn connect(&mut self, auth: Option<&Value>) -> Vec<Value> {
        let token = auth.and_then(|d| d.get("token")).and_then(Value::as_str);
        let connect = match token {
            Some(t) => json!({ "connect": { "token": t } }),
            None => json!({ "connect": {} }),
        };
        let mut out = vec![self.cmd(connect, Pending::Connect)];
        let pid = auth.and_then(|d| d.get("pid")).and_then(Value::as_str);
        let offset = auth.and_then(|d| d.get("offset")).and_then(Value::as_str);
        if let (true, Some(pid)) = (self.recovery, pid) {
            // A reconnect asking for recovery: each room resubscribed from its position, in the
            // same batch (commands run in order, after the connect).
            let mut positions = offset.and_then(parse_offset).unwrap_or_default();
            // A namespace reaches only the channels under its prefix, whatever the string says.
            let foreign = positions.len();
            positions.retain(|ch, _| ch.starts_with(&self.ns.prefix));
            let foreign = foreign - positions.len();
            let mut rec = Recovering {
                pid: pid.to_owned(),
                waiting: 1 + positions.len(),
                // Without a readable offset string nothing can be known recovered.
                complete: foreign == 0 && offset.is_some_and(|o| parse_offset(o).is_some()),
                sid: None,
                channels: Vec::new(),
                wanted: positions.clone(),
                unchanged: HashSet::new(),
                held: Vec::new(),
            };
            for (channel, (offset, epoch)) in positions {
                let sub = if epoch.is_empty() {
                    rec.complete = false;
                    json!({ "subscribe": { "channel": channel } })
                } else {
                    json!({ "subscribe": { "channel": channel, "recover": true, "epoch": epoch, "offset": offset } })
                };
                rec.channels.push(channel.clone());
                out.push(self.cmd(sub, Pending::Recover(channel)));
            }
            self.recovering = Some(Box::new(rec));
        }
        out
    }

    /// An event from the client, `b64data` the bytes of a binary `publish`.
    fn event(&mut self, packet: &Packet, b64data: Option<String>) -> Vec<Value> {
        let args = packet.args();
        let channel = args
            .first()
            .and_then(Value::as_str)
            .map(|room| format!("{}{room}", self.ns.prefix));
        let channel = channel.as_deref();
        let ack = packet.id;
        let Some(name) = packet.event_name() else {
            return Vec::new();
        };
        let quiet = || ack.map_or(Pending::Quiet, Pending::Ack);
        let (body, pending) = match (name.as_str(), channel) {
            ("subscribe", Some(ch)) => {
                let mut sub = json!({ "channel": ch });
                if let Some(data) = args.get(1) {
                    sub["data"] = data.clone();
                }
                (
                    json!({ "subscribe": sub }),
                    Pending::Subscribe(ch.to_owned(), ack),
                )
            }
            ("unsubscribe", Some(ch)) => (
                json!({ "unsubscribe": { "channel": ch } }),
                Pending::Unsubscribe(ch.to_owned(), ack),
            ),
            ("publish", Some(ch)) => {
                let body = match b64data {
                    Some(b) => json!({ "publish": { "channel": ch, "b64data": b } }),
                    None => {
                        json!({ "publish": { "channel": ch, "data": args.get(1).cloned().unwrap_or(Value::Null) } })
                    }
                };
                (body, quiet())
            }
            ("subscribe" | "unsubscribe" | "publish", None) => {
                self.refuse_ack(ack, 107, "the first argument must be the channel");
                return Vec::new();
            }
            // Any other event goes to the application's RPC handler, named by the event.
            (name, _) => (
                json!({ "rpc": { "method": name, "data": Value::Array(args.to_vec()) } }),
                ack.map_or(Pending::Quiet, Pending::Rpc),
            ),
        };
        vec![self.cmd(body, pending)]
    }

    /// Sends a message to the session (or holds it while a recovery is in progress).
    fn deliver(&mut self, channel: Option<String>, msg: ToSession) {
        if let Some(rec) = &mut self.recovering {
            rec.held.push((channel, msg));
            return;
        }
        self.pipe.0.lock().down.push(msg);
    }

    /// Tells the client its rooms' positions (a room joined or left without a publication).
    fn tell_positions(&mut self) {
        if self.recovery {
            let p = Packet::event(
                &self.ns.name,
                POSITION_EVENT,
                [json!(offset_string(&self.positions))],
                None,
            );
            self.deliver(None, ToSession::Packets(vec![p]));
        }
    }

    /// Records a subscribe result's position for a channel.
    fn record(&mut self, channel: &str, result: &Value) {
        if !self.recovery {
            return;
        }
        let offset = result.get("offset").and_then(Value::as_u64).unwrap_or(0);
        let epoch = result
            .get("epoch")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.positions
            .insert(channel.to_owned(), (offset, epoch.to_owned()));
    }

    /// One reply of the recovery came in: when it was the last, the `CONNECT` answer goes out.
    fn recovery_step(&mut self, ok: bool) {
        let Some(rec) = &mut self.recovering else {
            return;
        };
        rec.complete &= ok;
        rec.waiting = rec.waiting.saturating_sub(1);
        if rec.waiting > 0 {
            return;
        }
        let Some(rec) = self.recovering.take() else {
            return;
        };
        let Some(sid) = rec.sid else {
            // The connect was refused: its answer went out already.
            return;
        };
        let pid = if rec.complete {
            rec.pid
        } else {
            // Socket.IO's rule: an incomplete recovery is a new socket, in no room. The rooms the
            // recovery rejoined are left again, and what they delivered meanwhile is dropped.
            for channel in &rec.channels {
                self.positions.remove(channel);
                let unsub = json!({ "unsubscribe": { "channel": channel } });
                let cmd = self.cmd(unsub, Pending::Unsubscribe(channel.clone(), None));
                let left = self.left.get_or_insert_with(Box::default);
                if !left.dropped.contains(channel) {
                    left.dropped.push(channel.clone());
                }
                left.outbox.push(cmd);
            }
            if let Some(w) = self.waker.take() {
                w.wake();
            }
            sid.clone()
        };
        self.deliver(
            None,
            ToSession::Accepted(Box::new(Accepted {
                sid,
                pid: Some(pid),
            })),
        );
        for (channel, msg) in rec.held {
            if channel.is_some_and(|c| self.is_dropped(&c)) {
                continue;
            }
            self.deliver(None, msg);
        }
        self.tell_positions();
    }

    /// The Socket.IO side of one protocol reply or push.
    fn translate(&mut self, frame: &Frame) {
        if frame.is_shared()
            && self.parser == sio::Parser::Default
            && !self.recovery
            && self.ns.name == MAIN_NAMESPACE
            && self.ns.prefix.is_empty()
        {
            // A publication (or another push) sent to many clients: encoded once for all. With
            // recovery on, each socket's events carry its own offset string instead.
            if let Some(text) = frame.encoded(push_event).as_ref() {
                self.deliver(None, ToSession::Encoded(text.clone()));
            }
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(frame.text()) else {
            return;
        };
        if let Some(id) = value.get("id").and_then(Value::as_u64) {
            self.reply(id, &value);
            return;
        }
        self.push(&value);
    }

    fn reply(&mut self, id: u64, value: &Value) {
        let error = value.get("error");
        let Some(at) = self.pending.iter().position(|(p, _)| *p == id) else {
            return;
        };
        let (_, pending) = self.pending.remove(at);
        if self.pending.is_empty() {
            // An idle socket keeps no room for replies.
            self.pending = Vec::new();
        }
        let ns = Arc::clone(&self.ns);
        let ack_of =
            |ack: u64, args: Vec<Value>| ToSession::Packets(vec![Packet::ack(&ns.name, ack, args)]);
        let error_or = |ok: Vec<Value>| match error {
            Some(e) => vec![e.clone()],
            None => ok,
        };
        match pending {
            Pending::Connect => match (error, value.get("connect")) {
                (None, Some(c)) => {
                    let sid = c
                        .get("client")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(Value::Object(subs)) = c.get("subs") {
                        for (channel, result) in subs {
                            self.record(channel, result);
                            if let Some(rec) = &mut self.recovering {
                                // Subscribed by the token, not recovered: complete only when
                                // nothing was published there since the client's position.
                                rec.channels.retain(|c| c != channel);
                                if self.positions.get(channel) == rec.wanted.get(channel) {
                                    rec.unchanged.insert(channel.clone());
                                }
                            }
                        }
                    }
                    match &mut self.recovering {
                        Some(rec) => {
                            rec.sid = Some(sid);
                            self.recovery_step(true);
                        }
                        None => {
                            let pid = self.recovery.then(|| sid.clone());
                            self.deliver(
                                None,
                                ToSession::Accepted(Box::new(Accepted { sid, pid })),
                            );
                            if !self.positions.is_empty() {
                                self.tell_positions();
                            }
                        }
                    }
                }
                (e, _) => {
                    // Refused: the recovery (if any) ends with it; its subscribes fail too.
                    self.recovering = None;
                    self.deliver(
                        None,
                        ToSession::Refused(Box::new(Refused {
                            message: e
                                .and_then(|e| e.get("message"))
                                .and_then(Value::as_str)
                                .unwrap_or("connection refused")
                                .to_owned(),
                            code: e
                                .and_then(|e| e.get("code"))
                                .and_then(Value::as_u64)
                                .and_then(|c| u32::try_from(c).ok())
                                .unwrap_or(0),
                        })),
                    );
                }
            },
            Pending::Recover(channel) => {
                let result = value.get("subscribe");
                let recovered = result
                    .and_then(|r| r.get("recovered"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                // A token channel the connect subscribed again: complete when nothing was
                // published there meanwhile.
                let token_channel_unchanged = error.is_some()
                    && self
                        .recovering
                        .as_ref()
                        .is_some_and(|r| r.unchanged.contains(&channel));
                if let Some(r) = result {
                    let publications = r
                        .get("publications")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    self.record(&channel, r);
                    for p in publications {
                        let p = p.get("pub").cloned().unwrap_or(p);
                        self.publication(&channel, &p);
                    }
                }
                self.recovery_step(recovered || token_channel_unchanged);
            }
            Pending::Subscribe(channel, ack) => {
                if let (None, Some(r)) = (error, value.get("subscribe")) {
                    self.undrop(&channel);
                    self.record(&channel, r);
                    self.tell_positions();
                }
                if let Some(ack) = ack {
                    self.deliver(None, ack_of(ack, error_or(vec![Value::Null])));
                }
            }
            Pending::Unsubscribe(channel, ack) => {
                if error.is_none() && self.positions.remove(&channel).is_some() {
                    self.tell_positions();
                }
                if let Some(ack) = ack {
                    self.deliver(None, ack_of(ack, error_or(vec![Value::Null])));
                }
            }
            Pending::Rpc(ack) => {
                let data = value
                    .get("rpc")
                    .and_then(|r| r.get("data"))
                    .cloned()
                    .unwrap_or(Value::Null);
                self.deliver(None, ack_of(ack, error_or(vec![Value::Null, data])));
            }
            Pending::Ack(ack) => {
                self.deliver(None, ack_of(ack, error_or(vec![Value::Null])));
            }
            Pending::Quiet => {}
        }
    }

    /// A push: publications become events; subscriptions made or ended by the server change the
    /// socket's rooms.
    fn push(&mut self, value: &Value) {
        if let Some(p) = value.get("pub") {
            let channel = p
                .get("channel")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            self.publication(&channel, p);
        } else if let Some(s) = value.get("subscribe") {
            if let Some(ch) = s.get("channel").and_then(Value::as_str) {
                self.undrop(ch);
                self.record(ch, s);
                self.tell_positions();
            }
        } else if let Some(s) = value.get("unsubscribe")
            && let Some(ch) = s.get("channel").and_then(Value::as_str)
            && self.positions.remove(ch).is_some()
        {
            self.tell_positions();
        }
    }

    /// One publication of `channel` (from a push or a recovery) as an event.
    fn publication(&mut self, channel: &str, publication: &Value) {
        if self.is_dropped(channel) {
            return;
        }
        let room = channel.strip_prefix(&self.ns.prefix).unwrap_or(channel);
        let mut packet = publication_packet(&self.ns.name, room, publication);
        if self.recovery
            && let Some(offset) = publication.get("offset").and_then(Value::as_u64)
        {
            if let Some(pos) = self.positions.get_mut(channel) {
                pos.0 = pos.0.max(offset);
            }
            // The offset string is the event's last argument, where the client takes it from.
            if let Some(Value::Array(data)) = &mut packet.data {
                data.push(json!(offset_string(&self.positions)));
            }
        }
        self.deliver(Some(channel.to_owned()), ToSession::Packets(vec![packet]));
    }
}

/// Newline-separated commands, `None` when there are none.
fn lines(commands: Vec<Value>) -> Option<Bytes> {
    if commands.is_empty() {
        return None;
    }
    let text: Vec<String> = commands.iter().map(Value::to_string).collect();
    Some(Bytes::from(text.join("\n")))
}

/// Whether `v` is the placeholder of attachment `num`.
fn is_placeholder(v: &Value, num: u64) -> bool {
    v.get("_placeholder").and_then(Value::as_bool) == Some(true)
        && v.get("num").and_then(Value::as_u64) == Some(num)
}

/// The Engine.IO message of a push, if it maps to one (publications do): the Socket.IO packet
/// text, shared by every subscriber's session.
fn push_event(text: &Bytes) -> Option<SharedText> {
    let value: Value = serde_json::from_slice(text).ok()?;
    let publication = value.get("pub")?;
    let channel = publication
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let packet = publication_packet(MAIN_NAMESPACE, channel, publication);
    // Binary publications have attachments, which one text message cannot carry.
    (!packet.kind.is_binary()).then(|| SharedText::new(&packet.encode()))
}

/// A publication as an event: `{"event":name,"args":[...]}` as that event (unless the name is one
/// Socket.IO reserves), other data as `publication` with the channel and the data, a binary
/// publication (`b64data`) as `publication` with the channel and the bytes.
fn publication_packet(namespace: &str, channel: &str, publication: &Value) -> Packet {
    if let Some(bytes) = publication
        .get("b64data")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
    {
        return Packet::binary(
            sio::PacketType::BinaryEvent,
            namespace,
            None,
            json!(["publication", channel, sio::placeholder(0)]),
            vec![Bytes::from(bytes)],
        );
    }
    let data = publication.get("data").cloned().unwrap_or(Value::Null);
    let name = data.get("event").and_then(Value::as_str);
    let args = data.get("args").and_then(Value::as_array);
    match (name, args) {
        (Some(name), Some(args)) if !sio::RESERVED_EVENTS.contains(&name) => {
            Packet::event(namespace, name, args.iter().cloned(), None)
        }
        _ => Packet::event(namespace, "publication", [json!(channel), data], None),
    }
}

impl Wire for SioWire {
    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Upstream> {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        if let Some(left) = &mut self.left
            && !left.outbox.is_empty()
        {
            let cmds = std::mem::take(&mut left.outbox);
            self.tidy_left();
            if let Some(b) = lines(cmds) {
                return Poll::Ready(Upstream::Commands(b));
            }
        }
        loop {
            let next = {
                let mut pipe = self.pipe.0.lock();
                match pipe.up.pop_front() {
                    Some(p) => {
                        if pipe.up.is_empty() {
                            // An idle socket keeps no room for packets.
                            pipe.up = VecDeque::new();
                        }
                        Some(p)
                    }
                    // First: the session may have ended its sockets already (closed too).
                    None if pipe.shutdown => {
                        return Poll::Ready(Upstream::End(DisconnectCode::Shutdown));
                    }
                    None if pipe.closed => None,
                    // The session's task polls this client again after each packet it forwards.
                    None => return Poll::Pending,
                }
            };
            match next {
                Some(p) => {
                    if let Some(cmd) = self.command(&p) {
                        return Poll::Ready(Upstream::Commands(cmd));
                    }
                }
                None => {
                    self.open = false;
                    return Poll::Ready(Upstream::Gone(None));
                }
            }
        }
    }

    fn send(&mut self, frame: Frame) -> bool {
        self.translate(&frame);
        true
    }

    fn is_open(&self) -> bool {
        self.open && !self.pipe.0.lock().closed
    }

    fn end(&mut self, end: End) {
        self.recovering = None;
        // A code that asks the client back (a slow client, a restart) just closes the Engine.IO
        // session: the Socket.IO client reconnects by itself and recovers. `DISCONNECT` would
        // keep it away (`io server disconnect`), as the other codes mean to.
        if let End::Tell { code, .. } = end
            && !code.reconnect()
        {
            let mut pipe = self.pipe.0.lock();
            pipe.down
                .push(ToSession::Packets(vec![Packet::disconnect(&self.ns.name)]));
            pipe.down.push(ToSession::Leave);
            return;
        }
        self.pipe.0.lock().down.push(ToSession::Close);
    }

    async fn finish(self, _code: Option<DisconnectCode>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the wire hands the session, read as from a channel.
    struct Down(Arc<Pipe>);

    impl Down {
        fn try_recv(&mut self) -> Result<ToSession, ()> {
            let mut pipe = self.0.0.lock();
            if pipe.down.is_empty() {
                return Err(());
            }
            Ok(pipe.down.remove(0))
        }
    }

    fn wire_with(recovery: bool) -> (SioWire, Down) {
        let pipe = Arc::new(Pipe::default());
        (
            SioWire::new(
                Arc::clone(&pipe),
                sio::Parser::Default,
                recovery,
                Namespace::main(),
            ),
            Down(pipe),
        )
    }

    fn wire() -> (SioWire, Down) {
        wire_with(false)
    }

    fn decode(text: &str) -> Packet {
        let mut d = Decoder::default();
        d.decode(Data::Text(text.into())).unwrap().unwrap()
    }

    fn commands(w: &mut SioWire, text: &str) -> Vec<Value> {
        w.command(&decode(text))
            .map(|b| {
                b.split(|c| *c == b'\n')
                    .map(|l| serde_json::from_slice(l).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn command(w: &mut SioWire, text: &str) -> Option<Value> {
        commands(w, text).pop()
    }

    /// What the session got for one frame.
    fn reply(w: &mut SioWire, down: &mut Down, json: &str) -> Vec<ToSession> {
        w.translate(&Frame::new(Bytes::from(json.to_owned())));
        std::iter::from_fn(|| down.try_recv().ok()).collect()
    }

    /// The Engine.IO message text of what the session got.
    fn texts(t: Vec<ToSession>) -> Vec<String> {
        t.into_iter()
            .map(|t| match t {
                ToSession::Encoded(t) => t.text().to_owned(),
                ToSession::Packets(p) => p.iter().map(Packet::encode).collect(),
                ToSession::Accepted(a) => format!("accepted {} {:?}", a.sid, a.pid),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn connect_with_and_without_token() {
        let (mut w, mut down) = wire();
        assert_eq!(
            command(&mut w, r#"0{"token":"jwt"}"#),
            Some(json!({"id": 1, "connect": {"token": "jwt"}}))
        );
        assert_eq!(
            texts(reply(
                &mut w,
                &mut down,
                r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","ping":25,"subs":{}}}"#
            )),
            ["accepted c1 None"]
        );
        assert_eq!(command(&mut w, "0"), Some(json!({"id": 2, "connect": {}})));
        match reply(
            &mut w,
            &mut down,
            r#"{"id":2,"error":{"code":109,"message":"token expired","temporary":false}}"#,
        )
        .pop()
        {
            Some(ToSession::Refused(r)) => {
                assert_eq!((r.message.as_str(), r.code), ("token expired", 109));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_become_commands_and_replies_acks() {
        let (mut w, mut down) = wire();
        assert_eq!(
            command(&mut w, r#"27["subscribe","news"]"#),
            Some(json!({"id": 1, "subscribe": {"channel": "news"}}))
        );
        assert_eq!(
            command(&mut w, r#"2["publish","news",{"text":"hi"}]"#),
            Some(json!({"id": 2, "publish": {"channel": "news", "data": {"text": "hi"}}}))
        );
        assert_eq!(
            command(&mut w, r#"28["unsubscribe","news"]"#),
            Some(json!({"id": 3, "unsubscribe": {"channel": "news"}}))
        );
        assert_eq!(
            texts(reply(&mut w, &mut down, r#"{"id":1,"subscribe":{}}"#)),
            ["37[null]"]
        );
        // No ack id: the reply is dropped.
        assert!(reply(&mut w, &mut down, r#"{"id":2,"publish":{}}"#).is_empty());
        assert_eq!(
            texts(reply(
                &mut w,
                &mut down,
                r#"{"id":3,"error":{"code":102,"message":"unknown channel","temporary":false}}"#
            )),
            [r#"38[{"code":102,"message":"unknown channel","temporary":false}]"#]
        );
        // A reply nobody waits for is ignored.
        assert!(reply(&mut w, &mut down, r#"{"id":99,"subscribe":{}}"#).is_empty());
        // A command event without its channel is refused through its ack.
        assert_eq!(command(&mut w, r#"211["subscribe"]"#), None);
        assert_eq!(
            texts(std::iter::from_fn(|| down.try_recv().ok()).collect()),
            [r#"311[{"code":107,"message":"the first argument must be the channel"}]"#]
        );
    }

    #[test]
    fn other_events_go_to_the_rpc_handler() {
        let (mut w, mut down) = wire();
        assert_eq!(
            command(&mut w, r#"29["buy",{"item":1},2]"#),
            Some(json!({"id": 1, "rpc": {"method": "buy", "data": [{"item": 1}, 2]}}))
        );
        assert_eq!(
            texts(reply(
                &mut w,
                &mut down,
                r#"{"id":1,"rpc":{"data":{"ok":true}}}"#
            )),
            [r#"39[null,{"ok":true}]"#]
        );
        // Without an ack the handler still gets it; its answer is dropped.
        assert_eq!(
            command(&mut w, r#"2["typing"]"#),
            Some(json!({"id": 2, "rpc": {"method": "typing", "data": []}}))
        );
        assert!(reply(&mut w, &mut down, r#"{"id":2,"rpc":{"data":1}}"#).is_empty());
        assert_eq!(command(&mut w, r#"23["buy"]"#).unwrap()["id"], 3);
        assert_eq!(
            texts(reply(
                &mut w,
                &mut down,
                r#"{"id":3,"error":{"code":108,"message":"not available"}}"#
            )),
            [r#"33[{"code":108,"message":"not available"}]"#]
        );
    }

    #[test]
    fn binary_publish_is_b64data_and_other_binary_is_refused() {
        let (mut w, mut down) = wire();
        let mut d = Decoder::default();
        assert!(
            d.decode(Data::Text(
                r#"51-["publish","files",{"_placeholder":true,"num":0}]"#.into()
            ))
            .unwrap()
            .is_none()
        );
        let p = d
            .decode(Data::Binary(Bytes::from_static(&[0, 255])))
            .unwrap()
            .unwrap();
        let cmd: Value = serde_json::from_slice(&w.command(&p).unwrap()).unwrap();
        assert_eq!(
            cmd,
            json!({"id": 1, "publish": {"channel": "files", "b64data": "AP8="}})
        );
        let mut other = decode(r#"2["buy"]"#);
        other.kind = sio::PacketType::BinaryEvent;
        other.id = Some(10);
        other.data = Some(json!(["buy", sio::placeholder(0)]));
        other.attachments = vec![Bytes::from_static(&[1])];
        assert_eq!(w.command(&other), None);
        let refused = texts(std::iter::from_fn(|| down.try_recv().ok()).collect());
        assert!(refused[0].starts_with(r#"310[{"code":415,"#), "{refused:?}");
        // A binary publication arrives as a binary event with its bytes attached.
        let got = reply(
            &mut w,
            &mut down,
            r#"{"pub":{"channel":"files","offset":1,"b64data":"AP8="}}"#,
        );
        let Some(ToSession::Packets(p)) = got.into_iter().next() else {
            panic!("a packet")
        };
        assert_eq!(
            p[0].encode(),
            r#"51-["publication","files",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(p[0].attachments, [Bytes::from_static(&[0, 255])]);
    }

    #[test]
    fn publications_are_events() {
        let (mut w, mut down) = wire();
        let event =
            r#"{"pub":{"channel":"news","offset":3,"data":{"event":"chat","args":["hi",1]}}}"#;
        // Shared (encoded once for every subscriber) or not, the same event.
        let publication = Frame::shared(Bytes::from_static(event.as_bytes()));
        w.translate(&publication);
        let shared: Vec<ToSession> = std::iter::from_fn(|| down.try_recv().ok()).collect();
        // Another subscriber gets the very same packet, not a copy.
        let (mut other, mut other_down) = wire();
        other.translate(&publication);
        match (&shared[0], other_down.try_recv()) {
            (ToSession::Encoded(a), Ok(ToSession::Encoded(b))) => {
                assert!(SharedText::ptr_eq(a, &b));
                assert_eq!(a.packet().as_ref(), br#"42["chat","hi",1]"#);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(texts(shared), [r#"2["chat","hi",1]"#]);
        assert_eq!(
            texts(reply(&mut w, &mut down, event)),
            [r#"2["chat","hi",1]"#]
        );
        let plain = r#"{"pub":{"channel":"news","offset":4,"data":{"x":1}}}"#;
        assert_eq!(
            texts(reply(&mut w, &mut down, plain)),
            [r#"2["publication","news",{"x":1}]"#]
        );
        // Reserved names are not emitted as such.
        let reserved = r#"{"pub":{"channel":"n","data":{"event":"disconnect","args":[]}}}"#;
        assert!(
            texts(reply(&mut w, &mut down, reserved))[0].starts_with(r#"2["publication","n","#)
        );
        // Other pushes have no Socket.IO form.
        assert!(reply(&mut w, &mut down, r#"{"join":{"channel":"n","info":{}}}"#).is_empty());
    }

    #[test]
    fn recovery_gives_pids_and_offsets() {
        let (mut w, mut down) = wire_with(true);
        command(&mut w, "0");
        assert_eq!(
            texts(reply(
                &mut w,
                &mut down,
                r#"{"id":1,"connect":{"client":"c1","subs":{"t":{"epoch":"E","offset":2}}}}"#
            )),
            [
                r#"accepted c1 Some("c1")"#,
                r#"2["switchboard:position","[[\"t\",2,\"E\"]]"]"#
            ]
        );
        command(&mut w, r#"25["subscribe","news"]"#);
        assert_eq!(
            texts(reply(
                &mut w,
                &mut down,
                r#"{"id":2,"subscribe":{"epoch":"N","offset":7}}"#
            )),
            [
                r#"2["switchboard:position","[[\"news\",7,\"N\"],[\"t\",2,\"E\"]]"]"#,
                "35[null]"
            ]
        );
        // Every event carries the socket's positions last.
        assert_eq!(
            texts(reply(
                &mut w,
                &mut down,
                r#"{"pub":{"channel":"news","offset":8,"data":{"event":"chat","args":[1]}}}"#
            )),
            [r#"2["chat",1,"[[\"news\",8,\"N\"],[\"t\",2,\"E\"]]"]"#]
        );
    }

    #[test]
    fn a_reconnect_recovers_every_room() {
        let (mut w, mut down) = wire_with(true);
        let cmds = commands(
            &mut w,
            r#"0{"token":"x","pid":"c1","offset":"[[\"news\",8,\"N\"],[\"t\",2,\"E\"]]"}"#,
        );
        assert_eq!(
            cmds,
            [
                json!({"id": 1, "connect": {"token": "x"}}),
                json!({"id": 2, "subscribe": {"channel": "news", "recover": true, "epoch": "N", "offset": 8}}),
                json!({"id": 3, "subscribe": {"channel": "t", "recover": true, "epoch": "E", "offset": 2}}),
            ]
        );
        // Nothing reaches the client before the CONNECT answer.
        assert!(
            reply(
                &mut w,
                &mut down,
                r#"{"id":1,"connect":{"client":"c2","subs":{"t":{"epoch":"E","offset":2}}}}"#
            )
            .is_empty()
        );
        assert!(
            reply(
                &mut w,
                &mut down,
                r#"{"id":2,"subscribe":{"epoch":"N","offset":9,"recovered":true,"publications":[{"offset":9,"data":{"event":"chat","args":["missed"]}}]}}"#
            )
            .is_empty()
        );
        // The token's channel was subscribed by the connect, at the client's position: complete.
        let got = texts(reply(
            &mut w,
            &mut down,
            r#"{"id":3,"error":{"code":105,"message":"already subscribed"}}"#,
        ));
        assert_eq!(got[0], r#"accepted c2 Some("c1")"#);
        assert_eq!(
            got[1],
            r#"2["chat","missed","[[\"news\",9,\"N\"],[\"t\",2,\"E\"]]"]"#
        );
    }

    #[test]
    fn an_incomplete_recovery_is_a_new_socket() {
        let (mut w, mut down) = wire_with(true);
        commands(&mut w, r#"0{"pid":"c1","offset":"[[\"news\",8,\"N\"]]"}"#);
        assert!(
            reply(
                &mut w,
                &mut down,
                r#"{"id":1,"connect":{"client":"c2","subs":{}}}"#
            )
            .is_empty()
        );
        let got = texts(reply(
            &mut w,
            &mut down,
            r#"{"id":2,"subscribe":{"epoch":"M","offset":1,"recovered":false}}"#,
        ));
        assert_eq!(
            got,
            [
                r#"accepted c2 Some("c2")"#,
                r#"2["switchboard:position","[]"]"#
            ]
        );
        // The room is left again.
        let waker = futures_task_noop();
        let mut cx = Context::from_waker(&waker);
        match w.poll_upstream(&mut cx) {
            Poll::Ready(Upstream::Commands(b)) => assert_eq!(
                serde_json::from_slice::<Value>(&b).unwrap(),
                json!({"id": 3, "unsubscribe": {"channel": "news"}})
            ),
            _ => panic!("the unsubscribe"),
        }
        // A pid with no offset string recovers nothing.
        let (mut w, mut down) = wire_with(true);
        commands(&mut w, r#"0{"pid":"c1"}"#);
        assert_eq!(
            texts(reply(
                &mut w,
                &mut down,
                r#"{"id":1,"connect":{"client":"c3"}}"#
            )),
            [
                r#"accepted c3 Some("c3")"#,
                r#"2["switchboard:position","[]"]"#
            ]
        );
    }

    /// What an idle socket holds, item by item (`cargo test -p switchboard sizes -- --nocapture`
    /// prints them); the bounds keep them from growing unnoticed.
    #[tokio::test]
    async fn sizes() {
        let node = Node::new(
            Arc::new(switchboard_engine::MemoryEngine::new()),
            switchboard_hub::NodeConfig::default(),
            None,
        );
        let client = node.client_with("socketio", None);
        let wire = SioWire::new(
            Arc::default(),
            sio::Parser::Default,
            false,
            Namespace::main(),
        );
        let driver: Driver = Box::pin(switchboard_hub::drive(client, wire, None, || 0));
        let sizes = [
            ("SioWire", size_of::<SioWire>()),
            ("hub Client", size_of::<switchboard_hub::Client>()),
            ("hub Session", size_of::<switchboard_hub::Session>()),
            ("driver future", size_of_val(&*driver)),
            ("Socket", size_of::<Socket>()),
            ("HubApp", size_of::<HubApp>()),
            ("Connection", size_of::<Connection>()),
            ("PipeState", size_of::<PipeState>()),
            ("ToSession", size_of::<ToSession>()),
        ];
        for (what, size) in sizes {
            eprintln!("{what}: {size} bytes");
        }
        assert!(size_of_val(&*driver) <= 640, "{sizes:?}");
    }

    /// The endpoint's shutdown reaches a socket's hub client through its pipe (there is no
    /// watch per socket): as a shutdown, even when the session already ended its sockets.
    #[test]
    fn a_shutdown_ends_the_hub_client_as_one() {
        let (mut w, down) = wire();
        let waker = futures_task_noop();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(w.poll_upstream(&mut cx), Poll::Pending);
        {
            let mut pipe = down.0.0.lock();
            pipe.shutdown = true;
            pipe.closed = true;
        }
        assert_eq!(
            w.poll_upstream(&mut cx),
            Poll::Ready(Upstream::End(DisconnectCode::Shutdown))
        );
        // Without the shutdown, a closed pipe is a client gone.
        let (mut w, down) = wire();
        down.0.0.lock().closed = true;
        assert_eq!(w.poll_upstream(&mut cx), Poll::Ready(Upstream::Gone(None)));
    }

    fn futures_task_noop() -> Waker {
        Waker::noop().clone()
    }

    #[test]
    fn msgpack_publications_are_not_text() {
        let (mut w, mut down) = wire();
        w.parser = sio::Parser::Msgpack;
        let event = r#"{"pub":{"channel":"news","data":{"event":"chat","args":[1]}}}"#;
        w.translate(&Frame::shared(Bytes::from_static(event.as_bytes())));
        match down.try_recv() {
            Ok(ToSession::Packets(p)) => {
                let messages = sio::Parser::Msgpack.encode(&p[0]);
                let [Data::Binary(bytes)] = messages.as_slice() else {
                    panic!("one binary message")
                };
                let mut d = Decoder::with_parser(sio::Parser::Msgpack, 0);
                let back = d.decode(Data::Binary(bytes.clone())).unwrap().unwrap();
                assert_eq!(back.event_name().as_deref(), Some("chat"));
            }
            other => panic!("{other:?}"),
        }
    }
}
