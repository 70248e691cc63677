//! Socket.IO sockets as switchboard clients: the main namespace of an Engine.IO session is one
//! client of the hub, run by [`switchboard_hub::drive`] over a [`SioWire`] in a task of its own.
//!
//! The mapping (issue #14; this is its first part):
//!
//! - `CONNECT` to `/` is the protocol's `connect`, with `auth.token` as the connection token (JWT);
//!   without one, the connect proxy or anonymous access decides. Success answers
//!   `40{"sid":"<client id>"}`, refusal `44{"message":"...","data":{"code":N}}`. Other namespaces are
//!   refused (`Invalid namespace`).
//! - Events from the client: `subscribe` (channel), `unsubscribe` (channel), `publish` (channel,
//!   data) become those commands; with an ack id, the reply comes back as the ack: `[null]` on
//!   success, `[{"code":N,"message":"..."}]` on error.
//! - Publications in the socket's channels (rooms) arrive as events: a publication
//!   `{"event":"chat","args":[...]}` as `42["chat",...]`, any other as
//!   `42["publication","<channel>",<data>]`.
//! - The server's `disconnect` ends the socket with `DISCONNECT` and closes the Engine.IO session.
//!
//! Not mapped yet: other namespaces, binary arguments (refused through the ack), history, presence,
//! RPC, join/leave pushes, and Socket.IO's connection state recovery (`pid`/`offset` on reconnect,
//! which switchboard's offsets can serve).

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{Value, json};
use switchboard_hub::{End, Node, Upstream, Wire};
use switchboard_protocol::{DisconnectCode, Frame};
use switchboard_socketio::eio::Data;
use switchboard_socketio::sio::{self, Connection, Decoder, Incoming, MAIN_NAMESPACE, Packet};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::{App, AppFactory};

/// What the session's task tells the client's.
enum ToClient {
    /// A packet of the main namespace (`CONNECT` first).
    Packet(Packet),
}

/// What the client's task tells the session's.
#[derive(Debug)]
enum ToSession {
    /// The hub accepted the connection: the socket id.
    Accepted(String),
    /// The hub refused it.
    Refused { message: String, code: u32 },
    /// Packets for the client.
    Packets(Vec<Packet>),
    /// A packet already encoded (a publication, encoded once for all its subscribers).
    Encoded(String),
    /// The hub ended the client: close the Engine.IO session.
    Close,
}

/// Frames the client's task may queue for the session's before the session counts as slow.
const QUEUE: usize = 1024;

/// What the hub application needs from the server.
#[derive(Clone)]
pub struct Env {
    /// The node clients join.
    pub node: Arc<Node>,
    /// The server's shutdown.
    pub shutdown: CancellationToken,
    /// Tracks client tasks.
    pub tracker: TaskTracker,
    /// How clients are told to come back after a shutdown.
    pub restart: crate::config::ShutdownConfig,
}

/// Socket.IO on switchboard's hub.
pub fn app(env: Env, parser: sio::Parser, connect_timeout: Duration) -> AppFactory {
    Arc::new(move |now| {
        let decoder = Decoder::with_parser(parser, sio::DEFAULT_MAX_ATTACHMENTS);
        Box::new(HubApp {
            env: env.clone(),
            parser,
            connection: Connection::new(decoder, connect_timeout, now),
            to_client: None,
            from_client: None,
        })
    })
}

struct HubApp {
    env: Env,
    parser: sio::Parser,
    connection: Connection,
    to_client: Option<mpsc::Sender<ToClient>>,
    from_client: Option<mpsc::Receiver<ToSession>>,
}

impl HubApp {
    /// Starts the hub client of this session, on the first `CONNECT` to `/`.
    fn start_client(&mut self) {
        let (to_client, up) = mpsc::channel(QUEUE);
        let (down, from_client) = mpsc::channel(QUEUE);
        let client = self.env.node.client_with("socketio", None);
        let wire = SioWire {
            up,
            down,
            parser: self.parser,
            pending: HashMap::new(),
            next_id: 1,
            open: true,
        };
        let shutdown = self.env.shutdown.clone();
        let restart = self.env.restart.clone();
        self.env.tracker.spawn(async move {
            switchboard_hub::drive(client, wire, &shutdown, || restart.reconnect_delay_ms()).await;
        });
        self.to_client = Some(to_client);
        self.from_client = Some(from_client);
    }

    fn forward(&mut self, packet: Packet) -> Result<(), String> {
        let Some(tx) = &self.to_client else {
            return Err("no client for a packet".into());
        };
        tx.try_send(ToClient::Packet(packet))
            .map_err(|_| "the client does not keep up with its socket's packets".to_owned())
    }
}

impl App for HubApp {
    fn on_message(&mut self, data: Data, _now: Instant) -> Result<Vec<Data>, String> {
        let incoming = match self.connection.receive(data) {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        match incoming {
            Incoming::Connect { namespace, auth } if namespace == MAIN_NAMESPACE => {
                if self.to_client.is_none() {
                    self.start_client();
                }
                self.forward(Packet {
                    kind: sio::PacketType::Connect,
                    namespace,
                    id: None,
                    data: auth,
                    attachments: Vec::new(),
                })?;
                Ok(Vec::new())
            }
            Incoming::Connect { namespace, .. } => {
                let refusal = self
                    .connection
                    .refuse(&namespace, "Invalid namespace", None);
                Ok(self.parser.encode(&refusal))
            }
            Incoming::Packet(p) => {
                self.forward(p)?;
                Ok(Vec::new())
            }
            // The client left its only namespace: its hub client ends with it.
            Incoming::Disconnect { .. } => {
                self.to_client = None;
                self.from_client = None;
                Ok(Vec::new())
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.connection.next_deadline()
    }

    fn on_timer(&mut self, now: Instant) -> Result<Vec<Data>, String> {
        self.connection.on_timer(now).map_err(|e| e.to_string())?;
        Ok(Vec::new())
    }

    fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<Data>, String>> {
        let Some(rx) = &mut self.from_client else {
            return Poll::Pending;
        };
        let Some(msg) = std::task::ready!(rx.poll_recv(cx)) else {
            self.from_client = None;
            return Poll::Ready(Err("the hub client ended".into()));
        };
        Poll::Ready(match msg {
            ToSession::Accepted(sid) => {
                let accepted = self.connection.accept(MAIN_NAMESPACE, &sid);
                Ok(self.parser.encode(&accepted))
            }
            ToSession::Refused { message, code } => {
                let p =
                    self.connection
                        .refuse(MAIN_NAMESPACE, &message, Some(json!({ "code": code })));
                Ok(self.parser.encode(&p))
            }
            ToSession::Packets(packets) => {
                Ok(packets.iter().flat_map(|p| self.parser.encode(p)).collect())
            }
            ToSession::Encoded(text) => Ok(vec![Data::Text(text)]),
            ToSession::Close => Err("disconnected by the server".into()),
        })
    }
}

/// What a command id stands for, until its reply.
enum Pending {
    Connect,
    /// A client event with an ack id.
    Ack(u64),
    /// A client event without one: the reply is dropped.
    Quiet,
}

/// The client's side: Socket.IO packets in, protocol frames out.
struct SioWire {
    up: mpsc::Receiver<ToClient>,
    down: mpsc::Sender<ToSession>,
    /// The endpoint's parser: publications are encoded once per publication for the default one.
    parser: sio::Parser,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    open: bool,
}

impl SioWire {
    /// The protocol command of a Socket.IO packet, if it has one.
    fn command(&mut self, packet: &Packet) -> Option<Bytes> {
        let id = self.next_id;
        let body = match packet.kind {
            sio::PacketType::Connect => {
                let token = packet
                    .data
                    .as_ref()
                    .and_then(|d| d.get("token"))
                    .and_then(Value::as_str);
                self.pending.insert(id, Pending::Connect);
                match token {
                    Some(t) => json!({ "id": id, "connect": { "token": t } }),
                    None => json!({ "id": id, "connect": {} }),
                }
            }
            sio::PacketType::Event => {
                let args = packet.args();
                let channel = args.first().and_then(Value::as_str);
                let method = match (packet.event_name().as_deref(), channel) {
                    (Some("subscribe"), Some(ch)) => json!({ "subscribe": { "channel": ch } }),
                    (Some("unsubscribe"), Some(ch)) => json!({ "unsubscribe": { "channel": ch } }),
                    (Some("publish"), Some(ch)) => {
                        json!({ "publish": { "channel": ch, "data": args.get(1).cloned().unwrap_or(Value::Null) } })
                    }
                    _ => {
                        // Not a command: answered locally when an ack is wanted.
                        if let Some(ack) = packet.id {
                            let err = json!([{ "code": 404, "message": "unknown event" }]);
                            let _ = self.down.try_send(ToSession::Packets(vec![Packet::ack(
                                MAIN_NAMESPACE,
                                ack,
                                err.as_array().cloned().unwrap_or_default(),
                            )]));
                        }
                        return None;
                    }
                };
                let mut body = method;
                if let Value::Object(map) = &mut body {
                    map.insert("id".into(), json!(id));
                }
                self.pending
                    .insert(id, packet.id.map_or(Pending::Quiet, Pending::Ack));
                body
            }
            sio::PacketType::BinaryEvent => {
                // Binary arguments have no protocol command yet: refused through the ack.
                if let Some(ack) = packet.id {
                    let err =
                        json!({ "code": 415, "message": "binary arguments are not supported" });
                    let _ = self.down.try_send(ToSession::Packets(vec![Packet::ack(
                        MAIN_NAMESPACE,
                        ack,
                        vec![err],
                    )]));
                }
                return None;
            }
            // Acks from the client: the server asks for none yet.
            _ => return None,
        };
        self.next_id += 1;
        Some(Bytes::from(body.to_string()))
    }

    /// The Socket.IO side of one protocol reply or push.
    fn translate(&mut self, frame: &Frame) -> Option<ToSession> {
        if frame.is_shared() && self.parser == sio::Parser::Default {
            // A publication (or another push) sent to many clients: encoded once for all.
            return frame
                .encoded(push_event)
                .as_ref()
                .clone()
                .map(ToSession::Encoded);
        }
        let value: Value = serde_json::from_slice(frame.text()).ok()?;
        if let Some(id) = value.get("id").and_then(Value::as_u64) {
            let error = value.get("error");
            return match self.pending.remove(&id)? {
                Pending::Connect => Some(match (error, value.get("connect")) {
                    (None, Some(c)) => ToSession::Accepted(c.get("client")?.as_str()?.to_owned()),
                    (e, _) => ToSession::Refused {
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
                    },
                }),
                Pending::Ack(ack) => {
                    let args = match error {
                        Some(e) => vec![e.clone()],
                        None => vec![Value::Null],
                    };
                    Some(ToSession::Packets(vec![Packet::ack(
                        MAIN_NAMESPACE,
                        ack,
                        args,
                    )]))
                }
                Pending::Quiet => None,
            };
        }
        publication_event(&value).map(|p| ToSession::Packets(vec![p]))
    }
}

/// The Socket.IO packet text of a push, if it maps to one (publications do).
fn push_event(text: &Bytes) -> Option<String> {
    let value: Value = serde_json::from_slice(text).ok()?;
    publication_event(&value).map(|p| p.encode())
}

/// A publication as an event: `{"event":name,"args":[...]}` as that event (unless the name is one
/// Socket.IO reserves), other data as `publication` with the channel and the data.
fn publication_event(push: &Value) -> Option<Packet> {
    let publication = push.get("pub")?;
    let channel = publication
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let data = publication.get("data").cloned().unwrap_or(Value::Null);
    let name = data.get("event").and_then(Value::as_str);
    let args = data.get("args").and_then(Value::as_array);
    Some(match (name, args) {
        (Some(name), Some(args)) if !sio::RESERVED_EVENTS.contains(&name) => {
            Packet::event(MAIN_NAMESPACE, name, args.iter().cloned(), None)
        }
        _ => Packet::event(MAIN_NAMESPACE, "publication", [json!(channel), data], None),
    })
}

impl Wire for SioWire {
    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Upstream> {
        loop {
            match std::task::ready!(self.up.poll_recv(cx)) {
                Some(ToClient::Packet(p)) => {
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
        if let Some(msg) = self.translate(&frame)
            && self.down.try_send(msg).is_err()
        {
            // The session's task does not keep up: the Engine.IO session closes, and with it
            // this client (its channel closes).
            self.open = false;
        }
        true
    }

    fn is_open(&self) -> bool {
        self.open && !self.down.is_closed()
    }

    fn end(&mut self, end: End) {
        if let End::Tell { .. } = end {
            let _ = self
                .down
                .try_send(ToSession::Packets(vec![Packet::disconnect(MAIN_NAMESPACE)]));
        }
        let _ = self.down.try_send(ToSession::Close);
    }

    async fn finish(self, _code: Option<DisconnectCode>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> (SioWire, mpsc::Receiver<ToSession>) {
        let (_up_tx, up) = mpsc::channel(4);
        let (down, down_rx) = mpsc::channel(4);
        let wire = SioWire {
            up,
            down,
            parser: sio::Parser::Default,
            pending: HashMap::new(),
            next_id: 1,
            open: true,
        };
        (wire, down_rx)
    }

    fn decode(text: &str) -> Packet {
        let mut d = Decoder::default();
        d.decode(Data::Text(text.into())).unwrap().unwrap()
    }

    fn command(w: &mut SioWire, text: &str) -> Option<Value> {
        w.command(&decode(text))
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn reply(w: &mut SioWire, json: &str) -> Option<ToSession> {
        w.translate(&Frame::new(Bytes::from(json.to_owned())))
    }

    #[test]
    fn connect_with_and_without_token() {
        let (mut w, _) = wire();
        assert_eq!(
            command(&mut w, r#"0{"token":"jwt"}"#),
            Some(json!({"id": 1, "connect": {"token": "jwt"}}))
        );
        assert!(matches!(
            reply(&mut w, r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","ping":25,"subs":{}}}"#),
            Some(ToSession::Accepted(sid)) if sid == "c1"
        ));
        assert_eq!(command(&mut w, "0"), Some(json!({"id": 2, "connect": {}})));
        match reply(
            &mut w,
            r#"{"id":2,"error":{"code":109,"message":"token expired","temporary":false}}"#,
        ) {
            Some(ToSession::Refused { message, code }) => {
                assert_eq!((message.as_str(), code), ("token expired", 109));
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
        match reply(&mut w, r#"{"id":1,"subscribe":{}}"#) {
            Some(ToSession::Packets(p)) => assert_eq!(p[0].encode(), "37[null]"),
            other => panic!("{other:?}"),
        }
        // No ack id: the reply is dropped.
        assert!(reply(&mut w, r#"{"id":2,"publish":{}}"#).is_none());
        match reply(
            &mut w,
            r#"{"id":3,"error":{"code":102,"message":"unknown channel","temporary":false}}"#,
        ) {
            Some(ToSession::Packets(p)) => assert_eq!(
                p[0].encode(),
                r#"38[{"code":102,"message":"unknown channel","temporary":false}]"#
            ),
            other => panic!("{other:?}"),
        }
        // An event that is no command: refused through its ack, locally.
        assert_eq!(command(&mut w, r#"29["dance"]"#), None);
        match down.try_recv() {
            Ok(ToSession::Packets(p)) => {
                assert_eq!(
                    p[0].encode(),
                    r#"39[{"code":404,"message":"unknown event"}]"#
                )
            }
            other => panic!("{other:?}"),
        }
        // Binary events are refused through their ack.
        let mut binary = decode(r#"2["publish","news"]"#);
        binary.kind = sio::PacketType::BinaryEvent;
        binary.id = Some(10);
        binary.attachments = vec![Bytes::from_static(&[1])];
        assert_eq!(w.command(&binary), None);
        match down.try_recv() {
            Ok(ToSession::Packets(p)) => assert_eq!(
                p[0].encode(),
                r#"310[{"code":415,"message":"binary arguments are not supported"}]"#
            ),
            other => panic!("{other:?}"),
        }
        // A reply nobody waits for is ignored.
        assert!(reply(&mut w, r#"{"id":99,"subscribe":{}}"#).is_none());
    }

    /// The Engine.IO message text of a translation.
    fn text_of(t: Option<ToSession>) -> String {
        match t {
            Some(ToSession::Encoded(t)) => t,
            Some(ToSession::Packets(p)) => p.iter().map(Packet::encode).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publications_are_events() {
        let (mut w, _) = wire();
        let event =
            r#"{"pub":{"channel":"news","offset":3,"data":{"event":"chat","args":["hi",1]}}}"#;
        // Shared (encoded once for every subscriber) or not, the same event.
        let shared = w.translate(&Frame::shared(Bytes::from_static(event.as_bytes())));
        assert!(matches!(shared, Some(ToSession::Encoded(_))));
        assert_eq!(text_of(shared), r#"2["chat","hi",1]"#);
        assert_eq!(text_of(reply(&mut w, event)), r#"2["chat","hi",1]"#);
        let plain = r#"{"pub":{"channel":"news","offset":4,"data":{"x":1}}}"#;
        assert_eq!(
            text_of(reply(&mut w, plain)),
            r#"2["publication","news",{"x":1}]"#
        );
        // Reserved names are not emitted as such.
        let reserved = r#"{"pub":{"channel":"n","data":{"event":"disconnect","args":[]}}}"#;
        assert!(text_of(reply(&mut w, reserved)).starts_with(r#"2["publication","n","#));
        // Other pushes have no Socket.IO form yet.
        assert!(reply(&mut w, r#"{"join":{"channel":"n","info":{}}}"#).is_none());
    }

    #[test]
    fn msgpack_publications_are_not_text() {
        let (mut w, _) = wire();
        w.parser = sio::Parser::Msgpack;
        let event = r#"{"pub":{"channel":"news","data":{"event":"chat","args":[1]}}}"#;
        match w.translate(&Frame::shared(Bytes::from_static(event.as_bytes()))) {
            Some(ToSession::Packets(p)) => {
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
