//! An HTTP upgrade request built from fuzzer bytes through `handshake::accept`, and the same bytes
//! through `frame::parse_header`.
//!
//! Input layout: `[flags, version, text ..]`, the text being lines split on `\n`: the first is the
//! method, each other one is `name:value` (one leading space and a trailing `\r` of the value are
//! dropped, so a seed reads like a real request). Names and values that `http` refuses are skipped; a
//! method it refuses becomes GET. `flags` picks the endpoint's policy: bits 0-1 the origin rule (0 and
//! 3: a list of patterns, 1: same origin as `Host`, 2: `*`), bit 2 compression off, bits 3-5
//! server_max_window_bits, bits 6-7 context takeover allowed.
//!
//! Checks on an accepted request: the 101 response carries every negotiated header (the accept key
//! recomputed independently of the request), the subprotocol was both configured and offered, the
//! deflate parameters are in range and offering the server's own answer back negotiates the same ones,
//! and the origin rule really held (the server's own origin, `Host`'s, passes every rule). On a
//! refusal, its response is built. For `parse_header`: the header fits in the input, its length
//! matches its fields, control frames are short and final, and every shorter prefix asks for more
//! bytes.
#![no_main]

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use switchboard_websocket::frame::{self, OpCode};
use switchboard_websocket::handshake::{self, accept_key};
use switchboard_websocket::{Config, DeflateConfig};

const SUBPROTOCOLS: [&str; 2] = ["chat", "switchboard.json"];
const PATTERNS: [&str; 3] = [
    "https://app.example.org",
    "https://*.example.net",
    "http://localhost:8080",
];

#[derive(Clone, Copy, PartialEq)]
enum OriginRule {
    Patterns,
    SameHost,
    Any,
}

fn config(flags: u8) -> (Config, OriginRule) {
    let rule = match flags & 3 {
        1 => OriginRule::SameHost,
        2 => OriginRule::Any,
        _ => OriginRule::Patterns,
    };
    let allowed_origins = match rule {
        OriginRule::Patterns => PATTERNS.iter().map(|s| s.to_string()).collect(),
        OriginRule::SameHost => Vec::new(),
        OriginRule::Any => vec!["*".to_string()],
    };
    let config = Config {
        subprotocols: SUBPROTOCOLS.iter().map(|s| s.to_string()).collect(),
        allowed_origins,
        compression: DeflateConfig {
            enabled: flags & 4 == 0,
            server_max_window_bits: 9 + ((flags >> 3) & 7) % 7,
            client_max_window_bits: 15 - ((flags >> 3) & 7) % 7,
            server_no_context_takeover: flags & 0x40 == 0,
            client_no_context_takeover: flags & 0x80 == 0,
            ..DeflateConfig::default()
        },
        ..Config::default()
    };
    (config, rule)
}

fn request(version: u8, text: &[u8]) -> Request<()> {
    let mut lines = text.split(|&b| b == b'\n');
    let method = lines
        .next()
        .and_then(|m| Method::from_bytes(m.strip_suffix(b"\r").unwrap_or(m)).ok())
        .unwrap_or(Method::GET);
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.version_mut() = match version % 8 {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_2,
        3 => Version::HTTP_3,
        _ => Version::HTTP_11,
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let value = value.strip_suffix(b"\r").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            req.headers_mut().append(n, v);
        }
    }
    req
}

/// The host of `scheme://host[:port][/]` or `host[:port]`, lowercased; brackets kept for IPv6.
fn host_of(s: &str) -> String {
    let s = s.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let s = s.trim_end_matches('/');
    let host = if s.starts_with('[') {
        s.find(']').map_or(s, |end| &s[..=end])
    } else {
        s.rsplit_once(':').map_or(s, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

fn check_accepted(req: &Request<()>, config: &Config, rule: OriginRule, a: &handshake::Accepted) {
    assert_eq!(req.method(), Method::GET);
    assert!(req.version() >= Version::HTTP_11);
    let h = req.headers();
    let resp = a.response();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let rh = resp.headers();
    assert_eq!(rh[header::UPGRADE], "websocket");
    assert_eq!(rh[header::CONNECTION], "Upgrade");

    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .expect("accepted without a key");
    assert_eq!(h.get_all(header::SEC_WEBSOCKET_KEY).iter().count(), 1);
    assert_eq!(
        rh.get(header::SEC_WEBSOCKET_ACCEPT)
            .expect("no Sec-WebSocket-Accept"),
        accept_key(key.as_bytes().trim_ascii()).as_str()
    );

    match &a.protocol {
        Some(p) => {
            assert!(SUBPROTOCOLS.contains(&p.as_str()), "unknown protocol {p:?}");
            let offered = h
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|o| o.trim() == p);
            assert!(offered, "protocol {p:?} was not offered");
            assert_eq!(
                rh.get(header::SEC_WEBSOCKET_PROTOCOL)
                    .expect("protocol negotiated but no header"),
                p.as_str()
            );
        }
        None => assert!(rh.get(header::SEC_WEBSOCKET_PROTOCOL).is_none()),
    }

    match &a.deflate {
        Some(d) => {
            assert!(config.compression.enabled);
            assert!((9..=15).contains(&d.server_max_window_bits));
            // RFC 7692 §7.1.2.2 lets a client limit itself to 8 bits; zlib inflates that with 9.
            assert!((8..=15).contains(&d.client_max_window_bits));
            // A client that did not offer client_max_window_bits keeps its full window (§7.1.2.2).
            assert!(
                d.client_max_window_bits <= config.compression.client_max_window_bits
                    || d.client_max_window_bits == 15
            );
            assert!(d.server_max_window_bits <= config.compression.server_max_window_bits);
            assert!(d.server_no_context_takeover || !config.compression.server_no_context_takeover);
            assert!(d.client_no_context_takeover || !config.compression.client_no_context_takeover);
            let ext = rh
                .get(header::SEC_WEBSOCKET_EXTENSIONS)
                .expect("deflate negotiated but no header");
            assert!(ext.as_bytes().starts_with(b"permessage-deflate"));
            // Offering the server's answer back must be accepted with the same parameters.
            let mut again = req.clone();
            again
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_EXTENSIONS, ext.clone());
            let b = handshake::accept(&again, config).expect("same request refused");
            assert_eq!(
                b.deflate.as_ref(),
                Some(d),
                "answer {ext:?} renegotiates differently"
            );
        }
        None => assert!(rh.get(header::SEC_WEBSOCKET_EXTENSIONS).is_none()),
    }

    let Some(origin) = h.get(header::ORIGIN) else {
        return;
    };
    if rule == OriginRule::Any {
        return;
    }
    let origin = origin.to_str().expect("accepted a non-ASCII origin");
    let host = host_of(origin);
    match rule {
        OriginRule::Any => {}
        // The server's own origin (`Host`'s) passes whatever the rule.
        OriginRule::Patterns => {
            let server = h.get(header::HOST).and_then(|v| v.to_str().ok());
            assert!(
                host == "app.example.org"
                    || host.ends_with(".example.net")
                    || host == "localhost"
                    || server.is_some_and(|s| host_of(s) == host),
                "origin {origin:?} passed {PATTERNS:?} with Host {server:?}"
            );
        }
        OriginRule::SameHost => {
            let server = h.get(header::HOST).and_then(|v| v.to_str().ok());
            assert!(
                server.is_some_and(|s| host_of(s) == host),
                "origin {origin:?} passed as same-origin with Host {server:?}"
            );
        }
    }
}

fn check_frame_header(buf: &[u8]) {
    let Ok(Some(h)) = frame::parse_header(buf) else {
        return;
    };
    assert!(h.header_len <= buf.len() && h.header_len <= frame::MAX_HEADER_LEN);
    let ext = match buf[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    assert_eq!(h.header_len, 2 + ext + if h.mask.is_some() { 4 } else { 0 });
    assert!(h.payload_len < 1 << 63);
    if h.opcode.is_control() {
        assert!(h.fin && h.payload_len <= frame::MAX_CONTROL_PAYLOAD as u64);
    }
    assert_eq!(OpCode::from_bits(buf[0] & 0x0f), Some(h.opcode));
    for cut in 0..h.header_len {
        assert_eq!(
            frame::parse_header(&buf[..cut]),
            Ok(None),
            "prefix of {cut} bytes"
        );
    }
    // What the server writes for the same fields must parse back to them.
    if let Ok(len) = usize::try_from(h.payload_len) {
        let mut out = [0u8; frame::MAX_HEADER_LEN];
        let n = frame::encode_header(&mut out, h.fin, h.rsv1, h.opcode, len);
        let back = frame::parse_header(&out[..n])
            .expect("own header refused")
            .expect("short");
        assert_eq!(
            (
                back.fin,
                back.rsv1,
                back.opcode,
                back.payload_len,
                back.mask,
                back.header_len
            ),
            (h.fin, h.rsv1, h.opcode, h.payload_len, None, n)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check_frame_header(data);
    let [flags, version, text @ ..] = data else {
        return;
    };
    check_frame_header(text);

    let (config, rule) = config(*flags);
    let req = request(*version, text);
    match handshake::accept(&req, &config) {
        Ok(a) => check_accepted(&req, &config, rule, &a),
        Err(e) => {
            let resp = e.response();
            assert!(matches!(resp.status().as_u16(), 400 | 403 | 426));
        }
    }
});
