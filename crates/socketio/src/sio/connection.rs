//! The Socket.IO side of one Engine.IO session: which namespaces it has joined, the connect
//! timeout, and the reference server's rule that a packet out of place closes the connection
//! (`client.ts`: the first packet must be a `CONNECT`; events only for joined namespaces; no second
//! `CONNECT` for a joined one).
//!
//! Whether a `CONNECT` is accepted is the server's decision (tokens, the connect proxy, known
//! namespaces), possibly asynchronous: [`Connection::receive`] hands it over as
//! [`Incoming::Connect`], and [`Connection::accept`] / [`Connection::refuse`] give the answer.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;

use crate::eio::Data;

use super::decoder::Decoder;
use super::packet::{MAIN_NAMESPACE, Packet, PacketError, PacketType};

/// A namespace's name as kept per connection: the main namespace, which nearly every client joins,
/// takes no allocation.
fn namespace_name(name: &str) -> Cow<'static, str> {
    if name == MAIN_NAMESPACE {
        Cow::Borrowed(MAIN_NAMESPACE)
    } else {
        Cow::Owned(name.to_owned())
    }
}

/// What a client sent, for the server to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The client asks to join `namespace`; `auth` is the payload of its `CONNECT` (the
    /// JavaScript client's `auth` option). Answer with [`Connection::accept`] or
    /// [`Connection::refuse`].
    Connect {
        /// The namespace.
        namespace: String,
        /// The auth payload, an object if any.
        auth: Option<Value>,
    },
    /// An `EVENT` / `BINARY_EVENT` or `ACK` / `BINARY_ACK` in a joined namespace.
    Packet(Packet),
    /// The client left `namespace`.
    Disconnect {
        /// The namespace.
        namespace: String,
    },
}

/// Why the connection must close (the Engine.IO session with it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectionError {
    /// The client sent something that is no Socket.IO packet.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// A packet that does not fit the connection's state.
    #[error("Socket.IO packet out of place: {0}")]
    InvalidState(&'static str),
    /// No namespace joined within the connect timeout.
    #[error("no Socket.IO namespace joined within the connect timeout ({0:?})")]
    ConnectTimeout(Duration),
}

/// The Socket.IO state of one Engine.IO session.
#[derive(Debug)]
pub struct Connection {
    decoder: Decoder,
    /// Namespaces joined or joining, usually one: a list, not a map (a map's first insert takes
    /// a table of several slots, for every connection).
    namespaces: Vec<Joined>,
    connect_timeout: Duration,
    connect_deadline: Option<Instant>,
}

/// A namespace of the connection. Its socket id is the server's to keep (switchboard's is its hub
/// client's id): kept here too, it would be one more allocation per connection.
#[derive(Debug)]
struct Joined {
    name: Cow<'static, str>,
    /// Accepted; `false` while its `CONNECT` awaits the server's answer.
    joined: bool,
}

impl Connection {
    /// The state of a new Engine.IO session at `now`: the client has `connect_timeout` to join a
    /// namespace.
    pub fn new(decoder: Decoder, connect_timeout: Duration, now: Instant) -> Self {
        Self {
            decoder,
            namespaces: Vec::new(),
            connect_timeout,
            connect_deadline: Some(now + connect_timeout),
        }
    }

    fn position(&self, namespace: &str) -> Option<usize> {
        self.namespaces.iter().position(|j| j.name == namespace)
    }

    fn joined(&self, namespace: &str) -> Option<&Joined> {
        self.namespaces
            .iter()
            .find(|j| j.name == namespace && j.joined)
    }

    /// One Engine.IO message from the client: what to act on, if a packet is complete.
    pub fn receive(&mut self, message: Data) -> Result<Option<Incoming>, ConnectionError> {
        let Some(packet) = self.decoder.decode(message)? else {
            return Ok(None);
        };
        let namespace = packet.namespace.as_str();
        let known = self.joined(namespace).is_some();
        match packet.kind {
            PacketType::Connect if self.position(namespace).is_none() => {
                if self.namespaces.is_empty() {
                    // Room for the one namespace most connections join, not the default four.
                    self.namespaces.reserve_exact(1);
                }
                self.namespaces.push(Joined {
                    name: namespace_name(namespace),
                    joined: false,
                });
                Ok(Some(Incoming::Connect {
                    namespace: packet.namespace,
                    auth: packet.data,
                }))
            }
            PacketType::Connect => Err(ConnectionError::InvalidState(
                "CONNECT for a namespace already joined or joining",
            )),
            PacketType::ConnectError => {
                Err(ConnectionError::Packet(PacketError::ConnectErrorFromClient))
            }
            _ if !known => Err(ConnectionError::InvalidState(
                "packet for a namespace not joined",
            )),
            PacketType::Disconnect => {
                self.namespaces.retain(|j| j.name != namespace);
                Ok(Some(Incoming::Disconnect {
                    namespace: packet.namespace,
                }))
            }
            _ => Ok(Some(Incoming::Packet(packet))),
        }
    }

    /// Accepts the client's `CONNECT` to `namespace` under socket id `sid`: the packet to send.
    pub fn accept(&mut self, namespace: &str, sid: &str) -> Packet {
        match self.position(namespace) {
            Some(i) => self.namespaces[i].joined = true,
            None => self.namespaces.push(Joined {
                name: namespace_name(namespace),
                joined: true,
            }),
        }
        self.connect_deadline = None;
        Packet::connect_ok(namespace, sid)
    }

    /// Refuses the client's `CONNECT` to `namespace`: the `CONNECT_ERROR` to send. The connection
    /// stays open (the client may try another namespace, or reconnect with other auth).
    pub fn refuse(&mut self, namespace: &str, message: &str, data: Option<Value>) -> Packet {
        self.namespaces.retain(|j| j.name != namespace || j.joined);
        Packet::connect_error(namespace, message, data)
    }

    /// The server makes the client leave `namespace`: the `DISCONNECT` to send, if it had joined.
    pub fn disconnect(&mut self, namespace: &str) -> Option<Packet> {
        self.joined(namespace)?;
        self.namespaces.retain(|j| j.name != namespace);
        Some(Packet::disconnect(namespace))
    }

    /// Whether the client has joined `namespace` (its `CONNECT` was accepted).
    pub fn is_joined(&self, namespace: &str) -> bool {
        self.joined(namespace).is_some()
    }

    /// The joined namespaces.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.namespaces
            .iter()
            .filter(|j| j.joined)
            .map(|j| j.name.as_ref())
    }

    /// When [`Connection::on_timer`] must run (until a namespace is joined).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.connect_deadline
    }

    /// The connect timeout: an error (close the connection) if no namespace is joined by then.
    pub fn on_timer(&mut self, now: Instant) -> Result<(), ConnectionError> {
        match self.connect_deadline {
            Some(deadline) if now >= deadline => {
                self.connect_deadline = None;
                if !self.namespaces.iter().any(|j| j.joined) {
                    return Err(ConnectionError::ConnectTimeout(self.connect_timeout));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sio::encode;

    const TIMEOUT: Duration = Duration::from_millis(1000);

    fn text(s: &str) -> Data {
        Data::Text(s.into())
    }

    fn conn(now: Instant) -> Connection {
        Connection::new(Decoder::default(), TIMEOUT, now)
    }

    fn connect(c: &mut Connection, nsp: &str) {
        let msg = if nsp == "/" {
            "0".to_owned()
        } else {
            format!("0{nsp},")
        };
        assert!(matches!(
            c.receive(text(&msg)),
            Ok(Some(Incoming::Connect { .. }))
        ));
        c.accept(nsp, "sock");
    }

    #[test]
    fn connect_to_main_and_custom_namespaces() {
        // socket.io-protocol suite, "connect".
        let t0 = Instant::now();
        let mut c = conn(t0);
        assert_eq!(
            c.receive(text(r#"0{"token":"123"}"#)),
            Ok(Some(Incoming::Connect {
                namespace: "/".into(),
                auth: Some(json!({"token": "123"}))
            }))
        );
        assert_eq!(c.accept("/", "abc").encode(), r#"0{"sid":"abc"}"#);
        assert_eq!(
            c.receive(text("0/custom,")),
            Ok(Some(Incoming::Connect {
                namespace: "/custom".into(),
                auth: None
            }))
        );
        assert_eq!(
            c.accept("/custom", "def").encode(),
            r#"0/custom,{"sid":"def"}"#
        );
        assert!(c.is_joined("/custom"));
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.on_timer(t0 + TIMEOUT), Ok(()));
    }

    #[test]
    fn unknown_namespace_is_refused_and_the_connection_stays() {
        let t0 = Instant::now();
        let mut c = conn(t0);
        assert!(matches!(
            c.receive(text("0/random")),
            Ok(Some(Incoming::Connect { .. }))
        ));
        assert_eq!(
            c.refuse("/random", "Invalid namespace", None).encode(),
            r#"4/random,{"message":"Invalid namespace"}"#
        );
        // It may ask again.
        assert!(matches!(
            c.receive(text("0/random")),
            Ok(Some(Incoming::Connect { .. }))
        ));
    }

    #[test]
    fn out_of_place_packets_close() {
        let t0 = Instant::now();
        // "should disallow connection with an invalid handshake" (`4abc` is Engine.IO message `abc`)
        assert!(matches!(
            conn(t0).receive(text("abc")),
            Err(ConnectionError::Packet(_))
        ));
        // An event before CONNECT.
        assert!(matches!(
            conn(t0).receive(text(r#"2["a"]"#)),
            Err(ConnectionError::InvalidState(_))
        ));
        // A second CONNECT to a joined namespace, or while the first is pending.
        let mut c = conn(t0);
        connect(&mut c, "/");
        assert!(matches!(
            c.receive(text("0")),
            Err(ConnectionError::InvalidState(_))
        ));
        let mut c = conn(t0);
        c.receive(text("0")).unwrap();
        assert!(matches!(
            c.receive(text("0")),
            Err(ConnectionError::InvalidState(_))
        ));
        // CONNECT_ERROR from a client.
        assert_eq!(
            conn(t0).receive(text(r#"4{"message":"x"}"#)),
            Err(ConnectionError::Packet(PacketError::ConnectErrorFromClient))
        );
    }

    #[test]
    fn events_and_acks() {
        let t0 = Instant::now();
        let mut c = conn(t0);
        connect(&mut c, "/");
        let Ok(Some(Incoming::Packet(p))) = c.receive(text(r#"2["message",1,"2",{"3":[true]}]"#))
        else {
            panic!("event")
        };
        assert_eq!(p.event_name().as_deref(), Some("message"));
        let back = Packet::event("/", "message-back", p.args().to_vec(), None);
        assert_eq!(
            encode(&back),
            vec![text(r#"2["message-back",1,"2",{"3":[true]}]"#)]
        );
        assert!(matches!(
            c.receive(text("3/other,1[]")),
            Err(ConnectionError::InvalidState(_))
        ));
        assert!(matches!(
            c.receive(text("31[]")),
            Ok(Some(Incoming::Packet(_)))
        ));
    }

    #[test]
    fn disconnect_from_a_namespace() {
        // "should connect then disconnect from a custom namespace"
        let t0 = Instant::now();
        let mut c = conn(t0);
        connect(&mut c, "/");
        connect(&mut c, "/custom");
        assert_eq!(
            c.receive(text("1/custom")),
            Ok(Some(Incoming::Disconnect {
                namespace: "/custom".into()
            }))
        );
        assert!(matches!(
            c.receive(text(r#"2["message","to main"]"#)),
            Ok(Some(Incoming::Packet(_)))
        ));
        assert!(matches!(
            c.receive(text(r#"2/custom,["x"]"#)),
            Err(ConnectionError::InvalidState(_))
        ));
        assert_eq!(c.disconnect("/").map(|p| p.encode()), Some("1".into()));
        assert_eq!(c.disconnect("/"), None);
        assert_eq!(c.namespaces().count(), 0);
    }

    #[test]
    fn connect_timeout() {
        // "should close the connection if no handshake is received"
        let t0 = Instant::now();
        let mut c = conn(t0);
        assert_eq!(c.next_deadline(), Some(t0 + TIMEOUT));
        assert_eq!(c.on_timer(t0 + TIMEOUT / 2), Ok(()));
        assert_eq!(
            c.on_timer(t0 + TIMEOUT),
            Err(ConnectionError::ConnectTimeout(TIMEOUT))
        );
        // A refused CONNECT does not stop the clock.
        let mut c = conn(t0);
        c.receive(text("0/nope,")).unwrap();
        c.refuse("/nope", "Invalid namespace", None);
        assert!(c.on_timer(t0 + TIMEOUT).is_err());
    }
}
