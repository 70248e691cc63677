//! Socket.IO packets out of Engine.IO messages: a binary packet's text announces its attachment
//! count, and that many binary messages follow it before the packet is complete.

use crate::eio::Data;

use super::packet::{Packet, PacketError, check_placeholders, decode_text};

/// The default limit on attachments per binary packet.
pub const DEFAULT_MAX_ATTACHMENTS: usize = 64;

/// The Socket.IO parsers: how packets map onto Engine.IO messages. Client and server must use the
/// same one (the JavaScript client's `parser` option).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Parser {
    /// The default `socket.io-parser`: text packets, binary attachments as separate messages.
    #[default]
    Default,
    /// `socket.io-msgpack-parser`: one binary MessagePack message per packet.
    #[cfg(feature = "msgpack")]
    Msgpack,
}

impl Parser {
    /// The Engine.IO messages of a packet, in order.
    pub fn encode(self, packet: &Packet) -> Vec<Data> {
        match self {
            Self::Default => encode(packet),
            #[cfg(feature = "msgpack")]
            Self::Msgpack => vec![Data::Binary(super::msgpack::encode(packet))],
        }
    }
}

/// Turns the Engine.IO messages of one connection into Socket.IO packets.
#[derive(Debug)]
pub struct Decoder {
    parser: Parser,
    max_attachments: usize,
    /// A binary packet and the number of attachments it still awaits (boxed: rare, and every
    /// connection would carry its room).
    pending: Option<Box<(Packet, usize)>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ATTACHMENTS)
    }
}

impl Decoder {
    /// A decoder that refuses binary packets announcing more than `max_attachments` attachments
    /// (each is one Engine.IO message, at most `maxPayload` bytes).
    pub fn new(max_attachments: usize) -> Self {
        Self::with_parser(Parser::Default, max_attachments)
    }

    /// A decoder for another parser's format.
    pub fn with_parser(parser: Parser, max_attachments: usize) -> Self {
        Self {
            parser,
            max_attachments,
            pending: None,
        }
    }

    /// The parser this decoder reads.
    pub fn parser(&self) -> Parser {
        self.parser
    }

    /// Reads one Engine.IO message: a complete packet, or `None` while a binary packet awaits more
    /// attachments. After an error the connection must close: the reference server does, and the
    /// stream is out of step.
    pub fn decode(&mut self, message: Data) -> Result<Option<Packet>, PacketError> {
        #[cfg(feature = "msgpack")]
        if self.parser == Parser::Msgpack {
            let Data::Binary(bytes) = message else {
                return Err(PacketError::Msgpack(
                    "a text message; this parser sends binary messages only".to_owned(),
                ));
            };
            let packet = super::msgpack::decode(&bytes)?;
            if packet.attachments.len() > self.max_attachments {
                return Err(PacketError::TooManyAttachments {
                    count: packet.attachments.len() as u64,
                    max: self.max_attachments,
                });
            }
            return Ok(Some(packet));
        }
        match message {
            Data::Text(_) | Data::Shared(_) => {
                // Only a server sends shared text; should one be read, it is text like any other.
                let text = match &message {
                    Data::Shared(s) => s.text(),
                    Data::Text(t) => t.as_str(),
                    Data::Binary(_) => "",
                };
                if self.pending.is_some() {
                    return Err(PacketError::TextDuringAttachments);
                }
                let (packet, count) = decode_text(text, self.max_attachments)?;
                if !packet.kind.is_binary() {
                    return Ok(Some(packet));
                }
                if count == 0 {
                    check_placeholders(packet.data.as_ref(), 0)?;
                    return Ok(Some(packet));
                }
                self.pending = Some(Box::new((packet, count)));
                Ok(None)
            }
            Data::Binary(bytes) => {
                let mut pending = self.pending.take().ok_or(PacketError::UnexpectedBinary)?;
                pending.0.attachments.push(bytes);
                if pending.0.attachments.len() < pending.1 {
                    self.pending = Some(pending);
                    return Ok(None);
                }
                let (packet, count) = *pending;
                check_placeholders(packet.data.as_ref(), count)?;
                Ok(Some(packet))
            }
        }
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_reassembling(&self) -> bool {
        self.pending.is_some()
    }
}

/// The Engine.IO messages of a packet in the default parser's format: its text, then its
/// attachments.
pub fn encode(packet: &Packet) -> Vec<Data> {
    std::iter::once(Data::Text(packet.encode()))
        .chain(packet.attachments.iter().cloned().map(Data::Binary))
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::sio::{PacketType, placeholder};

    fn text(s: &str) -> Data {
        Data::Text(s.into())
    }

    fn bin(b: &'static [u8]) -> Data {
        Data::Binary(Bytes::from_static(b))
    }

    #[test]
    fn reassembles_the_suites_binary_event() {
        // socket.io-protocol suite: "should send a packet with binary attachments"
        let mut d = Decoder::default();
        let header =
            r#"52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        assert_eq!(d.decode(text(header)), Ok(None));
        assert!(d.is_reassembling());
        assert_eq!(d.decode(bin(&[1, 2, 3])), Ok(None));
        let p = d.decode(bin(&[4, 5, 6])).unwrap().unwrap();
        assert!(!d.is_reassembling());
        assert_eq!(p.kind, PacketType::BinaryEvent);
        assert_eq!(p.event_name().as_deref(), Some("message"));
        assert_eq!(
            p.attachments,
            vec![
                Bytes::from_static(&[1, 2, 3]),
                Bytes::from_static(&[4, 5, 6])
            ]
        );

        // The server's echo, `message-back` with the same attachments.
        let back = crate::sio::Packet::binary(
            PacketType::Event,
            "/",
            None,
            json!(["message-back", placeholder(0), placeholder(1)]),
            p.attachments.clone(),
        );
        assert_eq!(
            encode(&back),
            vec![
                text(
                    r#"52-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
                ),
                bin(&[1, 2, 3]),
                bin(&[4, 5, 6]),
            ]
        );
    }

    #[test]
    fn binary_ack() {
        // "should send a packet with binary attachments and an ack"
        let mut d2 = Decoder::default();
        let header = r#"52-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        assert_eq!(d2.decode(text(header)), Ok(None));
        d2.decode(bin(&[1, 2, 3])).unwrap();
        let p = d2.decode(bin(&[4, 5, 6])).unwrap().unwrap();
        assert_eq!(p.id, Some(789));
        let ack = crate::sio::Packet::binary(
            PacketType::Ack,
            "/",
            p.id,
            serde_json::Value::Array(p.args().to_vec()),
            p.attachments.clone(),
        );
        assert_eq!(
            encode(&ack)[0],
            text(r#"62-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
        );
    }

    #[test]
    fn out_of_step_messages() {
        let mut d = Decoder::default();
        assert_eq!(d.decode(bin(&[1])), Err(PacketError::UnexpectedBinary));
        let mut d = Decoder::default();
        d.decode(text(r#"51-["a",{"_placeholder":true,"num":0}]"#))
            .unwrap();
        assert_eq!(
            d.decode(text(r#"2["b"]"#)),
            Err(PacketError::TextDuringAttachments)
        );
    }

    #[test]
    fn placeholder_out_of_range() {
        let mut d = Decoder::default();
        d.decode(text(r#"51-["a",{"_placeholder":true,"num":1}]"#))
            .unwrap();
        assert_eq!(d.decode(bin(&[1])), Err(PacketError::Placeholder(1)));
        let mut d = Decoder::default();
        assert_eq!(
            d.decode(text(r#"50-["a",{"_placeholder":true,"num":0}]"#)),
            Err(PacketError::Placeholder(0))
        );
        assert_eq!(
            d.decode(text(r#"50-["a"]"#))
                .map(|p| p.map(|p| p.attachments.len())),
            Ok(Some(0))
        );
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_parser() {
        let mut d = Decoder::with_parser(Parser::Msgpack, 1);
        assert_eq!(d.parser(), Parser::Msgpack);
        assert!(matches!(d.decode(text("0")), Err(PacketError::Msgpack(_))));
        let event = crate::sio::Packet::binary(
            PacketType::Event,
            "/",
            Some(1),
            json!(["up", placeholder(0)]),
            vec![Bytes::from_static(&[9])],
        );
        let messages = Parser::Msgpack.encode(&event);
        let [Data::Binary(_)] = messages.as_slice() else {
            panic!("{messages:?}")
        };
        assert_eq!(d.decode(messages[0].clone()), Ok(Some(event)));
        let two = crate::sio::Packet::binary(
            PacketType::Event,
            "/",
            None,
            json!(["up", placeholder(0), placeholder(1)]),
            vec![Bytes::from_static(&[1]), Bytes::from_static(&[2])],
        );
        let messages = Parser::Msgpack.encode(&two);
        assert_eq!(
            d.decode(messages[0].clone()),
            Err(PacketError::TooManyAttachments { count: 2, max: 1 })
        );
    }

    #[test]
    fn attachment_limit() {
        let mut d = Decoder::new(1);
        assert_eq!(
            d.decode(text(r#"52-["a"]"#)),
            Err(PacketError::TooManyAttachments { count: 2, max: 1 })
        );
    }
}
