//! The `socket.io-msgpack-parser` format: each Socket.IO packet is one binary Engine.IO message, a
//! MessagePack map `{type, nsp, data, id}` (types 0 to 4: binary data travels inside `data` as
//! MessagePack `bin`, so there are no `BINARY_*` packets and no attachments on the wire).
//!
//! Packets are converted to and from [`Packet`] so that the server handles one model: `bin` values
//! become attachments with placeholders (and the packet a `BINARY_EVENT` / `BINARY_ACK`), and back.
//! The JavaScript encoder (`notepack.io`) writes `undefined` as the extension `d4 00 00`; it is read
//! as an absent value, as JavaScript reads it.

use bytes::Bytes;
use rmpv::Value as Mp;
use serde_json::{Map, Number, Value};

use super::packet::{
    MAX_ACK_ID, Packet, PacketError, PacketType, check_payload, check_placeholders, placeholder,
};

/// Nesting deeper than this is refused (serde_json's own limit is 128).
const MAX_DEPTH: usize = 100;

/// Reads one MessagePack packet.
pub(crate) fn decode(bytes: &[u8]) -> Result<Packet, PacketError> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|e| PacketError::Msgpack(e.to_string()))?;
    if !reader.is_empty() {
        return Err(PacketError::Msgpack("bytes after the packet".to_owned()));
    }
    let Mp::Map(fields) = value else {
        return Err(PacketError::Msgpack(
            "a packet is a map {type, nsp, data, id}".to_owned(),
        ));
    };
    let (mut kind, mut namespace, mut data, mut id) = (None, None, None, None);
    for (key, value) in fields {
        match key.as_str() {
            Some("type") => kind = Some(value),
            Some("nsp") => namespace = Some(value),
            Some("data") => data = Some(value),
            Some("id") => id = Some(value),
            _ => {}
        }
    }
    let kind = kind
        .as_ref()
        .and_then(Mp::as_u64)
        .and_then(|t| u8::try_from(t).ok())
        .filter(|&t| t <= 4)
        .and_then(PacketType::from_code)
        .ok_or_else(|| PacketError::Msgpack("invalid packet type: an integer 0 to 4".to_owned()))?;
    let namespace = match namespace {
        Some(Mp::String(s)) => s
            .into_str()
            .ok_or_else(|| PacketError::Msgpack("namespace is not UTF-8".to_owned()))?,
        _ => {
            return Err(PacketError::Msgpack(
                "invalid namespace: a string".to_owned(),
            ));
        }
    };
    // As in the default format, where nothing else can be written: one rule for both parsers.
    if !namespace.starts_with('/') {
        return Err(PacketError::Msgpack(format!(
            "namespace {namespace:?} does not start with '/'"
        )));
    }
    let id = match id.filter(|v| !is_undefined(v)) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|&n| n <= MAX_ACK_ID)
                .ok_or(PacketError::AckIdTooLarge)?,
        ),
    };
    let mut attachments = Vec::new();
    let data = match data.filter(|v| !is_undefined(v)) {
        None => None,
        Some(v) => Some(to_json(v, &mut attachments)?),
    };
    // A client's data must not forge placeholders: every one must be ours.
    check_placeholders(data.as_ref(), attachments.len())?;
    let placeholders = count_placeholders(data.as_ref());
    if placeholders != attachments.len() {
        return Err(PacketError::Msgpack(
            "`_placeholder` objects are reserved".to_owned(),
        ));
    }
    check_payload(kind, data.as_ref())?;
    let kind = match (kind, attachments.is_empty()) {
        (PacketType::Event, false) => PacketType::BinaryEvent,
        (PacketType::Ack, false) => PacketType::BinaryAck,
        (k, _) => k,
    };
    Ok(Packet {
        kind,
        namespace,
        id,
        data,
        attachments,
    })
}

/// Writes one packet as MessagePack, its attachments back in place of their placeholders.
pub(crate) fn encode(packet: &Packet) -> Bytes {
    let kind = match packet.kind {
        PacketType::BinaryEvent => PacketType::Event,
        PacketType::BinaryAck => PacketType::Ack,
        k => k,
    };
    let mut fields = vec![
        (Mp::from("type"), Mp::from(kind.code())),
        (Mp::from("nsp"), Mp::from(packet.namespace.as_str())),
    ];
    if let Some(data) = &packet.data {
        fields.push((Mp::from("data"), from_json(data, &packet.attachments)));
    }
    if let Some(id) = packet.id {
        fields.push((Mp::from("id"), Mp::from(id)));
    }
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &Mp::Map(fields));
    Bytes::from(out)
}

/// `notepack.io`'s `undefined`.
fn is_undefined(v: &Mp) -> bool {
    matches!(v, Mp::Ext(0, body) if body.as_slice() == [0])
}

fn to_json(v: Mp, attachments: &mut Vec<Bytes>) -> Result<Value, PacketError> {
    Ok(match v {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(b),
        Mp::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(s)) => Value::from(s),
            (None, None) => return Err(PacketError::Msgpack("integer out of range".to_owned())),
        },
        Mp::F32(f) => float(f64::from(f))?,
        Mp::F64(f) => float(f)?,
        Mp::String(s) => Value::String(
            s.into_str()
                .ok_or_else(|| PacketError::Msgpack("string is not UTF-8".to_owned()))?,
        ),
        Mp::Binary(b) => {
            attachments.push(Bytes::from(b));
            placeholder(attachments.len() - 1)
        }
        Mp::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| {
                    if is_undefined(&i) {
                        Ok(Value::Null)
                    } else {
                        to_json(i, attachments)
                    }
                })
                .collect::<Result<_, _>>()?,
        ),
        Mp::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let Mp::String(k) = k else {
                    return Err(PacketError::Msgpack("map keys must be strings".to_owned()));
                };
                let k = k
                    .into_str()
                    .ok_or_else(|| PacketError::Msgpack("key is not UTF-8".to_owned()))?;
                if !is_undefined(&v) {
                    map.insert(k, to_json(v, attachments)?);
                }
            }
            Value::Object(map)
        }
        Mp::Ext(tag, _) => {
            return Err(PacketError::Msgpack(format!(
                "unsupported extension type {tag}"
            )));
        }
    })
}

fn float(f: f64) -> Result<Value, PacketError> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| PacketError::Msgpack("NaN and infinities have no JSON form".to_owned()))
}

fn from_json(v: &Value, attachments: &[Bytes]) -> Mp {
    match v {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Mp::from(u),
            (None, Some(i)) => Mp::from(i),
            _ => Mp::F64(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => Mp::from(s.as_str()),
        Value::Array(items) => Mp::Array(items.iter().map(|i| from_json(i, attachments)).collect()),
        Value::Object(map) => {
            if map.get("_placeholder") == Some(&Value::Bool(true))
                && let Some(bytes) = map
                    .get("num")
                    .and_then(Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .and_then(|n| attachments.get(n))
            {
                return Mp::Binary(bytes.to_vec());
            }
            Mp::Map(
                map.iter()
                    .map(|(k, v)| (Mp::from(k.as_str()), from_json(v, attachments)))
                    .collect(),
            )
        }
    }
}

fn count_placeholders(data: Option<&Value>) -> usize {
    let mut stack: Vec<&Value> = data.into_iter().collect();
    let mut n = 0;
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => n += 1,
            Value::Object(map) => stack.extend(map.values()),
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mp(fields: Vec<(&str, Mp)>) -> Vec<u8> {
        let map = Mp::Map(fields.into_iter().map(|(k, v)| (Mp::from(k), v)).collect());
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &map).unwrap();
        out
    }

    const UNDEFINED: fn() -> Mp = || Mp::Ext(0, vec![0]);

    #[test]
    fn connect_with_and_without_auth() {
        let p = decode(&mp(vec![
            ("type", Mp::from(0)),
            ("nsp", Mp::from("/")),
            ("data", UNDEFINED()),
        ]))
        .unwrap();
        assert_eq!(
            (p.kind, p.namespace.as_str(), p.data),
            (PacketType::Connect, "/", None)
        );
        let auth = Mp::Map(vec![(Mp::from("token"), Mp::from("abc"))]);
        let p = decode(&mp(vec![
            ("type", Mp::from(0)),
            ("nsp", Mp::from("/chat")),
            ("data", auth),
        ]))
        .unwrap();
        assert_eq!(p.data, Some(json!({"token": "abc"})));
    }

    #[test]
    fn binary_becomes_attachments_and_back() {
        let data = Mp::Array(vec![
            Mp::from("upload"),
            Mp::Binary(vec![1, 2, 3]),
            Mp::Map(vec![(Mp::from("b"), Mp::Binary(vec![4]))]),
        ]);
        let bytes = mp(vec![
            ("type", Mp::from(2)),
            ("nsp", Mp::from("/")),
            ("data", data.clone()),
            ("id", Mp::from(7)),
        ]);
        let p = decode(&bytes).unwrap();
        assert_eq!(p.kind, PacketType::BinaryEvent);
        assert_eq!(p.id, Some(7));
        assert_eq!(
            p.data,
            Some(json!(["upload", placeholder(0), {"b": placeholder(1)}]))
        );
        assert_eq!(
            p.attachments,
            vec![Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[4])]
        );
        // Encoded back, the bin values are in place and the type is plain EVENT again.
        let again = decode(&encode(&p)).unwrap();
        assert_eq!(again, p);
        let Mp::Map(fields) = rmpv::decode::read_value(&mut &encode(&p)[..]).unwrap() else {
            panic!()
        };
        assert!(fields.contains(&(Mp::from("type"), Mp::from(2))));
        assert!(fields.contains(&(Mp::from("data"), data)));
    }

    #[test]
    fn server_packets_round_trip() {
        for p in [
            Packet::connect_ok("/", "sid1"),
            Packet::connect_error("/x", "Invalid namespace", None),
            Packet::disconnect("/x"),
            Packet::event(
                "/",
                "chat",
                [json!({"n": -1, "f": 1.5, "z": null})],
                Some(3),
            ),
            Packet::ack("/", 3, vec![json!(true)]),
        ] {
            assert_eq!(decode(&encode(&p)), Ok(p));
        }
    }

    #[test]
    fn refusals() {
        let bad = |fields| decode(&mp(fields)).unwrap_err();
        assert!(matches!(
            bad(vec![("type", Mp::from(5)), ("nsp", Mp::from("/"))]),
            PacketError::Msgpack(_)
        ));
        assert!(matches!(
            bad(vec![("type", Mp::from(2)), ("nsp", Mp::from(1))]),
            PacketError::Msgpack(_)
        ));
        assert!(matches!(
            bad(vec![
                ("type", Mp::from(2)),
                ("nsp", Mp::from("/")),
                ("data", Mp::from("x"))
            ]),
            PacketError::InvalidPayload { .. }
        ));
        assert_eq!(
            bad(vec![
                ("type", Mp::from(3)),
                ("nsp", Mp::from("/")),
                ("data", Mp::Array(vec![])),
                ("id", Mp::from(-1))
            ]),
            PacketError::AckIdTooLarge
        );
        assert!(matches!(
            bad(vec![
                ("type", Mp::from(2)),
                ("nsp", Mp::from("/")),
                ("data", Mp::Array(vec![Mp::from("a"), Mp::F64(f64::NAN)]))
            ]),
            PacketError::Msgpack(_)
        ));
        assert!(matches!(
            bad(vec![
                ("type", Mp::from(2)),
                ("nsp", Mp::from("/")),
                ("data", Mp::Array(vec![Mp::from("a"), Mp::Ext(5, vec![])]))
            ]),
            PacketError::Msgpack(_)
        ));
        let forged = Mp::Array(vec![
            Mp::from("a"),
            Mp::Map(vec![
                (Mp::from("_placeholder"), Mp::from(true)),
                (Mp::from("num"), Mp::from(0)),
            ]),
        ]);
        assert!(
            bad(vec![
                ("type", Mp::from(2)),
                ("nsp", Mp::from("/")),
                ("data", forged)
            ]) != PacketError::Empty
        );
        // Found by the fuzz target: a namespace the text format cannot carry.
        let no_slash = vec![("type", Mp::from(0)), ("nsp", Mp::from("~"))];
        assert!(matches!(bad(no_slash), PacketError::Msgpack(_)));
        assert!(matches!(decode(&[0xc1]), Err(PacketError::Msgpack(_))));
        assert!(matches!(
            decode(&[0x91, 0x00]),
            Err(PacketError::Msgpack(_))
        ));
        let mut trailing = mp(vec![("type", Mp::from(1)), ("nsp", Mp::from("/"))]);
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(PacketError::Msgpack(_))));
        // An array header announcing 2^32-1 elements with none present fails fast.
        assert!(matches!(
            decode(&[
                0x81, 0xa4, b'd', b'a', b't', b'a', 0xdd, 0xff, 0xff, 0xff, 0xff
            ]),
            Err(PacketError::Msgpack(_))
        ));
    }
}
