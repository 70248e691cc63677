//! Socket.IO v5 packets and the default parser's text format:
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]
//! ```
//!
//! followed, for `BINARY_EVENT` and `BINARY_ACK`, by the attachments as Engine.IO binary messages,
//! referenced in the JSON by placeholders `{"_placeholder":true,"num":N}`.
//!
//! Decoding follows the reference `socket.io-parser` (v4): the same reading of each field, the same
//! payload rules per type, the same reserved event names. Numbers that JavaScript cannot hold
//! exactly (ack ids past 2^53 - 1) are refused instead of rounded.

use std::fmt;

use bytes::Bytes;
use serde_json::Value;
use thiserror::Error;

/// Largest acknowledgement id: ids must survive a JavaScript number.
pub const MAX_ACK_ID: u64 = (1 << 53) - 1;

/// Event names the reference parser refuses from clients: they mean something to the libraries.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The main namespace.
pub const MAIN_NAMESPACE: &str = "/";

/// The Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 0: join a namespace (client, with optional auth) / joined (server, with the socket's sid).
    Connect,
    /// 1: leave a namespace.
    Disconnect,
    /// 2: an event: `["name", args...]`.
    Event,
    /// 3: the answer to an event that carried an ack id.
    Ack,
    /// 4: joining the namespace was refused (server only).
    ConnectError,
    /// 5: an event with binary attachments.
    BinaryEvent,
    /// 6: an ack with binary attachments.
    BinaryAck,
}

impl PacketType {
    /// The type's digit.
    pub fn code(self) -> u8 {
        match self {
            Self::Connect => 0,
            Self::Disconnect => 1,
            Self::Event => 2,
            Self::Ack => 3,
            Self::ConnectError => 4,
            Self::BinaryEvent => 5,
            Self::BinaryAck => 6,
        }
    }

    /// The type of a digit.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Connect,
            1 => Self::Disconnect,
            2 => Self::Event,
            3 => Self::Ack,
            4 => Self::ConnectError,
            5 => Self::BinaryEvent,
            6 => Self::BinaryAck,
            _ => return None,
        })
    }

    /// Whether packets of this type are followed by binary attachments.
    pub fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

/// A Socket.IO packet.
///
/// Binary packets keep their placeholders in `data` and their attachments, in order, in
/// `attachments`: JSON has no bytes, and the server forwards attachments without looking inside.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The type.
    pub kind: PacketType,
    /// The namespace, `/` unless the client joined another.
    pub namespace: String,
    /// The acknowledgement id of an event that wants an answer, or of the ack that answers it.
    pub id: Option<u64>,
    /// The JSON payload.
    pub data: Option<Value>,
    /// The binary attachments of `BINARY_EVENT` / `BINARY_ACK`.
    pub attachments: Vec<Bytes>,
}

/// Why text or bytes are not a Socket.IO packet. The reference server closes the connection on any
/// of them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    /// An empty message.
    #[error("empty Socket.IO packet: it starts with its type, a digit 0 to 6")]
    Empty,
    /// A first character that is no packet type.
    #[error(
        "unknown Socket.IO packet type {0:?}: the types are the digits 0 (CONNECT) to 6 (BINARY_ACK)"
    )]
    UnknownType(char),
    /// A binary packet without `<count>-` after its type.
    #[error(
        "illegal attachment count in a binary Socket.IO packet: expected digits then `-` after the type"
    )]
    AttachmentCount,
    /// More attachments than the decoder allows.
    #[error("binary Socket.IO packet announces {count} attachments, more than the {max} allowed")]
    TooManyAttachments {
        /// The count announced.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// An ack id past [`MAX_ACK_ID`].
    #[error("Socket.IO ack id too large: ids are at most 2^53 - 1")]
    AckIdTooLarge,
    /// A payload that is not JSON.
    #[error("Socket.IO payload is not JSON: {0}")]
    Json(String),
    /// A payload that the packet type does not allow.
    #[error("invalid Socket.IO payload for {kind:?}: {expected}")]
    InvalidPayload {
        /// The packet type.
        kind: PacketType,
        /// What the type needs.
        expected: &'static str,
    },
    /// A placeholder whose `num` is not the index of an attachment.
    #[error(
        "illegal attachments: a placeholder's num is not an index below the attachment count {0}"
    )]
    Placeholder(usize),
    /// A text message while the attachments of a binary packet are awaited.
    #[error("got a text Socket.IO packet while awaiting binary attachments")]
    TextDuringAttachments,
    /// A binary message when no binary packet awaits attachments.
    #[error("got binary data that no binary Socket.IO packet announced")]
    UnexpectedBinary,
    /// A message that is no `socket.io-msgpack-parser` packet.
    #[error("invalid MessagePack Socket.IO packet: {0}")]
    Msgpack(String),
    /// A `CONNECT_ERROR` from a client: only servers refuse connections.
    #[error("CONNECT_ERROR comes from servers only")]
    ConnectErrorFromClient,
}

impl Packet {
    fn new(kind: PacketType, namespace: &str, id: Option<u64>, data: Option<Value>) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            id,
            data,
            attachments: Vec::new(),
        }
    }

    /// The server's answer to a successful `CONNECT`: `0[/nsp,]{"sid":"..."}`.
    pub fn connect_ok(namespace: &str, sid: &str) -> Self {
        Self::new(
            PacketType::Connect,
            namespace,
            None,
            Some(serde_json::json!({ "sid": sid })),
        )
    }

    /// The server's refusal of a `CONNECT`: `4[/nsp,]{"message":"..."}`, plus `data` when the
    /// refusal carries details for the client (`err.data` in the JavaScript client).
    pub fn connect_error(namespace: &str, message: &str, data: Option<Value>) -> Self {
        let mut body = serde_json::json!({ "message": message });
        if let (Some(d), Value::Object(map)) = (data, &mut body) {
            map.insert("data".to_owned(), d);
        }
        Self::new(PacketType::ConnectError, namespace, None, Some(body))
    }

    /// A `DISCONNECT` for a namespace.
    pub fn disconnect(namespace: &str) -> Self {
        Self::new(PacketType::Disconnect, namespace, None, None)
    }

    /// An `EVENT` `[name, args...]`, with an ack id when an answer is wanted.
    pub fn event(
        namespace: &str,
        name: &str,
        args: impl IntoIterator<Item = Value>,
        id: Option<u64>,
    ) -> Self {
        let data: Vec<Value> = std::iter::once(Value::String(name.to_owned()))
            .chain(args)
            .collect();
        Self::new(PacketType::Event, namespace, id, Some(Value::Array(data)))
    }

    /// An `ACK` answering the event with ack id `id`.
    pub fn ack(namespace: &str, id: u64, args: Vec<Value>) -> Self {
        Self::new(
            PacketType::Ack,
            namespace,
            Some(id),
            Some(Value::Array(args)),
        )
    }

    /// A binary event or ack: `data` holds placeholders for `attachments` (see [`placeholder`]).
    pub fn binary(
        kind: PacketType,
        namespace: &str,
        id: Option<u64>,
        data: Value,
        attachments: Vec<Bytes>,
    ) -> Self {
        let kind = match kind {
            PacketType::Ack | PacketType::BinaryAck => PacketType::BinaryAck,
            _ => PacketType::BinaryEvent,
        };
        Self {
            kind,
            namespace: namespace.to_owned(),
            id,
            data: Some(data),
            attachments,
        }
    }

    /// The event name of an `EVENT` / `BINARY_EVENT` (a string, or a number as the reference
    /// allows).
    pub fn event_name(&self) -> Option<String> {
        if !matches!(self.kind, PacketType::Event | PacketType::BinaryEvent) {
            return None;
        }
        match self.data.as_ref()?.as_array()?.first()? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The arguments: of an event, after its name; of an ack, all of them.
    pub fn args(&self) -> &[Value] {
        let all = self
            .data
            .as_ref()
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        match self.kind {
            PacketType::Event | PacketType::BinaryEvent => all.get(1..).unwrap_or(&[]),
            _ => all,
        }
    }

    /// The text of the packet; the attachments follow it as binary messages.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        out.push(char::from(b'0' + self.kind.code()));
        if self.kind.is_binary() {
            out.push_str(&self.attachments.len().to_string());
            out.push('-');
        }
        if self.namespace != MAIN_NAMESPACE && !self.namespace.is_empty() {
            out.push_str(&self.namespace);
            out.push(',');
        }
        if let Some(id) = self.id {
            out.push_str(&id.to_string());
        }
        if let Some(data) = &self.data {
            out.push_str(&data.to_string());
        }
        out
    }
}

/// A placeholder for attachment `num`, to put in the data of a binary packet.
pub fn placeholder(num: usize) -> Value {
    serde_json::json!({ "_placeholder": true, "num": num })
}

/// Reads the text of a packet. A binary packet comes back with no attachments yet and the count it
/// announced; [`crate::sio::Decoder`] collects them.
pub(crate) fn decode_text(
    text: &str,
    max_attachments: usize,
) -> Result<(Packet, usize), PacketError> {
    let mut rest = text;
    let first = rest.chars().next().ok_or(PacketError::Empty)?;
    let kind = first
        .to_digit(10)
        .and_then(|d| u8::try_from(d).ok())
        .and_then(PacketType::from_code)
        .ok_or(PacketError::UnknownType(first))?;
    rest = &rest[1..];

    let mut count = 0;
    if kind.is_binary() {
        let (digits, after) = rest.split_once('-').ok_or(PacketError::AttachmentCount)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PacketError::AttachmentCount);
        }
        let n: u64 = digits.parse().unwrap_or(u64::MAX);
        count = usize::try_from(n)
            .ok()
            .filter(|&n| n <= max_attachments)
            .ok_or(PacketError::TooManyAttachments {
                count: n,
                max: max_attachments,
            })?;
        rest = after;
    }

    let namespace = if rest.starts_with('/') {
        let (nsp, after) = rest.split_once(',').unwrap_or((rest, ""));
        rest = after;
        nsp
    } else {
        MAIN_NAMESPACE
    };

    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        let (id, after) = rest.split_at(digits);
        rest = after;
        let id: u64 = id.parse().map_err(|_| PacketError::AckIdTooLarge)?;
        if id > MAX_ACK_ID {
            return Err(PacketError::AckIdTooLarge);
        }
        Some(id)
    } else {
        None
    };

    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<Value>(rest).map_err(|e| PacketError::Json(e.to_string()))?)
    };
    check_payload(kind, data.as_ref())?;
    Ok((
        Packet {
            kind,
            namespace: namespace.to_owned(),
            id,
            data,
            attachments: Vec::new(),
        },
        count,
    ))
}

/// The reference parser's `isPayloadValid`: a payload is optional only for `CONNECT` and absent
/// for `DISCONNECT`.
pub(crate) fn check_payload(kind: PacketType, data: Option<&Value>) -> Result<(), PacketError> {
    let ok = match kind {
        PacketType::Connect => matches!(data, None | Some(Value::Object(_))),
        PacketType::Disconnect => data.is_none(),
        PacketType::ConnectError => matches!(data, Some(Value::Object(_) | Value::String(_))),
        PacketType::Event | PacketType::BinaryEvent => match data {
            Some(Value::Array(items)) => match items.first() {
                Some(Value::Number(_)) => true,
                Some(Value::String(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
                _ => false,
            },
            _ => false,
        },
        PacketType::Ack | PacketType::BinaryAck => matches!(data, Some(Value::Array(_))),
    };
    if ok {
        return Ok(());
    }
    let expected = match kind {
        PacketType::Connect => "an object or nothing",
        PacketType::Disconnect => "nothing",
        PacketType::ConnectError => "an object or a string",
        PacketType::Event | PacketType::BinaryEvent => {
            "a non-empty array starting with an event name that is not reserved"
        }
        PacketType::Ack | PacketType::BinaryAck => "an array",
    };
    Err(PacketError::InvalidPayload { kind, expected })
}

/// Checks that every placeholder in `data` (an object whose `_placeholder` is `true`) points at
/// one of `count` attachments, as the reference's `reconstructPacket` does.
pub(crate) fn check_placeholders(data: Option<&Value>, count: usize) -> Result<(), PacketError> {
    let mut stack: Vec<&Value> = data.into_iter().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => {
                let ok = map
                    .get("num")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| n < count as u64);
                if !ok {
                    return Err(PacketError::Placeholder(count));
                }
            }
            Value::Object(map) => stack.extend(map.values()),
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decode(text: &str) -> Result<Packet, PacketError> {
        decode_text(text, 10).map(|(p, _)| p)
    }

    fn packet(kind: PacketType, nsp: &str, id: Option<u64>, data: Option<Value>) -> Packet {
        Packet {
            kind,
            namespace: nsp.into(),
            id,
            data,
            attachments: vec![],
        }
    }

    #[test]
    fn spec_examples_decode() {
        use PacketType::*;
        // PROTOCOL.md, "Packet encoding / Examples".
        assert_eq!(decode("0"), Ok(packet(Connect, "/", None, None)));
        assert_eq!(
            decode(r#"0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#),
            Ok(packet(
                Connect,
                "/admin",
                None,
                Some(json!({"sid": "oSO0OpakMV_3jnilAAAA"}))
            ))
        );
        assert_eq!(
            decode(r#"4{"message":"Not authorized"}"#),
            Ok(packet(
                ConnectError,
                "/",
                None,
                Some(json!({"message": "Not authorized"}))
            ))
        );
        assert_eq!(
            decode(r#"2["foo"]"#),
            Ok(packet(Event, "/", None, Some(json!(["foo"]))))
        );
        assert_eq!(
            decode(r#"2/admin,["bar"]"#),
            Ok(packet(Event, "/admin", None, Some(json!(["bar"]))))
        );
        assert_eq!(
            decode_text(r#"51-["baz",{"_placeholder":true,"num":0}]"#, 10),
            Ok((
                packet(
                    BinaryEvent,
                    "/",
                    None,
                    Some(json!(["baz", {"_placeholder": true, "num": 0}]))
                ),
                1
            ))
        );
        assert_eq!(
            decode_text(
                r#"52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
                10
            )
            .map(|(p, n)| (p.namespace, n)),
            Ok(("/admin".into(), 2))
        );
        assert_eq!(
            decode(r#"212["foo"]"#),
            Ok(packet(Event, "/", Some(12), Some(json!(["foo"]))))
        );
        assert_eq!(
            decode(r#"3/admin,13["bar"]"#),
            Ok(packet(Ack, "/admin", Some(13), Some(json!(["bar"]))))
        );
        assert_eq!(
            decode_text(r#"61-15["bar",{"_placeholder":true,"num":0}]"#, 10)
                .map(|(p, n)| (p.kind, p.id, n)),
            Ok((BinaryAck, Some(15), 1))
        );
        assert_eq!(decode("1"), Ok(packet(Disconnect, "/", None, None)));
        assert_eq!(
            decode("1/admin,"),
            Ok(packet(Disconnect, "/admin", None, None))
        );
    }

    #[test]
    fn spec_examples_encode() {
        assert_eq!(
            Packet::connect_ok("/admin", "oSO0OpakMV_3jnilAAAA").encode(),
            r#"0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#
        );
        assert_eq!(
            Packet::connect_error("/", "Not authorized", None).encode(),
            r#"4{"message":"Not authorized"}"#
        );
        assert_eq!(Packet::event("/", "foo", [], None).encode(), r#"2["foo"]"#);
        assert_eq!(
            Packet::event("/admin", "bar", [], None).encode(),
            r#"2/admin,["bar"]"#
        );
        assert_eq!(
            Packet::event("/", "foo", [], Some(12)).encode(),
            r#"212["foo"]"#
        );
        assert_eq!(
            Packet::ack("/admin", 13, vec![json!("bar")]).encode(),
            r#"3/admin,13["bar"]"#
        );
        assert_eq!(Packet::disconnect("/").encode(), "1");
        assert_eq!(Packet::disconnect("/admin").encode(), "1/admin,");
        let one = Bytes::from_static(&[1, 2, 3, 4]);
        assert_eq!(
            Packet::binary(
                PacketType::Event,
                "/",
                None,
                json!(["baz", placeholder(0)]),
                vec![one.clone()]
            )
            .encode(),
            r#"51-["baz",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(
            Packet::binary(
                PacketType::Ack,
                "/",
                Some(15),
                json!(["bar", placeholder(0)]),
                vec![one]
            )
            .encode(),
            r#"61-15["bar",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(
            Packet::connect_error("/", "no", Some(json!({"code": 3}))).encode(),
            r#"4{"data":{"code":3},"message":"no"}"#
        );
    }

    #[test]
    fn suite_messages() {
        // Namespace without the trailing comma (`40/random`, `41/custom`).
        assert_eq!(
            decode("0/random").map(|p| p.namespace),
            Ok("/random".into())
        );
        assert_eq!(
            decode("1/custom").map(|p| p.namespace),
            Ok("/custom".into())
        );
        assert_eq!(
            decode(r#"0{"token":"123"}"#).map(|p| p.data),
            Ok(Some(json!({"token": "123"})))
        );
        let p = decode(r#"2456["message-with-ack",1,"2",{"3":[false]}]"#).unwrap();
        assert_eq!(p.id, Some(456));
        assert_eq!(p.event_name().as_deref(), Some("message-with-ack"));
        assert_eq!(p.args(), &[json!(1), json!("2"), json!({"3": [false]})]);
        assert_eq!(
            Packet::ack("/", 456, p.args().to_vec()).encode(),
            r#"3456[1,"2",{"3":[false]}]"#
        );
        // Invalid formats that close the connection.
        assert_eq!(decode("abc"), Err(PacketError::UnknownType('a')));
        assert!(matches!(
            decode("2{}"),
            Err(PacketError::InvalidPayload { .. })
        ));
        assert!(matches!(
            decode(r#"2abc["message-with-ack",1]"#),
            Err(PacketError::Json(_))
        ));
    }

    #[test]
    fn payload_rules() {
        assert!(decode("0[]").is_err());
        assert!(decode(r#"0"x""#).is_err());
        assert!(decode("1{}").is_err());
        assert!(decode("2").is_err());
        assert!(decode("2[]").is_err());
        assert!(decode("2[true]").is_err());
        assert_eq!(decode("2[42]").unwrap().event_name().as_deref(), Some("42"));
        for reserved in RESERVED_EVENTS {
            assert!(
                decode(&format!(r#"2["{reserved}"]"#)).is_err(),
                "{reserved}"
            );
        }
        assert!(decode("3").is_err());
        assert_eq!(decode("3[]").map(|p| p.data), Ok(Some(json!([]))));
        assert!(decode(r#"4"text""#).is_ok());
        assert!(decode("4").is_err());
        assert!(decode("4[]").is_err());
        assert_eq!(decode(""), Err(PacketError::Empty));
        assert_eq!(decode("7"), Err(PacketError::UnknownType('7')));
        assert_eq!(decode("٣"), Err(PacketError::UnknownType('٣')));
    }

    #[test]
    fn attachment_counts() {
        assert_eq!(decode("5[\"a\"]"), Err(PacketError::AttachmentCount));
        assert_eq!(decode("5-[\"a\"]"), Err(PacketError::AttachmentCount));
        assert_eq!(decode("5x-[\"a\"]"), Err(PacketError::AttachmentCount));
        assert_eq!(
            decode("511-[\"a\"]"),
            Err(PacketError::TooManyAttachments { count: 11, max: 10 })
        );
        assert_eq!(
            decode("599999999999999999999999-[\"a\"]"),
            Err(PacketError::TooManyAttachments {
                count: u64::MAX,
                max: 10
            })
        );
        assert_eq!(decode_text("50-[\"a\"]", 10).map(|(_, n)| n), Ok(0));
    }

    #[test]
    fn ack_ids() {
        assert_eq!(
            decode("29007199254740991[\"a\"]").unwrap().id,
            Some(MAX_ACK_ID)
        );
        assert_eq!(
            decode("29007199254740992[\"a\"]"),
            Err(PacketError::AckIdTooLarge)
        );
        assert_eq!(
            decode("2999999999999999999999999[\"a\"]"),
            Err(PacketError::AckIdTooLarge)
        );
    }

    #[test]
    fn placeholders() {
        let ok = json!(["a", {"_placeholder": true, "num": 1}, {"x": [{"_placeholder": true, "num": 0}]}]);
        assert_eq!(check_placeholders(Some(&ok), 2), Ok(()));
        assert_eq!(
            check_placeholders(Some(&ok), 1),
            Err(PacketError::Placeholder(1))
        );
        for bad in [
            json!({"_placeholder": true}),
            json!({"_placeholder": true, "num": -1}),
            json!({"_placeholder": true, "num": "0"}),
            json!({"_placeholder": true, "num": 0.5}),
        ] {
            assert_eq!(
                check_placeholders(Some(&json!(["a", bad])), 3),
                Err(PacketError::Placeholder(3))
            );
        }
        // `_placeholder` other than `true` is plain data.
        assert_eq!(
            check_placeholders(Some(&json!(["a", {"_placeholder": 1}])), 0),
            Ok(())
        );
    }

    #[test]
    fn round_trips() {
        let packets = [
            Packet::connect_ok("/", "abc"),
            Packet::connect_ok("/chat", "abc"),
            Packet::disconnect("/chat"),
            Packet::event(
                "/",
                "chat",
                [json!({"text": "hi \u{1e} there"}), json!([1, 2.5, null])],
                Some(7),
            ),
            Packet::ack("/x", 0, vec![]),
            Packet::connect_error("/x", "Invalid namespace", None),
        ];
        for p in packets {
            assert_eq!(decode(&p.encode()), Ok(p.clone()), "{p}");
            // JSON escapes the Engine.IO record separator.
            assert!(!p.encode().contains('\u{1e}'));
        }
    }
}
