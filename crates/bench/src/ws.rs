//! The one minimal RFC 6455 client of every load generator (echo, fan-out, transports): connect,
//! upgrade handshake (over any byte stream, so the transports benchmark can count its bytes),
//! masked client frames, a parser for (unmasked) server frames, and the reassembly of fragmented
//! messages with the control frames (ping, close) handed out beside them.
//!
//! It exists so the numbers do not depend on any WebSocket crate under test: the client side stays
//! the same whichever server is measured, and it is cheap (frames are built once, parsed in place,
//! nothing is allocated per unfragmented message).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The GUID of RFC 6455 §1.3 that is hashed with the client key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Largest payload the parser accepts from a server (the echoes here are small).
pub const MAX_PAYLOAD: u64 = 16 * 1024 * 1024;

/// Largest handshake response we read before giving up.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Opens a TCP connection, optionally bound to a source address first (so many connections can be
/// spread over 127.0.0.x), with `SO_LINGER 0` (close sends RST: no TIME_WAIT pile-up across runs)
/// and `TCP_NODELAY`.
pub async fn connect(source: Option<Ipv4Addr>, server: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_zero_linger()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip.into(), 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The `Sec-WebSocket-Accept` value a server must answer for `key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// A fresh 16-byte nonce, base64-encoded, for `Sec-WebSocket-Key`. It needs to be unique, not
/// secret, so a time-seeded xorshift is enough.
fn new_key(seed: u64) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut nonce = [0u8; 16];
    for chunk in nonce.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    BASE64.encode(nonce)
}

/// Performs the HTTP/1.1 upgrade on `stream` and checks the 101 answer. Returns the bytes that
/// arrived after the response head (normally none), which belong to the first frames.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: SocketAddr,
    path: &str,
    seed: u64,
) -> Result<Vec<u8>> {
    handshake_with(stream, host, path, seed, "").await
}

/// [`handshake`] with extra request header lines (each ending in `\r\n`), e.g. a
/// `Sec-WebSocket-Protocol` offer.
pub async fn handshake_with<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: SocketAddr,
    path: &str,
    seed: u64,
    extra_headers: &str,
) -> Result<Vec<u8>> {
    let key = new_key(seed);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;

    let mut buf = Vec::with_capacity(512);
    let head_len = loop {
        if let Some(pos) = find_head_end(&buf) {
            break pos;
        }
        ensure!(
            buf.len() < MAX_RESPONSE_HEAD,
            "handshake response head larger than 8 KiB"
        );
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "server closed the connection during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    check_response(&buf[..head_len], &accept_key(&key))?;
    Ok(buf.split_off(head_len))
}

/// Index just past the `\r\n\r\n` ending the response head, if it has arrived.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    find(buf, b"\r\n\r\n").map(|p| p + 4)
}

/// Position of `needle` in `hay` (the response heads here and the HTTP and text protocols of the
/// load generators).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let last_start = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last_start {
        let pos = hay[i..=last_start].iter().position(|&b| b == first)? + i;
        if &hay[pos..pos + needle.len()] == needle {
            return Some(pos);
        }
        i = pos + 1;
    }
    None
}

/// Checks a handshake response head: status 101, `Upgrade: websocket`, `Connection: upgrade`,
/// and the right `Sec-WebSocket-Accept`.
pub fn check_response(head: &[u8], expected_accept: &str) -> Result<()> {
    let text = std::str::from_utf8(head).context("handshake response is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    ensure!(
        status.starts_with("HTTP/1.1 101"),
        "expected `HTTP/1.1 101`, got `{status}`"
    );
    let (mut upgrade, mut connection, mut accept) = (false, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => {
                connection = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
            }
            "sec-websocket-accept" => {
                ensure!(
                    value == expected_accept,
                    "wrong Sec-WebSocket-Accept `{value}`"
                );
                accept = true;
            }
            _ => {}
        }
    }
    ensure!(upgrade, "no `Upgrade: websocket` in the response");
    ensure!(connection, "no `Connection: upgrade` in the response");
    ensure!(accept, "no Sec-WebSocket-Accept in the response");
    Ok(())
}

/// Builds one complete client frame (FIN set, masked with `mask`), as RFC 6455 §5.2 requires of a
/// client.
pub fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | (opcode & 0x0F));
    push_len(&mut frame, 0x80, payload.len());
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Builds the unmasked frame a server sends for `payload` (a reference for the tests).
#[cfg(test)]
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | (opcode & 0x0F));
    push_len(&mut frame, 0, payload.len());
    frame.extend_from_slice(payload);
    frame
}

/// Appends the payload length in its shortest encoding, with `mask_bit` in the first byte.
fn push_len(frame: &mut Vec<u8>, mask_bit: u8, len: usize) {
    if len < 126 {
        frame.push(mask_bit | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        frame.push(mask_bit | 126);
        frame.extend_from_slice(&short.to_be_bytes());
    } else {
        frame.push(mask_bit | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// A frame received from the server, borrowing its payload from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (low four bits of the first byte).
    pub opcode: u8,
    /// The payload (servers never mask, so this is the plain data).
    pub payload: &'a [u8],
}

/// Parses one server frame at the start of `buf`. Returns `Ok(None)` if more bytes are needed,
/// otherwise the frame and the number of bytes it used. Rejects what a server must not send:
/// masked frames, reserved bits (no extension is negotiated), over-long payloads, fragmented or
/// over-long control frames.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if b0 & 0x70 != 0 {
        bail!("server frame has reserved bits set (first byte {b0:#04x})");
    }
    if b1 & 0x80 != 0 {
        bail!("server frame is masked (RFC 6455 §5.1 forbids it)");
    }
    let (len, header) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if len > MAX_PAYLOAD {
        bail!("server frame payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit");
    }
    if opcode >= 0x8 && (!fin || len > 125) {
        bail!("invalid control frame from server (opcode {opcode:#x}, fin {fin}, {len} bytes)");
    }
    let end = header + len as usize;
    match buf.get(header..end) {
        Some(payload) => Ok(Some((
            Frame {
                fin,
                opcode,
                payload,
            },
            end,
        ))),
        None => Ok(None),
    }
}

/// A mask key for frame `n`, so consecutive frames do not share one (RFC 6455 wants them
/// unpredictable to defeat proxy cache poisoning; a benchmark on loopback only needs them valid).
pub fn mask(n: u64) -> [u8; 4] {
    ((n as u32).wrapping_mul(0x9E37_79B9) ^ 0x5A5A_A5A5).to_le_bytes()
}

/// The masked pong that answers a ping carrying `payload`.
pub fn pong(payload: &[u8]) -> Vec<u8> {
    masked_frame(OP_PONG, payload, [7, 1, 3, 9])
}

/// A close frame's code and reason, as text (for the error that ends a client).
pub fn close_text(payload: &[u8]) -> String {
    match payload {
        [a, b, reason @ ..] => format!(
            "close {} {}",
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason)
        ),
        _ => "close (no code)".into(),
    }
}

/// A data message being reassembled from fragments: its opcode (0: none) and the payload so far.
#[derive(Debug, Default)]
pub struct Fragments {
    opcode: u8,
    payload: Vec<u8>,
}

/// Parses the complete frames at the start of `data`: messages (reassembled when fragmented, with
/// `partial` kept between calls) and control frames go to `on_frame(opcode, payload)`. Returns the
/// bytes used.
pub fn frames(
    data: &[u8],
    partial: &mut Fragments,
    mut on_frame: impl FnMut(u8, &[u8]) -> Result<()>,
) -> Result<usize> {
    let mut at = 0;
    while let Some((frame, used)) = parse_server_frame(&data[at..])? {
        at += used;
        match frame.opcode {
            OP_CONTINUATION => {
                ensure!(partial.opcode != 0, "continuation frame without a message");
                partial.payload.extend_from_slice(frame.payload);
                if frame.fin {
                    let (op, message) = (partial.opcode, std::mem::take(&mut partial.payload));
                    partial.opcode = 0;
                    on_frame(op, &message)?;
                }
            }
            op @ (OP_TEXT | OP_BINARY) if !frame.fin => {
                partial.opcode = op;
                partial.payload = frame.payload.to_vec();
            }
            op => on_frame(op, frame.payload)?,
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_frame_matches_rfc_example() {
        // RFC 6455 §5.7: a masked "Hello" with mask 37 fa 21 3d.
        let frame = masked_frame(OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            frame,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
    }

    #[test]
    fn parses_known_server_frame() {
        // RFC 6455 §5.7: an unmasked "Hello", followed by the first byte of another frame.
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x81];
        let (frame, used) = parse_server_frame(&bytes)
            .expect("valid")
            .expect("complete");
        assert_eq!(used, 7);
        assert_eq!(
            frame,
            Frame {
                fin: true,
                opcode: OP_TEXT,
                payload: b"Hello"
            }
        );
    }

    #[test]
    fn parses_extended_lengths() {
        for len in [125usize, 126, 65_535, 65_536] {
            let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let bytes = server_frame(OP_TEXT, &data);
            let (frame, used) = parse_server_frame(&bytes)
                .expect("valid")
                .expect("complete");
            assert_eq!(
                (frame.payload, used),
                (&data[..], bytes.len()),
                "length {len}"
            );
        }
    }

    #[test]
    fn incomplete_frames_need_more_bytes() {
        let bytes = server_frame(OP_TEXT, &[b'x'; 300]);
        for cut in [0, 1, 2, 3, 100, bytes.len() - 1] {
            assert!(
                parse_server_frame(&bytes[..cut]).expect("valid").is_none(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn rejects_masked_server_frame() {
        let frame = masked_frame(OP_TEXT, b"Hello", [1, 2, 3, 4]);
        let err = parse_server_frame(&frame).expect_err("masked frame must be rejected");
        assert!(err.to_string().contains("masked"), "{err}");
    }

    #[test]
    fn rejects_reserved_bits_and_bad_control_frames() {
        assert!(
            parse_server_frame(&[0xC1, 0x00]).is_err(),
            "RSV1 without extension"
        );
        assert!(
            parse_server_frame(&[0x09, 0x00]).is_err(),
            "fragmented ping"
        );
        let mut long_close = vec![0x88, 126, 0, 126];
        long_close.extend(std::iter::repeat_n(0, 126));
        assert!(
            parse_server_frame(&long_close).is_err(),
            "close longer than 125 bytes"
        );
    }

    #[test]
    fn rejects_huge_length() {
        let mut bytes = vec![0x82, 127];
        bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(parse_server_frame(&bytes).is_err());
    }

    #[test]
    fn response_check_rejects_wrong_accept() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
            connection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        check_response(ok, &accept_key(key)).expect("valid response");
        let bad = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n";
        assert!(check_response(bad, &accept_key(key)).is_err());
        let not_101 = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        assert!(check_response(not_101, &accept_key(key)).is_err());
    }

    #[test]
    fn fragmented_messages_are_reassembled_around_control_frames() {
        let mut data = vec![0x01, 0x03];
        data.extend_from_slice(b"abc");
        data.extend_from_slice(&server_frame(OP_PING, b"p"));
        data.extend_from_slice(&[0x80, 0x02]);
        data.extend_from_slice(b"de");
        data.extend_from_slice(&[0x81, 0x05, b'x']); // incomplete: stays in the buffer
        let mut partial = Fragments::default();
        let mut seen = vec![];
        let used = frames(&data, &mut partial, |op, payload| {
            seen.push((op, payload.to_vec()));
            Ok(())
        })
        .expect("valid");
        assert_eq!(used, data.len() - 3);
        assert_eq!(
            seen,
            [(OP_PING, b"p".to_vec()), (OP_TEXT, b"abcde".to_vec())]
        );
        let lone = [0x80, 0x01, b'z'];
        assert!(frames(&lone, &mut Fragments::default(), |_, _| Ok(())).is_err());
    }

    #[test]
    fn close_text_reads_code_and_reason() {
        assert_eq!(
            close_text(&[0x03, 0xE8, b'b', b'y', b'e']),
            "close 1000 bye"
        );
        assert_eq!(close_text(&[]), "close (no code)");
    }
}
