//! The applications the official conformance suites expect on top of Engine.IO (their
//! `PROTOCOL.md`, "Test suite"): an Engine.IO echo, and the reference Socket.IO application
//! (namespaces `/` and `/custom`, an `auth` event on connect, `message` echoed as `message-back`,
//! `message-with-ack` acknowledged with its arguments).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_socketio::eio::{Data, Sid};
use switchboard_socketio::sio::{self, Connection, Decoder, Incoming, Packet, PacketType};

use super::engine::{App, AppFactory};

/// Every message back to its sender, as the `engine.io-protocol` suite's server does.
struct EngineEcho;

impl App for EngineEcho {
    fn on_message(&mut self, data: Data, _now: Instant) -> Result<Vec<Data>, String> {
        Ok(vec![data])
    }

    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn on_timer(&mut self, _now: Instant) -> Result<Vec<Data>, String> {
        Ok(Vec::new())
    }
}

/// The `engine.io-protocol` suite's application.
pub fn engine_echo() -> AppFactory {
    Arc::new(|_now| Box::new(EngineEcho))
}

/// The `socket.io-protocol` suite's application.
pub fn socketio_suite(connect_timeout: Duration) -> AppFactory {
    Arc::new(move |now| {
        Box::new(SuiteApp {
            connection: Connection::new(Decoder::default(), connect_timeout, now),
            later: Vec::new(),
        })
    })
}

struct SuiteApp {
    connection: Connection,
    /// Packets sent a moment after the one before them (see [`AUTH_DELAY`]).
    later: Vec<(Instant, Packet)>,
}

/// The suite's client reads the `auth` event right after the CONNECT answer with a listener it
/// attaches only once it has handled that answer (`ws` 8.5 emits the messages of one TCP read
/// synchronously), so the two must not arrive in one read: the reference server writes them in
/// separate event loop turns; this fixture sends `auth` this much later.
const AUTH_DELAY: Duration = Duration::from_millis(20);

impl App for SuiteApp {
    fn on_message(&mut self, data: Data, now: Instant) -> Result<Vec<Data>, String> {
        let incoming = match self.connection.receive(data) {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let packets = match incoming {
            Incoming::Connect { namespace, auth } => {
                if namespace == sio::MAIN_NAMESPACE || namespace == "/custom" {
                    let ok = self.connection.accept(&namespace, socket_id()?.as_str());
                    let auth = auth.unwrap_or_else(|| Value::Object(Default::default()));
                    let event = Packet::event(&namespace, "auth", [auth], None);
                    self.later.push((now + AUTH_DELAY, event));
                    vec![ok]
                } else {
                    vec![
                        self.connection
                            .refuse(&namespace, "Invalid namespace", None),
                    ]
                }
            }
            Incoming::Packet(p) => answer(&p).into_iter().collect(),
            Incoming::Disconnect { .. } => Vec::new(),
        };
        Ok(packets.iter().flat_map(sio::encode).collect())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let later = self.later.iter().map(|(at, _)| *at).min();
        [self.connection.next_deadline(), later]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timer(&mut self, now: Instant) -> Result<Vec<Data>, String> {
        self.connection.on_timer(now).map_err(|e| e.to_string())?;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.later = rest;
        Ok(due.iter().flat_map(|(_, p)| sio::encode(p)).collect())
    }
}

/// `message` → `message-back` with the same arguments; `message-with-ack` → its ack.
fn answer(p: &Packet) -> Option<Packet> {
    let binary = !p.attachments.is_empty() || p.kind.is_binary();
    match (p.event_name().as_deref(), p.id) {
        (Some("message"), _) => {
            let mut data = vec![Value::String("message-back".into())];
            data.extend(p.args().iter().cloned());
            Some(if binary {
                Packet::binary(
                    PacketType::Event,
                    &p.namespace,
                    None,
                    Value::Array(data),
                    p.attachments.clone(),
                )
            } else {
                Packet::event(&p.namespace, "message-back", p.args().to_vec(), None)
            })
        }
        (Some("message-with-ack"), Some(id)) => Some(if binary {
            Packet::binary(
                PacketType::Ack,
                &p.namespace,
                Some(id),
                Value::Array(p.args().to_vec()),
                p.attachments.clone(),
            )
        } else {
            Packet::ack(&p.namespace, id, p.args().to_vec())
        }),
        _ => None,
    }
}

fn socket_id() -> Result<Sid, String> {
    let mut bytes = [0u8; 15];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a socket id: {e}"))?;
    Ok(Sid::from_random(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Data {
        Data::Text(s.into())
    }

    fn texts(out: Vec<Data>) -> Vec<String> {
        out.into_iter()
            .map(|d| match d {
                Data::Text(t) => t,
                Data::Shared(s) => s.text().to_owned(),
                Data::Binary(b) => format!("<{} bytes>", b.len()),
            })
            .collect()
    }

    #[test]
    fn suite_application() {
        let now = Instant::now();
        let mut app = (socketio_suite(Duration::from_secs(1)))(now);
        let out = texts(
            app.on_message(text(r#"0/custom,{"token":"abc"}"#), now)
                .unwrap(),
        );
        assert!(out[0].starts_with(r#"0/custom,{"sid":""#), "{out:?}");
        assert_eq!(out.len(), 1);
        let due = app.next_deadline().unwrap();
        assert_eq!(due, now + AUTH_DELAY);
        assert_eq!(
            texts(app.on_timer(due).unwrap()),
            vec![r#"2/custom,["auth",{"token":"abc"}]"#]
        );
        app.on_message(text("0"), now).unwrap();
        assert_eq!(texts(app.on_timer(due).unwrap()), vec![r#"2["auth",{}]"#]);
        assert_eq!(
            texts(
                app.on_message(text(r#"2456["message-with-ack",1,"2",{"3":[false]}]"#), now)
                    .unwrap()
            ),
            vec![r#"3456[1,"2",{"3":[false]}]"#]
        );
        assert_eq!(
            texts(app.on_message(text("0/random"), now).unwrap()),
            vec![r#"4/random,{"message":"Invalid namespace"}"#]
        );
        assert!(app.on_message(text("2{}"), now).is_err());
    }

    #[test]
    fn suite_binary_echo() {
        let now = Instant::now();
        let mut app = (socketio_suite(Duration::from_secs(1)))(now);
        app.on_message(text("0"), now).unwrap();
        app.on_timer(now + AUTH_DELAY).unwrap();
        let header =
            r#"52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        assert!(app.on_message(text(header), now).unwrap().is_empty());
        assert!(
            app.on_message(Data::Binary(vec![1, 2, 3].into()), now)
                .unwrap()
                .is_empty()
        );
        let out = texts(
            app.on_message(Data::Binary(vec![4, 5, 6].into()), now)
                .unwrap(),
        );
        assert_eq!(
            out,
            vec![
                r#"52-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#.to_owned(),
                "<3 bytes>".to_owned(),
                "<3 bytes>".to_owned()
            ]
        );
    }

    #[test]
    fn connect_timeout_closes() {
        let now = Instant::now();
        let mut app = (socketio_suite(Duration::from_secs(1)))(now);
        let due = app.next_deadline().unwrap();
        assert!(app.on_timer(due).is_err());
    }
}
