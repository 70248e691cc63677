//! What the fan-out load generator says to each server and how it reads the answers, without a
//! JSON parser on the hot path: a delivery is found by its prefix and its few numbers are read
//! after their keys (`"seq":`, `"t":`, `"offset":`). The payload of every publication is
//! `{"t":MICROS,"seq":N}`: `t` is when the publisher sent it (µs since the Unix epoch: in ns it
//! would pass 2^53, which switchboard refuses as a JSON integer, code 107) and `seq` counts the
//! publications of its channel from 1.

use anyhow::{Result, bail, ensure};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::ws::{OP_TEXT, find, mask, masked_frame};

/// The servers of the fan-out benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// switchboard's JSON protocol on `/connection/websocket`.
    Switchboard,
    /// nginx with the Nchan module: WebSocket subscribers, HTTP POST publisher.
    Nchan,
    /// Socket.IO 4 (Engine.IO v4 over WebSocket), rooms.
    Socketio,
    /// The physical limit (`switchboard-bench fanout-raw`): one thread writes each publication's
    /// bytes to every subscriber's plain TCP socket. Spoken to as Nchan is.
    Raw,
    /// switchboard serving the same Socket.IO clients (`[socketio]`, issue #14): the events
    /// `subscribe` and `publish` of its mapping, publications as `publication` events. Not in
    /// [`Kind::ALL`]: asked for with `--servers switchboard-sio`, beside `socketio`, to compare the
    /// two servers on one client protocol.
    #[serde(rename = "switchboard-sio")]
    SwitchboardSio,
}

impl Kind {
    /// All of them, in the order they run.
    pub const ALL: [Kind; 4] = [Kind::Switchboard, Kind::Nchan, Kind::Socketio, Kind::Raw];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Switchboard => "switchboard",
            Kind::Nchan => "nchan",
            Kind::Socketio => "socketio",
            Kind::Raw => "raw",
            Kind::SwitchboardSio => "switchboard-sio",
        }
    }

    /// The name of channel `c` on this server.
    pub fn channel(self, c: usize) -> String {
        match self {
            Kind::Switchboard | Kind::Socketio | Kind::SwitchboardSio => format!("bench:{c}"),
            Kind::Nchan | Kind::Raw => format!("bench-{c}"),
        }
    }

    /// The WebSocket request path of a subscriber of channel `c` (and of a WebSocket publisher).
    pub fn ws_path(self, c: usize) -> String {
        match self {
            Kind::Switchboard => "/connection/websocket".into(),
            Kind::Nchan | Kind::Raw => format!("/sub/{}", self.channel(c)),
            Kind::Socketio | Kind::SwitchboardSio => "/socket.io/?EIO=4&transport=websocket".into(),
        }
    }

    /// Extra handshake header lines.
    pub fn ws_headers(self) -> &'static str {
        match self {
            Kind::Switchboard => "Sec-WebSocket-Protocol: switchboard.json\r\n",
            Kind::Nchan | Kind::Socketio | Kind::Raw | Kind::SwitchboardSio => "",
        }
    }
}

/// A publication as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The channel's sequence number (from 1).
    pub seq: u64,
    /// When it was published, ns since the Unix epoch (µs precision).
    pub t_ns: u64,
    /// switchboard's channel offset.
    pub offset: Option<u64>,
}

/// One thing a server said to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A publication.
    Delivery(Delivery),
    /// A reply to command `id`: whether it succeeded, and the `offset` it carries if any.
    Reply {
        /// The command id (Socket.IO: the ack id).
        id: u64,
        /// No error.
        ok: bool,
        /// `offset` in the result.
        offset: Option<u64>,
        /// The reply line, for error messages.
        text: String,
    },
    /// Engine.IO open packet or Socket.IO namespace connect answer.
    Opened,
    /// Engine.IO ping: answer `3`.
    EnginePing,
    /// The server ends the connection or the subscription: code and text.
    Disconnect {
        /// The code (switchboard: disconnect or unsubscribe code; 0 if none).
        code: u16,
        /// What it said.
        text: String,
    },
    /// Anything else (ignored).
    Other,
}

/// The number after `key` in `hay` (first occurrence), if digits follow.
pub fn num_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    hay[at..at + digits].iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The `seq` and `t` of a publication payload `{"t":..,"seq":..}` somewhere in `text`.
fn payload_numbers(text: &[u8]) -> Result<(u64, u64)> {
    match (num_after(text, b"\"seq\":"), num_after(text, b"\"t\":")) {
        (Some(seq), Some(t)) => Ok((seq, sent_ns(t))),
        _ => bail!(
            "publication without seq and t: {}",
            String::from_utf8_lossy(&text[..text.len().min(200)])
        ),
    }
}

/// Calls `f` for every event in one text message from the server.
pub fn events(kind: Kind, message: &[u8], mut f: impl FnMut(Event)) -> Result<()> {
    match kind {
        Kind::Switchboard => {
            for line in message.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                f(switchboard_event(line)?);
            }
        }
        Kind::Nchan | Kind::Raw => {
            let (seq, t_ns) = payload_numbers(message)?;
            f(Event::Delivery(Delivery {
                seq,
                t_ns,
                offset: None,
            }));
        }
        Kind::Socketio | Kind::SwitchboardSio => f(socketio_event(message)?),
    }
    Ok(())
}

fn switchboard_event(line: &[u8]) -> Result<Event> {
    if line.starts_with(b"{\"pub\":") {
        let (seq, t_ns) = payload_numbers(line)?;
        return Ok(Event::Delivery(Delivery {
            seq,
            t_ns,
            offset: num_after(line, b"\"offset\":"),
        }));
    }
    let text = || String::from_utf8_lossy(line).into_owned();
    if line.starts_with(b"{\"disconnect\":") || line.starts_with(b"{\"unsubscribe\":") {
        let code = num_after(line, b"\"code\":").unwrap_or(0);
        return Ok(Event::Disconnect {
            code: u16::try_from(code).unwrap_or(0),
            text: text(),
        });
    }
    if let Some(id) = line
        .starts_with(b"{\"id\":")
        .then(|| num_after(line, b"\"id\":"))
        .flatten()
    {
        return Ok(Event::Reply {
            id,
            ok: find(line, b"\"error\":").is_none(),
            offset: num_after(line, b"\"offset\":"),
            text: text(),
        });
    }
    Ok(Event::Other)
}

fn socketio_event(message: &[u8]) -> Result<Event> {
    let text = || String::from_utf8_lossy(message).into_owned();
    Ok(match message {
        [b'4', b'2', rest @ ..]
            if rest.starts_with(b"[\"pub\",") || rest.starts_with(b"[\"publication\",") =>
        {
            let (seq, t_ns) = payload_numbers(rest)?;
            Event::Delivery(Delivery {
                seq,
                t_ns,
                offset: None,
            })
        }
        [b'2'] => Event::EnginePing,
        [b'0', b'{', ..] | [b'4', b'0', ..] => Event::Opened,
        [b'4', b'3', ..] => {
            let digits = message[2..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let id = std::str::from_utf8(&message[2..2 + digits])
                .ok()
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            Event::Reply {
                id,
                // switchboard acks `[null]`, or `[{"code":N,"message":...}]` on error.
                ok: find(message, b"\"code\":").is_none(),
                offset: None,
                text: text(),
            }
        }
        [b'4', b'1', ..] | [b'1', ..] | [b'4', b'4', ..] => Event::Disconnect {
            code: 0,
            text: text(),
        },
        _ => Event::Other,
    })
}

/// The payload of publication `seq`, sent at `t_ns` (ns since the Unix epoch; written in µs).
pub fn payload(t_ns: u64, seq: u64) -> String {
    format!("{{\"t\":{},\"seq\":{seq}}}", t_ns / 1000)
}

/// When a publication was sent, ns since the Unix epoch, from the `t` of its payload (µs).
pub fn sent_ns(t: u64) -> u64 {
    t.saturating_mul(1000)
}

/// The text messages a subscriber sends to subscribe to `channel` (switchboard: connect then
/// subscribe; Socket.IO: the `sub` event with ack id 0, sent after the namespace connect).
pub fn subscribe_messages(kind: Kind, channel: &str) -> Vec<String> {
    match kind {
        Kind::Switchboard => vec![
            "{\"id\":1,\"connect\":{}}".into(),
            format!("{{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\"}}}}"),
        ],
        Kind::Socketio => vec![format!("420[\"sub\",\"{channel}\"]")],
        Kind::SwitchboardSio => vec![format!("420[\"subscribe\",\"{channel}\"]")],
        Kind::Nchan | Kind::Raw => vec![],
    }
}

/// Appends the masked frame of a WebSocket publication (switchboard command `id`, or a Socket.IO
/// `pub` event) to `out`.
pub fn push_ws_publish(out: &mut Vec<u8>, kind: Kind, id: u64, channel: &str, t_ns: u64, seq: u64) {
    let data = payload(t_ns, seq);
    let text = match kind {
        Kind::Switchboard => {
            format!("{{\"id\":{id},\"publish\":{{\"channel\":\"{channel}\",\"data\":{data}}}}}")
        }
        Kind::Socketio => format!("42[\"pub\",\"{channel}\",{data}]"),
        Kind::SwitchboardSio => format!("42[\"publish\",\"{channel}\",{data}]"),
        Kind::Nchan | Kind::Raw => unreachable!("Nchan and the raw reference publish over HTTP"),
    };
    out.extend_from_slice(&masked_frame(OP_TEXT, text.as_bytes(), mask(id)));
}

/// Appends an HTTP/1.1 request to `out`: `method path` with `body` (keep-alive).
pub fn push_http_request(out: &mut Vec<u8>, method: &str, path: &str, body: &str) {
    out.extend_from_slice(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// An HTTP response at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse<'a> {
    /// Status code.
    pub status: u16,
    /// The body.
    pub body: &'a [u8],
}

/// Parses one complete HTTP/1.1 response at the start of `buf` (Content-Length or chunked body):
/// the response and the bytes it used, or `None` until it is all there.
pub fn parse_http_response(buf: &[u8]) -> Result<Option<(HttpResponse<'_>, usize)>> {
    let Some(head_end) = find(buf, b"\r\n\r\n").map(|p| p + 4) else {
        ensure!(buf.len() < 64 * 1024, "HTTP response head over 64 KiB");
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line `{status_line}`"))?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    if chunked {
        // Chunks: hex size CRLF data CRLF ... 0 CRLF CRLF (no trailers expected).
        let mut at = head_end;
        loop {
            let Some(line_end) = find(&buf[at..], b"\r\n") else {
                return Ok(None);
            };
            let size_text = std::str::from_utf8(&buf[at..at + line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
            at += line_end + 2;
            if size == 0 {
                if buf.len() < at + 2 {
                    return Ok(None);
                }
                return Ok(Some((
                    HttpResponse {
                        status,
                        body: &buf[head_end..at],
                    },
                    at + 2,
                )));
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            at += size + 2;
        }
    }
    let length = length.unwrap_or(0);
    match buf.get(head_end..head_end + length) {
        Some(body) => Ok(Some((HttpResponse { status, body }, head_end + length))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(kind: Kind, message: &[u8]) -> Vec<Event> {
        let mut out = vec![];
        events(kind, message, |e| out.push(e)).expect("parses");
        out
    }

    #[test]
    fn reads_numbers_after_keys() {
        assert_eq!(num_after(b"{\"t\":123,\"seq\":7}", b"\"seq\":"), Some(7));
        assert_eq!(num_after(b"{\"t\":123,\"seq\":7}", b"\"t\":"), Some(123));
        assert_eq!(num_after(b"{\"offset\":5}", b"\"t\":"), None);
        assert_eq!(num_after(b"{\"seq\":x}", b"\"seq\":"), None);
    }

    #[test]
    fn switchboard_batched_frame() {
        let frame =
            b"{\"pub\":{\"channel\":\"bench:0\",\"offset\":41,\"data\":{\"t\":99,\"seq\":3}}}\n\
            {\"id\":2,\"subscribe\":{\"epoch\":\"x\",\"offset\":40,\"recoverable\":false}}\n\
            {\"disconnect\":{\"code\":3008,\"reason\":\"slow\",\"reconnect\":true}}";
        let got = all(Kind::Switchboard, frame);
        assert_eq!(
            got[0],
            Event::Delivery(Delivery {
                seq: 3,
                t_ns: 99_000,
                offset: Some(41)
            })
        );
        assert!(matches!(
            got[1],
            Event::Reply {
                id: 2,
                ok: true,
                offset: Some(40),
                ..
            }
        ));
        assert!(matches!(got[2], Event::Disconnect { code: 3008, .. }));
        let err = all(
            Kind::Switchboard,
            b"{\"id\":2,\"error\":{\"code\":102,\"message\":\"unknown channel\"}}",
        );
        assert!(matches!(err[0], Event::Reply { ok: false, .. }));
    }

    #[test]
    fn socketio_packets() {
        assert_eq!(
            all(Kind::Socketio, b"42[\"pub\",{\"t\":5,\"seq\":9}]"),
            [Event::Delivery(Delivery {
                seq: 9,
                t_ns: 5_000,
                offset: None
            })]
        );
        assert_eq!(all(Kind::Socketio, b"2"), [Event::EnginePing]);
        assert_eq!(
            all(Kind::Socketio, b"0{\"sid\":\"a\",\"pingInterval\":25000}"),
            [Event::Opened]
        );
        assert!(matches!(
            all(Kind::Socketio, b"430[]")[0],
            Event::Reply {
                id: 0,
                ok: true,
                ..
            }
        ));
        assert!(matches!(
            all(Kind::Socketio, b"41")[0],
            Event::Disconnect { .. }
        ));
    }

    #[test]
    fn switchboard_socketio_packets() {
        let k = Kind::SwitchboardSio;
        assert_eq!(
            all(k, b"42[\"publication\",\"bench:0\",{\"t\":5,\"seq\":9}]"),
            [Event::Delivery(Delivery {
                seq: 9,
                t_ns: 5_000,
                offset: None
            })]
        );
        assert!(matches!(
            all(k, b"430[null]")[0],
            Event::Reply {
                id: 0,
                ok: true,
                ..
            }
        ));
        assert!(matches!(
            all(k, b"430[{\"code\":103,\"message\":\"permission denied\"}]")[0],
            Event::Reply {
                id: 0,
                ok: false,
                ..
            }
        ));
        assert_eq!(
            subscribe_messages(k, "bench:0"),
            ["420[\"subscribe\",\"bench:0\"]"]
        );
        let mut out = Vec::new();
        push_ws_publish(&mut out, k, 7, "bench:0", 5_000, 9);
        let expected = b"42[\"publish\",\"bench:0\",{\"t\":5,\"seq\":9}]";
        assert_eq!(out, masked_frame(OP_TEXT, expected, mask(7)));
        assert_eq!(k.ws_path(0), Kind::Socketio.ws_path(0));
        assert_eq!(k.channel(3), "bench:3");
    }

    #[test]
    fn send_times_are_safe_json_integers() {
        // switchboard refuses integers beyond 2^53 (code 107): ns since the epoch are beyond it.
        let now_ns = crate::load::latency::realtime_ns();
        let text = payload(now_ns, 1);
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let t = v["t"].as_u64().expect("t");
        assert!(t < 1 << 53, "{text}");
        assert_eq!(sent_ns(t), now_ns / 1000 * 1000);
    }

    #[test]
    fn nchan_body_and_bad_payloads() {
        assert_eq!(
            all(Kind::Nchan, payload(12_345, 34).as_bytes()),
            [Event::Delivery(Delivery {
                seq: 34,
                t_ns: 12_000,
                offset: None
            })]
        );
        assert!(events(Kind::Nchan, b"hello", |_| {}).is_err());
    }

    #[test]
    fn http_responses() {
        let r = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 202";
        let (resp, used) = parse_http_response(r).unwrap().unwrap();
        assert_eq!(
            (resp.status, resp.body, used),
            (201, &b"abc"[..], r.len() - 12)
        );
        assert!(parse_http_response(&r[..20]).unwrap().is_none());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (resp, used) = parse_http_response(chunked).unwrap().unwrap();
        assert_eq!((resp.status, used), (200, chunked.len()));
        assert!(
            parse_http_response(&chunked[..chunked.len() - 1])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn publications_are_valid_json() {
        let mut out = vec![];
        push_ws_publish(&mut out, Kind::Switchboard, 7, "bench:0", 1, 2);
        let plain = unmask(&out);
        let (frame, _) = crate::ws::parse_server_frame(&plain).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(frame.payload).unwrap();
        assert_eq!(v["publish"]["data"]["seq"], 2);
        assert_eq!(v["id"], 7);
        for m in subscribe_messages(Kind::Switchboard, "bench:1") {
            serde_json::from_str::<serde_json::Value>(&m).unwrap();
        }
    }

    /// Turns a masked client frame into the unmasked form the parser reads.
    fn unmask(frame: &[u8]) -> Vec<u8> {
        let len = usize::from(frame[1] & 0x7F);
        assert!(len < 126);
        let mask = &frame[2..6];
        let mut out = vec![frame[0], frame[1] & 0x7F];
        out.extend(frame[6..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }
}
